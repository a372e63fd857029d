//! Map keys and values shared by STOA's kernel programs and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so that the kernel and user space
//! agree on the layout byte for byte. IPv4 addresses are kept exactly as the kernel
//! hands them over (network byte order, i.e. the octets in memory order); ports are
//! kept in host byte order so that both sides compare them without conversions.
#![no_std]

/// Pin folder names of the maps, relative to the agent's pin path.
pub mod map_names {
    pub const WORKLOADS: &str = "WORKLOADS";
    pub const SERVICES: &str = "SERVICES";
    pub const PROXY_CONFIG: &str = "PROXY_CONFIG";
    pub const ORIG_DST: &str = "ORIG_DST";
    pub const PROXY_PEERS: &str = "PROXY_PEERS";
    pub const COUNTERS: &str = "COUNTERS";
}

/// Largest number of entries per map; shared so user space can size its own tables.
pub const MAX_WORKLOADS: u32 = 16 * 1024;
pub const MAX_SERVICES: u32 = 16 * 1024;
pub const MAX_TRACKED_CONNECTIONS: u32 = 64 * 1024;

pub const IPPROTO_TCP: u8 = 6;

/// A workload's cgroup, as seen by `bpf_get_current_cgroup_id`, maps to this.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadValue {
    pub identity: u32,
    pub flags: u32,
}

/// A governed destination: (IPv4, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Network byte order (octets in memory order).
    pub ip: u32,
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Connections to this service are sent through the node proxy.
pub const SERVICE_FLAG_REDIRECT: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub service_id: u32,
    pub flags: u32,
}

/// Where redirected connections go: the node proxy's listening address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Network byte order; zero means "no proxy configured, redirect nothing".
    pub ip: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// What the proxy needs to know about a redirected connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Network byte order.
    pub ip: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
    pub identity: u32,
    pub service_id: u32,
}

/// The client's side of a redirected connection, as the proxy sees its peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Network byte order.
    pub ip: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Indexes of the per-CPU `COUNTERS` array.
pub mod counter {
    /// connect() calls seen from workload cgroups.
    pub const CONNECT_SEEN: u32 = 0;
    /// connect() calls rewritten to the proxy.
    pub const CONNECT_REDIRECTED: u32 = 1;
    /// Redirect records moved from socket cookie to peer key at ESTABLISHED.
    pub const PEER_RECORDED: u32 = 2;
    /// Redirect records that could not be stored (map full).
    pub const RECORD_FAILED: u32 = 3;
    pub const LEN: u32 = 4;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), Copy, and have no implicit padding.
    unsafe impl aya::Pod for WorkloadValue {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for ProxyConfig {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for PeerKey {}
}
