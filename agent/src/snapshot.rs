//! Turns a controller snapshot into the exact state the datapath and proxy should
//! hold, validating everything before anything is changed: a snapshot is applied
//! whole or not at all.
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::Path,
};

use stoa_common::{
    ServiceKey, ServiceValue, WorkloadValue, IPPROTO_TCP, MAX_SERVICES, MAX_WORKLOADS,
    SERVICE_FLAG_REDIRECT,
};
use stoa_proto::v1::{Protocol, Snapshot};

use crate::cgroup::{self, CgroupError, ResolvedCgroup};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("workload {namespace}/{name}: {source}")]
    Cgroup {
        namespace: String,
        name: String,
        source: CgroupError,
    },
    #[error("workloads {first} and {second} use the same cgroup {cgroup}")]
    SharedCgroup {
        first: String,
        second: String,
        cgroup: String,
    },
    #[error("service {namespace}/{name}: invalid IPv4 address {ip:?}")]
    InvalidIp {
        namespace: String,
        name: String,
        ip: String,
    },
    #[error("service {namespace}/{name}: invalid port {port}")]
    InvalidPort {
        namespace: String,
        name: String,
        port: u32,
    },
    #[error("service {namespace}/{name}: unsupported protocol {protocol}")]
    UnsupportedProtocol {
        namespace: String,
        name: String,
        protocol: i32,
    },
    #[error("services {first} and {second} share the address {addr}")]
    SharedAddress {
        first: String,
        second: String,
        addr: String,
    },
    #[error("too many {what}: {count} (the kernel maps hold {max})")]
    TooMany {
        what: &'static str,
        count: usize,
        max: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceProtocol {
    Tcp,
    Http,
    /// HTTP carrying MCP: the same pipeline, with tool governance.
    Mcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub id: u32,
    pub name: String,
    pub namespace: String,
    pub protocol: ServiceProtocol,
    pub addr: std::net::SocketAddrV4,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadEntry {
    pub name: String,
    pub namespace: String,
    pub cgroup: ResolvedCgroup,
    pub value: WorkloadValue,
}

/// Everything a snapshot asks for, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub version: u64,
    /// Keyed by cgroup id.
    pub workloads: BTreeMap<u64, WorkloadEntry>,
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub service_table: HashMap<u32, ServiceEntry>,
}

impl DesiredState {
    pub fn from_snapshot(snapshot: &Snapshot, cgroup_root: &Path) -> Result<Self, SnapshotError> {
        if snapshot.workloads.len() > MAX_WORKLOADS as usize {
            return Err(SnapshotError::TooMany {
                what: "workloads",
                count: snapshot.workloads.len(),
                max: MAX_WORKLOADS,
            });
        }
        if snapshot.services.len() > MAX_SERVICES as usize {
            return Err(SnapshotError::TooMany {
                what: "services",
                count: snapshot.services.len(),
                max: MAX_SERVICES,
            });
        }
        let mut state = DesiredState {
            version: snapshot.version,
            ..Default::default()
        };
        for workload in &snapshot.workloads {
            let resolved = cgroup::resolve(cgroup_root, &workload.cgroup).map_err(|source| {
                SnapshotError::Cgroup {
                    namespace: workload.namespace.clone(),
                    name: workload.name.clone(),
                    source,
                }
            })?;
            let entry = WorkloadEntry {
                name: workload.name.clone(),
                namespace: workload.namespace.clone(),
                cgroup: resolved,
                value: WorkloadValue {
                    identity: workload.identity,
                    flags: 0,
                },
            };
            if let Some(existing) = state.workloads.get(&entry.cgroup.id) {
                return Err(SnapshotError::SharedCgroup {
                    first: format!("{}/{}", existing.namespace, existing.name),
                    second: format!("{}/{}", entry.namespace, entry.name),
                    cgroup: workload.cgroup.clone(),
                });
            }
            state.workloads.insert(entry.cgroup.id, entry);
        }
        for service in &snapshot.services {
            let ip: Ipv4Addr = service.ip.parse().map_err(|_| SnapshotError::InvalidIp {
                namespace: service.namespace.clone(),
                name: service.name.clone(),
                ip: service.ip.clone(),
            })?;
            let port = u16::try_from(service.port)
                .ok()
                .filter(|port| *port != 0)
                .ok_or(SnapshotError::InvalidPort {
                    namespace: service.namespace.clone(),
                    name: service.name.clone(),
                    port: service.port,
                })?;
            let protocol = match Protocol::try_from(service.protocol) {
                Ok(Protocol::Tcp) => ServiceProtocol::Tcp,
                Ok(Protocol::Http) => ServiceProtocol::Http,
                Ok(Protocol::Mcp) => ServiceProtocol::Mcp,
                _ => {
                    return Err(SnapshotError::UnsupportedProtocol {
                        namespace: service.namespace.clone(),
                        name: service.name.clone(),
                        protocol: service.protocol,
                    })
                }
            };
            let key = ServiceKey {
                ip: u32::from_ne_bytes(ip.octets()),
                port,
                proto: IPPROTO_TCP,
                _pad: 0,
            };
            let entry = ServiceEntry {
                id: service.service_id,
                name: service.name.clone(),
                namespace: service.namespace.clone(),
                protocol,
                addr: std::net::SocketAddrV4::new(ip, port),
            };
            if let Some(existing) = state.services.get(&key) {
                let first = &state.service_table[&existing.service_id];
                return Err(SnapshotError::SharedAddress {
                    first: format!("{}/{}", first.namespace, first.name),
                    second: format!("{}/{}", entry.namespace, entry.name),
                    addr: entry.addr.to_string(),
                });
            }
            state.services.insert(
                key,
                ServiceValue {
                    service_id: service.service_id,
                    flags: SERVICE_FLAG_REDIRECT,
                },
            );
            state.service_table.insert(entry.id, entry);
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_proto::v1::{Service, Workload};

    fn snapshot(root: &Path) -> Snapshot {
        std::fs::create_dir_all(root.join("pods/a")).unwrap();
        Snapshot {
            version: 7,
            workloads: vec![Workload {
                identity: 300,
                name: "a".into(),
                namespace: "ns".into(),
                cgroup: "pods/a".into(),
                ..Default::default()
            }],
            services: vec![Service {
                service_id: 9,
                name: "orders".into(),
                namespace: "shop".into(),
                protocol: Protocol::Http as i32,
                ip: "10.96.0.10".into(),
                port: 80,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn valid_snapshot_becomes_map_entries() {
        let root = tempfile::tempdir().unwrap();
        let state = DesiredState::from_snapshot(&snapshot(root.path()), root.path()).unwrap();
        assert_eq!(state.version, 7);
        let (_, workload) = state.workloads.iter().next().unwrap();
        assert_eq!(workload.value.identity, 300);
        let key = ServiceKey {
            ip: u32::from_ne_bytes([10, 96, 0, 10]),
            port: 80,
            proto: IPPROTO_TCP,
            _pad: 0,
        };
        assert_eq!(state.services[&key].service_id, 9);
        assert_eq!(state.service_table[&9].protocol, ServiceProtocol::Http);
    }

    #[test]
    fn missing_cgroup_bad_ip_and_duplicate_address_are_rejected() {
        let root = tempfile::tempdir().unwrap();
        let mut bad = snapshot(root.path());
        bad.workloads[0].cgroup = "pods/nope".into();
        let err = DesiredState::from_snapshot(&bad, root.path()).unwrap_err();
        assert!(err.to_string().contains("ns/a"), "{err}");

        let mut bad = snapshot(root.path());
        bad.services[0].ip = "10.96.0".into();
        assert!(matches!(
            DesiredState::from_snapshot(&bad, root.path()),
            Err(SnapshotError::InvalidIp { .. })
        ));

        let mut bad = snapshot(root.path());
        let mut twin = bad.services[0].clone();
        twin.service_id = 10;
        twin.name = "twin".into();
        bad.services.push(twin);
        assert!(matches!(
            DesiredState::from_snapshot(&bad, root.path()),
            Err(SnapshotError::SharedAddress { .. })
        ));

        let mut bad = snapshot(root.path());
        bad.services[0].protocol = Protocol::Unspecified as i32;
        assert!(matches!(
            DesiredState::from_snapshot(&bad, root.path()),
            Err(SnapshotError::UnsupportedProtocol { .. })
        ));
    }
}
