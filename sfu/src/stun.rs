//! Just enough STUN (RFC 8489) to demultiplex and authenticate connectivity checks before
//! the engine sees them: the local ICE ufrag of a binding request, its MESSAGE-INTEGRITY
//! under the connection's password, and whether it nominates the pair (USE-CANDIDATE).

use ring::hmac;

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const HEADER_LEN: usize = 20;
/// An HMAC-SHA1 tag.
const INTEGRITY_LEN: usize = 20;

/// Whether a datagram is a STUN message (RFC 7983 demultiplexing plus the magic cookie).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] < 4 && datagram[4..8] == MAGIC_COOKIE
}

/// The attributes of a STUN message as (type, offset of the attribute in the message,
/// value), in order; the walk stops at the first attribute that does not fit.
fn attributes(datagram: &[u8]) -> impl Iterator<Item = (u16, usize, &[u8])> {
    let body_len = if is_stun(datagram) { usize::from(u16::from_be_bytes([datagram[2], datagram[3]])) } else { 0 };
    let end = (HEADER_LEN + body_len).min(datagram.len());
    let mut offset = HEADER_LEN;
    std::iter::from_fn(move || {
        let header = datagram.get(offset..offset + 4).filter(|_| offset + 4 <= end)?;
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let value = datagram.get(offset + 4..offset + 4 + len).filter(|_| offset + 4 + len <= end)?;
        let at = offset;
        offset += 4 + ((len + 3) & !3);
        Some((kind, at, value))
    })
}

/// The local (first) half of the USERNAME attribute `local:remote` of a STUN message.
pub fn local_ufrag(datagram: &[u8]) -> Option<&str> {
    let (_, _, username) = attributes(datagram).find(|(kind, _, _)| *kind == ATTR_USERNAME)?;
    std::str::from_utf8(username).ok()?.split(':').next()
}

/// Whether a STUN message carries USE-CANDIDATE: the controlling agent nominates the pair
/// it arrived on.
pub fn nominates(datagram: &[u8]) -> bool {
    attributes(datagram).take_while(|(kind, _, _)| *kind != ATTR_MESSAGE_INTEGRITY).any(|(kind, _, _)| kind == ATTR_USE_CANDIDATE)
}

/// The short-term credential key of an ICE password (RFC 8489 §9.1.1; ICE passwords are
/// plain ASCII, which SASLprep leaves as it is).
pub fn integrity_key(password: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes())
}

/// Whether a STUN message's MESSAGE-INTEGRITY is the HMAC-SHA1 of the message before it
/// under `key` (RFC 8489 §14.5: the header's length covers up to the end of the attribute).
/// A message without one fails.
pub fn integrity_holds(datagram: &[u8], key: &hmac::Key) -> bool {
    let Some((_, at, tag)) = attributes(datagram).find(|(kind, _, _)| *kind == ATTR_MESSAGE_INTEGRITY) else { return false };
    if tag.len() != INTEGRITY_LEN {
        return false;
    }
    let Ok(covered_len) = u16::try_from(at + 4 + INTEGRITY_LEN - HEADER_LEN) else { return false };
    let mut header = [0; HEADER_LEN];
    header.copy_from_slice(&datagram[..HEADER_LEN]);
    header[2..4].copy_from_slice(&covered_len.to_be_bytes());
    let mut context = hmac::Context::with_key(key);
    context.update(&header);
    context.update(&datagram[HEADER_LEN..at]);
    // Compared in constant time: every byte is looked at whatever the first difference.
    context.sign().as_ref().iter().zip(tag).fold(0, |differ, (a, b)| differ | (a ^ b)) == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A binding request from `username` with an attribute before USERNAME (padding
    /// exercised), USE-CANDIDATE if `nominate`, and MESSAGE-INTEGRITY under `password`.
    pub(crate) fn binding_request(username: &[u8], password: &str, nominate: bool) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&[0x80, 0x2A, 0x00, 0x03, 1, 2, 3, 0]);
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        if nominate {
            attrs.extend_from_slice(&[0x00, 0x25, 0x00, 0x00]);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&((attrs.len() + 24) as u16).to_be_bytes());
        msg.extend_from_slice(&MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attrs);
        let tag = hmac::sign(&integrity_key(password), &msg);
        msg.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        msg.extend_from_slice(&(INTEGRITY_LEN as u16).to_be_bytes());
        msg.extend_from_slice(tag.as_ref());
        msg
    }

    #[test]
    fn finds_the_local_ufrag() {
        assert_eq!(local_ufrag(&binding_request(b"serverUfrag:clientUfrag", "pw", false)), Some("serverUfrag"));
    }

    #[test]
    fn rejects_truncated_and_non_stun_input() {
        let mut msg = binding_request(b"abc:def", "pw", false);
        msg.truncate(30);
        assert_eq!(local_ufrag(&msg), None);
        assert_eq!(local_ufrag(&[0x80, 0x60, 0, 1]), None);
        assert_eq!(local_ufrag(&[]), None);
        assert!(!integrity_holds(&msg, &integrity_key("pw")));
    }

    #[test]
    fn integrity_holds_under_the_password_only() {
        let msg = binding_request(b"abc:def", "secret-password", true);
        assert!(integrity_holds(&msg, &integrity_key("secret-password")));
        assert!(!integrity_holds(&msg, &integrity_key("other-password")));
        let mut tampered = msg.clone();
        tampered[HEADER_LEN + 12] ^= 1; // the username
        assert!(!integrity_holds(&tampered, &integrity_key("secret-password")));
        assert!(nominates(&msg));
        assert!(!nominates(&binding_request(b"abc:def", "pw", false)));
    }

    #[test]
    fn a_message_without_integrity_fails() {
        let mut msg = binding_request(b"abc:def", "pw", false);
        msg.truncate(msg.len() - 24);
        let body = (msg.len() - HEADER_LEN) as u16;
        msg[2..4].copy_from_slice(&body.to_be_bytes());
        assert_eq!(local_ufrag(&msg), Some("abc"));
        assert!(!integrity_holds(&msg, &integrity_key("pw")));
    }
}
