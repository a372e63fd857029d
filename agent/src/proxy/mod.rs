//! The node proxy. Every connection it accepts must carry a redirect record written by
//! the kernel programs; anything else is refused, so the proxy is never an open relay.
mod answer;
mod framing;
pub mod http;
mod mcp;
mod sse;
mod tcp;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::{datapath::PeerLookup, snapshot::ServiceProtocol, tables::ProxyTables};

pub use http::HttpContext;
pub use mcp::McpRuntime;

/// What the proxy knows about one redirected connection.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddrV4,
    /// Where the client meant to connect.
    pub original_dst: SocketAddrV4,
    pub identity: u32,
    pub service_id: u32,
}

pub async fn bind(addr: SocketAddrV4) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr.into())?;
    socket.listen(4096)
}

pub async fn serve(
    listener: TcpListener,
    peers: Arc<PeerLookup>,
    tables: Arc<ProxyTables>,
    http: HttpContext,
) -> std::io::Result<()> {
    let own_addr = listener.local_addr()?;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of fds or similar: back off briefly instead of spinning.
                warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let record = match peer {
            SocketAddr::V4(peer) => peers.take(peer).map(|record| Connection {
                peer,
                original_dst: SocketAddrV4::new(
                    Ipv4Addr::from(record.ip.to_ne_bytes()),
                    record.port,
                ),
                identity: record.identity,
                service_id: record.service_id,
            }),
            SocketAddr::V6(_) => None,
        };
        let Some(conn) = record.filter(|conn| SocketAddr::V4(conn.original_dst) != own_addr) else {
            metrics::counter!("stoa_proxy_connections_total", "verdict" => "refused").increment(1);
            warn!(%peer, "refusing a connection without a redirect record");
            refuse(stream);
            continue;
        };
        let current = tables.load();
        if current.version == 0 {
            // Programs inherited from a previous agent redirect before this one has a
            // policy: fail closed rather than forward ungoverned.
            metrics::counter!("stoa_proxy_connections_total", "verdict" => "refused").increment(1);
            warn!(peer = %conn.peer, "refusing a redirected connection: no policy applied yet");
            refuse(stream);
            continue;
        }
        metrics::counter!("stoa_proxy_connections_total", "verdict" => "accepted").increment(1);
        let protocol = current
            .services
            .get(&conn.service_id)
            .map(|service| service.protocol);
        debug!(peer = %conn.peer, dst = %conn.original_dst, identity = conn.identity, ?protocol, "accepted");
        let http = http.clone();
        tokio::spawn(async move {
            match protocol {
                Some(ServiceProtocol::Http | ServiceProtocol::Mcp) => {
                    http::serve_connection(stream, conn, http).await
                }
                // A service removed between connect() and accept() was governed when the
                // client connected: carry its bytes rather than break the connection.
                Some(ServiceProtocol::Tcp) | None => tcp::splice(stream, conn).await,
            }
        });
    }
}

/// Closes with a reset so the client sees "connection refused/reset" at once.
fn refuse(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
