//! Server-sent events, as far as the proxy needs them: cut a byte stream into whole
//! events (so each is relayed as soon as it is complete, never the stream whole),
//! read an event's fields, and write one.
use bytes::{Bytes, BytesMut};

/// Cuts an SSE stream into raw events, each ending with its blank line.
#[derive(Default)]
pub struct EventSplitter {
    pending: BytesMut,
}

impl EventSplitter {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = event_end(&self.pending) {
            events.push(self.pending.split_to(end).freeze());
        }
        events
    }

    /// Bytes of an event not yet complete.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn take_rest(&mut self) -> Bytes {
        self.pending.split().freeze()
    }
}

/// Index just past the first blank line (two line ends in a row: LF, CRLF or CR).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut at_line_start = true;
    while i < buf.len() {
        let line_end = match buf[i] {
            b'\n' => Some(1),
            b'\r' if buf.get(i + 1) == Some(&b'\n') => Some(2),
            // A lone CR at the end of the buffer may be half of a CRLF: wait.
            b'\r' if i + 1 == buf.len() => return None,
            b'\r' => Some(1),
            _ => None,
        };
        match line_end {
            Some(len) if at_line_start => return Some(i + len),
            Some(len) => {
                at_line_start = true;
                i += len;
            }
            None => {
                at_line_start = false;
                i += 1;
            }
        }
    }
    None
}

/// The fields of one event that matter to the proxy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<String>,
    /// Data lines joined with LF; None when the event has no data (e.g. a comment).
    pub data: Option<String>,
}

impl Event {
    pub fn parse(raw: &[u8]) -> Event {
        let text = String::from_utf8_lossy(raw);
        let mut event = Event::default();
        for line in text.split(['\n', '\r']) {
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            match field {
                "event" => event.event = Some(value.to_string()),
                "id" => event.id = Some(value.to_string()),
                "retry" => event.retry = Some(value.to_string()),
                "data" => match &mut event.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => event.data = Some(value.to_string()),
                },
                _ => {}
            }
        }
        event
    }

    /// The event written out again, with `data` replaced.
    pub fn encode_with_data(&self, data: &str) -> Bytes {
        let mut out = String::with_capacity(data.len() + 64);
        if let Some(event) = &self.event {
            out.push_str(&format!("event: {event}\n"));
        }
        if let Some(id) = &self.id {
            out.push_str(&format!("id: {id}\n"));
        }
        if let Some(retry) = &self.retry {
            out.push_str(&format!("retry: {retry}\n"));
        }
        for line in data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        Bytes::from(out)
    }
}

/// A `message` event carrying `data`.
pub fn message_event(data: &str) -> Bytes {
    Event {
        event: Some("message".into()),
        ..Default::default()
    }
    .encode_with_data(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_whole_events_across_chunks_and_line_ends() {
        let mut splitter = EventSplitter::default();
        assert!(splitter.push(b"event: message\ndata: {\"a\"").is_empty());
        let events = splitter.push(b":1}\n\n: ping\r\n\r\ndata: x\r\rdata: tail");
        assert_eq!(
            events,
            [
                Bytes::from_static(b"event: message\ndata: {\"a\":1}\n\n"),
                Bytes::from_static(b": ping\r\n\r\n"),
                Bytes::from_static(b"data: x\r\r"),
            ]
        );
        assert_eq!(splitter.buffered(), 10);
        assert_eq!(splitter.take_rest(), Bytes::from_static(b"data: tail"));
    }

    #[test]
    fn a_cr_at_the_end_waits_for_its_lf() {
        let mut splitter = EventSplitter::default();
        assert!(splitter.push(b"data: 1\r\n\r").is_empty());
        assert_eq!(
            splitter.push(b"\n"),
            [Bytes::from_static(b"data: 1\r\n\r\n")]
        );
    }

    #[test]
    fn parses_fields_and_reencodes() {
        let event = Event::parse(b"event: message\nid: 7\ndata: line1\ndata:line2\n: c\n\n");
        assert_eq!(event.event.as_deref(), Some("message"));
        assert_eq!(event.id.as_deref(), Some("7"));
        assert_eq!(event.data.as_deref(), Some("line1\nline2"));
        assert_eq!(
            event.encode_with_data("{}"),
            Bytes::from_static(b"event: message\nid: 7\ndata: {}\n\n")
        );
        assert_eq!(Event::parse(b": keep-alive\n\n").data, None);
    }
}
