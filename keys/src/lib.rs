//! API keys are never stored: policy holds `hmac-sha256:<hex>` of each key under a
//! node secret, and the agent recomputes the HMAC of a presented key to find it.
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const HASH_PREFIX: &str = "hmac-sha256:";

/// A key digest: HMAC-SHA-256 of the key under the node secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A digest is not a secret, but there is no reason to print it in full.
        write!(f, "KeyDigest({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("an API key hash must start with \"{HASH_PREFIX}\"")]
    Prefix,
    #[error("an API key hash must hold 64 hex digits after \"{HASH_PREFIX}\"")]
    Digest,
    #[error("the API key secret is empty")]
    EmptySecret,
}

impl KeyDigest {
    pub fn compute(secret: &[u8], key: &str) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(key.as_bytes());
        Self(mac.finalize().into_bytes().into())
    }

    /// Parses `hmac-sha256:<64 hex digits>`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let hex = text.strip_prefix(HASH_PREFIX).ok_or(KeyError::Prefix)?;
        if hex.len() != 64 {
            return Err(KeyError::Digest);
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| KeyError::Digest)?;
        }
        Ok(Self(digest))
    }

    /// Constant-time comparison, so timing tells nothing about how much matched.
    pub fn matches(&self, other: &KeyDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The first bytes, usable as a map key that reveals nothing useful.
    pub fn prefix(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"))
    }
}

impl std::fmt::Display for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(HASH_PREFIX)?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Reads a secret file's content: surrounding whitespace (a trailing newline) is not
/// part of the secret.
pub fn secret_from_file_content(content: &[u8]) -> Result<Vec<u8>, KeyError> {
    let text = content.trim_ascii();
    if text.is_empty() {
        return Err(KeyError::EmptySecret);
    }
    Ok(text.to_vec())
}

/// A new random API key: `stoa_` and 32 bytes of randomness in hex.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    let mut key = String::from("stoa_");
    for byte in bytes {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_and_depends_on_secret_and_key() {
        let digest = KeyDigest::compute(b"node-secret", "k-123");
        let text = digest.to_string();
        assert!(text.starts_with(HASH_PREFIX));
        assert_eq!(text.len(), HASH_PREFIX.len() + 64);
        assert_eq!(KeyDigest::parse(&text).unwrap(), digest);
        assert!(digest.matches(&KeyDigest::compute(b"node-secret", "k-123")));
        assert!(!digest.matches(&KeyDigest::compute(b"other-secret", "k-123")));
        assert!(!digest.matches(&KeyDigest::compute(b"node-secret", "k-124")));
    }

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let digest = KeyDigest::compute(b"Jefe", "what do ya want for nothing?");
        assert_eq!(
            digest.to_string(),
            "hmac-sha256:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn malformed_hashes_are_rejected() {
        assert_eq!(KeyDigest::parse("sha256:00"), Err(KeyError::Prefix));
        assert_eq!(KeyDigest::parse("hmac-sha256:abc"), Err(KeyError::Digest));
        let not_hex = format!("{HASH_PREFIX}{}", "zz".repeat(32));
        assert_eq!(KeyDigest::parse(&not_hex), Err(KeyError::Digest));
        assert_eq!(secret_from_file_content(b" \n"), Err(KeyError::EmptySecret));
        assert_eq!(secret_from_file_content(b"s3cret\n").unwrap(), b"s3cret");
    }

    #[test]
    fn generated_keys_differ() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with("stoa_") && a.len() == 69);
    }
}
