//! Builds STOA's kernel programs from `ebpf/` with the nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! Nothing prebuilt is committed: the object always comes from source.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let agent_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let repo = agent_dir
        .parent()
        .context("agent/ has a parent")?
        .to_path_buf();
    let ebpf_dir = repo.join("ebpf");
    for watched in [
        "ebpf/src",
        "ebpf/Cargo.toml",
        "ebpf/Cargo.lock",
        "common/src",
    ] {
        println!("cargo:rerun-if-changed={}", repo.join(watched).display());
    }

    let tools_bin = repo.join(".tools/bin");
    if !tools_bin.join("bpf-linker").exists() && which("bpf-linker").is_none() {
        bail!("bpf-linker not found: run `make setup` (it builds one into .tools/)");
    }
    let path = env::join_paths(
        std::iter::once(tools_bin)
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;

    let target_dir = ebpf_dir.join("target");
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("PATH", path);
    // The outer build's settings (stable rustc, clippy wrapper, host flags) must not
    // leak into the nested nightly build for another target.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo
        .status()
        .context("running `rustup run nightly cargo build` for ebpf/")?;
    if !status.success() {
        bail!("building the eBPF programs in ebpf/ failed ({status})");
    }

    let object = target_dir.join("bpfel-unknown-none/release/stoa");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("stoa.bpf.o");
    std::fs::copy(&object, &out)
        .with_context(|| format!("copying {} to {}", object.display(), out.display()))?;
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| Path::new(candidate).is_file())
}
