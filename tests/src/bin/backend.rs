//! `stoa-test-backend`: the upstream server of STOA's end-to-end tests.
//!
//! `--mode http` (default) answers every request with 200 and a JSON description of
//! what arrived, so a test can see what the proxy forwarded:
//! `{"backend", "method", "path" (with query), "version", "authority", "peer": "ip:port",
//!   "headers": {name: value}, "body"}`, and logs one line per request to stdout.
//! Two paths change the answer: `/status/<code>` answers with that status and
//! `/delay/<ms>` answers after that many milliseconds. HTTP/1.1 keep-alive is on;
//! `--http2` also accepts h2c with prior knowledge on the same port.
//!
//! `--mode tcp-echo` echoes bytes back on every connection.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Http,
    TcpEcho,
}

#[derive(Parser, Debug)]
#[command(
    name = "stoa-test-backend",
    about = "Upstream server for STOA's end-to-end tests"
)]
struct Args {
    /// Address to listen on, e.g. 0.0.0.0:80.
    #[arg(long)]
    listen: SocketAddr,
    /// Name reported in every answer (tells backends apart).
    #[arg(long, default_value = "backend")]
    name: String,
    /// What to serve.
    #[arg(long, value_enum, default_value_t = Mode::Http)]
    mode: Mode,
    /// In http mode, also accept HTTP/2 cleartext with prior knowledge.
    #[arg(long)]
    http2: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    println!(
        "{} listening on {} ({:?}{})",
        args.name,
        listener.local_addr()?,
        args.mode,
        if args.http2 { ", h2c" } else { "" }
    );
    let (mode, http2) = (args.mode, args.http2);
    let name: Arc<str> = args.name.into();
    loop {
        let (stream, peer) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            match mode {
                Mode::TcpEcho => echo(stream, peer, &name).await,
                Mode::Http => serve_http(stream, peer, name, http2).await,
            }
        });
    }
}

async fn echo(mut stream: TcpStream, peer: SocketAddr, name: &str) {
    println!("{name} tcp connection from {peer}");
    let (mut reader, mut writer) = stream.split();
    match tokio::io::copy(&mut reader, &mut writer).await {
        Ok(n) => println!("{name} tcp connection from {peer} closed after {n} bytes"),
        Err(e) => println!("{name} tcp connection from {peer} failed: {e}"),
    }
}

async fn serve_http(stream: TcpStream, peer: SocketAddr, name: Arc<str>, http2: bool) {
    let io = TokioIo::new(stream);
    let service = service_fn(move |req| handle(req, peer, name.clone()));
    let result = if http2 {
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service)
            .await
            .map_err(Into::into)
    };
    if let Err(e) = result {
        eprintln!("connection from {peer}: {e}");
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    name: Arc<str>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let version = format!("{:?}", req.version());
    let authority = req.uri().authority().map(|a| a.to_string());
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(key.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let body = match req.into_body().collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(e) => format!("<body error: {e}>"),
    };

    let uri_path = path.split('?').next().unwrap_or("");
    let status = uri_path
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    if let Some(ms) = uri_path
        .strip_prefix("/delay/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    println!(
        "{name} {method} {path} {version} from {peer} -> {}",
        status.as_u16()
    );
    let answer = serde_json::json!({
        "backend": &*name,
        "method": method,
        "path": path,
        "version": version,
        "authority": authority,
        "peer": peer.to_string(),
        "headers": headers,
        "body": body,
    });
    let mut text = answer.to_string();
    text.push('\n');
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-backend", &*name)
        .body(Full::new(Bytes::from(text)))
        .expect("valid response");
    Ok(response)
}
