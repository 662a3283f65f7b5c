//! Incremental `text/event-stream` parser following the WHATWG HTML spec
//! (section "Interpreting an event stream").

/// One dispatched event. `data` has the trailing LF removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: Vec<u8>,
    pub id: String,
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
    last_id: String,
    pub retry: Option<u64>,
    pub comments: u64,
}

impl SseParser {
    pub fn new() -> Self {
        SseParser {
            at_start: true,
            ..Default::default()
        }
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
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            // An id containing NULL is ignored.
            b"id" if !value.contains(&0) => {
                self.last_id = String::from_utf8_lossy(value).into_owned();
            }
            // retry: only ASCII digits are accepted.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&Event)) {
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        self.data.pop(); // trailing LF
        let ev = Event {
            event: std::mem::take(&mut self.event),
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        };
        on_event(&ev);
        // Reuse the data allocation.
        let mut d = ev.data;
        d.clear();
        self.data = d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(pieces: &[&[u8]]) -> Vec<Event> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            p.feed(piece, &mut |e: &Event| out.push(e.clone()));
        }
        out
    }

    fn ev(event: &str, data: &str, id: &str) -> Event {
        Event {
            event: event.into(),
            data: data.as_bytes().to_vec(),
            id: id.into(),
        }
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
}
