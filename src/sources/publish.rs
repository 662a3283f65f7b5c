//! The publish API's body formats → hub events.
//!
//! Native: `{"channel","event","id","data"}` or `{"items":[…]}`; `data` that
//! is not a string is sent as compact JSON.
//! GRIP (Pushpin's, as sent by `gripcontrol`): `{"items":[{"channel","id",
//! "prev-id","formats":{"http-stream":{"content"|"content-bin"|"action"}}}]}`.
//! Both are accepted on `/publish` and `/publish/`, item by item.

use crate::channel::{self, ChannelError};
use crate::hub::{Event, Payload, Source};
use crate::wire::{check_event_name, FrameError};
use base64::Engine;
use bytes::Bytes;
use serde_json::Value;
use std::fmt;

/// Why a publish body is refused; one line naming the item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublishError {
    NotJson(String),
    NotObject,
    ItemsNotArray,
    /// `index` is None for a single-event body.
    Item {
        index: Option<usize>,
        problem: ItemProblem,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ItemProblem {
    NotObject,
    Missing(&'static str),
    NotString(&'static str),
    BadChannel(ChannelError),
    BadId,
    BadEvent(FrameError),
    /// An event name in the gateway's `ssegate.` namespace.
    ReservedEvent(String),
    BadBase64,
    NoContent,
}

impl fmt::Display for ItemProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemProblem::NotObject => f.write_str("an item must be a JSON object"),
            ItemProblem::Missing(k) => write!(f, "`{k}` is required"),
            ItemProblem::NotString(k) => write!(f, "`{k}` must be a string"),
            ItemProblem::BadChannel(e) => e.fmt(f),
            ItemProblem::BadId => {
                f.write_str("`id` must be at most 256 bytes without CR, LF or NUL")
            }
            ItemProblem::BadEvent(e) => e.fmt(f),
            ItemProblem::ReservedEvent(e) => {
                write!(
                    f,
                    "event `{e}` is in the gateway's own `ssegate.` namespace"
                )
            }
            ItemProblem::BadBase64 => f.write_str("`content-bin` is not base64"),
            ItemProblem::NoContent => {
                f.write_str("`http-stream` needs `content`, `content-bin` or `action: close`")
            }
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::NotJson(e) => write!(f, "body is not JSON: {e}"),
            PublishError::NotObject => f.write_str("body must be a JSON object"),
            PublishError::ItemsNotArray => f.write_str("`items` must be an array"),
            PublishError::Item {
                index: Some(i),
                problem,
            } => write!(f, "items[{i}]: {problem}"),
            PublishError::Item {
                index: None,
                problem,
            } => problem.fmt(f),
        }
    }
}

impl std::error::Error for PublishError {}

/// Parse a publish body; every problem is one line naming the item.
pub(crate) fn parse(body: &[u8]) -> Result<Vec<Event>, PublishError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| PublishError::NotJson(e.to_string()))?;
    let Value::Object(obj) = &v else {
        return Err(PublishError::NotObject);
    };
    match obj.get("items") {
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let ev = item_event(item).map_err(|problem| PublishError::Item {
                    index: Some(i),
                    problem,
                })?;
                out.extend(ev);
            }
            Ok(out)
        }
        Some(_) => Err(PublishError::ItemsNotArray),
        None => Ok(item_event(&v)
            .map_err(|problem| PublishError::Item {
                index: None,
                problem,
            })?
            .into_iter()
            .collect()),
    }
}

fn str_field<'a>(item: &'a Value, name: &'static str) -> Result<Option<&'a str>, ItemProblem> {
    match item.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ItemProblem::NotString(name)),
    }
}

const GRIP_FORMATS: [&str; 3] = ["http-stream", "http-response", "ws-message"];

