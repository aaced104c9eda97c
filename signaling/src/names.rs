//! Room names and identities as the server accepts them. Both arrive in tokens and end up in
//! log lines, state-store keys, database rows, object keys and URL paths: a control character
//! could forge a log line, a `/` would change an object's path. They are checked wherever a
//! token is issued or verified ([`crate::auth::TokenAuthority`]), so nothing past that gate
//! sees another kind.

/// The longest room name, in bytes.
pub const MAX_ROOM_BYTES: usize = 64;
/// The longest identity or display name, in bytes.
pub const MAX_IDENTITY_BYTES: usize = 128;

/// Why a name was refused.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// A room name outside `[A-Za-z0-9_.-]{1,64}`, or one starting with `.`.
    #[error("a room name is 1 to 64 letters, digits, `-`, `_` or `.`, and does not start with `.`")]
    Room,
    /// An identity or display name that is empty, too long, padded with spaces or holds a
    /// control character.
    #[error("the {0} must be 1 to 128 bytes, without control characters or leading and trailing spaces")]
    Identity(&'static str),
}

/// Checks a room name.
pub fn check_room(room: &str) -> Result<(), NameError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let ok = !room.is_empty() && room.len() <= MAX_ROOM_BYTES && !room.starts_with('.') && room.bytes().all(allowed);
    ok.then_some(()).ok_or(NameError::Room)
}

/// Checks an identity or a display name; `what` names it in the refusal.
pub fn check_identity(what: &'static str, identity: &str) -> Result<(), NameError> {
    let ok = !identity.is_empty()
        && identity.len() <= MAX_IDENTITY_BYTES
        && identity.trim() == identity
        && !identity.chars().any(char::is_control);
    ok.then_some(()).ok_or(NameError::Identity(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_short_plain_and_path_safe() {
        for good in ["demo", "ops-room", "Room_2.b", &"r".repeat(MAX_ROOM_BYTES)] {
            assert_eq!(check_room(good), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "a\nb", "caf\u{e9}", &"r".repeat(MAX_ROOM_BYTES + 1)] {
            assert_eq!(check_room(bad), Err(NameError::Room), "{bad:?}");
        }
    }

    #[test]
    fn identities_hold_no_control_characters() {
        for good in ["alice", "Ann Smith", "bob@example.com", "Zo\u{eb}", &"i".repeat(MAX_IDENTITY_BYTES)] {
            assert_eq!(check_identity("identity", good), Ok(()), "{good}");
        }
        let forged = "eve\nINFO admin action operation=close_room\u{1b}[0m";
        for bad in ["", " alice", "alice ", "a\tb", forged, "\u{85}", &"i".repeat(MAX_IDENTITY_BYTES + 1)] {
            assert_eq!(check_identity("identity", bad), Err(NameError::Identity("identity")), "{bad:?}");
        }
    }
}
