//! A guard in front of hyper's HTTP/1 parser that watches the raw request stream for
//! message framing a proxy must not guess at. hyper follows RFC 9112 §6.3 for a
//! request with both Content-Length and Transfer-Encoding (chunked wins, the
//! connection closes) and drops the Content-Length before the service sees it, so the
//! conflict can only be seen on the wire. STOA refuses such requests outright, as
//! the request-smuggling guidance of RFC 9112 §11.2 recommends for intermediaries.
//!
//! The scanner follows request boundaries (heads, Content-Length bodies, chunked
//! bodies) so that every head on a keep-alive connection is checked.
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Request heads larger than this are left to hyper (which answers 431).
const MAX_HEAD: usize = 64 * 1024 + 1024;

#[derive(Debug, Default)]
pub struct FramingVerdict {
    ambiguous: AtomicBool,
}

impl FramingVerdict {
    /// A request on this connection carried Content-Length and Transfer-Encoding.
    pub fn is_ambiguous(&self) -> bool {
        self.ambiguous.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Fixed(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailer(Vec<u8>),
    /// Not HTTP/1 framing we follow (h2 prior knowledge, upgrade, oversized head, or a
    /// verdict already reached): stop looking.
    Done,
}

#[derive(Debug)]
struct Scanner {
    state: State,
}

impl Scanner {
    fn new() -> Self {
        Self {
            state: State::Head(Vec::new()),
        }
    }

    /// Feeds bytes read from the client; returns true on ambiguous framing.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return false,
                State::Head(head) => {
                    let take = bytes.len();
                    let before = head.len();
                    head.extend_from_slice(bytes);
                    if before == 0 && head.starts_with(b"PRI * HTTP/2.0") {
                        self.state = State::Done;
                        return false;
                    }
                    let Some(end) = find(head, b"\r\n\r\n") else {
                        if head.len() > MAX_HEAD {
                            self.state = State::Done;
                        }
                        bytes = &bytes[take..];
                        continue;
                    };
                    let consumed = end + 4 - before;
                    let head = std::mem::take(head);
                    bytes = &bytes[consumed..];
                    match classify_head(&head[..end + 4]) {
                        Head::Ambiguous => {
                            self.state = State::Done;
                            return true;
                        }
                        Head::Opaque => self.state = State::Done,
                        Head::Body(0) | Head::NoBody => self.state = State::Head(Vec::new()),
                        Head::Body(length) => self.state = State::Fixed(length),
                        Head::Chunked => self.state = State::ChunkSize(Vec::new()),
                    }
                }
                State::Fixed(remaining) => {
                    let skip = (*remaining).min(bytes.len() as u64);
                    *remaining -= skip;
                    bytes = &bytes[skip as usize..];
                    if *remaining == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => {
                    let Some(pos) = bytes.iter().position(|b| *b == b'\n') else {
                        line.extend_from_slice(bytes);
                        if line.len() > 1024 {
                            self.state = State::Done;
                        }
                        return false;
                    };
                    line.extend_from_slice(&bytes[..pos]);
                    bytes = &bytes[pos + 1..];
                    let text = String::from_utf8_lossy(line);
                    let size = text
                        .trim_end_matches('\r')
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim();
                    self.state = match u64::from_str_radix(size, 16) {
                        Ok(0) => State::Trailer(Vec::new()),
                        Ok(size) => State::ChunkData(size),
                        // Invalid chunked framing: hyper refuses it and closes.
                        Err(_) => State::Done,
                    };
                }
                State::ChunkData(remaining) => {
                    let skip = (*remaining).min(bytes.len() as u64);
                    *remaining -= skip;
                    bytes = &bytes[skip as usize..];
                    if *remaining == 0 {
                        self.state = State::ChunkDataEnd(2);
                    }
                }
                State::ChunkDataEnd(left) => {
                    let skip = usize::from(*left).min(bytes.len());
                    *left -= skip as u8;
                    bytes = &bytes[skip..];
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailer(line) => {
                    let Some(pos) = bytes.iter().position(|b| *b == b'\n') else {
                        line.extend_from_slice(bytes);
                        return false;
                    };
                    let empty = line.iter().chain(&bytes[..pos]).all(|b| *b == b'\r');
                    bytes = &bytes[pos + 1..];
                    self.state = if empty {
                        State::Head(Vec::new())
                    } else {
                        State::Trailer(Vec::new())
                    };
                }
            }
        }
        false
    }
}

enum Head {
    NoBody,
    Body(u64),
    Chunked,
    Ambiguous,
    Opaque,
}

fn classify_head(head: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        // hyper will refuse it; nothing to follow.
        return Head::Opaque;
    }
    if request.method == Some("CONNECT") {
        return Head::Opaque;
    }
    let mut length = None;
    let mut chunked = None;
    let mut upgrade = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .or(Some(0));
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
            chunked = Some(value.trim_end().ends_with("chunked"));
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    match (length, chunked) {
        (Some(_), Some(_)) => Head::Ambiguous,
        _ if upgrade => Head::Opaque,
        (_, Some(true)) => Head::Chunked,
        (_, Some(false)) => Head::Opaque,
        (Some(length), None) => Head::Body(length),
        (None, None) => Head::NoBody,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The client stream, watched.
pub struct GuardedStream<IO> {
    inner: IO,
    scanner: Scanner,
    verdict: Arc<FramingVerdict>,
    /// Lingering close after an ambiguous request: write side shut, reading until the
    /// client closes or this deadline passes.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> GuardedStream<IO> {
    pub fn new(inner: IO) -> (Self, Arc<FramingVerdict>) {
        let verdict = Arc::new(FramingVerdict::default());
        (
            Self {
                inner,
                scanner: Scanner::new(),
                verdict: verdict.clone(),
                linger: None,
            },
            verdict,
        )
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for GuardedStream<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let filled_before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            let new_bytes = &buf.filled()[filled_before..];
            if !new_bytes.is_empty() && self.scanner.feed(new_bytes) {
                self.verdict.ambiguous.store(true, Ordering::Release);
            }
        }
        result
    }
}

/// Unread input discarded at most when closing after an ambiguous request.
const CLOSE_DRAIN_LIMIT: usize = 64 * 1024;
/// How long the close waits for the client to finish sending after an ambiguous request.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

impl<IO: AsyncWrite + AsyncRead + Unpin> AsyncWrite for GuardedStream<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.linger.is_none() {
            let result = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
            if result.is_err() || !self.verdict.is_ambiguous() {
                return Poll::Ready(result);
            }
            // After an ambiguous request the rest of the client's bytes stay unread.
            // Closing over unread input sends a reset, which destroys the 400 still in
            // the send queue; so, like a lingering close, read until the client closes.
            self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 4096];
        let mut discarded = 0;
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    discarded += buf.filled().len();
                    if discarded >= CLOSE_DRAIN_LIMIT {
                        return Poll::Ready(Ok(()));
                    }
                }
                // End of input or an error: nothing more can arrive.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        match self
            .linger
            .as_mut()
            .map(|deadline| deadline.as_mut().poll(cx))
        {
            Some(Poll::Pending) => Poll::Pending,
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut scanner = Scanner::new();
        chunks.iter().any(|chunk| scanner.feed(chunk))
    }

    #[test]
    fn content_length_with_transfer_encoding_is_flagged_in_either_order() {
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: a\r\ncontent-length: 4\r\n\r\n"
        ]));
    }

    #[test]
    fn keep_alive_requests_are_followed_across_bodies_and_reads() {
        let clean: &[&[u8]] = &[
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel",
            b"lo",
            b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nwor",
            b"ld\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
            b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        assert!(!scan(clean));
        // The same stream with a conflicting third request is caught.
        let mut dirty = clean.to_vec();
        dirty.push(b"POST /d HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(scan(&dirty));
        // A body that merely contains such text is not a head.
        assert!(!scan(&[
            b"POST /a HTTP/1.1\r\nContent-Length: 65\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]));
    }

    #[test]
    fn http2_preface_stops_the_scan() {
        assert!(!scan(&[
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }
}
