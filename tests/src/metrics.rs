//! Reading the agent's Prometheus endpoint from inside the node netns.
use std::time::{Duration, Instant};

use crate::{OutputExt, SimNode, AGENT_METRICS_ADDR};

impl SimNode {
    /// The sum of the agent's samples whose name (and labels) start with `prefix`,
    /// e.g. `stoa_proxy_connections_total{verdict="accepted"}`.
    pub fn agent_metric(&self, prefix: &str) -> f64 {
        sum_samples(&self.agent_metrics_text(), prefix)
    }

    /// The agent's whole Prometheus exposition.
    pub fn agent_metrics_text(&self) -> String {
        let out = self.curl(&[&format!("http://{AGENT_METRICS_ADDR}/metrics")]);
        assert!(
            out.status.success(),
            "scraping the agent's metrics failed: {}",
            out.stderr_str()
        );
        out.stdout_str()
    }

    /// The snapshot version the agent has applied (0 before the first).
    pub fn agent_snapshot_version(&self) -> u64 {
        self.agent_metric("stoa_agent_snapshot_version") as u64
    }

    /// Waits until the agent applied a snapshot newer than `version`; returns it.
    pub fn wait_for_snapshot_above(&self, version: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let applied = self.agent_snapshot_version();
            if applied > version {
                return applied;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self.processes().iter().map(|p| p.describe(30)).collect();
                panic!(
                    "the agent never applied a snapshot above {version}\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Kernel counters are exported periodically: waits until `prefix` reaches `at_least`.
    pub fn wait_for_agent_metric(&self, prefix: &str, at_least: f64, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.agent_metric(prefix);
            if value >= at_least {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{prefix} stayed at {value}, below {at_least}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Sums the Prometheus text-format samples whose line starts with `prefix`.
pub fn sum_samples(exposition: &str, prefix: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::sum_samples;

    #[test]
    fn sums_matching_samples_only() {
        let text = "# HELP x\nstoa_a_total{v=\"1\"} 2\nstoa_a_total{v=\"2\"} 3\nstoa_ab 7\n";
        assert_eq!(sum_samples(text, "stoa_a_total"), 5.0);
        assert_eq!(sum_samples(text, "stoa_a_total{v=\"2\"}"), 3.0);
        assert_eq!(sum_samples(text, "stoa_missing"), 0.0);
    }
}
