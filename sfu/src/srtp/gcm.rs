//! SRTP with AEAD_AES_128_GCM (RFC 7714) in buffers the caller owns.
//!
//! `rtc`'s SRTP context returns every packet it protects or opens in a new buffer, after the
//! caller has marshalled it into another: two copies and an allocation per packet. Here a
//! packet to send is marshalled once into the caller's buffer and sealed in place, the tag
//! appended ([`GcmSender`]); a received datagram is opened in place in its own buffer
//! ([`GcmReceiver`], and [`GcmRtcpReceiver`] for SRTCP). The session key and salt come from the master key and salt by the
//! AES-CM key derivation of RFC 3711 §4.3 (key derivation rate 0), as every DTLS-SRTP stack
//! does.

use rtc::crypto::{AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, RTCCrypto};
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::{Marshal, MarshalSize};

use super::SrtpError;
use crate::munger::seq_is_older;

/// Master and session key length of AEAD_AES_128_GCM.
pub const KEY_LEN: usize = 16;
/// Master and session salt length of AEAD_AES_128_GCM.
pub const SALT_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Key derivation labels (RFC 3711 §4.3.1): the encryption key and salt of SRTP, then of
/// SRTCP.
const SRTP_LABELS: Labels = Labels { encryption: 0x00, salt: 0x02 };
const SRTCP_LABELS: Labels = Labels { encryption: 0x03, salt: 0x05 };
/// The RTCP header an SRTCP packet leaves in the clear: the first packet's fixed header and
/// sender SSRC.
const RTCP_HEADER_LEN: usize = 8;
/// The E flag and SRTCP index that end an SRTCP packet (RFC 3711 §3.4).
const SRTCP_INDEX_LEN: usize = 4;
/// Sender SSRCs whose SRTCP replay state is kept: a client sends its RTCP from one or two.
const MAX_RTCP_SOURCES: usize = 8;

/// The key derivation labels of one protocol's session key and salt.
struct Labels {
    encryption: u8,
    salt: u8,
}

/// The session key and salt of one direction of a connection.
struct Session {
    aead: Box<dyn AeadCipher>,
    salt: [u8; SALT_LEN],
}

impl Session {
    /// Derives the session key and salt of `labels` from the master key and salt.
    fn new(crypto: &dyn RTCCrypto, master_key: &[u8], master_salt: &[u8], labels: Labels) -> Result<Self, SrtpError> {
        if master_key.len() != KEY_LEN || master_salt.len() != SALT_LEN {
            return Err(SrtpError::Srtp(format!(
                "AES-128-GCM master key and salt of {} and {} bytes",
                master_key.len(),
                master_salt.len()
            )));
        }
        let key = derive(crypto, master_key, master_salt, labels.encryption)?;
        let mut salt = [0; SALT_LEN];
        salt.copy_from_slice(&derive(crypto, master_key, master_salt, labels.salt)?[..SALT_LEN]);
        Self::with_session_keys(crypto, &key, salt)
    }

    /// A session of this session key and salt (as derived, or as RFC 7714's vectors give them).
    fn with_session_keys(crypto: &dyn RTCCrypto, key: &[u8; KEY_LEN], salt: [u8; SALT_LEN]) -> Result<Self, SrtpError> {
        let aead = crypto.new_aead(AeadAlgorithm::Aes128Gcm, key).map_err(crypto_error)?;
        Ok(Self { aead, salt })
    }

    /// The IV of a packet (RFC 7714 §8.1): SSRC, rollover count and sequence number, XORed
    /// with the session salt.
    fn nonce(&self, ssrc: u32, index: Index) -> [u8; SALT_LEN] {
        let mut nonce = [0; SALT_LEN];
        nonce[2..6].copy_from_slice(&ssrc.to_be_bytes());
        nonce[6..10].copy_from_slice(&index.rollover.to_be_bytes());
        nonce[10..12].copy_from_slice(&index.sequence.to_be_bytes());
        self.salted(nonce)
    }

