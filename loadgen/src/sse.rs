//! Incremental `text/event-stream` parser following the WHATWG HTML spec
//! (section "Interpreting an event stream").

/// One dispatched event, borrowed from the parser's buffers (no allocation
/// per event: a fan-out client parses 10,000 of them per published event).
/// `data` has the trailing LF removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub event: &'a str,
    pub data: &'a [u8],
    pub id: &'a str,
}

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// Previous byte was CR, so a following LF belongs to the same line end.
    after_cr: bool,
    /// Still at the very start of the stream (a UTF-8 BOM may be skipped).
    at_start: bool,
    data: Vec<u8>,
    event: String,
    /// The spec's "last event ID buffer".
    last_id: String,
    /// The spec's "last event ID string" of the event source: set from the
    /// buffer at every blank line, even one that dispatches no event
    /// (`has_last_event_id` until the first blank line).
    last_event_id: String,
    has_last_event_id: bool,
    pub retry: Option<u64>,
    pub comments: u64,
    /// Blank lines seen: one per event, heartbeat or other frame.
    pub frames: u64,
    /// Lines other than `retry:` seen (comments, fields, blank lines).
    other_lines: u64,
}

impl SseParser {
    pub fn new() -> Self {
        SseParser {
            at_start: true,
            ..Default::default()
        }
    }

    /// The last event ID a reconnecting EventSource would send, if any
    /// blank line has been seen on this stream.
    pub fn last_event_id(&self) -> Option<&str> {
        self.has_last_event_id
            .then_some(self.last_event_id.as_str())
    }

    /// True once the stream has sent anything but `retry:` lines: a
    /// gateway's prelude (comment, `id:`) or an event. An answer holding only
    /// `retry:` (deferred admission) never becomes true.
    pub fn prelude_seen(&self) -> bool {
        self.other_lines > 0
    }

    /// Feed decoded body bytes; `on_event` is called for each dispatched event.
    pub fn feed(&mut self, mut input: &[u8], on_event: &mut impl FnMut(&Event)) {
        if self.at_start {
            // The BOM may arrive split; buffer until we can decide.
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let mut probe = std::mem::take(&mut self.line);
            probe.extend_from_slice(input);
            if probe.len() < BOM.len() && BOM.starts_with(&probe) {
                self.line = probe;
                return;
            }
            self.at_start = false;
            let start = if probe.starts_with(BOM) { BOM.len() } else { 0 };
            self.feed_lines(&probe[start..], on_event);
            return;
        }
        if self.after_cr && !input.is_empty() {
            if input[0] == b'\n' {
                input = &input[1..];
            }
            self.after_cr = false;
        }
        self.feed_lines(input, on_event);
    }

