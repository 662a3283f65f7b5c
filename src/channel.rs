//! Channel names and patterns: the alphabet every channel is checked
//! against, `*` patterns (`allow_channels`, a JWT's channels claim), and the
//! names the gateway keeps for itself.
//!
//! Everything a client sends that ends up in a channel name goes through
//! `check`, so no input can widen or merge a subscription (`*`, `,`, `..`,
//! newlines and empty values are all outside the alphabet or refused).

use std::fmt;

/// Every poll channel starts with this; clients can never subscribe to it by name.
pub const POLL_PREFIX: &str = "poll:";

/// Event names in this namespace are the gateway's own (`ssegate.reset`,
/// `ssegate.expired`): sources may not publish them.
pub const RESERVED_EVENT_PREFIX: &str = "ssegate.";

/// Longest channel name, in bytes.
pub const MAX_LEN: usize = 256;

/// Characters allowed in a channel name.
pub fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')
}

/// Why a name is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    Empty,
    TooLong,
    /// A character outside `[A-Za-z0-9_.:@-]`.
    BadChar {
        name: String,
        ch: char,
    },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Empty => f.write_str("empty channel name"),
            ChannelError::TooLong => write!(f, "channel name longer than {MAX_LEN} bytes"),
            ChannelError::BadChar { name, ch } => {
                write!(
                    f,
                    "channel name {name:?} has {ch:?}, outside [A-Za-z0-9_.:@-]"
                )
            }
        }
    }
}

impl std::error::Error for ChannelError {}

/// A whole channel name is non-empty, within the alphabet and at most 256 bytes.
pub fn check(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_LEN {
        return Err(ChannelError::TooLong);
    }
    match name.chars().find(|c| !is_channel_char(*c)) {
        Some(ch) => Err(ChannelError::BadChar {
            name: name.to_string(),
            ch,
        }),
        None => Ok(()),
    }
}

/// Whether an event name belongs to the gateway (`ssegate.*`).
pub fn is_reserved_event(name: &str) -> bool {
    name.starts_with(RESERVED_EVENT_PREFIX)
}

/// `news:*` style: `*` matches any run of channel characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPattern(pub String);

impl ChannelPattern {
    /// Linear in the name's length for a given pattern: the pattern is cut
    /// at its `*`s and each literal piece is found left to right, which is
    /// enough when `*` is the only wildcard (no backtracking, so a pattern
    /// like `*:*:*:*:z` cannot stall a worker on a long name).
    pub fn matches(&self, name: &str) -> bool {
        let mut pieces = self.0.split('*');
        let first = pieces.next().unwrap_or_default();
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let middle: Vec<&str> = pieces.collect();
        let Some((last, middle)) = middle.split_last() else {
            // No `*`: the name must be the pattern exactly.
            return rest.is_empty();
        };
        for piece in middle {
            match rest.find(piece) {
                Some(i) => rest = &rest[i + piece.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        ChannelPattern(p.into()).matches(s)
    }

    #[test]
    fn patterns() {
        assert!(m("news:*", "news:sport"));
        assert!(m("news:*", "news:"));
        assert!(!m("news:*", "newsx"));
        assert!(m("a:*:b", "a:x:y:b"));
        assert!(!m("exact", "exactly"));
        assert!(m("exact", "exact"));
        assert!(m("*", ""));
        assert!(m("*a*a", "aa"));
        assert!(!m("*a*a", "a"));
        assert!(m("a*b*c", "abc"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("**", "x"));
        assert!(!m("ab*ba", "aba"), "prefix and suffix may not overlap");
    }

    #[test]
    fn many_stars_are_fast() {
        let long = ":".repeat(150);
        let t = std::time::Instant::now();
        for _ in 0..100 {
            assert!(!m("*:*:*:*:*:z", &long));
        }
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn names() {
        assert!(check("order:42").is_ok());
        assert_eq!(check(""), Err(ChannelError::Empty));
        assert!(matches!(
            check("a b"),
            Err(ChannelError::BadChar { ch: ' ', .. })
        ));
        assert_eq!(check(&"x".repeat(257)), Err(ChannelError::TooLong));
        assert!(is_reserved_event("ssegate.reset") && !is_reserved_event("reset"));
    }
}