    /// The IV of an SRTCP packet (RFC 7714 §9.1): SSRC and SRTCP index, XORed with the
    /// session salt.
    fn rtcp_nonce(&self, ssrc: u32, srtcp_index: u32) -> [u8; SALT_LEN] {
        let mut nonce = [0; SALT_LEN];
        nonce[2..6].copy_from_slice(&ssrc.to_be_bytes());
        nonce[8..12].copy_from_slice(&srtcp_index.to_be_bytes());
        self.salted(nonce)
    }

    fn salted(&self, mut nonce: [u8; SALT_LEN]) -> [u8; SALT_LEN] {
        for (byte, salt) in nonce.iter_mut().zip(self.salt) {
            *byte ^= salt;
        }
        nonce
    }
}

/// A packet index (RFC 3711 §3.3.1): the rollover count and the sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Index {
    rollover: u32,
    sequence: u16,
}

impl Index {
    /// The index of `sequence` nearest this one, the highest seen on its SSRC (RFC 3711
    /// §3.3.1): a sequence number just past a wrap counts the next roll, one from before it
    /// the previous.
    fn nearest(self, sequence: u16) -> Self {
        let rollover = if seq_is_older(self.sequence, sequence) && sequence < self.sequence {
            self.rollover.wrapping_add(1)
        } else if seq_is_older(sequence, self.sequence) && sequence > self.sequence {
            self.rollover.wrapping_sub(1)
        } else {
            self.rollover
        };
        Self { rollover, sequence }
    }

    /// How many packets this index is past `other` (negative: before it). Rollover counts
    /// compare by wrapping distance, so a retransmission from before the first packet (count
    /// "-1") is behind it.
    fn since(self, other: Self) -> i64 {
        let rolls = i64::from(self.rollover.wrapping_sub(other.rollover) as i32);
        rolls * 65_536 + i64::from(self.sequence) - i64::from(other.sequence)
    }
}

/// The SRTP send side of one connection.
pub struct GcmSender {
    session: Session,
    /// The highest packet index sent on each SSRC.
    sent: Vec<(u32, Index)>,
}

impl GcmSender {
    /// Derives the session key and salt from the master key and salt.
    pub fn new(crypto: &dyn RTCCrypto, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpError> {
        Ok(Self { session: Session::new(crypto, master_key, master_salt, SRTP_LABELS)?, sent: Vec::new() })
    }

    /// Writes `packet`, protected, into `out` (replacing what it held).
    /// `edit` changes the clear packet (header, payload and any padding) before it is sealed.
    pub fn protect(&mut self, packet: &Packet, out: &mut Vec<u8>, edit: impl FnOnce(&mut [u8])) -> Result<(), SrtpError> {
        out.clear();
        out.resize(packet.marshal_size(), 0);
        let written = packet.marshal_to(out).map_err(|e| SrtpError::Srtp(e.to_string()))?;
        out.truncate(written);
        edit(out);
        self.seal(out, packet.header.marshal_size())
    }

    /// Seals the clear RTP packet in `out`, whose header is its first `header_len` octets, in
    /// place, and appends the tag.
    pub fn seal(&mut self, out: &mut Vec<u8>, header_len: usize) -> Result<(), SrtpError> {
        let written = out.len();
        if written < 12 || header_len < 12 || header_len > written {
            return Err(SrtpError::Srtp("not an RTP packet".into()));
        }
        let ssrc = u32::from_be_bytes([out[8], out[9], out[10], out[11]]);
        let index = self.index(ssrc, u16::from_be_bytes([out[2], out[3]]));
        let nonce = self.session.nonce(ssrc, index);
        out.resize(written + TAG_LEN, 0);
        let (aad, rest) = out.split_at_mut(header_len);
        let (body, tag) = rest.split_at_mut(written - header_len);
        self.session.aead.seal_in_place(&nonce, aad, body, tag).map_err(crypto_error)
    }

    /// The index of `sequence` on `ssrc` (the one nearest the highest sent, so a
    /// retransmission from before a wrap keeps its count), noted if it is the new highest.
    fn index(&mut self, ssrc: u32, sequence: u16) -> Index {
        let Some((_, highest)) = self.sent.iter_mut().find(|(s, _)| *s == ssrc) else {
            let index = Index { rollover: 0, sequence };
            self.sent.push((ssrc, index));
            return index;
        };
        let index = highest.nearest(sequence);
        if index.since(*highest) > 0 {
            *highest = index;
        }
        index
    }

    /// Forgets the state of an SSRC no longer sent.
    pub fn remove(&mut self, ssrc: u32) {
        self.sent.retain(|(s, _)| *s != ssrc);
    }
}

/// Packets up to the highest received on an SSRC that the replay window remembers: enough
/// for a retransmission on the media SSRC (a publisher without RTX answering a NACK) after a
/// keyframe's burst. A power of two that divides 2^16, so a packet's bit is its sequence
/// number's low bits.
pub const REPLAY_WINDOW: i64 = 1024;
const WINDOW_WORDS: usize = REPLAY_WINDOW as usize / 64;

/// What has been received on one SSRC: the highest index, and which of the
/// [`REPLAY_WINDOW`] indexes up to it were seen (a ring of bits by sequence number).
#[derive(Clone)]
struct Received {
    ssrc: u32,
    highest: Index,
    seen: [u64; WINDOW_WORDS],
}

impl Received {
    fn new(ssrc: u32, first: Index) -> Self {
        let mut received = Self { ssrc, highest: first, seen: [0; WINDOW_WORDS] };
        received.set(first.sequence, true);
        received
    }

