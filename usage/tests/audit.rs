//! Audit records: argument redaction and the sinks they are written to.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};
use stoa_usage::{redact_arguments, AuditRecord, AuditSink, Outcome, REDACTED};

fn redact(arguments: Value) -> Value {
    redact_arguments(&arguments, &[])
}

#[test]
fn declared_secret_arguments_are_redacted_whatever_they_hold() {
    let arguments = json!({
        "pin": 1234,
        "color": "blue",
        "nested": {"color": "blue"},
        "city": "Berlin",
    });
    let declared = ["pin".to_owned(), "color".to_owned()];
    assert_eq!(
        redact_arguments(&arguments, &declared),
        json!({
            "pin": REDACTED,
            "color": REDACTED,
            // Declared names are top-level argument names only.
            "nested": {"color": "blue"},
            "city": "Berlin",
        })
    );
}

#[test]
fn credential_names_are_redacted_at_any_depth() {
    let arguments = json!({
        "query": "select 1",
        "connection": {
            "host": "db",
            "port": 5432,
            "Password": "hunter2",
            "options": [{"apiKey": "abc"}, {"X-Auth-Token": ["a", "b"]}],
        },
        "credentials": {"user": "bob", "pass": "x"},
        "session_cookie": null,
        "use_session": true,
    });
    assert_eq!(
        redact(arguments),
        json!({
            "query": "select 1",
            "connection": {
                "host": "db",
                "port": 5432,
                "Password": REDACTED,
                "options": [{"apiKey": REDACTED}, {"X-Auth-Token": REDACTED}],
            },
            "credentials": REDACTED,
            // Nothing secret in an absent value or a flag.
            "session_cookie": null,
            "use_session": true,
        })
    );
}

#[test]
fn credential_shaped_values_are_redacted_anywhere() {
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0In0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let arguments = json!({
        "header": "Bearer abc.def-123",
        "basic": "Basic dXNlcjpwYXNzd29yZA==",
        "jwt": jwt,
        "aws": "AKIAIOSFODNN7EXAMPLE",
        "list": ["fine", "sk-proj-Abcdefghij0123456789", "ghp_0123456789abcdefghijABCDEFGHIJ012345"],
        "random": "q8Zr2Lx7Vt0Pk4Nw9Jh3Ys6Fd1Mb5Gc8",
        "stoa": "stoa_4f9a0c3e2b1d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f",
        "pem": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----\n",
        "dsn": "postgres://app:s3cret@db.internal:5432/orders",
        "curl": "curl -H 'Authorization: Bearer 0a1b2c3d' https://api.example.com",
    });
    let redacted = redact(arguments);
    for (name, value) in redacted.as_object().unwrap() {
        if name == "list" {
            assert_eq!(value, &json!(["fine", REDACTED, REDACTED]));
        } else {
            assert_eq!(value, REDACTED, "{name}");
        }
    }
}

#[test]
fn harmless_values_are_untouched() {
    let arguments = json!({
        "greeting": "hello world",
        "count": 42,
        "ratio": 0.5,
        "big": 12345678901234567890u64,
        "enabled": false,
        "missing": null,
        "id": "550e8400-e29b-41d4-a716-446655440000",
        "report": "customer_account_2024_quarterly_report",
        "url": "https://example.com/search?q=rust&page=2",
        "email": "ops@example.com",
        "prose": "Bearer tokens expire; Basic usage is documented.",
        "path": "/var/lib/stoa/usage",
        "unicode": "Grüße, 世界",
        "empty": "",
        "list": [1, "two", {"three": 3}],
    });
    assert_eq!(redact(arguments.clone()), arguments);
}

#[test]
fn arguments_that_are_not_an_object() {
    assert_eq!(redact(json!("Bearer abc123")), json!(REDACTED));
    assert_eq!(
        redact(json!(["hello", "AKIAIOSFODNN7EXAMPLE"])),
        json!(["hello", REDACTED])
    );
    assert_eq!(redact(json!(null)), json!(null));
    assert_eq!(redact(json!(7)), json!(7));
    // Declared names apply to object keys only.
    assert_eq!(
        redact_arguments(&json!("pin"), &["pin".to_owned()]),
        json!("pin")
    );
}

#[test]
fn very_deep_arguments_are_hidden_not_a_crash() {
    // Deeper than serde_json parses (128), not so deep that building or dropping
    // the value itself runs out of stack.
    let mut deep = json!("leaf");
    for _ in 0..150 {
        deep = json!({ "a": [deep] });
    }
    let redacted = redact(deep);
    let text = serde_json::to_string(&redacted).unwrap();
    assert!(text.contains(REDACTED));
    assert!(!text.contains("leaf"));
}

fn audit_record(tool: &str) -> AuditRecord {
    AuditRecord {
        ts_ms: 1_700_000_000_000,
        node: "node-1".to_owned(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
        caller: "acme".to_owned(),
        consumer: Some("acme".to_owned()),
        workload: None,
        key_id: Some("key-1a2b3c4d".to_owned()),
        contract: "tools/weather".to_owned(),
        tool: tool.to_owned(),
        arguments: redact_arguments(&json!({"city": "Berlin", "token": "t0k3n"}), &[]),
        decision: AuditRecord::ALLOW,
        reason: None,
        outcome: Some(Outcome::Ok),
        latency_us: 1234,
        jsonrpc_id: json!(7),
    }
}

#[test]
fn file_sink_appends_one_line_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // A torn line from an earlier crash is closed off, not continued.
    fs::write(&path, "{\"torn").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let sink = AuditSink::open(path.to_str().unwrap()).unwrap();
    sink.write(&audit_record("forecast")).unwrap();
    let mut denied = audit_record("alerts");
    denied.decision = AuditRecord::DENY;
    denied.reason = Some("no access policy allows tools/weather alerts".to_owned());
    denied.outcome = None;
    sink.write(&denied).unwrap();

    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "{\"torn");
    let first: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(
        first,
        json!({
            "ts_ms": 1_700_000_000_000u64,
            "node": "node-1",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "caller": "acme",
            "consumer": "acme",
            "workload": null,
            "key_id": "key-1a2b3c4d",
            "contract": "tools/weather",
            "tool": "forecast",
            "arguments": {"city": "Berlin", "token": REDACTED},
            "decision": "allow",
            "reason": null,
            "outcome": "ok",
            "latency_us": 1234,
            "jsonrpc_id": 7,
        })
    );
    let second: Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(second["decision"], "deny");
    assert_eq!(second["outcome"], Value::Null);
}

#[test]
fn file_sink_is_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = AuditSink::open(path.to_str().unwrap()).unwrap();
    sink.write(&audit_record("forecast")).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn stdout_sink_spec() {
    assert!(matches!(AuditSink::open("-").unwrap(), AuditSink::Stdout));
    assert!(matches!(
        AuditSink::open("stdout").unwrap(),
        AuditSink::Stdout
    ));
    let err = AuditSink::open("/nonexistent/dir/audit.jsonl").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/dir/audit.jsonl: "),
        "{err}"
    );
}
