//! Compiles a [`PolicySet`] into the snapshot that agents apply.
//!
//! Numeric ids are what the kernel maps key on, so they must not move while agents hold
//! them: they are derived from a hash of what they name (stable across restarts for the
//! same policy) and remembered for the controller's lifetime (stable while it runs, even
//! when hash collisions were resolved by probing).
//!
//! The L7 tables (contracts, consumers, access policies, quotas) are built in
//! [`governance`].

mod governance;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use stoa_proto::v1;

use crate::load::PolicySet;
use crate::policy::{Labels, Protocol};
use crate::refs::RefError;

/// Upstream connect timeout sent to agents.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS: u32 = 2_000;
/// Idle timeout of pooled upstream connections sent to agents.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS: u32 = 90_000;

/// Workload identities. Below 256 is reserved for well-known identities (host, world,
/// ...), as in Cilium; 24 bits leave room for flags next to an identity in kernel maps.
pub const IDENTITY_RANGE: Range<u32> = 256..(1 << 24);
/// Service ids. 0 stays free to mean "no service".
pub const SERVICE_ID_RANGE: Range<u32> = 1..(1 << 24);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("no free id left in {range:?} for {key}")]
    IdsExhausted { range: Range<u32>, key: String },
    /// Only for a set that did not come from the loader, which reports these.
    #[error(transparent)]
    Reference(#[from] RefError),
}

/// 32-bit FNV-1a: tiny, stable across Rust versions and platforms (unlike `std`'s hasher).
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Hands out ids in a range: the hash of the key, then the next free id on collision.
/// An assignment is never forgotten, so a key keeps its id for the allocator's lifetime
/// (ids are not reclaimed; the range is far larger than any policy).
#[derive(Debug, Clone)]
pub struct IdentityAllocator {
    range: Range<u32>,
    by_key: HashMap<String, u32>,
    used: HashSet<u32>,
}

impl IdentityAllocator {
    pub fn new(range: Range<u32>) -> Self {
        assert!(!range.is_empty(), "empty id range");
        Self {
            range,
            by_key: HashMap::new(),
            used: HashSet::new(),
        }
    }

    /// The id of `key`, assigning one the first time.
    pub fn allocate(&mut self, key: &str) -> Result<u32, CompileError> {
        if let Some(&id) = self.by_key.get(key) {
            return Ok(id);
        }
        let size = self.range.end - self.range.start;
        let start = fnv1a_32(key.as_bytes()) % size;
        for probe in 0..size {
            let id = self.range.start + (start + probe) % size;
            if self.used.insert(id) {
                self.by_key.insert(key.to_owned(), id);
                return Ok(id);
            }
        }
        Err(CompileError::IdsExhausted {
            range: self.range.clone(),
            key: key.to_owned(),
        })
    }

