//! `stoa-bench-backend`: the upstream of the benchmark. Answers every request with 200
//! and a fixed 1 KiB body, over HTTP/1.1 (keep-alive) and h2c with prior knowledge on
//! the same port. One thread (tokio current-thread runtime), no per-request logging,
//! no allocation per response beyond hyper's own: it must cost the same, and little,
//! whichever proxy sits in front of it.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The response body: 1 KiB.
static BODY: [u8; 1024] = [b'x'; 1024];

#[derive(Parser, Debug)]
#[command(
    name = "stoa-bench-backend",
    about = "Fast benchmark upstream: 200 with a fixed 1 KiB body (HTTP/1.1 and h2c)"
)]
struct Args {
    /// Address to listen on; repeat for several.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args.listen))
}

async fn serve(addrs: Vec<SocketAddr>) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for addr in addrs {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(4096)?;
        println!("stoa-bench-backend listening on {addr} (HTTP/1.1 and h2c)");
        tasks.push(tokio::spawn(accept_loop(listener)));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener) -> anyhow::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    builder.http2().max_concurrent_streams(1024);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            // Errors are clients going away (resets from the connect probe): not news.
            let _ = builder.serve_connection(io, service_fn(respond)).await;
        });
    }
}

async fn respond(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(&BODY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}
