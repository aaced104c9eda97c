//! Newtype identifiers for the objects of the media plane.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a string as this id.
            pub fn new(value: impl Into<Arc<str>>) -> Self {
                Self(value.into())
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A room (a meeting's media session); rooms are owned by exactly one worker.
    RoomId
);
string_id!(
    /// A participant of a room: one signaling session with its two peer connections.
    ParticipantId
);
/// A participant as the packet path knows it: a number given when it joins the media plane
/// and never given again on the node, so a stale one finds nothing rather than someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantKey(u64);

impl ParticipantKey {
    /// A key not handed out before on this node.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for ParticipantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A published track, unique on the node: a number counted from a random start, so ids of
/// one run do not repeat those of the last. Written `TR_` and 16 hex digits, an RFC 8830
/// token, which is how it appears in the protocol and in the `a=msid` of subscriber offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(u64);

/// The prefix of a track id's text.
const TRACK_PREFIX: &str = "TR_";

impl TrackId {
    /// A track id not handed out before on this node.
    pub fn next() -> Self {
        static NEXT: OnceLock<AtomicU64> = OnceLock::new();
        Self(NEXT.get_or_init(|| AtomicU64::new(rand::random::<u64>() >> 1)).fetch_add(1, Ordering::Relaxed))
    }

    /// Reads a track id from its text; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.strip_prefix(TRACK_PREFIX).filter(|d| d.len() == 16)?;
        u64::from_str_radix(digits, 16).ok().map(Self)
    }
}

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TRACK_PREFIX}{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_track_id_reads_back_from_its_text_and_nothing_else_does() {
        let (a, b) = (TrackId::next(), TrackId::next());
        assert_ne!(a, b);
        assert_eq!(TrackId::parse(&a.to_string()), Some(a));
        assert!(a.to_string().bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'), "an RFC 8830 token: {a}");
        for text in ["", "TR_", "TR_12", "tr_0000000000000001", "TR_000000000000000g", "alice/cam", "TR_00000000000000001"] {
            assert_eq!(TrackId::parse(text), None, "{text}");
        }
    }
}
