//! `protocol: http` services: HTTP/1.1 with keep-alive on both sides through hyper,
//! upstream connections pooled per destination.
use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderName},
    service::service_fn,
    Request, Response, StatusCode, Uri,
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::Connection;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

#[derive(Clone)]
pub struct HttpForwarder {
    client: Client<HttpConnector, Incoming>,
}

impl HttpForwarder {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .build(connector);
        Self { client }
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        conn: Connection,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let path_and_query = request
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let uri = match Uri::try_from(format!("http://{}{}", conn.original_dst, path_and_query)) {
            Ok(uri) => uri,
            Err(_) => {
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid request target",
                ))
            }
        };
        *request.uri_mut() = uri;
        strip_hop_by_hop(request.headers_mut());
        let method = request.method().clone();
        match self.client.request(request).await {
            Ok(mut response) => {
                strip_hop_by_hop(response.headers_mut());
                debug!(peer = %conn.peer, dst = %conn.original_dst, %method, status = response.status().as_u16(), "forwarded");
                metrics::counter!("stoa_proxy_http_requests_total", "outcome" => "forwarded")
                    .increment(1);
                Ok(response.map(|body| body.boxed()))
            }
            Err(err) => {
                warn!(dst = %conn.original_dst, "upstream request failed: {err}");
                metrics::counter!("stoa_proxy_http_requests_total", "outcome" => "upstream_error")
                    .increment(1);
                Ok(error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream unavailable",
                ))
            }
        }
    }
}

pub async fn serve_connection(stream: TcpStream, conn: Connection, forwarder: HttpForwarder) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let forwarder = forwarder.clone();
        async move { forwarder.forward(request, conn).await }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = result {
        debug!(peer = %conn.peer, "http connection ended: {err}");
    }
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1),
/// including any the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn error_response(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from_static(message.as_bytes()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        headers.insert("x-secret-hop", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::HOST, "orders".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::HOST));
    }
}
