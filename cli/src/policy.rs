//! `stoa policy`: the controller's own loader and compiler, run ahead of time.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use stoa_controller::compile::Compiler;
use stoa_controller::load::{load_dir, PolicySet};
use stoa_controller::policy::Protocol;

#[derive(Subcommand)]
pub enum Command {
    /// Load and compile a policy folder; print every error (exit 1) or a summary.
    Check {
        /// Folder of policy YAML files (*.yaml, *.yml).
        dir: PathBuf,
    },
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { dir } => {
            let set = match load_dir(&dir) {
                Ok(set) => set,
                Err(errors) => {
                    // One per line, file:line:column first, as the controller logs them.
                    for error in errors.errors() {
                        eprintln!("{error}");
                    }
                    eprintln!("{}: {}", dir.display(), count(errors.len(), "error"));
                    return Ok(ExitCode::FAILURE);
                }
            };
            if let Err(err) = Compiler::new().compile(&set) {
                eprintln!("{}: {err}", dir.display());
                return Ok(ExitCode::FAILURE);
            }
            println!("{}: ok: {}", dir.display(), summary(&set));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `1 workload, 2 contracts (1 http, 1 mcp), 4 operations, 4 tools, ...`.
fn summary(set: &PolicySet) -> String {
    let of_protocol = |protocol| {
        set.contracts()
            .filter(|c| c.spec.protocol == protocol)
            .count()
    };
    let (http, mcp) = (of_protocol(Protocol::Http), of_protocol(Protocol::Mcp));
    let operations: usize = set.contracts().map(|c| c.spec.operations().len()).sum();
    let tools: usize = set.contracts().map(|c| c.spec.tools().len()).sum();
    let keys: usize = set.consumers().map(|c| c.spec.api_keys.len()).sum();
    [
        count(set.workloads().count(), "workload"),
        format!(
            "{} ({http} http, {mcp} mcp)",
            count(set.contracts().count(), "contract")
        ),
        count(operations, "operation"),
        count(tools, "tool"),
        format!(
            "{} ({})",
            count(set.consumers().count(), "consumer"),
            count(keys, "API key")
        ),
        count(set.access_policies().count(), "access policy"),
        count(set.quotas().count(), "quota"),
    ]
    .join(", ")
}

fn count(n: usize, what: &str) -> String {
    match (n, what) {
        (1, _) => format!("1 {what}"),
        (_, "access policy") => format!("{n} access policies"),
        _ => format!("{n} {what}s"),
    }
}
