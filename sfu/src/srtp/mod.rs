//! SRTP of our own for forwarded media, keyed from the connection's DTLS handshake.
//!
//! The engine keeps its SRTP contexts to itself, and every packet through them passes all
//! the stages of its pipeline. The worker instead protects what it sends ([`crate::egress`])
//! and opens what publishers send ([`crate::ingress`]) itself: AEAD AES-128-GCM (RFC 7714)
//! in place in the caller's buffer ([`gcm`]), other profiles through an `rtc` SRTP context,
//! with keys from the same DTLS-SRTP exporter output as the engine's ([`keys`]). RTCP still
//! goes through the engine, whose SRTCP context shares the master keys.

pub mod gcm;
pub mod keys;

use std::time::Instant;

use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::peer_connection::RTCPeerConnection;
use rtc::srtp::config::Config;
use rtc::srtp::protection_profile::ProtectionProfile;
use rtc::statistics::StatsSelector;

pub use keys::KeyCapture;

/// Why SRTP could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    /// DTLS has not given the connection its keys yet, or the client's address is unknown.
    #[error("the connection is not connected yet")]
    NotConnected,
    /// The packet or the keys were refused (authentication failed, a replay, key lengths).
    #[error("SRTP: {0}")]
    Srtp(String),
}

/// The SRTP configuration of a connected connection: the profile DTLS settled and both
/// directions' master keys and salts (`local` protects what the server sends, `remote` opens
/// what the client sends), split from the exporter output `capture` saw (RFC 5764 §4.2) with
/// the profile and DTLS role `pc` (the connection built with `capture`) settled, as its
/// statistics give them.
pub fn connection_keys(now: Instant, pc: &mut RTCPeerConnection, capture: &KeyCapture) -> Result<Config, SrtpError> {
    let stats = pc.get_stats(now, StatsSelector::None);
    let transport = stats.transport().ok_or(SrtpError::NotConnected)?;
    let profile =
        profile_named(&transport.srtp_cipher).ok_or_else(|| SrtpError::Srtp(format!("no profile {:?}", transport.srtp_cipher)))?;
    let dtls_client = transport.dtls_role == RTCDtlsRole::Client;
    let mut config = Config { profile, ..Default::default() };
    let exported = capture.exported();
    let material = exported.get(..config.keying_material_len()).ok_or(SrtpError::NotConnected)?;
    config.set_session_keys_from_keying_material(material, dtls_client).map_err(srtp)?;
    Ok(config)
}

/// An `rtc` failure as an [`SrtpError`].
pub(crate) fn srtp(err: impl std::fmt::Display) -> SrtpError {
    SrtpError::Srtp(err.to_string())
}

/// The engine's protection profile of a DTLS-SRTP profile name as its statistics give it.
fn profile_named(name: &str) -> Option<ProtectionProfile> {
    match name {
        "SRTP_AEAD_AES_128_GCM" => Some(ProtectionProfile::AeadAes128Gcm),
        "SRTP_AEAD_AES_256_GCM" => Some(ProtectionProfile::AeadAes256Gcm),
        "SRTP_AES128_CM_HMAC_SHA1_80" => Some(ProtectionProfile::Aes128CmHmacSha1_80),
        "SRTP_AES128_CM_HMAC_SHA1_32" => Some(ProtectionProfile::Aes128CmHmacSha1_32),
        _ => None,
    }
}