/// One item; None for a GRIP item with no `http-stream` format (other
/// transports, which this gateway does not serve).
fn item_event(item: &Value) -> Result<Option<Event>, ItemProblem> {
    if !item.is_object() {
        return Err(ItemProblem::NotObject);
    }
    let channel = str_field(item, "channel")?.ok_or(ItemProblem::Missing("channel"))?;
    channel::check(channel).map_err(ItemProblem::BadChannel)?;
    let dedupe_id = match str_field(item, "id")? {
        Some(id) if id.len() > 256 || id.contains(['\r', '\n', '\0']) => {
            return Err(ItemProblem::BadId)
        }
        other => other.map(str::to_string),
    };
    str_field(item, "prev-id")?;
    // GRIP formats sit under `formats` or, as gripcontrol sends them, directly on the item.
    let formats = item.get("formats").unwrap_or(item);
    let grip = item.get("formats").is_some() || GRIP_FORMATS.iter().any(|f| item.get(*f).is_some());
    if grip {
        let Some(stream) = formats.get("http-stream") else {
            return Ok(None);
        };
        let payload = if str_field(stream, "action")? == Some("close") {
            Payload::Close
        } else if let Some(content) = str_field(stream, "content")? {
            Payload::Raw(Bytes::copy_from_slice(content.as_bytes()))
        } else if let Some(b64) = str_field(stream, "content-bin")? {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| ItemProblem::BadBase64)?;
            Payload::Raw(Bytes::from(raw))
        } else {
            return Err(ItemProblem::NoContent);
        };
        return Ok(Some(Event::new(
            channel.to_string(),
            dedupe_id,
            payload,
            Source::Grip,
        )));
    }
    let event = str_field(item, "event")?.map(str::to_string);
    if let Some(e) = &event {
        check_event_name(e).map_err(ItemProblem::BadEvent)?;
        if channel::is_reserved_event(e) {
            return Err(ItemProblem::ReservedEvent(e.clone()));
        }
    }
    let data = match item.get("data") {
        None => return Err(ItemProblem::Missing("data")),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Ok(Some(Event::new(
        channel.to_string(),
        dedupe_id,
        Payload::Message { event, data },
        Source::Publish,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_single_and_items() {
        let e = parse(br#"{"channel":"a","event":"e","id":"x","data":{"k":[1, 2]}}"#).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].dedupe_id.as_deref(), Some("x"));
        match &e[0].payload {
            Payload::Message { event, data } => {
                assert_eq!(event.as_deref(), Some("e"));
                assert_eq!(data, r#"{"k":[1,2]}"#);
            }
            p => panic!("{p:?}"),
        }
        let e =
            parse(br#"{"items":[{"channel":"a","data":"1"},{"channel":"b","data":"2"}]}"#).unwrap();
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn grip_items() {
        let e = parse(br#"{"items":[{"channel":"a","id":"1","prev-id":"0","formats":{"http-stream":{"content":"data: x\n\n"}}},
            {"channel":"a","formats":{"http-stream":{"action":"close"}}},
            {"channel":"a","formats":{"ws-message":{"content":"x"}}},
            {"channel":"a","formats":{"http-stream":{"content-bin":"aGk="}}},
            {"channel":"a","http-stream":{"content":"data: flat\n\n"}},
            {"channel":"a","http-response":{"body":"x"}}]}"#)
        .unwrap();
        assert_eq!(e.len(), 4);
        assert!(matches!(&e[3].payload, Payload::Raw(b) if &b[..] == b"data: flat\n\n"));
        assert!(matches!(&e[0].payload, Payload::Raw(b) if &b[..] == b"data: x\n\n"));
        assert!(matches!(e[1].payload, Payload::Close));
        assert!(matches!(&e[2].payload, Payload::Raw(b) if &b[..] == b"hi"));
    }

    #[test]
    fn bad_bodies_say_why() {
        for (body, why) in [
            (
                &br#"{"channel":"a","event":"ssegate.reset","data":"x"}"#[..],
                "`ssegate.` namespace",
            ),
            (&b"nope"[..], "not JSON"),
            (br#"[]"#, "object"),
            (br#"{"data":"x"}"#, "`channel` is required"),
            (br#"{"channel":"a b","data":"x"}"#, "outside"),
            (br#"{"channel":"a","event":"x\ny","data":"x"}"#, "CR or LF"),
            (br#"{"channel":"a"}"#, "`data` is required"),
            (
                br#"{"items":[{"channel":"a","data":"x"},{"channel":5,"data":"x"}]}"#,
                "items[1]",
            ),
        ] {
            let e = parse(body).unwrap_err().to_string();
            assert!(e.contains(why), "{e} should mention {why}");
        }
    }
}
