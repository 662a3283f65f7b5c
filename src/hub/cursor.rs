//! Cursors: `<epoch hex>-<seq>`, the opaque `id:` of every event. The
//! epoch tells cursors of different histories apart (a restart without
//! persistence, a Redis that lost its data): a cursor of another epoch
//! cannot be resumed and gets `ssegate.reset`.

pub fn format(epoch: u64, seq: u64) -> String {
    Cursor(epoch, seq).to_string()
}

/// A cursor to write without a `String` of its own (history's replay).
#[derive(Debug, Clone, Copy)]
pub struct Cursor(pub u64, pub u64);

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{}", self.0, self.1)
    }
}

/// (epoch, seq), or None for anything that is not one of our cursors.
pub fn parse(s: &str) -> Option<(u64, u64)> {
    let (e, n) = s.trim().split_once('-')?;
    Some((u64::from_str_radix(e, 16).ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_garbage() {
        assert_eq!(super::parse(&super::format(0x19a, 42)), Some((0x19a, 42)));
        for bad in ["", "x", "1-", "-1", "zz-1", "1-x", "1-2-3"] {
            assert_eq!(super::parse(bad), None, "{bad}");
        }
    }
}
