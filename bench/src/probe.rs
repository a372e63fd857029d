//! Helpers that the runner starts inside a pod (its cgroup and netns) as
//! `stoa-bench <subcommand>`: a connect() timer, a holder of many idle connections and
//! a poller that reports when a policy change becomes visible. Plain blocking sockets
//! and a minimal HTTP/1.1 client: nothing here should cost more than the thing measured.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::procfs;

/// A GET request line and headers, ready to send.
pub fn request_bytes(host: &str, path: &str, headers: &[String], close: bool) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if close {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Reads one HTTP/1.1 response; returns (status, body). Understands Content-Length,
/// chunked (read to the terminating chunk) and close-delimited bodies.
pub fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other("malformed status line"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut body = buf[header_end..].to_vec();
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while find(&body, b"0\r\n\r\n").is_none() {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if status != 204 && status != 304 {
        stream.read_to_end(&mut body)?;
    }
    Ok((status, body))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Closes with a reset: no TIME_WAIT left behind by thousands of probe connections.
fn close_with_reset(stream: TcpStream) {
    // SAFETY: setsockopt SO_LINGER {on, 0} on an open socket.
    unsafe {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

#[derive(Serialize)]
pub struct ConnectSamples {
    /// Duration of each successful connect(), in nanoseconds.
    pub connect_ns: Vec<u64>,
    /// With `--request`: connect + one GET + the whole response, in nanoseconds.
    pub request_ns: Vec<u64>,
    pub errors: u64,
}

/// `connect-probe`: times `count` fresh TCP connections to `addr` (and, with `request`,
/// a first request on each), printing [`ConnectSamples`] as JSON.
pub fn connect_probe(
    addr: SocketAddr,
    count: usize,
    request: Option<&str>,
    headers: &[String],
) -> anyhow::Result<()> {
    let req = request.map(|path| request_bytes(&addr.to_string(), path, headers, false));
    let mut out = ConnectSamples {
        connect_ns: Vec::with_capacity(count),
        request_ns: Vec::new(),
        errors: 0,
    };
    for _ in 0..count {
        let start = Instant::now();
        let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(_) => {
                out.errors += 1;
                continue;
            }
        };
        out.connect_ns.push(start.elapsed().as_nanos() as u64);
        if let Some(req) = &req {
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let ok =
                stream.write_all(req).is_ok() && matches!(read_response(&mut stream), Ok((200, _)));
            if ok {
                out.request_ns.push(start.elapsed().as_nanos() as u64);
            } else {
                out.errors += 1;
            }
        }
        close_with_reset(stream);
        // Let the other side's accept and teardown finish before the next sample.
        std::thread::sleep(Duration::from_micros(300));
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// `hold-conns`: opens `count` connections to `addr`, sends one GET on each (so the
/// proxy has seen a request on every one), keeps them all open, prints
/// `held <ok> errors <n>` and then holds them for `hold` (or until killed).
pub fn hold_conns(
    addr: SocketAddr,
    count: usize,
    path: &str,
    headers: &[String],
    hold: Duration,
) -> anyhow::Result<()> {
    procfs::raise_nofile(count as u64 + 1024).context("raising the open-file limit")?;
    let req = request_bytes(&addr.to_string(), path, headers, false);
    let mut held = Vec::with_capacity(count);
    let mut errors = 0u64;
    let deadline = Instant::now() + Duration::from_secs(240);
    for _ in 0..count {
        if Instant::now() > deadline || errors > 200 {
            break;
        }
        let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(s) => s,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if stream.write_all(&req).is_ok() && matches!(read_response(&mut stream), Ok((200, _))) {
            held.push(stream);
        } else {
            errors += 1;
        }
    }
    println!("held {} errors {errors}", held.len());
    std::io::stdout().flush()?;
    std::thread::sleep(hold);
    drop(held);
    Ok(())
}

/// What `policy-probe` waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Status(u16),
    StatusNot(u16),
    BodyContains(String),
}

impl Condition {
    pub fn parse(text: &str) -> anyhow::Result<Condition> {
        if let Some(v) = text.strip_prefix("status!=") {
            return Ok(Condition::StatusNot(v.trim().parse()?));
        }
        if let Some(v) = text.strip_prefix("status=") {
            return Ok(Condition::Status(v.trim().parse()?));
        }
        if let Some(v) = text.strip_prefix("body~") {
            return Ok(Condition::BodyContains(v.to_string()));
        }
        bail!("unknown condition {text:?} (status=N, status!=N, body~TEXT)")
    }

    fn holds(&self, status: u16, body: &[u8]) -> bool {
        match self {
            Condition::Status(want) => status == *want,
            Condition::StatusNot(not) => status != *not,
            Condition::BodyContains(text) => String::from_utf8_lossy(body).contains(text.as_str()),
        }
    }
}

/// One poll: a new connection, a GET with `Connection: close`; status 0 when the
/// connection or the request failed.
fn poll_once(addr: SocketAddr, req: &[u8]) -> (u16, Vec<u8>) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return (0, Vec::new());
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(req).is_err() {
        return (0, Vec::new());
    }
    let result = read_response(&mut stream).unwrap_or((0, Vec::new()));
    close_with_reset(stream);
    result
}

/// `policy-probe`: reads `until <condition>` lines on stdin. For each, polls once; if
/// the condition holds already it answers `already`, otherwise `polling` and then polls
/// every `interval` until it holds (`observed <CLOCK_MONOTONIC ns> <polls>`) or
/// `timeout` passes (`timeout`).
pub fn policy_probe(
    addr: SocketAddr,
    path: &str,
    headers: &[String],
    interval: Duration,
    timeout: Duration,
) -> anyhow::Result<()> {
    let req = request_bytes(&addr.to_string(), path, headers, true);
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line?;
        let Some(cond) = line.strip_prefix("until ") else {
            continue;
        };
        let cond = Condition::parse(cond)?;
        let (status, body) = poll_once(addr, &req);
        if cond.holds(status, &body) {
            writeln!(stdout, "already {status}")?;
            stdout.flush()?;
            continue;
        }
        writeln!(stdout, "polling {status}")?;
        stdout.flush()?;
        let deadline = Instant::now() + timeout;
        let mut polls = 1u64;
        let answer = loop {
            std::thread::sleep(interval);
            let (status, body) = poll_once(addr, &req);
            polls += 1;
            if cond.holds(status, &body) {
                break format!("observed {} {polls} {status}", procfs::monotonic_ns());
            }
            if Instant::now() > deadline {
                break format!("timeout {polls} {status}");
            }
        };
        writeln!(stdout, "{answer}")?;
        stdout.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn conditions_parse_and_match() {
        assert_eq!(
            Condition::parse("status=200").unwrap(),
            Condition::Status(200)
        );
        assert!(Condition::parse("status!=200").unwrap().holds(403, b""));
        assert!(Condition::parse("body~\"peer\":\"10.1.2.1:")
            .unwrap()
            .holds(200, b"{\"peer\":\"10.1.2.1:4242\"}"));
        assert!(Condition::parse("nonsense").is_err());
    }

    #[test]
    fn reads_content_length_and_chunked_responses() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nno!\r\n0\r\n\r\n")
                .unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&request_bytes("x", "/", &[], false)).unwrap();
        assert_eq!(read_response(&mut c).unwrap(), (200, b"hello".to_vec()));
        c.write_all(&request_bytes("x", "/", &[], false)).unwrap();
        let (status, body) = read_response(&mut c).unwrap();
        assert_eq!(status, 403);
        assert!(String::from_utf8_lossy(&body).contains("no!"));
        server.join().unwrap();
    }
}