    fn feed_lines(&mut self, mut input: &[u8], on_event: &mut impl FnMut(&Event)) {
        while let Some(pos) = input.iter().position(|&b| b == b'\n' || b == b'\r') {
            let is_cr = input[pos] == b'\r';
            if self.line.is_empty() {
                self.process_line(&input[..pos], on_event);
            } else {
                self.line.extend_from_slice(&input[..pos]);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, on_event);
                self.line = line;
                self.line.clear();
            }
            input = &input[pos + 1..];
            if is_cr {
                if input.is_empty() {
                    self.after_cr = true;
                } else if input[0] == b'\n' {
                    input = &input[1..];
                }
            }
        }
        self.line.extend_from_slice(input);
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut impl FnMut(&Event)) {
        if line.is_empty() {
            self.frames += 1;
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            self.other_lines += 1;
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if name != b"retry" {
            self.other_lines += 1;
        }
        match name {
            b"event" => set_lossy(&mut self.event, value),
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            // An id containing NULL is ignored.
            b"id" if !value.contains(&0) => set_lossy(&mut self.last_id, value),
            // retry: only ASCII digits are accepted.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&Event)) {
        // Step 1 of "dispatch the event": even without data the event
        // source's last event ID string takes the buffer's value.
        self.last_event_id.clear();
        self.last_event_id.push_str(&self.last_id);
        self.has_last_event_id = true;
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        self.data.pop(); // trailing LF
        on_event(&Event {
            event: &self.event,
            data: &self.data,
            id: &self.last_id,
        });
        self.event.clear();
        self.data.clear();
    }
}

/// `buf = value` decoded as UTF-8 (lossy), reusing `buf`'s allocation.
fn set_lossy(buf: &mut String, value: &[u8]) {
    buf.clear();
    buf.push_str(&String::from_utf8_lossy(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of an `Event`: (event, data, id).
    type Owned = (String, Vec<u8>, String);

    fn parse_all(pieces: &[&[u8]]) -> Vec<Owned> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            p.feed(piece, &mut |e: &Event| {
                out.push((e.event.to_string(), e.data.to_vec(), e.id.to_string()))
            });
        }
        out
    }

    fn ev(event: &str, data: &str, id: &str) -> Owned {
        (event.into(), data.as_bytes().to_vec(), id.into())
    }

    #[test]
    fn basic_fields() {
        let got = parse_all(&[
            b": comment\n\nevent: msg\nid: 7\ndata: a\ndata:b\ndata\n\ndata: x\r\n\r\n",
        ]);
        assert_eq!(got, vec![ev("msg", "a\nb\n", "7"), ev("", "x", "7")]);
    }

    #[test]
    fn cr_only_and_splits() {
        let wire: &[u8] = b"\xEF\xBB\xBFdata: one\r\rdata: two\r\n\r\ndata: three\n\n";
        let want = vec![ev("", "one", ""), ev("", "two", ""), ev("", "three", "")];
        assert_eq!(parse_all(&[wire]), want);
        for split in 0..wire.len() {
            let (a, b) = wire.split_at(split);
            assert_eq!(parse_all(&[a, b]), want, "split at {split}");
        }
        let pieces: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(parse_all(&pieces), want);
    }

    #[test]
    fn no_dispatch_without_blank_line_and_empty_data() {
        assert!(parse_all(&[b"event: x\n\ndata: pending"]).is_empty());
        // event type resets after a dispatch without data
        assert_eq!(
            parse_all(&[b"event: x\n\ndata: y\n\n"]),
            vec![ev("", "y", "")]
        );
        // "data:" with empty value yields an empty-string event
        assert_eq!(parse_all(&[b"data:\n\n"]), vec![ev("", "", "")]);
    }

    fn parser_after(wire: &[u8]) -> SseParser {
        let mut p = SseParser::new();
        p.feed(wire, &mut |_: &Event| {});
        p
    }

    #[test]
    fn last_event_id_is_set_without_data() {
        // ssegate's prelude: the cursor in an id-only frame.
        let p = parser_after(b"retry: 3000\n: ok\n\nid: 17\n\n");
        assert_eq!(p.last_event_id(), Some("17"));
        assert_eq!(p.retry, Some(3000));
        assert!(p.prelude_seen());
        assert_eq!(p.frames, 2);
        // Not yet: no blank line after the id.
        assert_eq!(parser_after(b"id: 5\n").last_event_id(), None);
        // A later event without id keeps the id (the buffer is not reset).
        let p = parser_after(b"id: 5\ndata: a\n\ndata: b\n\n");
        assert_eq!(p.last_event_id(), Some("5"));
        // An explicit empty id clears it.
        let p = parser_after(b"id: 5\ndata: a\n\nid\ndata: b\n\n");
        assert_eq!(p.last_event_id(), Some(""));
        // An id containing NUL is ignored.
        let p = parser_after(b"id: 5\n\nid: a\0b\n\n");
        assert_eq!(p.last_event_id(), Some("5"));
        // nchan: a comment, then events with ids.
        let p = parser_after(b": hi\n\nid: 1795975096:0\ndata: hello\n\nevent: ping\n\n");
        assert_eq!(p.last_event_id(), Some("1795975096:0"));
        assert_eq!(p.frames, 3);
    }

    #[test]
    fn retry_only_answer_is_not_a_prelude() {
        // Deferred admission: 200 with only retry:, then the end.
        let p = parser_after(b"retry: 7342\n\n");
        assert!(!p.prelude_seen());
        assert_eq!(p.retry, Some(7342));
        // Invalid retry values are ignored, and the last valid one kept.
        let p = parser_after(b"retry: 100\nretry: 1e3\nretry: -5\nretry:\n\n");
        assert_eq!(p.retry, Some(100));
        assert!(!p.prelude_seen());
        // A retry split over two reads.
        let mut p = SseParser::new();
        p.feed(b"ret", &mut |_: &Event| {});
        p.feed(b"ry: 250\r\n\r\n", &mut |_: &Event| {});
        assert_eq!(p.retry, Some(250));
        assert!(!p.prelude_seen());
        p.feed(b":\n", &mut |_: &Event| {});
        assert!(p.prelude_seen());
    }
}
