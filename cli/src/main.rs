//! `stoa`: the operator's command line.

mod keys;
mod policy;
mod usage;

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "stoa", version, about = "Inspect and operate STOA")]
enum Command {
    /// Print the version of this CLI.
    Version,
    /// API keys: hash a key for a Consumer, or generate a new one.
    #[command(subcommand)]
    Keys(keys::Command),
    /// Policy folders: check one before the controller serves it.
    #[command(subcommand)]
    Policy(policy::Command),
    /// MCP tool calls on this node, per caller, contract, tool and outcome, from the
    /// agent's usage ledger.
    Usage(usage::Args),
}

fn main() -> anyhow::Result<ExitCode> {
    match Command::parse() {
        Command::Version => println!("stoa {}", env!("CARGO_PKG_VERSION")),
        Command::Keys(command) => keys::run(command)?,
        Command::Policy(command) => return policy::run(command),
        Command::Usage(args) => usage::run(args)?,
    }
    Ok(ExitCode::SUCCESS)
}
