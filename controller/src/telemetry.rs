//! Metric names and descriptions (Prometheus exposition via `metrics`).

use metrics::{counter, describe_counter, describe_gauge, gauge};

pub const SNAPSHOT_VERSION: &str = "stoa_controller_snapshot_version";
pub const POLICY_RELOAD_ERRORS_TOTAL: &str = "stoa_controller_policy_reload_errors_total";
pub const AGENTS_CONNECTED: &str = "stoa_controller_agents_connected";
pub const NACKS_TOTAL: &str = "stoa_controller_nacks_total";

/// Registers help texts and exports every series from the start (an absent series
/// reads as "no data" rather than 0 in alerts); call once after installing a recorder.
pub fn describe() {
    describe_gauge!(SNAPSHOT_VERSION, "Version of the snapshot being served");
    describe_counter!(
        POLICY_RELOAD_ERRORS_TOTAL,
        "Policy reloads rejected because the policy was invalid"
    );
    describe_gauge!(AGENTS_CONNECTED, "Agent streams open (after Hello)");
    describe_counter!(NACKS_TOTAL, "Snapshots rejected by agents");
    counter!(POLICY_RELOAD_ERRORS_TOTAL).increment(0);
    gauge!(AGENTS_CONNECTED).increment(0.0);
    counter!(NACKS_TOTAL).increment(0);
}
