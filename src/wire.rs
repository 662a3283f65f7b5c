//! Event → SSE bytes, per the WHATWG HTML "server-sent events" section.
//! Pure functions; each event is encoded once and the bytes shared.
//! `parse` is the way back, for a backend's own event stream.

mod parse;

pub use parse::{EventParser, ParseError, Parsed};

use bytes::{BufMut, Bytes, BytesMut};

/// Why an event cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// `event:`/`id:` values may not hold CR or LF (they would end the field).
    LineBreak(&'static str),
    /// `id:` may not hold NUL (clients ignore such ids).
    Nul,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::LineBreak(field) => write!(f, "`{field}` may not contain CR or LF"),
            FrameError::Nul => write!(f, "`id` may not contain NUL"),
        }
    }
}

pub fn check_event_name(name: &str) -> Result<(), FrameError> {
    if name.contains(['\r', '\n']) {
        return Err(FrameError::LineBreak("event"));
    }
    Ok(())
}

/// An event frame: optional id, optional event type (omitted when `message`),
/// one `data:` line per line of `data` (CR, LF and CRLF all split).
pub fn encode(id: Option<&str>, event: Option<&str>, data: &str) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::with_capacity(data.len() + 32 + id.map_or(0, str::len));
    if let Some(id) = id {
        if id.contains(['\r', '\n']) {
            return Err(FrameError::LineBreak("id"));
        }
        if id.contains('\0') {
            return Err(FrameError::Nul);
        }
        field(&mut out, "id", id);
    }
    if let Some(ev) = event.filter(|e| *e != "message") {
        check_event_name(ev)?;
        field(&mut out, "event", ev);
    }
    for line in split_lines(data) {
        field(&mut out, "data", line);
    }
    out.put_u8(b'\n');
    Ok(out.freeze())
}

fn field(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    if value.is_empty() {
        out.put_u8(b':');
    } else {
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
    }
    out.put_u8(b'\n');
}

/// Split on CRLF, LF or lone CR. An empty text is one empty line, so an
/// event with empty data still dispatches.
pub fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// The response headers of every SSE stream (plus `transfer-encoding:
/// chunked` on HTTP/1.1, which the sink adds).
pub const SSE_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

/// The first bytes of every stream: a `retry:` so clients back off as told,
/// the cursor the stream starts from as a bare `id:` (it sets the client's
/// last event id without firing an event, so a client cut before its first
/// event resumes from here), and a comment so that `open` fires at once.
pub fn prelude(retry_ms: u128, start: Option<&str>) -> Bytes {
    match start {
        Some(id) if !id.contains(['\r', '\n', '\0']) => {
            Bytes::from(format!("retry: {retry_ms}\nid: {id}\n:ok\n\n"))
        }
        _ => Bytes::from(format!("retry: {retry_ms}\n:ok\n\n")),
    }
}

/// A heartbeat comment: keeps proxies from timing the stream out.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// Sent on drain: a jittered retry so clients do not all come back at once.
pub fn retry_only(retry_ms: u128) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n\n"))
}

/// The event that tells a resuming client its missed events are gone.
pub fn reset(id: &str) -> Bytes {
    // ok: a cursor never holds CR, LF or NUL.
    encode(
        Some(id),
        Some("ssegate.reset"),
        r#"{"reason":"history-gap"}"#,
    )
    .unwrap_or_default()
}

/// The last event of a stream whose JWT expired. No `id:`: a reconnect
/// resumes after the last real event.
pub fn expired() -> Bytes {
    Bytes::from_static(b"event: ssegate.expired\ndata: {\"reason\":\"token-expired\"}\n\n")
}

/// The last event of a recorded reply that did not end as its backend
/// ended it (`reason`: why), numbered as the record's next event.
pub fn incomplete(id: &str, reason: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(id.len() + 64);
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_slice(&incomplete_tail(reason));
    out.freeze()
}

/// `incomplete` after its id: a Redis script builds the marker of a record
/// it evicts from this.
pub fn incomplete_tail(reason: &str) -> Bytes {
    Bytes::from(format!(
        "\nevent: ssegate.incomplete\ndata: {{\"reason\":\"{reason}\"}}\n\n"
    ))
}

/// GRIP `http-stream` content as a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GripFrame {
    pub frame: Bytes,
    /// Whether the content is whole SSE events a native SSE client can
    /// take as they are. Anything else (bytes that are not UTF-8, text that
    /// is not `field: value` lines ending in a blank line, the gateway's own
    /// `ssegate.*` events) would corrupt such a client's stream: it goes
    /// only to GRIP holds, whose backends chose the format.
    pub sse: bool,
}

