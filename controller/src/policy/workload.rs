//! `Workload`: a standalone workload, i.e. a cgroup v2 directory with an identity.

use serde::Deserialize;

use super::fields::{CgroupPath, Labels, ServiceAccountName};
use super::{Kind, Object, Spec};

/// `kind: Workload`.
pub type Workload = Object<WorkloadSpec>;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Relative to the cgroup v2 root, e.g. `stoa.slice/billing-agent`.
    pub cgroup: CgroupPath,
    #[serde(default)]
    pub service_account: ServiceAccountName,
    /// Identity labels: with the namespace and service account they select the identity.
    #[serde(default)]
    pub labels: Labels,
}

impl Spec for WorkloadSpec {
    const KIND: Kind = Kind::Workload;
}
