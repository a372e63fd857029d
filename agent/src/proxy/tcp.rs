//! `protocol: tcp` services: the proxy carries bytes both ways unchanged.
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::Connection;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn splice(mut client: TcpStream, conn: Connection) {
    let upstream =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(conn.original_dst)).await;
    let mut upstream = match upstream {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            warn!(dst = %conn.original_dst, "upstream connect failed: {err}");
            return;
        }
        Err(_) => {
            warn!(dst = %conn.original_dst, "upstream connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => {
            debug!(peer = %conn.peer, dst = %conn.original_dst, sent, received, "tcp connection closed")
        }
        Err(err) => {
            debug!(peer = %conn.peer, dst = %conn.original_dst, "tcp connection ended: {err}")
        }
    }
}
