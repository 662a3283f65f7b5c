//! The diff engines of polling: the last good state and a new body → the
//! changes to publish. Pure functions, no I/O, so they run anywhere (the
//! poller moves large bodies onto a blocking thread) and are tested alone.
//!
//! Every mode first compares a hash of the raw body, so an unchanged
//! document — the common case — costs one hash and no JSON parsing.

use crate::config::PollDiff;
use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fmt;

pub type Hash = [u8; 16];

/// 128 bits of BLAKE2b: collisions are not a practical concern, and the
/// same input hashes alike in every process (channel names depend on it).
pub fn hash(bytes: &[u8]) -> Hash {
    Blake2b::<U16>::digest(bytes).into()
}

/// A hash of what an item means, not of how it was written: object keys
/// in sorted order (the parser keeps the order a document has, so that
/// events carry it as sent; two polls that list the same item's keys in a
/// different order did not change it).
fn item_hash(v: &Value) -> Hash {
    fn feed(v: &Value, h: &mut Blake2b<U16>) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                h.update(b"{");
                for k in keys {
                    // ok to default: a string always serialises.
                    h.update(serde_json::to_string(k).unwrap_or_default().as_bytes());
                    h.update(b":");
                    if let Some(v) = map.get(k) {
                        feed(v, h);
                    }
                    h.update(b",");
                }
                h.update(b"}");
            }
            Value::Array(items) => {
                h.update(b"[");
                for i in items {
                    feed(i, h);
                    h.update(b",");
                }
                h.update(b"]");
            }
            // ok to default: a leaf `Value` always serialises.
            leaf => h.update(serde_json::to_string(leaf).unwrap_or_default().as_bytes()),
        }
    }
    let mut h = Blake2b::<U16>::new();
    feed(v, &mut h);
    h.finalize().into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The whole document changed (body, etag, json-patch).
    Update,
    Created,
    Updated,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: Kind,
    pub data: String,
}

/// What the last good poll saw.
#[derive(Debug)]
pub struct State {
    body: Hash,
    detail: Detail,
}

#[derive(Debug)]
enum Detail {
    Body,
    /// Keys in document order (so `deleted` comes out in a stable order) and
    /// the hash of each item's compact JSON.
    Items {
        order: Vec<String>,
        hashes: HashMap<String, Hash>,
    },
    Doc(Value),
}

#[derive(Debug)]
pub enum Compared {
    Unchanged,
    /// A new state. `changes` is empty for the first poll (the baseline, which
    /// subscribers get as the snapshot) and when only formatting changed.
    Changed {
        changes: Vec<Change>,
        snapshot: String,
        state: State,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffError {
    NotText,
    NotJson(String),
    NotArray(String),
    /// An item without a usable key; the index of the item.
    BadKey {
        index: usize,
        key: String,
    },
    /// Two items share a key; the index of the second.
    DuplicateKey(usize),
}

impl fmt::Display for DiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiffError::NotText => write!(f, "body is not UTF-8 text"),
            DiffError::NotJson(e) => write!(f, "body is not JSON: {e}"),
            DiffError::NotArray(p) => write!(f, "`{p}` is not an array in the body"),
            DiffError::BadKey { index, key } => {
                write!(f, "item {index} has no string or number `{key}`")
            }
            DiffError::DuplicateKey(index) => {
                write!(f, "item {index} repeats the key of an earlier item")
            }
        }
    }
}

/// Compare `body` with the previous state under `mode`.
pub fn compare(mode: &PollDiff, prev: Option<&State>, body: &[u8]) -> Result<Compared, DiffError> {
    let body_hash = hash(body);
    if prev.is_some_and(|p| p.body == body_hash) {
        return Ok(Compared::Unchanged);
    }
    match mode {
        PollDiff::Body | PollDiff::Etag => whole_body(prev, body, body_hash),
        PollDiff::JsonPatch => json_patch(prev, body, body_hash),
        PollDiff::JsonItems { items, key } => json_items(prev, body, body_hash, items, key),
    }
}

