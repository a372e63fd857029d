//! STOA's kernel programs.
//!
//! `stoa_connect4` runs on connect() in every workload cgroup: a TCP connect to a
//! governed service is rewritten to the node proxy, and the original destination is
//! remembered by socket cookie. `stoa_sockops` runs when that connection is
//! established and re-keys the record by the client's (ip, port), which is all the
//! proxy can see of its peer after accept().
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{bpf_sock_addr, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB},
    helpers::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use stoa_common::{
    counter, OrigDst, PeerKey, ProxyConfig, ServiceKey, ServiceValue, WorkloadValue, IPPROTO_TCP,
    MAX_SERVICES, MAX_TRACKED_CONNECTIONS, MAX_WORKLOADS, SERVICE_FLAG_REDIRECT,
};

/// cgroup id → workload identity.
#[map]
static WORKLOADS: HashMap<u64, WorkloadValue> = HashMap::pinned(MAX_WORKLOADS, 0);

/// (ip, port, proto) → governed service.
#[map]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_SERVICES, 0);

/// Index 0: where the node proxy listens.
#[map]
static PROXY_CONFIG: Array<ProxyConfig> = Array::pinned(1, 0);

/// Socket cookie → original destination, from connect() until ESTABLISHED.
#[map]
static ORIG_DST: LruHashMap<u64, OrigDst> = LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

/// Client (ip, port) → original destination, read (and removed) by the proxy on accept.
#[map]
static PROXY_PEERS: LruHashMap<PeerKey, OrigDst> = LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::LEN, 0);

const AF_INET: u32 = 2;
const SOCK_STREAM: u32 = 1;
/// Returned by cgroup/connect programs: let the connect proceed.
const ALLOW: i32 = 1;

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

#[cgroup_sock_addr(connect4)]
pub fn stoa_connect4(ctx: SockAddrContext) -> i32 {
    // A connect we cannot understand is never blocked: fail open in the kernel, the
    // proxy is where policy is decided.
    try_connect4(&ctx);
    ALLOW
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands a valid bpf_sock_addr to cgroup/connect4 programs.
    let addr: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if addr.type_ != SOCK_STREAM || addr.protocol != IPPROTO_TCP as u32 {
        return;
    }
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is copied out before the map can change it.
    let Some(workload) = (unsafe { WORKLOADS.get(cgroup_id) }).copied() else {
        return;
    };
    count(counter::CONNECT_SEEN);

    let dst_ip = addr.user_ip4;
    let dst_port = u16::from_be(addr.user_port as u16);
    let key = ServiceKey {
        ip: dst_ip,
        port: dst_port,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // SAFETY: copied out immediately.
    let Some(service) = (unsafe { SERVICES.get(key) }).copied() else {
        return;
    };
    if service.flags & SERVICE_FLAG_REDIRECT == 0 {
        return;
    }
    let Some(proxy) = PROXY_CONFIG.get(0).copied() else {
        return;
    };
    if proxy.ip == 0 || (proxy.ip == dst_ip && proxy.port == dst_port) {
        return;
    }

    let record = OrigDst {
        ip: dst_ip,
        port: dst_port,
        _pad: 0,
        identity: workload.identity,
        service_id: service.service_id,
    };
    // SAFETY: the context is a valid socket-address context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIG_DST.insert(cookie, record, 0).is_err() {
        // Without a record the proxy would refuse the connection: leave it alone.
        count(counter::RECORD_FAILED);
        return;
    }
    addr.user_ip4 = proxy.ip;
    addr.user_port = u32::from(proxy.port.to_be());
    count(counter::CONNECT_REDIRECTED);
    debug!(
        ctx,
        "redirect identity {} service {} port {}", workload.identity, service.service_id, dst_port
    );
}

#[sock_ops]
pub fn stoa_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && ctx.family() == AF_INET {
        move_record_to_peer_key(&ctx);
    }
    0
}

#[inline(always)]
fn move_record_to_peer_key(ctx: &SockOpsContext) {
    // SAFETY: the context is a valid sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out immediately.
    let Some(record) = (unsafe { ORIG_DST.get(cookie) }).copied() else {
        return;
    };
    let peer = PeerKey {
        ip: ctx.local_ip4(),
        // local_port is in host byte order in bpf_sock_ops.
        port: ctx.local_port() as u16,
        _pad: 0,
    };
    if PROXY_PEERS.insert(peer, record, 0).is_ok() {
        count(counter::PEER_RECORDED);
    } else {
        count(counter::RECORD_FAILED);
    }
    let _ = ORIG_DST.remove(cookie);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
