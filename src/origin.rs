//! Where an event came from: the `source` label of
//! `ssegate_event_age_seconds` and of the dashboard's tail of recent events.
//! Carried from a source's `hub::Event` to every `hub::Delivery` of it, so
//! it is one byte.

/// The kind of input an event was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Source {
    /// `POST /publish` in the native format.
    Publish,
    /// `POST /publish/` items in Pushpin's GRIP format.
    Grip,
    /// A configured webhook.
    Webhook,
    /// A poller's change (or snapshot) of a legacy endpoint.
    Poll,
    /// A recorded backend stream (`record:` routes).
    Record,
    /// Frames the gateway makes itself (dashboard stats, poll snapshots sent
    /// to a new client, broker notices): not events of any source, so not
    /// counted in the event age.
    Gateway,
}

impl Source {
    /// The sources whose events are counted, in label order.
    pub const EVENTS: [Source; 5] = [
        Source::Publish,
        Source::Grip,
        Source::Webhook,
        Source::Poll,
        Source::Record,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Source::Publish => "publish",
            Source::Grip => "grip",
            Source::Webhook => "webhook",
            Source::Poll => "poll",
            Source::Record => "record",
            Source::Gateway => "gateway",
        }
    }

    /// The one-letter form used on the Redis wire.
    pub fn letter(self) -> u8 {
        match self {
            Source::Publish => b'p',
            Source::Grip => b'g',
            Source::Webhook => b'w',
            Source::Poll => b'o',
            Source::Record => b'r',
            Source::Gateway => b's',
        }
    }

    /// The inverse of `letter`; None for anything else.
    pub fn from_letter(b: u8) -> Option<Source> {
        [
            Source::Publish,
            Source::Grip,
            Source::Webhook,
            Source::Poll,
            Source::Record,
            Source::Gateway,
        ]
        .into_iter()
        .find(|s| s.letter() == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_are_distinct_and_round_trip() {
        for s in Source::EVENTS.into_iter().chain([Source::Gateway]) {
            assert_eq!(Source::from_letter(s.letter()), Some(s), "{s:?}");
        }
        assert_eq!(Source::from_letter(b'x'), None);
    }
}
