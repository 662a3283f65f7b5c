//! Where each value of the YAML file stands, so that errors found after
//! deserialising (unknown upstream, bad template, …) still name FILE:LINE:COL.
//! serde_yaml keeps no spans, so the file is read a second time with
//! yaml-rust2's event parser, which reports a marker for every node.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A dotted path such as `routes.2.sse.channels.0` → (line, column), both 1-based.
#[derive(Debug, Default)]
pub(super) struct Positions {
    at: HashMap<String, (usize, usize)>,
}

enum Frame {
    Map {
        path: String,
        key: Option<(String, Marker)>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    at: HashMap<String, (usize, usize)>,
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

fn spot(m: &Marker) -> (usize, usize) {
    // yaml-rust2 counts lines from 1 and columns from 0.
    (m.line(), m.col() + 1)
}

impl Recorder {
    /// A node starts: returns its path, or None when it is a mapping key.
    fn node(&mut self, text: Option<&str>, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => match key.take() {
                None => {
                    *key = Some((text.unwrap_or("?").to_string(), mark));
                    None
                }
                Some((k, kmark)) => {
                    let p = join(path, &k);
                    self.at.insert(p.clone(), spot(&kmark));
                    Some(p)
                }
            },
            Some(Frame::Seq { path, next }) => {
                let p = join(path, &next.to_string());
                *next += 1;
                self.at.insert(p.clone(), spot(&mark));
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => {
                self.node(Some(&text), mark);
            }
            Event::Alias(_) => {
                self.node(None, mark);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.node(None, mark) {
                    self.at.entry(path.clone()).or_insert(spot(&mark));
                    self.stack.push(Frame::Map { path, key: None });
                } else {
                    // A complex key: record nothing below it.
                    self.stack.push(Frame::Map {
                        path: "?".into(),
                        key: None,
                    });
                }
            }
            Event::SequenceStart(..) => {
                let path = self.node(None, mark).unwrap_or_else(|| "?".into());
                self.at.entry(path.clone()).or_insert(spot(&mark));
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// Collections nested deeper than this are refused before serde_yaml reads
/// the file: no config needs more than a few levels, and YAML scanners slow
/// down quadratically with deeply nested flow collections (`[[[[…`).
pub(super) const MAX_DEPTH: usize = 32;

/// Where a collection opens too deep (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TooDeep {
    pub line: usize,
    pub col: usize,
}

impl TooDeep {
    fn at(mark: &Marker) -> TooDeep {
        let (line, col) = spot(mark);
        TooDeep { line, col }
    }
}

impl Positions {
    /// Index a YAML text, event by event, stopping at the first collection
    /// deeper than `MAX_DEPTH` (so the work done is bounded by the depth
    /// allowed). Up to a syntax error, what was read is indexed (serde_yaml
    /// reports the error with its own location).
    pub(super) fn index(text: &str) -> Result<Positions, TooDeep> {
        let mut rec = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        loop {
            match parser.next_token() {
                Ok((Event::StreamEnd, _)) => break,
                Ok((Event::MappingStart(..) | Event::SequenceStart(..), mark))
                    if rec.stack.len() >= MAX_DEPTH =>
                {
                    return Err(TooDeep::at(&mark));
                }
                Ok((ev, mark)) => rec.on_event(ev, mark),
                // Flow collections deeper than the scanner's own limit are
                // refused by it before they become events.
                Err(e) if e.info().contains("recursion limit") => {
                    return Err(TooDeep::at(e.marker()))
                }
                Err(_) => break,
            }
        }
        Ok(Positions { at: rec.at })
    }

    /// The position of `path`, or of its nearest ancestor that was written.
    pub(super) fn find(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(at) = self.at.get(p) {
                return *at;
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return self.at.get("").copied().unwrap_or((1, 1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_sequence_items() {
        let text = "listen: a\nroutes:\n  - path: /x\n    proxy: app\n  - path: /y\n    sse:\n      channels: [\"a\", \"b\"]\n";
        let p = Positions::index(text).unwrap();
        assert_eq!(p.find("listen"), (1, 1));
        assert_eq!(p.find("routes.1.path"), (5, 5));
        assert_eq!(p.find("routes.0.proxy"), (4, 5));
        assert_eq!(p.find("routes.1.sse.channels"), (7, 7));
        assert_eq!(p.find("routes.1.sse.channels.1").0, 7);
        assert_eq!(p.find("routes.1.sse.nothing"), (6, 5));
    }

    #[test]
    fn nesting_is_bounded_where_it_goes_too_deep() {
        let ok = format!(
            "a: {}{}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(Positions::index(&ok).is_ok());
        for open in ["[", "{", "[a, "] {
            let deep = format!("a:\n  b: {}", open.repeat(100_000));
            let t = std::time::Instant::now();
            assert_eq!(Positions::index(&deep).unwrap_err().line, 2, "{open}");
            assert!(t.elapsed() < std::time::Duration::from_millis(100));
        }
        let balanced = format!(
            "a: {}{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            Positions::index(&balanced).unwrap_err(),
            TooDeep {
                line: 1,
                col: 3 + MAX_DEPTH
            }
        );
        let block: String = (0..40)
            .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
            .collect();
        assert!(Positions::index(&block).is_err());
    }
}
