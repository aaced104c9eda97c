//! SRTP with AEAD_AES_128_GCM (RFC 7714) for the send side, into a buffer the caller reuses.
//!
//! `rtc`'s SRTP context returns every protected packet in a new buffer, after the caller has
//! marshalled it into another: two copies and an allocation per packet per subscriber. Here
//! the packet is marshalled once into the caller's buffer and sealed in place, the tag
//! appended. The session key and salt come from the master key and salt by the AES-CM key
//! derivation of RFC 3711 §4.3 (key derivation rate 0), as every DTLS-SRTP stack does.

use rtc::crypto::{AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, RTCCrypto};
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::{Marshal, MarshalSize};

use super::EgressError;
use crate::munger::seq_is_older;

/// Master and session key length of AEAD_AES_128_GCM.
pub const KEY_LEN: usize = 16;
/// Master and session salt length of AEAD_AES_128_GCM.
pub const SALT_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Key derivation labels (RFC 3711 §4.3.1): the SRTP encryption key and salt.
const LABEL_ENCRYPTION: u8 = 0x00;
const LABEL_SALT: u8 = 0x02;

/// The SRTP send side of one connection.
pub struct GcmSender {
    aead: Box<dyn AeadCipher>,
    salt: [u8; SALT_LEN],
    /// The highest packet index sent on each SSRC: (rollover count, sequence number).
    sent: Vec<(u32, Index)>,
}

#[derive(Clone, Copy)]
struct Index {
    rollover: u32,
    sequence: u16,
}

impl GcmSender {
    /// Derives the session key and salt from the master key and salt.
    pub fn new(crypto: &dyn RTCCrypto, master_key: &[u8], master_salt: &[u8]) -> Result<Self, EgressError> {
        if master_key.len() != KEY_LEN || master_salt.len() != SALT_LEN {
            return Err(EgressError::Srtp(format!(
                "AES-128-GCM master key and salt of {} and {} bytes",
                master_key.len(),
                master_salt.len()
            )));
        }
        let key = derive(crypto, master_key, master_salt, LABEL_ENCRYPTION)?;
        let mut salt = [0; SALT_LEN];
        salt.copy_from_slice(&derive(crypto, master_key, master_salt, LABEL_SALT)?[..SALT_LEN]);
        let aead = crypto.new_aead(AeadAlgorithm::Aes128Gcm, &key).map_err(crypto_error)?;
        Ok(Self { aead, salt, sent: Vec::new() })
    }

    /// Writes `packet`, protected, into `out` (replacing what it held).
    pub fn protect(&mut self, packet: &Packet, out: &mut Vec<u8>) -> Result<(), EgressError> {
        let header_len = packet.header.marshal_size();
        let clear_len = packet.marshal_size();
        out.clear();
        out.resize(clear_len + TAG_LEN, 0);
        let written = packet.marshal_to(&mut out[..clear_len]).map_err(|e| EgressError::Srtp(e.to_string()))?;
        out.truncate(written + TAG_LEN);
        let ssrc = packet.header.ssrc;
        let rollover = self.rollover(ssrc, packet.header.sequence_number);
        let mut nonce = [0; SALT_LEN];
        nonce[2..6].copy_from_slice(&ssrc.to_be_bytes());
        nonce[6..10].copy_from_slice(&rollover.to_be_bytes());
        nonce[10..12].copy_from_slice(&packet.header.sequence_number.to_be_bytes());
        for (byte, salt) in nonce.iter_mut().zip(self.salt) {
            *byte ^= salt;
        }
        let (aad, rest) = out.split_at_mut(header_len);
        let (body, tag) = rest.split_at_mut(written - header_len);
        self.aead.seal_in_place(&nonce, aad, body, tag).map_err(crypto_error)
    }

    /// The rollover count of `sequence` on `ssrc` (RFC 3711 §3.3.1: the index nearest the
    /// highest sent, so a retransmission from before a wrap keeps its count), noting it if
    /// it is the new highest.
    fn rollover(&mut self, ssrc: u32, sequence: u16) -> u32 {
        let Some((_, highest)) = self.sent.iter_mut().find(|(s, _)| *s == ssrc) else {
            self.sent.push((ssrc, Index { rollover: 0, sequence }));
            return 0;
        };
        if seq_is_older(highest.sequence, sequence) {
            if sequence < highest.sequence {
                highest.rollover = highest.rollover.wrapping_add(1);
            }
            highest.sequence = sequence;
            highest.rollover
        } else if sequence > highest.sequence {
            highest.rollover.wrapping_sub(1)
        } else {
            highest.rollover
        }
    }

    /// Forgets the state of an SSRC no longer sent.
    pub fn remove(&mut self, ssrc: u32) {
        self.sent.retain(|(s, _)| *s != ssrc);
    }
}

/// One session key of `label` (RFC 3711 §4.3.3 with AES-128 in counter mode, one block).
fn derive(crypto: &dyn RTCCrypto, master_key: &[u8], master_salt: &[u8], label: u8) -> Result<[u8; KEY_LEN], EgressError> {
    let mut block = [0; KEY_LEN];
    block[..SALT_LEN].copy_from_slice(master_salt);
    block[7] ^= label;
    crypto.block_encrypt(BlockCipherAlgorithm::Aes128, master_key, &mut block).map_err(crypto_error)?;
    Ok(block)
}

fn crypto_error(err: rtc::crypto::CryptoError) -> EgressError {
    EgressError::Srtp(err.to_string())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rtc::rtp::header::{Extension, Header};
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
            ours.protect(&packet, &mut out).expect("protect");
            let expected = engine.encrypt_rtp(&packet.marshal().expect("marshal")).expect("engine");
            assert_eq!(out, expected.as_ref(), "ssrc {ssrc} seq {sequence}");
            let opened = receiver.decrypt_rtp(&out).expect("opened");
            assert!(opened.ends_with(b"a payload of some length"), "ssrc {ssrc} seq {sequence}");
        }
    }

    #[test]
    fn keys_of_the_wrong_length_are_refused() {
        let provider = rtc::crypto::default_provider().expect("provider");
        assert!(GcmSender::new(provider.crypto(), &[0; 32], &[0; SALT_LEN]).is_err());
        assert!(GcmSender::new(provider.crypto(), &[0; KEY_LEN], &[0; 14]).is_err());
    }
}
