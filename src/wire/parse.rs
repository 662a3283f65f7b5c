//! Event-stream bytes → events, by the WHATWG HTML "server-sent events"
//! parsing rules: the inverse of `encode`, for a backend's own SSE reply
//! that the gateway records. Incremental: bytes arrive in any chunking (a
//! CRLF may be split between two reads), and what one event may buffer is
//! bounded.
//!
//! The rules kept here: lines end with CRLF, LF or a lone CR; a leading
//! BOM is skipped; `:` starts a comment; `field:value` drops one space
//! after the colon and a line without a colon is a field with an empty
//! value; `data` lines are joined with LF; `retry` counts only when it is
//! all ASCII digits; a blank line dispatches, but only an event with a data
//! buffer; an event the stream ends in the middle of is never dispatched.
//! The backend's `id` is read and dropped: a recorded event gets the
//! gateway's id.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// None for the default type (`message`, or an empty `event:`).
    pub event: Option<String>,
    pub data: String,
    /// A `retry:` seen since the previous event, passed on with this one.
    pub retry: Option<u64>,
}

/// Why a stream cannot be parsed further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// One event (its current line, data and type) grew past this many bytes.
    TooLarge(usize),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::TooLarge(n) => write!(f, "an event is larger than {n} bytes"),
        }
    }
}

impl std::error::Error for ParseError {}

const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug)]
pub struct EventParser {
    /// The line read so far (no line ending yet).
    line: Vec<u8>,
    /// The previous chunk ended with CR: a LF first in the next one ends
    /// no line of its own.
    after_cr: bool,
    /// No line has ended yet (the BOM may start this one).
    first_line: bool,
    data: String,
    event: String,
    retry: Option<u64>,
    max: usize,
}

impl EventParser {
    /// `max`: the most bytes one event may hold while it is read.
    pub fn new(max: usize) -> EventParser {
        EventParser {
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            data: String::new(),
            event: String::new(),
            retry: None,
            max,
        }
    }

