//! The kernel side: loads the eBPF object, keeps its maps pinned under one folder of
//! bpffs, attaches the programs to workload cgroups and writes snapshots into maps.
use std::{
    collections::BTreeMap,
    fs::File,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSockAddr, SockOps,
    },
    Ebpf, EbpfLoader,
};
use stoa_common::{
    counter, map_names, OrigDst, PeerKey, ProxyConfig, ServiceKey, ServiceValue, WorkloadValue,
};
use tracing::{debug, info, warn};

use crate::snapshot::DesiredState;

const CONNECT4: &str = "stoa_connect4";
const SOCKOPS: &str = "stoa_sockops";
/// aya attaches through bpf_link (kernel ≥ 5.7), where the kernel requires zero flags
/// and always lets other programs (another agent's, Cilium's) coexist on the cgroup;
/// `Single` is what maps to zero flags there.
const ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stoa.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("mounting bpffs at {path}: {source}")]
    MountBpffs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating pin folder {path}: {source}")]
    PinFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {}", error_chain(.0))]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {}", error_chain(source))]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {}", error_chain(source))]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("pinning link {path}: {source}")]
    PinLink {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("link: {}", error_chain(.0))]
    Link(#[from] aya::programs::links::LinkError),
    #[error("opening cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// aya's errors keep the errno in their source; show the whole chain.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The programs attached to one workload cgroup. The links are pinned under
/// `<pin path>/links/`, so they keep the cgroup governed while the agent restarts or
/// after it crashed; the next agent replaces them with its own.
struct Attachment {
    path: PathBuf,
    links: Vec<PinnedLink>,
}

/// Looks up (and consumes) the redirect record of an accepted connection.
pub struct PeerLookup {
    map: Mutex<HashMap<MapData, PeerKey, OrigDst>>,
}

impl PeerLookup {
    /// The record written by `stoa_sockops` for the client at `peer`, removed so that a
    /// later connection reusing the port cannot inherit it.
    pub fn take(&self, peer: SocketAddrV4) -> Option<OrigDst> {
        let key = PeerKey {
            ip: u32::from_ne_bytes(peer.ip().octets()),
            port: peer.port(),
            _pad: 0,
        };
        let mut map = self.map.lock().unwrap_or_else(|poison| poison.into_inner());
        let record = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(record)
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    cgroup_root: PathBuf,
    workloads: HashMap<MapData, u64, WorkloadValue>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    counters: Option<PerCpuArray<MapData, u64>>,
    peers: Arc<PeerLookup>,
    attached: BTreeMap<u64, Attachment>,
    /// Links a previous agent pinned, by cgroup id; replaced or removed by the first
    /// snapshot this agent applies.
    inherited: BTreeMap<u64, Vec<PinnedLink>>,
    links_dir: PathBuf,
    applied_version: u64,
}

impl Datapath {
    pub fn load(
        pin_path: &Path,
        cgroup_root: PathBuf,
        proxy_addr: SocketAddrV4,
    ) -> Result<Self, DatapathError> {
        ensure_bpffs(pin_path)?;
        std::fs::create_dir_all(pin_path).map_err(|source| DatapathError::PinFolder {
            path: pin_path.to_path_buf(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_path)
            .load(EBPF_OBJECT)?;
        // Dropping the logger closes its map and breaks later program loads; keep it.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                debug!("kernel-side logging unavailable: {err}");
                None
            }
        };
        for name in [CONNECT4, SOCKOPS] {
            let program = ebpf.program_mut(name).ok_or(DatapathError::Missing(name))?;
            let loaded = match program {
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                aya::programs::Program::SockOps(p) => p.load(),
                _ => return Err(DatapathError::Missing(name)),
            };
            loaded.map_err(|source| DatapathError::Program { name, source })?;
        }

        let mut proxy_config: Array<MapData, ProxyConfig> =
            take_map(&mut ebpf, map_names::PROXY_CONFIG)?;
        proxy_config
            .set(
                0,
                ProxyConfig {
                    ip: u32::from_ne_bytes(proxy_addr.ip().octets()),
                    port: proxy_addr.port(),
                    _pad: 0,
                },
                0,
            )
            .map_err(|source| DatapathError::Map {
                name: map_names::PROXY_CONFIG,
                source,
            })?;

        let mut datapath = Datapath {
            workloads: take_map(&mut ebpf, map_names::WORKLOADS)?,
            services: take_map(&mut ebpf, map_names::SERVICES)?,
            counters: Some(take_map(&mut ebpf, map_names::COUNTERS)?),
            peers: Arc::new(PeerLookup {
                map: Mutex::new(take_map(&mut ebpf, map_names::PROXY_PEERS)?),
            }),
            ebpf,
            logger,
            cgroup_root,
            attached: BTreeMap::new(),
            inherited: BTreeMap::new(),
            links_dir: pin_path.join("links"),
            applied_version: 0,
        };
        datapath.inherit_pinned_links();
        Ok(datapath)
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    pub fn peer_lookup(&self) -> Arc<PeerLookup> {
        self.peers.clone()
    }

    pub fn applied_version(&self) -> u64 {
        self.applied_version
    }

    /// Forwards kernel-side log records (aya-log) into `tracing`.
    pub fn spawn_log_pump(&mut self) -> std::io::Result<()> {
        let Some(logger) = self.logger.take() else {
            return Ok(());
        };
        // SAFETY: the logger owns its ring buffer fd and keeps it open while registered.
        let mut fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)?
        };
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        Ok(())
    }

    /// Publishes the kernel programs' per-CPU counters as Prometheus counters.
    pub fn spawn_counter_export(&mut self, every: Duration) {
        let Some(counters) = self.counters.take() else {
            return;
        };
        tokio::spawn(async move {
            let names = [
                (
                    counter::CONNECT_SEEN,
                    "stoa_datapath_workload_connects_total",
                ),
                (counter::CONNECT_REDIRECTED, "stoa_datapath_redirects_total"),
                (counter::PEER_RECORDED, "stoa_datapath_peer_records_total"),
                (
                    counter::RECORD_FAILED,
                    "stoa_datapath_record_failures_total",
                ),
            ];
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                for (index, name) in names {
                    if let Ok(values) = counters.get(&index, 0) {
                        metrics::counter!(name).absolute(values.iter().sum());
                    }
                }
            }
        });
    }

    /// Makes the kernel state equal `desired`. New cgroups are attached first (and
    /// rolled back if one fails), so a failed apply leaves the previous state intact.
    pub fn apply(&mut self, desired: &DesiredState) -> Result<(), DatapathError> {
        let mut newly_attached = Vec::new();
        for (id, workload) in &desired.workloads {
            if self.attached.contains_key(id) {
                continue;
            }
            match self.attach(*id, &workload.cgroup.path) {
                Ok(attachment) => {
                    self.attached.insert(*id, attachment);
                    newly_attached.push(*id);
                }
                Err(err) => {
                    for id in newly_attached {
                        self.detach(id);
                    }
                    return Err(err);
                }
            }
        }

        for (id, workload) in &desired.workloads {
            self.workloads
                .insert(id, workload.value, 0)
                .map_err(|source| DatapathError::Map {
                    name: map_names::WORKLOADS,
                    source,
                })?;
        }
        for (key, value) in &desired.services {
            self.services
                .insert(key, value, 0)
                .map_err(|source| DatapathError::Map {
                    name: map_names::SERVICES,
                    source,
                })?;
        }
        // Stale entries are read from the maps themselves: after a restart they hold
        // what the previous agent wrote.
        let stale_services: Vec<ServiceKey> = self
            .services
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !desired.services.contains_key(key))
            .collect();
        for key in stale_services {
            let _ = self.services.remove(&key);
        }
        let stale_workloads: Vec<u64> = self
            .workloads
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !desired.workloads.contains_key(id))
            .collect();
        for id in stale_workloads {
            let _ = self.workloads.remove(&id);
            self.detach(id);
        }
        let orphaned: Vec<u64> = self.inherited.keys().copied().collect();
        for id in orphaned {
            self.drop_inherited(id);
        }
        self.applied_version = desired.version;
        Ok(())
    }

    fn attach(&mut self, cgroup_id: u64, cgroup: &Path) -> Result<Attachment, DatapathError> {
        let dir = File::open(cgroup).map_err(|source| DatapathError::OpenCgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let connect4 = self.attach_connect4(&dir)?;
        // On error the connect4 link is dropped, which detaches it again.
        let sockops = self.attach_sockops(&dir)?;
        // Both new programs run; only now let go of a previous agent's.
        self.drop_inherited(cgroup_id);
        let mut links = Vec::with_capacity(2);
        for (kind, link) in [("connect4", connect4), ("sockops", sockops)] {
            let path = self.links_dir.join(format!("{cgroup_id}-{kind}"));
            let _ = std::fs::remove_file(&path);
            match link.pin(&path) {
                Ok(pinned) => links.push(pinned),
                Err(source) => {
                    for pinned in links {
                        let _ = pinned.unpin();
                    }
                    return Err(DatapathError::PinLink { path, source });
                }
            }
        }
        info!(cgroup = %cgroup.display(), "attached connect4 and sockops");
        Ok(Attachment {
            path: cgroup.to_path_buf(),
            links,
        })
    }

    fn attach_connect4(&mut self, dir: &File) -> Result<FdLink, DatapathError> {
        let program: &mut CgroupSockAddr = self.program(CONNECT4)?;
        let id = program
            .attach(dir, ATTACH_MODE)
            .map_err(|source| DatapathError::Program {
                name: CONNECT4,
                source,
            })?;
        let link = program
            .take_link(id)
            .map_err(|source| DatapathError::Program {
                name: CONNECT4,
                source,
            })?;
        Ok(FdLink::try_from(link)?)
    }

    fn attach_sockops(&mut self, dir: &File) -> Result<FdLink, DatapathError> {
        let program: &mut SockOps = self.program(SOCKOPS)?;
        let id = program
            .attach(dir, ATTACH_MODE)
            .map_err(|source| DatapathError::Program {
                name: SOCKOPS,
                source,
            })?;
        let link = program
            .take_link(id)
            .map_err(|source| DatapathError::Program {
                name: SOCKOPS,
                source,
            })?;
        Ok(FdLink::try_from(link)?)
    }

    fn detach(&mut self, cgroup_id: u64) {
        let Some(attachment) = self.attached.remove(&cgroup_id) else {
            return;
        };
        for link in attachment.links {
            // Unpinning drops the last reference: the kernel detaches the program.
            if let Err(err) = link.unpin() {
                warn!(cgroup = %attachment.path.display(), "unpinning a link: {err}");
            }
        }
        info!(cgroup = %attachment.path.display(), "detached");
    }

    /// Detaches from every workload cgroup (and removes their entries); maps stay
    /// pinned so a restarted agent finds its connection records.
    pub fn detach_all(&mut self) {
        let ids: Vec<u64> = self.attached.keys().copied().collect();
        for id in ids {
            let _ = self.workloads.remove(&id);
            self.detach(id);
        }
        let inherited: Vec<u64> = self.inherited.keys().copied().collect();
        for id in inherited {
            let _ = self.workloads.remove(&id);
            self.drop_inherited(id);
        }
    }

    fn inherit_pinned_links(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.links_dir) else {
            let _ = std::fs::create_dir_all(&self.links_dir);
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(cgroup_id) = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|id| id.parse::<u64>().ok())
            else {
                continue;
            };
            match PinnedLink::from_pin(entry.path()) {
                Ok(link) => self.inherited.entry(cgroup_id).or_default().push(link),
                Err(err) => warn!(path = %entry.path().display(), "ignoring a pinned link: {err}"),
            }
        }
        if !self.inherited.is_empty() {
            info!(
                cgroups = self.inherited.len(),
                "a previous agent's programs are still attached; they keep enforcing until the first snapshot"
            );
        }
    }

    fn drop_inherited(&mut self, cgroup_id: u64) {
        for link in self.inherited.remove(&cgroup_id).unwrap_or_default() {
            if let Err(err) = link.unpin() {
                warn!(cgroup_id, "unpinning an inherited link: {err}");
            }
        }
    }

    fn program<'a, P>(&'a mut self, name: &'static str) -> Result<&'a mut P, DatapathError>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program>,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(DatapathError::Missing(name))?;
        program.try_into().map_err(|_| DatapathError::Missing(name))
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, DatapathError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::Missing(name))?;
    M::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

/// Pins need a bpffs; mount one at /sys/fs/bpf when the host has none.
fn ensure_bpffs(pin_path: &Path) -> Result<(), DatapathError> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let base = Path::new("/sys/fs/bpf");
    if !pin_path.starts_with(base) {
        return Ok(());
    }
    if fs_magic(base) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    std::fs::create_dir_all(base).map_err(|source| DatapathError::MountBpffs {
        path: base.to_path_buf(),
        source,
    })?;
    let target = std::ffi::CString::new("/sys/fs/bpf").expect("no NUL");
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::MountBpffs {
            path: base.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

fn fs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid out-pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then_some(stat.f_type as i64)
}
