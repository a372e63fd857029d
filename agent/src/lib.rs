//! STOA node agent: loader, map writer and node-local proxy.
pub mod cgroup;
pub mod control;
pub mod datapath;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod preflight;
pub mod proxy;
pub mod quota;
pub mod snapshot;
pub mod tables;
