//! Resumable backend streams (`record:` on a proxy route, docs/record.md):
//! what a request on such a route asks for (a new reply, or the rest of a
//! recorded one), who asks (the digest of its credentials), and the writer
//! that reads a backend's SSE reply to its end into a record
//! (`hub::record`), whether or not a client still listens.

pub(crate) mod writer;

use crate::config::CredentialSource;
use crate::hub::record::{parse_event_id, Credentials, RecordId};
use crate::values::RequestValues;
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// What a request on a record route asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// No `Last-Event-ID`: a new request for the backend.
    New,
    /// The rest of record `id` after its event `after`.
    Resume { id: RecordId, after: u64 },
    /// A `Last-Event-ID` that is not one of ours: never sent to the backend.
    NotARecord,
}

/// `Last-Event-ID` (the header EventSource sends, or `?lastEventId=` for a
/// client that cannot set headers).
pub(crate) fn ask(values: &RequestValues<'_>) -> Ask {
    let last = values
        .header("last-event-id")
        .or_else(|| values.query("lastEventId"))
        .filter(|s| !s.trim().is_empty());
    match last {
        None => Ask::New,
        Some(s) => match parse_event_id(s) {
            Some((id, after)) => Ask::Resume { id, after },
            None => Ask::NotARecord,
        },
    }
}

/// The digest of what identifies the requester, salted with the record's
/// id: the store never holds a credential, and equal credentials of two
/// records do not look equal there. Each part is length-prefixed, so no two
/// different requests can run together into one input. A cookie header is
/// read as its cookies (HTTP/2 clients may split one `Cookie` header into
/// several), so the same browser matches over HTTP/1.1 and HTTP/2.
pub(crate) fn credentials(
    id: RecordId,
    headers: &HeaderMap,
    sources: &[CredentialSource],
) -> Credentials {
    let mut h = Sha256::new();
    h.update(b"ssegate record credentials v1\0");
    h.update(id.bytes());
    let part = |h: &mut Sha256, bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    for source in sources {
        match source {
            CredentialSource::Header(name) if name == "cookie" => {
                h.update(b"c");
                for (k, v) in cookies(headers) {
                    part(&mut h, k.as_bytes());
                    part(&mut h, v.as_bytes());
                }
            }
            CredentialSource::Header(name) => {
                h.update(b"h");
                part(&mut h, name.as_bytes());
                for v in headers.get_all(name.as_str()) {
                    part(&mut h, v.as_bytes());
                }
            }
            CredentialSource::Cookie(name) => {
                h.update(b"k");
                part(&mut h, name.as_bytes());
                if let Some((_, v)) = cookies(headers).find(|(k, _)| k == name) {
                    part(&mut h, v.as_bytes());
                }
            }
        }
        h.update(b";");
    }
    Credentials(h.finalize().into())
}

/// `name=value` pairs of every `Cookie` header, in order.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            Some((k.trim(), v.trim()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn both() -> Vec<CredentialSource> {
        vec![
            CredentialSource::Header("authorization".into()),
            CredentialSource::Header("cookie".into()),
        ]
    }

    #[test]
    fn same_requester_same_digest_across_cookie_splits() {
        let id = RecordId::random();
        let h1 = headers(&[
            ("authorization", "Bearer a"),
            ("cookie", "sid=1; theme=dark"),
        ]);
        let h2 = headers(&[
            ("authorization", "Bearer a"),
            ("cookie", "sid=1"),
            ("cookie", "theme=dark"),
        ]);
        assert!(credentials(id, &h1, &both()).matches(&credentials(id, &h2, &both())));
        let other = headers(&[
            ("authorization", "Bearer b"),
            ("cookie", "sid=1; theme=dark"),
        ]);
        assert!(!credentials(id, &h1, &both()).matches(&credentials(id, &other, &both())));
        let none = headers(&[]);
        let empty = headers(&[("authorization", "")]);
        assert!(!credentials(id, &none, &both()).matches(&credentials(id, &empty, &both())));
        // Salted: the same credentials digest differently for another record.
        let id2 = RecordId::random();
        assert!(!credentials(id, &h1, &both()).matches(&credentials(id2, &h1, &both())));
    }

    #[test]
    fn one_cookie_can_be_the_credential() {
        let id = RecordId::random();
        let sid = vec![CredentialSource::Cookie("sid".into())];
        let a = headers(&[("cookie", "sid=1; _ga=x")]);
        let b = headers(&[("cookie", "_ga=y; sid=1")]);
        let c = headers(&[("cookie", "_ga=x; sid=2")]);
        assert!(credentials(id, &a, &sid).matches(&credentials(id, &b, &sid)));
        assert!(!credentials(id, &a, &sid).matches(&credentials(id, &c, &sid)));
    }

    #[test]
    fn last_event_id_from_header_or_query() {
        let id = RecordId::random();
        let h = headers(&[("last-event-id", &id.event_id(10))]);
        let v = RequestValues::new(&[], None, &h);
        assert_eq!(ask(&v), Ask::Resume { id, after: 10 });
        let none = headers(&[]);
        let q = format!("lastEventId={}", id.event_id(3));
        let v = RequestValues::new(&[], Some(&q), &none);
        assert_eq!(ask(&v), Ask::Resume { id, after: 3 });
        let v = RequestValues::new(&[], None, &none);
        assert_eq!(ask(&v), Ask::New);
        let bad = headers(&[("last-event-id", "17a-4")]);
        let v = RequestValues::new(&[], None, &bad);
        assert_eq!(ask(&v), Ask::NotARecord);
    }
}
