//! Newtype identifiers for the objects of the media plane.

use std::fmt;
use std::sync::Arc;

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
string_id!(
    /// A published track, unique on the node: `<participant>/<publisher's track id>`.
    TrackId
);
