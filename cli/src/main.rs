//! `stoa`: the operator's command line.
use clap::Parser;

#[derive(Parser)]
#[command(name = "stoa", version, about = "Inspect and operate STOA")]
enum Command {
    /// Print the version of this CLI.
    Version,
}

fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Version => println!("stoa {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