    /// Whether the packet of `index` was received already, or is too old to tell.
    fn is_replay(&self, index: Index) -> bool {
        let behind = -index.since(self.highest);
        behind >= 0 && (behind >= REPLAY_WINDOW || self.get(index.sequence))
    }

    fn note(&mut self, index: Index) {
        let ahead = index.since(self.highest);
        if ahead > 0 {
            // The bits of the indexes passed over held those a window earlier: clear them.
            if ahead >= REPLAY_WINDOW {
                self.seen = [0; WINDOW_WORDS];
            }
            for step in 1..ahead.min(REPLAY_WINDOW) {
                self.set(self.highest.sequence.wrapping_add(step as u16), false);
            }
            self.highest = index;
        }
        if -ahead < REPLAY_WINDOW {
            self.set(index.sequence, true);
        }
    }

    fn get(&self, sequence: u16) -> bool {
        let bit = usize::from(sequence) % REPLAY_WINDOW as usize;
        self.seen[bit / 64] & (1 << (bit % 64)) != 0
    }

    fn set(&mut self, sequence: u16, seen: bool) {
        let bit = usize::from(sequence) % REPLAY_WINDOW as usize;
        if seen {
            self.seen[bit / 64] |= 1 << (bit % 64);
        } else {
            self.seen[bit / 64] &= !(1 << (bit % 64));
        }
    }
}

/// The SRTP receive side of one connection, with replay protection (RFC 3711 §3.3.2).
pub struct GcmReceiver {
    session: Session,
    received: Vec<Received>,
}

/// Where the parts of a datagram opened in place lie.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    /// The length of the RTP header, which stays as it was sent.
    pub header_len: usize,
    /// The end of the decrypted payload (with any RTP padding); the tag follows it.
    pub end: usize,
}

