//! STOA node agent: loader, map writer and node-local proxy.
pub mod cgroup;
pub mod control;
pub mod datapath;
pub mod metrics;
pub mod preflight;
pub mod proxy;
pub mod snapshot;
pub mod tables;
