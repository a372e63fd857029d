//! Who is calling: the workload identity the kernel recorded for the connection, and
//! on top of it an API key (→ a Consumer) or a JWT (→ its claims).
pub mod jwt;

use std::sync::Arc;

use serde_json::{Map, Value};

/// A Consumer as the proxy needs it.
#[derive(Debug)]
pub struct ConsumerInfo {
    pub name: String,
    pub namespace: String,
    /// `namespace/name`, what records and upstream headers show.
    pub qualified: String,
    pub labels: std::collections::HashMap<String, String>,
    pub plan: String,
}

/// A workload identity's attributes, from the snapshot's Workload entries.
#[derive(Debug, Clone)]
pub struct WorkloadInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: std::collections::HashMap<String, String>,
}

/// A verified JWT's claims.
#[derive(Debug, Clone)]
pub struct JwtPrincipal {
    pub subject: Option<String>,
    pub claims: Map<String, Value>,
    pub groups: Vec<String>,
}

/// Everything known about the caller of one request.
#[derive(Debug, Default, Clone)]
pub struct Principal {
    pub identity: u32,
    pub workload: Option<Arc<WorkloadInfo>>,
    pub consumer: Option<Arc<ConsumerInfo>>,
    /// The API key id that identified the consumer (never the key).
    pub key_id: Option<Arc<str>>,
    pub jwt: Option<Arc<JwtPrincipal>>,
}

impl Principal {
    /// A stable number for this caller, used to key its quota budgets: the consumer
    /// if known, else the JWT subject, else the workload identity.
    pub fn quota_key(&self) -> u64 {
        if let Some(consumer) = &self.consumer {
            return fnv1a(b"consumer/", consumer.qualified.as_bytes());
        }
        if let Some(subject) = self.jwt.as_ref().and_then(|jwt| jwt.subject.as_deref()) {
            return fnv1a(b"jwt/", subject.as_bytes());
        }
        u64::from(self.identity) | (1 << 63)
    }
}

/// FNV-1a over a prefix and a value: small, stable across runs, good enough to key
/// budgets (collisions would only merge two callers' budgets).
pub fn fnv1a(prefix: &[u8], value: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in prefix.iter().chain(value) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
