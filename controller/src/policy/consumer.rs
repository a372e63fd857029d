//! `Consumer`: an API consumer (a team, an app) that holds API keys and a plan.

use std::fmt;

use serde::{Deserialize, Deserializer};
use stoa_keys::KeyDigest;

use super::fields::{
    check_identifier, deserialize_validated, validated_string, PlanName, Validated,
};
use super::{Kind, Object, Spec};

/// `kind: Consumer`.
pub type Consumer = Object<ConsumerSpec>;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsumerSpec {
    #[serde(default)]
    pub plan: Option<PlanName>,
    /// Keys are identified by their hash; a consumer without keys can still be
    /// selected by name or labels, it just cannot present a key.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyEntry>,
}

impl Spec for ConsumerSpec {
    const KIND: Kind = Kind::Consumer;
    // Key ids and hashes must be unique across all consumers: the cross-document
    // checks cover duplicates within one consumer too.
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiKeyEntry {
    /// Names the key in logs and for rotation; never secret.
    pub id: ApiKeyId,
    pub hash: ApiKeyHash,
}

validated_string!(
    /// An API key id (`pp-2026-12`), unique across all consumers.
    ApiKeyId,
    "an API key id",
    check_identifier
);

/// `hmac-sha256:<hex>` of an API key under the node's API key secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyHash(pub KeyDigest);

impl ApiKeyHash {
    pub fn new(value: &str) -> Result<Self, String> {
        // A pasted key instead of its hash would put the secret in the policy.
        if value.starts_with("stoa_") {
            return Err("this is an API key, not its hash: store the output of \
                        `stoa keys hash`, never the key itself"
                .to_owned());
        }
        KeyDigest::parse(value)
            .map(Self)
            .map_err(|e| format!("{e} (compute it with `stoa keys hash`)"))
    }
}

impl Validated for ApiKeyHash {
    const EXPECTING: &'static str = "an API key hash (hmac-sha256:<hex>)";
    fn validate(value: &str) -> Result<Self, String> {
        Self::new(value)
    }
}

impl<'de> Deserialize<'de> for ApiKeyHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_validated(d)
    }
}

impl fmt::Display for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes() {
        let digest = KeyDigest::compute(b"secret", "stoa_abc");
        let hash = ApiKeyHash::new(&digest.to_string()).unwrap();
        assert_eq!(hash.0, digest);
        assert_eq!(hash.to_string(), digest.to_string());
        assert!(ApiKeyHash::new("sha256:00")
            .unwrap_err()
            .contains("must start with"));
        assert!(ApiKeyHash::new("stoa_0123")
            .unwrap_err()
            .contains("not its hash"));
        assert!(ApiKeyHash::new("hmac-sha256:12")
            .unwrap_err()
            .contains("64 hex digits"));
    }
}
