//! HTTP exchanges from inside a pod, with curl as the unmodified client.
use std::process::Output;

use crate::{OutputExt, Pod};

/// One response as curl saw it.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// Parses `curl -i` output (the last response head, then the body).
    pub fn parse(output: &Output) -> Result<Self, String> {
        let text = output.stdout_str();
        let mut rest = text.as_str();
        loop {
            let (head, body) = rest
                .split_once("\r\n\r\n")
                .ok_or_else(|| format!("no response head in {text:?}: {}", output.stderr_str()))?;
            let mut lines = head.lines();
            let status_line = lines.next().unwrap_or("");
            let mut words = status_line.split_whitespace();
            let version = words.next().unwrap_or("").to_string();
            let status: u16 = words
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line {status_line:?}"))?;
            if status == 100 {
                rest = body;
                continue;
            }
            let headers = lines
                .filter_map(|line| line.split_once(':'))
                .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
                .collect();
            return Ok(Self {
                status,
                version,
                headers,
                body: body.to_string(),
            });
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

impl Pod {
    /// `curl -sS -i ARGS` in the pod; the reply parsed. Panics when curl gets none.
    pub fn http(&self, args: &[&str]) -> HttpReply {
        let mut all = vec!["-i", "-H", "Expect:"];
        all.extend_from_slice(args);
        let output = self.curl(&all);
        HttpReply::parse(&output).unwrap_or_else(|e| panic!("curl {args:?}: {e}"))
    }
}