impl GcmReceiver {
    /// Derives the session key and salt from the master key and salt.
    pub fn new(crypto: &dyn RTCCrypto, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpError> {
        Ok(Self { session: Session::new(crypto, master_key, master_salt, SRTP_LABELS)?, received: Vec::new() })
    }

    /// Authenticates and decrypts the SRTP datagram in `buf` in place. A packet that fails
    /// authentication, is too short for its header and tag, or was received already is
    /// refused and leaves no trace.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Opened, SrtpError> {
        let header_len = rtp_header_len(buf).ok_or_else(|| SrtpError::Srtp("not an RTP header".into()))?;
        let end = buf
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&end| end >= header_len)
            .ok_or_else(|| SrtpError::Srtp("shorter than its header and tag".into()))?;
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let sequence = u16::from_be_bytes([buf[2], buf[3]]);
        let position = self.received.iter().position(|r| r.ssrc == ssrc);
        let index = match position {
            Some(at) => {
                let received = &self.received[at];
                let index = received.highest.nearest(sequence);
                if received.is_replay(index) {
                    return Err(SrtpError::Srtp(format!("replayed packet {sequence} on SSRC {ssrc}")));
                }
                index
            }
            None => Index { rollover: 0, sequence },
        };
        let nonce = self.session.nonce(ssrc, index);
        let (aad, rest) = buf.split_at_mut(header_len);
        let (body, tag) = rest.split_at_mut(end - header_len);
        self.session.aead.open_in_place(&nonce, aad, body, tag).map_err(crypto_error)?;
        match position {
            Some(at) => self.received[at].note(index),
            None => self.received.push(Received::new(ssrc, index)),
        }
        Ok(Opened { header_len, end })
    }

    /// Forgets the state of an SSRC no longer received.
    pub fn remove(&mut self, ssrc: u32) {
        self.received.retain(|r| r.ssrc != ssrc);
    }
}

/// The SRTCP receive side of one connection, with replay protection by SRTCP index.
pub struct GcmRtcpReceiver {
    session: Session,
    /// What was received from each sender SSRC, the SRTCP index read as a packet index.
    received: Vec<Received>,
}

impl GcmRtcpReceiver {
    /// Derives the SRTCP session key and salt from the master key and salt.
    pub fn new(crypto: &dyn RTCCrypto, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpError> {
        Ok(Self { session: Session::new(crypto, master_key, master_salt, SRTCP_LABELS)?, received: Vec::new() })
    }

    /// Authenticates and decrypts the SRTCP datagram in `buf` in place (RFC 7714 §9: the
    /// first 8 octets and the E flag with the SRTCP index are authenticated, the rest
    /// encrypted); returns the length of the clear compound RTCP packet it starts with. A
    /// packet that fails authentication, is too short, was sent unencrypted or was received
    /// already is refused and leaves no trace.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let trailer_at = buf
            .len()
            .checked_sub(SRTCP_INDEX_LEN)
            .filter(|&at| at >= RTCP_HEADER_LEN + TAG_LEN)
            .ok_or_else(|| SrtpError::Srtp("shorter than an SRTCP header, tag and index".into()))?;
        let trailer = u32::from_be_bytes([buf[trailer_at], buf[trailer_at + 1], buf[trailer_at + 2], buf[trailer_at + 3]]);
        if trailer >> 31 == 0 {
            return Err(SrtpError::Srtp("unencrypted SRTCP".into()));
        }
        let srtcp_index = trailer & 0x7FFF_FFFF;
        let index = Index { rollover: srtcp_index >> 16, sequence: srtcp_index as u16 };
        let ssrc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let position = self.received.iter().position(|r| r.ssrc == ssrc);
        if position.is_some_and(|at| self.received[at].is_replay(index)) {
            return Err(SrtpError::Srtp(format!("replayed SRTCP index {srtcp_index} from SSRC {ssrc}")));
        }
        let mut aad = [0; RTCP_HEADER_LEN + SRTCP_INDEX_LEN];
        aad[..RTCP_HEADER_LEN].copy_from_slice(&buf[..RTCP_HEADER_LEN]);
        aad[RTCP_HEADER_LEN..].copy_from_slice(&trailer.to_be_bytes());
        let nonce = self.session.rtcp_nonce(ssrc, srtcp_index);
        let end = trailer_at - TAG_LEN;
        let (body, tag) = buf[RTCP_HEADER_LEN..trailer_at].split_at_mut(end - RTCP_HEADER_LEN);
        self.session.aead.open_in_place(&nonce, &aad, body, tag).map_err(crypto_error)?;
        match position {
            Some(at) => self.received[at].note(index),
            None => {
                if self.received.len() == MAX_RTCP_SOURCES {
                    self.received.remove(0);
                }
                self.received.push(Received::new(ssrc, index));
            }
        }
        Ok(end)
    }
}

