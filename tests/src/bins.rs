//! Locating the workspace's binaries (agent, controller, test backend).

use std::path::{Path, PathBuf};

/// The directory holding the workspace's binaries: `$STOA_BIN_DIR` if set, otherwise
/// the cargo target directory of the running test (`target/debug/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STOA_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("cannot read the path of the running test");
    let mut dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    // Test executables live in target/<profile>/deps, binaries one level up.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// The path of workspace binary `name`; panics with the build command when it is missing.
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{name} not found at {}: build the binaries first: \
             cargo build --workspace --bins (make test does)",
            path.display()
        );
    }
    path
}