    /// Read `chunk`, appending every event it completes to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Parsed>) -> Result<(), ParseError> {
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(i) = chunk.iter().position(|b| *b == b'\r' || *b == b'\n') {
            self.take(&chunk[..i])?;
            self.end_line(out);
            let crlf = chunk[i] == b'\r' && chunk.get(i + 1) == Some(&b'\n');
            if chunk[i] == b'\r' && i + 1 == chunk.len() {
                self.after_cr = true;
            }
            chunk = &chunk[i + if crlf { 2 } else { 1 }..];
        }
        self.take(chunk)
    }

    fn buffered(&self) -> usize {
        self.line.len() + self.data.len() + self.event.len()
    }

    fn take(&mut self, bytes: &[u8]) -> Result<(), ParseError> {
        if self.buffered() + bytes.len() > self.max {
            return Err(ParseError::TooLarge(self.max));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<Parsed>) {
        let mut raw = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.first_line) && raw.starts_with(BOM) {
            raw.drain(..BOM.len());
        }
        if raw.is_empty() {
            self.dispatch(out);
        } else {
            // As a browser decodes it: invalid UTF-8 becomes U+FFFD.
            let line = String::from_utf8_lossy(&raw);
            self.field(&line);
        }
        raw.clear();
        if raw.capacity() <= 4096 {
            self.line = raw;
        }
    }

    fn field(&mut self, line: &str) {
        if line.starts_with(':') {
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match name {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Digits too many for u64 are no delay anyone means: ignored.
                if let Ok(ms) = value.parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Parsed>) {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        out.push(Parsed {
            event: (!event.is_empty() && event != "message").then_some(event),
            data,
            retry: self.retry.take(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in(chunks: &[&[u8]]) -> Vec<Parsed> {
        let mut p = EventParser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        out
    }

    fn ev(event: Option<&str>, data: &str) -> Parsed {
        Parsed {
            event: event.map(str::to_string),
            data: data.to_string(),
            retry: None,
        }
    }

    #[test]
    fn fields_by_the_rules() {
        let got = parse_in(&[b"data: a\ndata:b\ndata:  c\ndata\n\n"]);
        assert_eq!(got, vec![ev(None, "a\nb\n c\n")]);
        let got = parse_in(&[b"event: tok\ndata: 1\n\nevent: message\ndata: 2\n\n"]);
        assert_eq!(got, vec![ev(Some("tok"), "1"), ev(None, "2")]);
        // The event type does not outlive its event.
        let got = parse_in(&[b"event: x\n\ndata: 3\n\n"]);
        assert_eq!(got, vec![ev(None, "3")]);
        // Comments, unknown fields and ids are read and dropped.
        let got = parse_in(&[b": hi\nid: 7\nfoo: bar\ndata: d\n\n"]);
        assert_eq!(got, vec![ev(None, "d")]);
        // `data:` alone is an event with empty data; no data is no event.
        assert_eq!(parse_in(&[b"data:\n\n"]), vec![ev(None, "")]);
        assert!(parse_in(&[b"id: 1\n\nevent: e\n\n: c\n\n"]).is_empty());
        // A colon in the value stays.
        assert_eq!(parse_in(&[b"data: a: b\n\n"]), vec![ev(None, "a: b")]);
    }

    #[test]
    fn every_line_ending_and_any_chunking() {
        let whole: &[u8] = b"data: a\r\ndata: b\rdata: c\n\r\nevent: e\rdata: d\r\r";
        let expect = vec![ev(None, "a\nb\nc"), ev(Some("e"), "d")];
        assert_eq!(parse_in(&[whole]), expect);
        for cut in 0..=whole.len() {
            let (a, b) = whole.split_at(cut);
            assert_eq!(parse_in(&[a, b]), expect, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(parse_in(&bytes), expect);
        // A CR at a chunk's end, then an empty chunk, then the LF: one line end.
        assert_eq!(
            parse_in(&[b"data: x\r", b"", b"\n\r", b"\n"]),
            vec![ev(None, "x")]
        );
    }

    #[test]
    fn bom_only_at_the_start() {
        assert_eq!(
            parse_in(&[b"\xEF\xBB", b"\xBFdata: a\n\n"]),
            vec![ev(None, "a")]
        );
        // A second BOM is part of the line: an unknown field, dropped.
        assert!(parse_in(&[b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n"]).is_empty());
    }

    #[test]
    fn retry_only_as_digits_and_passed_on() {
        let got = parse_in(&[b"retry: 1500\nretry: 2x\nretry:\ndata: a\n\ndata: b\n\n"]);
        assert_eq!(got[0].retry, Some(1500));
        assert_eq!(got[1].retry, None);
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        assert!(parse_in(&[b"data: half"]).is_empty());
        assert!(parse_in(&[b"data: half\n"]).is_empty());
    }

    #[test]
    fn invalid_utf8_is_replaced_as_a_browser_would() {
        assert_eq!(
            parse_in(&[b"data: a\xFFb\n\n"]),
            vec![ev(None, "a\u{FFFD}b")]
        );
    }

    #[test]
    fn an_event_is_bounded() {
        let mut p = EventParser::new(16);
        let mut out = Vec::new();
        p.feed(b"data: 0123456789\n\n", &mut out).unwrap();
        assert_eq!(out.len(), 1);
        // A line without end, or data across lines, may not grow past it.
        assert_eq!(
            p.feed(b"data: 0123456789abcdef", &mut out),
            Err(ParseError::TooLarge(16))
        );
        let mut p = EventParser::new(16);
        p.feed(b"data: 01234\n", &mut out).unwrap();
        assert_eq!(
            p.feed(b"data: 56789\n", &mut out),
            Err(ParseError::TooLarge(16))
        );
    }

    #[test]
    fn encode_then_parse_round_trips() {
        for (event, data) in [(None, "x"), (Some("t"), "a\nb"), (None, ""), (None, "\n")] {
            let frame = super::super::encode(Some("r.1"), event, data).unwrap();
            assert_eq!(parse_in(&[&frame]), vec![ev(event, data)], "{frame:?}");
        }
    }
}
