//! The agent refuses to start on a machine it cannot govern, with one clear line.
use std::process::Command;

fn agent() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stoa-agent"));
    cmd.args(["--controller", "http://127.0.0.1:9"]);
    cmd
}

fn one_line_stderr(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got: {stderr}"
    );
    stderr
}

#[test]
fn without_privileges_it_exits_with_one_line() {
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let output = if is_root {
        // Drop to nobody with no capabilities.
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(env!("CARGO_BIN_EXE_stoa-agent"))
            .args(["--controller", "http://127.0.0.1:9"])
            .output()
            .expect("setpriv (util-linux) runs")
    } else {
        agent().output().expect("agent runs")
    };
    assert_eq!(output.status.code(), Some(2));
    let line = one_line_stderr(&output);
    assert!(line.contains("needs root or CAP_BPF"), "{line}");
}

#[test]
fn a_cgroup_root_that_is_not_cgroup2_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Without root the privilege check answers first (covered above).
        assert!(
            std::env::var("CI").map_or(true, |ci| ci != "true"),
            "CI=true: this test must run as root"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = agent()
        .arg("--cgroup-root")
        .arg(dir.path())
        .output()
        .expect("agent runs");
    assert_eq!(output.status.code(), Some(2));
    let line = one_line_stderr(&output);
    assert!(line.contains("is not a cgroup v2 mount"), "{line}");
}