/// The length of the RTP header at the start of `buf` (RFC 3550 §5.1: the fixed part, the
/// CSRCs and the header extension), if `buf` holds one.
pub fn rtp_header_len(buf: &[u8]) -> Option<usize> {
    let first = *buf.first()?;
    if first >> 6 != 2 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(first & 0x0F);
    if first & 0x10 != 0 {
        let words = buf.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (len <= buf.len()).then_some(len)
}

/// One session key of `label` (RFC 3711 §4.3.3 with AES-128 in counter mode, one block).
fn derive(crypto: &dyn RTCCrypto, master_key: &[u8], master_salt: &[u8], label: u8) -> Result<[u8; KEY_LEN], SrtpError> {
    let mut block = [0; KEY_LEN];
    block[..SALT_LEN].copy_from_slice(master_salt);
    block[7] ^= label;
    crypto.block_encrypt(BlockCipherAlgorithm::Aes128, master_key, &mut block).map_err(crypto_error)?;
    Ok(block)
}

fn crypto_error(err: rtc::crypto::CryptoError) -> SrtpError {
    SrtpError::Srtp(err.to_string())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rtc::rtp::header::{Extension, Header};
    use rtc::shared::marshal::Unmarshal;
    use rtc::srtp::context::Context;
    use rtc::srtp::protection_profile::ProtectionProfile;

    use super::*;

    fn packet(ssrc: u32, sequence_number: u16, payload: &'static [u8]) -> Packet {
        Packet {
            header: Header {
                version: 2,
                payload_type: 96,
                ssrc,
                sequence_number,
                timestamp: u32::from(sequence_number) * 3000,
                csrc: vec![0xC5],
                extension: true,
                extension_profile: 0xBEDE,
                extensions: vec![Extension { id: 1, payload: Bytes::from_static(&[0x30]) }],
                ..Default::default()
            },
            payload: Bytes::from_static(payload),
        }
    }

    /// Every datagram is the one `rtc`'s own SRTP context writes for the same keys, and a
    /// receiver's context opens it: across a sequence-number wrap, a retransmission from
    /// before it, two SSRCs, header extensions and CSRCs.
    #[test]
    fn protects_as_the_engine_does_and_a_receiver_opens_it() {
        let provider = rtc::crypto::default_provider().expect("provider");
        let (key, salt) = ([7u8; KEY_LEN], [9u8; SALT_LEN]);
        let context = || Context::new(&key, &salt, ProtectionProfile::AeadAes128Gcm, None, None, provider.crypto()).expect("context");
        let (mut engine, mut receiver) = (context(), context());
        let mut ours = GcmSender::new(provider.crypto(), &key, &salt).expect("sender");
        let mut out = Vec::new();
        for (ssrc, sequence) in [(1, 65_534), (1, 65_535), (2, 100), (1, 0), (1, 1), (1, 65_535), (1, 2)] {
            let packet = packet(ssrc, sequence, b"a payload of some length");
            ours.protect(&packet, &mut out, |_| {}).expect("protect");
            let expected = engine.encrypt_rtp(&packet.marshal().expect("marshal")).expect("engine");
            assert_eq!(out, expected.as_ref(), "ssrc {ssrc} seq {sequence}");
            let opened = receiver.decrypt_rtp(&out).expect("opened");
            assert!(opened.ends_with(b"a payload of some length"), "ssrc {ssrc} seq {sequence}");
        }
    }

    /// What `rtc`'s context seals, ours opens in place to the same clear packet, across a
    /// wrap and reordering; a replay, a tampered packet and a truncated one are refused
    /// without disturbing what follows.
    #[test]
    fn opens_what_the_engine_seals_and_refuses_replays_and_forgeries() {
        let provider = rtc::crypto::default_provider().expect("provider");
        let (key, salt) = ([3u8; KEY_LEN], [5u8; SALT_LEN]);
        let mut sender = Context::new(&key, &salt, ProtectionProfile::AeadAes128Gcm, None, None, provider.crypto()).expect("context");
        let mut ours = GcmReceiver::new(provider.crypto(), &key, &salt).expect("receiver");
        let sealed: Vec<(u16, Vec<u8>)> = [65_533u16, 65_534, 65_535, 0, 1, 2]
            .into_iter()
            .map(|sequence| {
                let clear = packet(9, sequence, b"the publisher's media").marshal().expect("marshal");
                (sequence, sender.encrypt_rtp(&clear).expect("sealed").to_vec())
            })
            .collect();
        let open = |ours: &mut GcmReceiver, datagram: &[u8]| {
            let mut buf = datagram.to_vec();
            ours.open(&mut buf).map(|at| buf[..at.end].to_vec())
        };
        // In order but for 65_535 and 0 swapped, which is still within the window.
        for at in [0, 1, 3, 2, 4] {
            let (sequence, datagram) = &sealed[at];
            let clear = open(&mut ours, datagram).unwrap_or_else(|err| panic!("seq {sequence}: {err}"));
            assert_eq!(clear, packet(9, *sequence, b"the publisher's media").marshal().expect("marshal").to_vec());
        }
        assert!(open(&mut ours, &sealed[4].1).is_err(), "a replay is refused");
        let mut forged = sealed[5].1.clone();
        forged[20] ^= 1;
        assert!(open(&mut ours, &forged).is_err(), "a tampered payload fails authentication");
        assert!(open(&mut ours, &sealed[5].1[..20]).is_err(), "a datagram shorter than its tag");
        assert!(open(&mut ours, &sealed[5].1).is_ok(), "the genuine packet after the forgery");
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
    }

    /// RFC 7714 §16.1.1 and §16.1.2: the AEAD_AES_128_GCM vector (session key and salt given
    /// directly; SSRC 0x5501a0b2, sequence 0xf17b, rollover count 0) seals to the published
    /// packet and opens back to the clear one; a change to any byte of it is refused.
    #[test]
    fn rfc_7714_known_answers() {
        let provider = rtc::crypto::default_provider().expect("provider");
        let key: [u8; KEY_LEN] = hex("000102030405060708090a0b0c0d0e0f").try_into().expect("key");
        let salt: [u8; SALT_LEN] = hex("517569642070726f2071756f").try_into().expect("salt");
        let session = || Session::with_session_keys(provider.crypto(), &key, salt).expect("session");
        let clear = hex("8040f17b8041f8d35501a0b247616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573");
        let sealed = hex(concat!(
            "8040f17b8041f8d35501a0b2",
            "f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833",
            "899d7f27beb16a9152cf765ee4390cce",
        ));
        assert_eq!(session().nonce(0x5501_a0b2, Index { rollover: 0, sequence: 0xf17b }).to_vec(), hex("51753c6580c2726f20718414"));

        let mut sender = GcmSender { session: session(), sent: Vec::new() };
        let packet = Packet::unmarshal(&mut &clear[..]).expect("the vector's packet");
        let mut out = Vec::new();
        sender.protect(&packet, &mut out, |_| {}).expect("sealed");
        assert_eq!(out, sealed, "§16.1.1 encryption");

        let mut receiver = GcmReceiver { session: session(), received: Vec::new() };
        let mut buf = sealed.clone();
        let opened = receiver.open(&mut buf).expect("§16.1.2 decryption");
        assert_eq!(&buf[..opened.end], &clear[..]);
        for at in 0..sealed.len() {
            let mut forged = sealed.clone();
            forged[at] ^= 0x80;
            let mut fresh = GcmReceiver { session: session(), received: Vec::new() };
            assert!(fresh.open(&mut forged).is_err(), "byte {at} changed");
        }
    }

    /// What `rtc`'s context seals as SRTCP, ours opens in place to the same compound packet;
    /// a replay, a tampered packet, a truncated one and an unencrypted one are refused
    /// without disturbing what follows.
    #[test]
    fn opens_the_srtcp_the_engine_seals_and_refuses_replays_and_forgeries() {
        let provider = rtc::crypto::default_provider().expect("provider");
        let (key, salt) = ([4u8; KEY_LEN], [6u8; SALT_LEN]);
        let mut sender = Context::new(&key, &salt, ProtectionProfile::AeadAes128Gcm, None, None, provider.crypto()).expect("context");
        let mut ours = GcmRtcpReceiver::new(provider.crypto(), &key, &salt).expect("receiver");
        // A receiver report from SSRC 0x01020304 with one block, then a PLI.
        let clear = hex(concat!("81c90007010203040a0b0c0d00000005000012340000000a0000000000000000", "81ce000201020304aabbccdd"));
        let sealed: Vec<Vec<u8>> = (0..3).map(|_| sender.encrypt_rtcp(&clear).expect("sealed").to_vec()).collect();
        let open = |ours: &mut GcmRtcpReceiver, datagram: &[u8]| {
            let mut buf = datagram.to_vec();
            ours.open(&mut buf).map(|end| buf[..end].to_vec())
        };
        assert_eq!(open(&mut ours, &sealed[1]).expect("second"), clear);
        assert_eq!(open(&mut ours, &sealed[0]).expect("first, late"), clear);
        assert!(open(&mut ours, &sealed[1]).is_err(), "a replay is refused");
        let mut forged = sealed[2].clone();
        forged[10] ^= 1;
        assert!(open(&mut ours, &forged).is_err(), "a tampered payload fails authentication");
        let mut reindexed = sealed[2].clone();
        let last = reindexed.len() - 1;
        reindexed[last] ^= 1;
        assert!(open(&mut ours, &reindexed).is_err(), "the index is authenticated");
        let mut unencrypted = sealed[2].clone();
        unencrypted[last - 3] &= 0x7F;
        assert!(open(&mut ours, &unencrypted).is_err(), "the E flag cleared");
        assert!(open(&mut ours, &sealed[2][..27]).is_err(), "shorter than a header, tag and index");
        assert_eq!(open(&mut ours, &sealed[2]).expect("the genuine packet after the forgeries"), clear);
    }

    /// A late packet within the window is taken once; one beyond it is refused; a bit reused
    /// a window later starts clear.
    #[test]
    fn the_replay_window_spans_a_keyframe_burst() {
        let index = |value: u32| Index { rollover: value >> 16, sequence: value as u16 };
        let mut received = Received::new(1, index(65_000));
        for value in (65_001..67_000).filter(|v| *v != 66_500 && *v != 65_900) {
            assert!(!received.is_replay(index(value)), "{value}");
            received.note(index(value));
        }
        assert!(!received.is_replay(index(66_500)), "499 behind, never received");
        received.note(index(66_500));
        assert!(received.is_replay(index(66_500)), "now a replay");
        assert!(received.is_replay(index(66_998)), "received");
        assert!(received.is_replay(index(65_900)), "1 099 behind: too old to tell, refused");
        // 67_000 + 1_024 uses the bit of 67_000, which was never set; nor was 67_000's.
        assert!(!received.is_replay(index(68_024)));
        received.note(index(68_024));
        assert!(!received.is_replay(index(67_100)), "inside the window, its bit cleared on the way");
        assert!(!received.is_replay(index(68_023)), "the bit 66_999 left behind is cleared by the jump");
    }

    #[test]
    fn header_lengths_count_csrcs_and_the_extension() {
        let with_both = packet(1, 1, b"x").marshal().expect("marshal");
        assert_eq!(rtp_header_len(&with_both), Some(packet(1, 1, b"x").header.marshal_size()));
        assert_eq!(rtp_header_len(&with_both[..15]), None, "cut inside the extension");
        assert_eq!(rtp_header_len(&[0x80; 11]), None);
        assert_eq!(rtp_header_len(&[0x40; 12]), None, "version 1");
    }

    #[test]
    fn keys_of_the_wrong_length_are_refused() {
        let provider = rtc::crypto::default_provider().expect("provider");
        assert!(GcmSender::new(provider.crypto(), &[0; 32], &[0; SALT_LEN]).is_err());
        assert!(GcmSender::new(provider.crypto(), &[0; KEY_LEN], &[0; 14]).is_err());
    }
}
