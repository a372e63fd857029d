//! A JWT issuer for the end-to-end tests: signs tokens with the test keys in
//! `tests/fixtures/jwt/` and serves their public halves as a JWKS over HTTP from
//! inside the node netns, where the agent fetches it. Keys can be added while it
//! runs (rotation) and fetches are counted.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::SimNode;

pub const ISSUER: &str = "https://issuer.stoa.test";

/// A signing key of the fixtures.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
}

impl TestKey {
    /// `file` in tests/fixtures/jwt/ (`rs256-a.pem`, `rs256-b.pem`, `es256.pem`).
    pub fn load(file: &str, kid: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/jwt")
            .join(file);
        let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (alg, encoding) = if file.starts_with("es") {
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&pem).expect("EC key"),
            )
        } else {
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&pem).expect("RSA key"),
            )
        };
        Self {
            kid: kid.to_string(),
            alg,
            encoding,
        }
    }

    fn public_jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).expect("public JWK");
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).expect("JWK serializes")
    }

    /// A token for `audience` with `extra` claims merged in; `expires_in` seconds
    /// from now (negative: already expired).
    pub fn token(&self, subject: &str, audience: &str, expires_in: i64, extra: Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + expires_in,
        });
        if let (Value::Object(claims), Value::Object(extra)) = (&mut claims, extra) {
            claims.extend(extra);
        }
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("token signs")
    }
}

/// An unsigned token with `alg: none`, as an attacker would send it.
pub fn alg_none_token(subject: &str, audience: &str) -> String {
    use base64_url as b64;
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": ISSUER, "sub": subject, "aud": audience, "exp": now + 300});
    format!("{header}.{}.", b64(claims.to_string().as_bytes()))
}

fn base64_url(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Serves `/jwks.json` on a loopback address inside the node netns.
pub struct JwksServer {
    addr: SocketAddr,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl JwksServer {
    pub fn start(node: &SimNode, addr: &str, keys: &[&TestKey]) -> Self {
        let addr: SocketAddr = addr.parse().expect("JWKS address");
        // A socket keeps the netns it was made in, so the test thread can serve it.
        let listener = node
            .in_netns(|| TcpListener::bind(addr))
            .expect("bind JWKS");
        listener.set_nonblocking(true).expect("nonblocking");
        let server = Self {
            addr,
            keys: Arc::new(Mutex::new(keys.iter().map(|k| k.public_jwk()).collect())),
            fetches: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (keys, fetches, stop) = (
            server.keys.clone(),
            server.fetches.clone(),
            server.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let body = json!({"keys": *keys.lock().unwrap()}).to_string();
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let _ = respond(stream, &body);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        server
    }

    pub fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn add_key(&self, key: &TestKey) {
        self.keys.lock().unwrap().push(key.public_jwk());
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn respond(stream: std::net::TcpStream, body: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    // Read the request head; the path does not matter.
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::base64_url;

    #[test]
    fn base64url_without_padding() {
        assert_eq!(base64_url(b"f"), "Zg");
        assert_eq!(base64_url(b"fo"), "Zm8");
        assert_eq!(base64_url(b"foo"), "Zm9v");
        assert_eq!(base64_url(b"\xfb\xff"), "-_8");
    }
}