    pub fn get(&self, key: &str) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// The canonical identity key: namespace, service account and labels (sorted by key),
/// separated by bytes that none of them may contain.
pub fn identity_key(namespace: &str, service_account: &str, labels: &Labels) -> String {
    let mut key = format!("{namespace}\0{service_account}");
    for (k, v) in labels.iter() {
        key.push('\0');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

/// The canonical service key.
pub fn service_key(namespace: &str, name: &str) -> String {
    format!("{namespace}\0{name}")
}

/// Turns policy sets into snapshots, keeping id assignments between compiles.
#[derive(Debug, Clone)]
pub struct Compiler {
    identities: IdentityAllocator,
    services: IdentityAllocator,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new()
    }
}

impl Compiler {
    pub fn new() -> Self {
        Self {
            identities: IdentityAllocator::new(IDENTITY_RANGE),
            services: IdentityAllocator::new(SERVICE_ID_RANGE),
        }
    }

    pub fn identities(&self) -> &IdentityAllocator {
        &self.identities
    }

    pub fn services(&self) -> &IdentityAllocator {
        &self.services
    }

    /// The snapshot's content; `version` is left 0 for the publisher to set.
    pub fn compile(&mut self, set: &PolicySet) -> Result<v1::Snapshot, CompileError> {
        // Allocate new keys in sorted order so that collisions resolve the same way
        // whatever the file order, and so the same policy gets the same ids after a
        // restart.
        let identity_keys: BTreeSet<String> = set
            .workloads()
            .map(|w| {
                identity_key(
                    &w.metadata.namespace,
                    &w.spec.service_account,
                    &w.spec.labels,
                )
            })
            .collect();
        for key in &identity_keys {
            self.identities.allocate(key)?;
        }
        let service_keys: BTreeSet<String> = set
            .contracts()
            .map(|c| service_key(&c.metadata.namespace, &c.metadata.name))
            .collect();
        for key in &service_keys {
            self.services.allocate(key)?;
        }

        let mut workloads = Vec::new();
        for w in set.workloads() {
            let key = identity_key(
                &w.metadata.namespace,
                &w.spec.service_account,
                &w.spec.labels,
            );
            workloads.push(v1::Workload {
                identity: self.identities.allocate(&key)?,
                name: w.metadata.name.to_string(),
                namespace: w.metadata.namespace.to_string(),
                cgroup: w.spec.cgroup.to_string(),
                service_account: w.spec.service_account.to_string(),
                labels: w
                    .spec
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            });
        }
        workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let mut services = Vec::new();
        for c in set.contracts() {
            let key = service_key(&c.metadata.namespace, &c.metadata.name);
            services.push(v1::Service {
                service_id: self.services.allocate(&key)?,
                name: c.metadata.name.to_string(),
                namespace: c.metadata.namespace.to_string(),
                protocol: match c.spec.protocol {
                    Protocol::Http => v1::Protocol::Http,
                    Protocol::Tcp => v1::Protocol::Tcp,
                    Protocol::Mcp => v1::Protocol::Mcp,
                } as i32,
                ip: c.spec.address.0.ip().to_string(),
                port: u32::from(c.spec.address.0.port()),
            });
        }
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let tables = governance::compile(set, &self.services)?;
        Ok(v1::Snapshot {
            version: 0,
            workloads,
            services,
            proxy: Some(v1::ProxySettings {
                upstream_connect_timeout_ms: DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
                upstream_idle_timeout_ms: DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS,
            }),
            contracts: tables.contracts,
            consumers: tables.consumers,
            access_policies: tables.access_policies,
            quotas: tables.quotas,
        })
    }
}

/// Whether two snapshots differ in anything but their version.
pub fn same_content(a: &v1::Snapshot, b: &v1::Snapshot) -> bool {
    // Destructured so that a field added to Snapshot cannot be forgotten here.
    let v1::Snapshot {
        version: _,
        workloads,
        services,
        proxy,
        contracts,
        consumers,
        access_policies,
        quotas,
    } = a;
    *workloads == b.workloads
        && *services == b.services
        && *proxy == b.proxy
        && *contracts == b.contracts
        && *consumers == b.consumers
        && *access_policies == b.access_policies
        && *quotas == b.quotas
}

/// Snapshot versions: the wall clock in milliseconds, bumped to stay strictly increasing.
///
/// Agents keep their last applied snapshot across controller restarts, so a restarted
/// controller must not reuse lower versions; a counter starting at 1 would. The wall
/// clock is above any version issued before a restart (unless it is set back by more
/// than the controller's downtime), and `max(now, last + 1)` keeps versions strictly
/// increasing within a run even if it steps back.
#[derive(Debug, Clone, Default)]
pub struct VersionClock {
    last: u64,
}

impl VersionClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts after `last` (e.g. for tests, or a version read back from storage).
    pub fn starting_after(last: u64) -> Self {
        Self { last }
    }

    pub fn next_version(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last = now.max(self.last.saturating_add(1));
        self.last
    }

    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_sources;

    fn set(yaml: &str) -> PolicySet {
        load_sources([("t.yaml".into(), yaml.to_owned())]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn workload(name: &str, ns: &str, sa: &str, labels: &str) -> String {
        format!(
            "apiVersion: gostoa.dev/v1alpha1\nkind: Workload\n\
             metadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{cgroup: s/{ns}-{name}, serviceAccount: {sa}, labels: {labels}}}\n---\n"
        )
    }

    fn contract(name: &str, ns: &str, addr: &str) -> String {
        format!(
            "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\n\
             metadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{protocol: tcp, address: \"{addr}\"}}\n---\n"
        )
    }

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn allocator_probes_and_remembers() {
        let mut ids = IdentityAllocator::new(10..13);
        let a = ids.allocate("a").unwrap();
        let b = ids.allocate("b").unwrap();
        let c = ids.allocate("c").unwrap();
        let mut all = vec![a, b, c];
        all.sort();
        assert_eq!(all, [10, 11, 12]);
        assert_eq!(ids.allocate("b").unwrap(), b);
        assert!(matches!(
            ids.allocate("d"),
            Err(CompileError::IdsExhausted { .. })
        ));
        assert_eq!(ids.get("a"), Some(a));
    }

    #[test]
    fn identities_are_shared_and_stable() {
        let yaml = workload("a", "finance", "billing", "{app: x, tier: db}")
            + &workload("b", "finance", "billing", "{tier: db, app: x}")
            + &workload("c", "finance", "billing", "{app: y}")
            + &workload("d", "shop", "billing", "{app: x, tier: db}");
        let mut compiler = Compiler::new();
        let snap = compiler.compile(&set(&yaml)).unwrap();
        let id = |name: &str| {
            snap.workloads
                .iter()
                .find(|w| w.name == name)
                .unwrap()
                .identity
        };
        // Same (namespace, service account, labels), any label order: one identity.
        assert_eq!(id("a"), id("b"));
        assert_ne!(id("a"), id("c"));
        assert_ne!(id("a"), id("d"));
        for w in &snap.workloads {
            assert!(IDENTITY_RANGE.contains(&w.identity));
        }

        // Another compiler (a restart) derives the same ids from the same policy.
        let again = Compiler::new().compile(&set(&yaml)).unwrap();
        assert!(same_content(&snap, &again));

        // Ids survive unrelated changes, and a removed identity keeps its id if it
        // comes back during the controller's lifetime.
        let smaller = workload("c", "finance", "billing", "{app: y}");
        let snap2 = compiler.compile(&set(&smaller)).unwrap();
        assert_eq!(snap2.workloads[0].identity, id("c"));
        let snap3 = compiler.compile(&set(&yaml)).unwrap();
        assert!(same_content(&snap, &snap3));
    }

    #[test]
    fn services_and_defaults() {
        let yaml = contract("orders-api", "shop", "10.96.0.10:80")
            + &contract("crm", "shop", "10.96.0.20:8080");
        let snap = Compiler::new().compile(&set(&yaml)).unwrap();
        assert_eq!(snap.version, 0);
        let names: Vec<_> = snap.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["crm", "orders-api"]);
        let orders = &snap.services[1];
        assert_eq!((orders.ip.as_str(), orders.port), ("10.96.0.10", 80));
        assert_eq!(orders.protocol, v1::Protocol::Tcp as i32);
        assert!(SERVICE_ID_RANGE.contains(&orders.service_id));
        assert_ne!(snap.services[0].service_id, orders.service_id);
        assert_eq!(
            orders.service_id,
            Compiler::new().compile(&set(&yaml)).unwrap().services[1].service_id
        );
        let proxy = snap.proxy.unwrap();
        assert_eq!(proxy.upstream_connect_timeout_ms, 2_000);
        assert_eq!(proxy.upstream_idle_timeout_ms, 90_000);
    }

    #[test]
    fn versions_strictly_increase() {
        let mut clock = VersionClock::new();
        let mut last = 0;
        for _ in 0..1000 {
            let v = clock.next_version();
            assert!(v > last);
            last = v;
        }
        let mut clock = VersionClock::starting_after(u64::MAX - 1);
        assert_eq!(clock.next_version(), u64::MAX);
    }
}