/// GRIP `http-stream` content is passed verbatim, as in Pushpin; when it is
/// SSE without an `id:` line the gateway adds its cursor so resume works.
pub fn grip_frame(content: &[u8], id: &str) -> GripFrame {
    let verbatim = |sse| GripFrame {
        frame: Bytes::copy_from_slice(content),
        sse,
    };
    let Ok(text) = std::str::from_utf8(content) else {
        return verbatim(false);
    };
    if !looks_like_sse(text) {
        return verbatim(false);
    }
    let own_event = split_lines(text).any(|l| {
        l.strip_prefix("event:")
            .is_some_and(|e| e.trim_start_matches(' ').starts_with("ssegate."))
    });
    if own_event {
        return verbatim(false);
    }
    if split_lines(text).any(|l| l == "id" || l.starts_with("id:")) {
        return verbatim(true);
    }
    // Put the id on the last event block: the whole item then shares one cursor.
    let body = text.trim_end_matches(['\r', '\n']);
    let start = ["\n\n", "\r\n\r\n", "\r\r"]
        .iter()
        .filter_map(|sep| body.rfind(sep).map(|i| i + sep.len()))
        .max()
        .unwrap_or(0);
    let mut out = BytesMut::with_capacity(content.len() + id.len() + 8);
    out.put_slice(&content[..start]);
    field(&mut out, "id", id);
    out.put_slice(&content[start..]);
    GripFrame {
        frame: out.freeze(),
        sse: true,
    }
}

/// Every non-empty line is `field:value`, `field` or a `:comment`, and the text
/// ends with a blank line.
fn looks_like_sse(text: &str) -> bool {
    let ends_block = text.ends_with("\n\n") || text.ends_with("\r\n\r\n") || text.ends_with("\r\r");
    ends_block
        && split_lines(text).all(|l| {
            l.is_empty()
                || l.starts_with(':')
                || matches!(l.split(':').next(), Some("data" | "event" | "id" | "retry"))
        })
        && split_lines(text).any(|l| l.starts_with("data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn frames_exactly() {
        assert_eq!(
            s(encode(Some("1"), None, "hi").unwrap()),
            "id: 1\ndata: hi\n\n"
        );
        assert_eq!(
            s(encode(None, Some("message"), "x").unwrap()),
            "data: x\n\n"
        );
        assert_eq!(
            s(encode(None, Some("e"), "a\nb\r\nc\rd").unwrap()),
            "event: e\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(s(encode(None, None, "").unwrap()), "data:\n\n");
        assert_eq!(s(encode(None, None, "t\n").unwrap()), "data: t\ndata:\n\n");
    }

    #[test]
    fn prelude_primes_the_last_event_id() {
        assert_eq!(s(prelude(3000, None)), "retry: 3000\n:ok\n\n");
        assert_eq!(
            s(prelude(3000, Some("a-7"))),
            "retry: 3000\nid: a-7\n:ok\n\n"
        );
    }

    #[test]
    fn refuses_injection() {
        assert_eq!(
            encode(None, Some("a\nb"), "x"),
            Err(FrameError::LineBreak("event"))
        );
        assert_eq!(
            encode(Some("1\r"), None, "x"),
            Err(FrameError::LineBreak("id"))
        );
        assert_eq!(encode(Some("1\0"), None, "x"), Err(FrameError::Nul));
    }

    #[test]
    fn expired_is_a_valid_frame() {
        assert_eq!(
            expired(),
            encode(
                None,
                Some("ssegate.expired"),
                r#"{"reason":"token-expired"}"#
            )
            .unwrap()
        );
    }

    #[test]
    fn incomplete_is_a_valid_frame() {
        assert_eq!(
            incomplete("ab.3", "max-events"),
            encode(
                Some("ab.3"),
                Some("ssegate.incomplete"),
                r#"{"reason":"max-events"}"#
            )
            .unwrap()
        );
    }

    #[test]
    fn grip_content_gets_a_cursor() {
        let f = |c: &[u8]| {
            let g = grip_frame(c, "c-9");
            (s(g.frame), g.sse)
        };
        assert_eq!(
            f(b"event: greet\ndata: hi\n\n"),
            ("id: c-9\nevent: greet\ndata: hi\n\n".into(), true)
        );
        assert_eq!(
            f(b"data: a\n\ndata: b\n\n"),
            ("data: a\n\nid: c-9\ndata: b\n\n".into(), true)
        );
        assert_eq!(
            f(b"id: mine\ndata: a\n\n"),
            ("id: mine\ndata: a\n\n".into(), true)
        );
    }

    #[test]
    fn grip_content_that_is_not_sse_is_for_grip_holds_only() {
        for bad in [
            &b"plain text"[..],
            b"data: partial",
            b"\xff\xfe\x00bin",
            b"event: ssegate.reset\ndata: {}\n\n",
            b"event:ssegate.expired\ndata: x\n\n",
        ] {
            let g = grip_frame(bad, "c-9");
            assert!(!g.sse, "{bad:?}");
            assert_eq!(&g.frame[..], bad, "verbatim for GRIP holds");
        }
    }
}
