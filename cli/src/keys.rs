//! `stoa keys`: API keys are stored in policy only as `hmac-sha256:<hex>` under the
//! node's API key secret; these commands compute that hash.

use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use stoa_controller::policy::ApiKeyId;
use stoa_keys::{generate_key, secret_from_file_content, KeyDigest};

#[derive(Subcommand)]
pub enum Command {
    /// Print the hash of an API key, for a Consumer's spec.apiKeys.
    Hash {
        /// File holding the API key secret the agents use (surrounding whitespace is
        /// ignored).
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        /// The key. Read from one line of standard input when omitted, which keeps it
        /// out of shell history and process listings.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Generate a new API key; print it, its hash and a Consumer spec.apiKeys entry.
    Generate {
        /// File holding the API key secret the agents use.
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        /// Id of the key in the Consumer (default: `key-` and the start of its hash).
        #[arg(long, value_name = "ID")]
        id: Option<String>,
    },
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Hash { secret_file, key } => {
            let secret = read_secret(&secret_file)?;
            let key = match key {
                Some(key) => key,
                None => read_key_line()?,
            };
            println!("{}", KeyDigest::compute(&secret, check_key(&key)?));
        }
        Command::Generate { secret_file, id } => {
            let secret = read_secret(&secret_file)?;
            let key = generate_key();
            let hash = KeyDigest::compute(&secret, &key);
            let id = match id {
                Some(id) => ApiKeyId::new(id).map_err(anyhow::Error::msg)?,
                None => default_id(&hash),
            };
            println!("key:  {key}");
            println!("hash: {hash}");
            println!();
            println!("# Consumer spec.apiKeys entry (policy holds the hash, never the key):");
            println!("- {{id: {id}, hash: \"{hash}\"}}");
            eprintln!("Hand the key over now: it cannot be recovered from its hash.");
        }
    }
    Ok(())
}

fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let content = fs::read(path)
        .with_context(|| format!("cannot read the API key secret {}", path.display()))?;
    secret_from_file_content(&content).with_context(|| format!("{}", path.display()))
}

fn read_key_line() -> anyhow::Result<String> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        eprint!("API key: ");
        io::stderr().flush().ok();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the key from standard input")?;
    Ok(line)
}

/// The key as a client sends it: HTTP trims whitespace around header values, so it
/// is not part of the key; anything else unsendable is refused.
fn check_key(key: &str) -> anyhow::Result<&str> {
    let key = key.trim();
    if key.is_empty() {
        bail!("the API key is empty (pass --key KEY or one line on standard input)");
    }
    if key.chars().any(char::is_control) {
        bail!("the API key contains a control character");
    }
    Ok(key)
}

fn default_id(hash: &KeyDigest) -> ApiKeyId {
    // The start of the hash tells keys apart and reveals nothing about the key.
    let hex = hash.to_string();
    let start = &hex[stoa_keys::HASH_PREFIX.len()..][..8];
    ApiKeyId::new(format!("key-{start}")).expect("a valid id")
}
