//! The `stoa` binary: `version`, `keys hash`, `keys generate` and `policy check`
//! (`stoa usage` has its own file).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use stoa_controller::load::load_sources;
use stoa_controller::policy::Document;
use stoa_keys::KeyDigest;

const BIN: &str = env!("CARGO_BIN_EXE_stoa");
const SECRET: &[u8] = b"cli-test-secret";

fn stoa(args: &[&str]) -> Output {
    stoa_with_stdin(args, None)
}

fn stoa_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Dropping the handle closes stdin, so a read sees end of input.
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// A secret file as an operator would write it (with a trailing newline).
fn secret_file(dir: &Path) -> String {
    let path = dir.join("secret");
    std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
    path.to_str().unwrap().to_owned()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn version() {
    let out = stoa(&["version"]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out),
        format!("stoa {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn keys_hash_from_flag_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let expected = format!("{}\n", KeyDigest::compute(SECRET, "stoa_k1"));

    let out = stoa(&["keys", "hash", "--secret-file", &secret, "--key", "stoa_k1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), expected);

    // One line of standard input; its line ending is not part of the key.
    for input in ["stoa_k1\n", "stoa_k1\r\n", "stoa_k1"] {
        let out = stoa_with_stdin(&["keys", "hash", "--secret-file", &secret], Some(input));
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), expected, "{input:?}");
    }
}

#[test]
fn keys_hash_matches_the_demo_policy() {
    let secrets = examples().join("secrets");
    let key = std::fs::read_to_string(secrets.join("partner-portal.key")).unwrap();
    let out = stoa_with_stdin(
        &[
            "keys",
            "hash",
            "--secret-file",
            secrets.join("api-key-secret").to_str().unwrap(),
        ],
        Some(&key),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let policy = std::fs::read_to_string(examples().join("policy/partner-portal.yaml")).unwrap();
    assert!(policy.contains(stdout(&out).trim()), "{}", stdout(&out));
}

#[test]
fn keys_hash_errors() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());

    let out = stoa_with_stdin(&["keys", "hash", "--secret-file", &secret], Some(""));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the API key is empty"),
        "{}",
        stderr(&out)
    );

    let missing = dir.path().join("missing");
    let out = stoa(&[
        "keys",
        "hash",
        "--secret-file",
        missing.to_str().unwrap(),
        "--key",
        "k",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "cannot read the API key secret {}",
            missing.display()
        )),
        "{}",
        stderr(&out)
    );

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = stoa(&[
        "keys",
        "hash",
        "--secret-file",
        empty.to_str().unwrap(),
        "--key",
        "k",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the API key secret is empty"),
        "{}",
        stderr(&out)
    );

    let out = stoa(&["keys", "hash", "--key", "k"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
}

#[test]
fn keys_generate_prints_key_hash_and_snippet() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let out = stoa(&[
        "keys",
        "generate",
        "--secret-file",
        &secret,
        "--id",
        "pp-2026-12",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
            .trim()
            .to_owned()
    };
    let key = value("key:");
    let hash = value("hash:");
    assert!(key.starts_with("stoa_"), "{text}");
    assert_eq!(hash, KeyDigest::compute(SECRET, &key).to_string());

    // The snippet pastes into a Consumer as is.
    let snippet = text
        .lines()
        .find(|l| l.starts_with("- {"))
        .expect("snippet");
    let consumer = format!(
        "apiVersion: gostoa.dev/v1alpha1\nkind: Consumer\nmetadata: {{name: pp}}\n\
         spec:\n  apiKeys:\n    {snippet}\n"
    );
    let set = load_sources([(PathBuf::from("c.yaml"), consumer)]).unwrap_or_else(|e| panic!("{e}"));
    let Document::Consumer(c) = &set.documents[0] else {
        panic!("not a consumer")
    };
    assert_eq!(c.spec.api_keys[0].id.as_str(), "pp-2026-12");
    assert_eq!(c.spec.api_keys[0].hash.to_string(), hash);

    // Another run, another key; without --id, an id derived from the hash.
    let again = stoa(&["keys", "generate", "--secret-file", &secret]);
    assert!(again.status.success());
    let again = stdout(&again);
    assert!(!again.contains(&key));
    let hash2 = again
        .lines()
        .find_map(|l| l.strip_prefix("hash: "))
        .unwrap();
    let id = format!("key-{}", &hash2["hmac-sha256:".len()..][..8]);
    assert!(
        again.contains(&format!("- {{id: {id}, hash: \"{hash2}\"}}")),
        "{again}"
    );
}

#[test]
fn keys_generate_rejects_a_bad_id() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let out = stoa(&[
        "keys",
        "generate",
        "--secret-file",
        &secret,
        "--id",
        "bad id",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a valid identifier"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "no key printed for nothing");
}

#[test]
fn policy_check_accepts_the_examples() {
    let dir = examples().join("policy");
    let out = stoa(&["policy", "check", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "{}: ok: 1 workload, 2 contracts (1 http, 1 mcp), 4 operations, 4 tools, \
             1 consumer (1 API key), 3 access policies, 2 quotas\n",
            dir.display()
        )
    );
}

#[test]
fn policy_check_prints_every_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\nmetadata: {name: orders-api}\n\
         spec:\n  protocol: http\n  address: 10.96.0.10\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "apiVersion: gostoa.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p}\n\
         spec:\n  subjects: [{consumer: ghost}]\n  allow: [{contract: missing}]\n",
    )
    .unwrap();
    let out = stoa(&["policy", "check", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    assert_eq!(
        stderr(&out),
        format!(
            "{a}:6:12: document 1 (ApiContract orders-api): spec.address: invalid IPv4 socket \
             address \"10.96.0.10\" (expected IP:port, e.g. 10.96.0.10:80)\n\
             {b}:5:25: document 1 (AccessPolicy p): spec.subjects[0].consumer: unknown \
             Consumer default/ghost\n\
             {b}:6:22: document 1 (AccessPolicy p): spec.allow[0].contract: unknown \
             ApiContract default/missing\n\
             {dir}: 3 errors\n",
            a = a.display(),
            b = b.display(),
            dir = dir.path().display()
        )
    );
}

#[test]
fn policy_check_missing_folder() {
    let out = stoa(&["policy", "check", "/nonexistent/stoa-policy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/stoa-policy: cannot read policy directory"),
        "{}",
        stderr(&out)
    );
}