fn whole_body(prev: Option<&State>, body: &[u8], body_hash: Hash) -> Result<Compared, DiffError> {
    let text = std::str::from_utf8(body).map_err(|_| DiffError::NotText)?;
    let changes = match prev {
        Some(_) => vec![Change {
            kind: Kind::Update,
            data: text.to_string(),
        }],
        None => Vec::new(),
    };
    let state = State {
        body: body_hash,
        detail: Detail::Body,
    };
    Ok(Compared::Changed {
        changes,
        snapshot: text.to_string(),
        state,
    })
}

fn parse(body: &[u8]) -> Result<Value, DiffError> {
    serde_json::from_slice(body).map_err(|e| DiffError::NotJson(e.to_string()))
}

fn compact(v: &Value) -> String {
    // ok to default: serialising a `Value` to a String cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

fn json_patch(prev: Option<&State>, body: &[u8], body_hash: Hash) -> Result<Compared, DiffError> {
    let doc = parse(body)?;
    let changes = match prev.map(|p| &p.detail) {
        Some(Detail::Doc(old)) => {
            let patch = ::json_patch::diff(old, &doc);
            if patch.0.is_empty() {
                Vec::new()
            } else {
                let data =
                    serde_json::to_string(&patch).map_err(|e| DiffError::NotJson(e.to_string()))?;
                vec![Change {
                    kind: Kind::Update,
                    data,
                }]
            }
        }
        _ => Vec::new(),
    };
    let snapshot = compact(&doc);
    let state = State {
        body: body_hash,
        detail: Detail::Doc(doc),
    };
    Ok(Compared::Changed {
        changes,
        snapshot,
        state,
    })
}

fn item_key(item: &Value, key: &str) -> Option<String> {
    match item.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn json_items(
    prev: Option<&State>,
    body: &[u8],
    body_hash: Hash,
    pointer: &str,
    key: &str,
) -> Result<Compared, DiffError> {
    let doc = parse(body)?;
    let items = doc
        .pointer(pointer)
        .and_then(Value::as_array)
        .ok_or_else(|| DiffError::NotArray(pointer.to_string()))?;
    let old = match prev.map(|p| &p.detail) {
        Some(Detail::Items { order, hashes }) => Some((order, hashes)),
        _ => None,
    };
    let mut order = Vec::with_capacity(items.len());
    let mut hashes = HashMap::with_capacity(items.len());
    // Each item is serialised once: for its hash, its event and the snapshot.
    let mut snapshot = String::with_capacity(body.len());
    snapshot.push('[');
    let mut changes = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let k = item_key(item, key).ok_or_else(|| DiffError::BadKey {
            index,
            key: key.to_string(),
        })?;
        let text = compact(item);
        let h = item_hash(item);
        if hashes.insert(k.clone(), h).is_some() {
            return Err(DiffError::DuplicateKey(index));
        }
        let kind = match old.map(|(_, old_hashes)| old_hashes.get(&k)) {
            Some(None) => Some(Kind::Created),
            Some(Some(was)) if *was != h => Some(Kind::Updated),
            _ => None,
        };
        if let Some(kind) = kind {
            changes.push(Change {
                kind,
                data: text.clone(),
            });
        }
        if index > 0 {
            snapshot.push(',');
        }
        snapshot.push_str(&text);
        order.push(k);
    }
    snapshot.push(']');
    if let Some((old_order, _)) = old {
        let now: HashSet<&String> = order.iter().collect();
        for k in old_order.iter().filter(|k| !now.contains(k)) {
            changes.push(Change {
                kind: Kind::Deleted,
                data: k.clone(),
            });
        }
    }
    let state = State {
        body: body_hash,
        detail: Detail::Items { order, hashes },
    };
    Ok(Compared::Changed {
        changes,
        snapshot,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(mode: &PollDiff, prev: &mut Option<State>, body: &str) -> Option<Vec<(Kind, String)>> {
        match compare(mode, prev.as_ref(), body.as_bytes()).unwrap() {
            Compared::Unchanged => None,
            Compared::Changed { changes, state, .. } => {
                *prev = Some(state);
                Some(changes.into_iter().map(|c| (c.kind, c.data)).collect())
            }
        }
    }

    #[test]
    fn body_changes_only_when_bytes_change() {
        let mut s = None;
        assert_eq!(step(&PollDiff::Body, &mut s, "a"), Some(vec![]), "baseline");
        assert_eq!(step(&PollDiff::Body, &mut s, "a"), None);
        assert_eq!(
            step(&PollDiff::Body, &mut s, "b\nc"),
            Some(vec![(Kind::Update, "b\nc".into())])
        );
        assert_eq!(
            compare(&PollDiff::Body, None, &[0xff, 0xfe]).unwrap_err(),
            DiffError::NotText
        );
    }

    #[test]
    fn items_emit_created_updated_deleted_in_order() {
        let mode = PollDiff::JsonItems {
            items: "/data".into(),
            key: "id".into(),
        };
        let mut s = None;
        let first = compare(
            &mode,
            None,
            br#"{"data":[{"id":1,"v":"a"},{"id":"x","v":"b"}]}"#,
        )
        .unwrap();
        let Compared::Changed {
            snapshot,
            state,
            changes,
        } = first
        else {
            panic!("baseline")
        };
        assert!(changes.is_empty());
        assert_eq!(snapshot, r#"[{"id":1,"v":"a"},{"id":"x","v":"b"}]"#);
        s = Some(state).or(s);
        // Formatting only: the body differs, no item does.
        assert_eq!(
            step(
                &mode,
                &mut s,
                r#"{ "data": [ {"v":"a","id":1}, {"id":"x","v":"b"} ] }"#
            ),
            Some(vec![])
        );
        let got = step(
            &mode,
            &mut s,
            r#"{"data":[{"id":"x","v":"B"},{"id":3,"v":"c"}]}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                (Kind::Updated, r#"{"id":"x","v":"B"}"#.into()),
                (Kind::Created, r#"{"id":3,"v":"c"}"#.into()),
                (Kind::Deleted, "1".into()),
            ]
        );
    }

    #[test]
    fn items_refuse_documents_that_do_not_fit() {
        let mode = PollDiff::JsonItems {
            items: "/data".into(),
            key: "id".into(),
        };
        let err = |b: &str| compare(&mode, None, b.as_bytes()).unwrap_err();
        assert!(matches!(err("nope"), DiffError::NotJson(_)));
        assert_eq!(err(r#"{"data":{}}"#), DiffError::NotArray("/data".into()));
        assert_eq!(
            err(r#"{"data":[{"id":1},{"v":2}]}"#),
            DiffError::BadKey {
                index: 1,
                key: "id".into()
            }
        );
        assert_eq!(
            err(r#"{"data":[{"id":1},{"id":1}]}"#),
            DiffError::DuplicateKey(1)
        );
        let top = PollDiff::JsonItems {
            items: String::new(),
            key: "id".into(),
        };
        assert!(
            compare(&top, None, br#"[{"id":1}]"#).is_ok(),
            "`\"\"` points at the whole document"
        );
    }

    #[test]
    fn json_patch_is_rfc6902() {
        let mut s = None;
        assert_eq!(
            step(&PollDiff::JsonPatch, &mut s, r#"{"a":1,"b":[1]}"#),
            Some(vec![])
        );
        assert_eq!(
            step(&PollDiff::JsonPatch, &mut s, r#"{"a": 1, "b": [1]}"#),
            Some(vec![]),
            "same document"
        );
        let got = step(&PollDiff::JsonPatch, &mut s, r#"{"a":2,"b":[1],"c":true}"#).unwrap();
        assert_eq!(got.len(), 1);
        let patch: Value = serde_json::from_str(&got[0].1).unwrap();
        let mut doc = serde_json::json!({"a":1,"b":[1]});
        ::json_patch::patch(
            &mut doc,
            &serde_json::from_value::<::json_patch::Patch>(patch).unwrap(),
        )
        .unwrap();
        assert_eq!(doc, serde_json::json!({"a":2,"b":[1],"c":true}));
    }
}
