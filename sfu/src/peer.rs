//! Construction of the server side of a peer connection on the `rtc` engine.
//!
//! Every connection is ICE-lite with host candidates on its worker's one UDP port, then
//! (where the node has one) passive TCP candidates on the node's ICE-TCP port, and offers the configured SRTP profiles (AEAD AES-GCM by default, see [`SrtpProfile`]). The
//! engine carries ICE, DTLS and RTCP; the worker opens publishers' media and sends their
//! feedback ([`crate::ingress`]), and protects and sends subscribers' media
//! ([`crate::egress`]), with the SRTP keys each connection's crypto provider sees.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::{Registry, Slot};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpHeaderExtensionCapability, RtpCodecKind, TYPE_RTCP_FB_TRANSPORT_CC};
use rtc::sdp::extmap::{AUDIO_LEVEL_URI, SDES_MID_URI, SDES_REPAIR_RTP_STREAM_ID_URI, SDES_RTP_STREAM_ID_URI, TRANSPORT_CC_URI};

use crate::feedback_tap::{publisher_feedback, FeedbackTap};
use crate::srtp::KeyCapture;
use crate::SfuError;

/// Chain position of the feedback tap: past every built-in slot, before the terminus.
pub(crate) const FEEDBACK_TAP_SLOT: usize = 20_000;

/// Which of a participant's two connections a peer connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// The client offers and sends its media on it.
    Publisher,
    /// The server offers and sends the room's media on it.
    Subscriber,
}

/// A freshly built connection and the ICE username fragment that demultiplexes it.
pub struct NewPeer {
    /// The connection.
    pub pc: RTCPeerConnection,
    /// The local ICE ufrag: the first half of the STUN USERNAME the client sends.
    pub ufrag: String,
    /// The local ICE password, the key of the client's checks' MESSAGE-INTEGRITY.
    pub password: String,
    /// The connection's crypto provider, which sees its SRTP keys (see [`crate::srtp`]).
    pub keys: Arc<KeyCapture>,
}

/// An SRTP protection profile the server accepts.
///
/// The DTLS server takes the client's first choice among the profiles both sides list, and
/// browsers list AES-CM-HMAC-SHA1-80 before AEAD AES-128-GCM; so GCM, which costs less than
/// half the CPU per packet (`benches/forwarding.rs`), is only used when SHA1-80 is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpProfile {
    /// SRTP_AEAD_AES_128_GCM.
    AeadAes128Gcm,
    /// SRTP_AES128_CM_HMAC_SHA1_80, the profile every WebRTC stack supports.
    Aes128CmHmacSha1_80,
}

impl SrtpProfile {
    fn dtls(self) -> SrtpProtectionProfile {
        match self {
            Self::AeadAes128Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            Self::Aes128CmHmacSha1_80 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        }
    }
}

/// What every server-side connection of a worker shares.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    /// The worker's index, which every local ufrag starts with (see [`worker_of_ufrag`]).
    pub worker: usize,
    /// Host candidates: the announced addresses with the worker's port.
    pub candidates: Vec<SocketAddr>,
    /// Passive TCP host candidates: the announced addresses with the node's ICE-TCP port
    /// (none without one). Their priority is below every UDP candidate's.
    pub tcp_candidates: Vec<SocketAddr>,
    /// SRTP profiles offered to clients.
    pub srtp_profiles: Vec<SrtpProfile>,
}

/// Digits of the worker index a local ufrag starts with; workers are numbered below
/// [`MAX_WORKERS`].
const UFRAG_WORKER_DIGITS: usize = 3;
/// Workers a node may run: as many as a ufrag's leading digits number.
pub const MAX_WORKERS: usize = 1000;

/// The worker whose connection a local ufrag names: the node's ICE-TCP port reads it from a
/// stream's first connectivity check to hand the stream to that worker. (The ufrag is sent in
/// the clear in every check anyway; the password, which authenticates them, is not.)
pub fn worker_of_ufrag(ufrag: &str) -> Option<usize> {
    let digits = ufrag.get(..UFRAG_WORKER_DIGITS)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Builds a server-side connection.
/// Its ICE credentials come from `rng`, which must be a cryptographic one in production.
pub fn build_peer(now: Instant, role: PeerRole, shared: &PeerSettings, rng: &mut impl Rng) -> Result<NewPeer, SfuError> {
    let ufrag = format!("{:0width$}{}", shared.worker % MAX_WORKERS, Alphanumeric.sample_string(rng, 13), width = UFRAG_WORKER_DIGITS);
    let password = Alphanumeric.sample_string(rng, 32);
    let keys = Arc::new(KeyCapture::new(rtc::crypto::default_provider().map_err(engine)?));
    let settings = SettingEngineBuilder::new()
        .with_crypto_provider(keys.clone())
        .with_lite(true)
        .with_ice_credentials(ufrag.clone(), password.clone())
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_srtp_protection_profiles(shared.srtp_profiles.iter().map(|p| p.dtls()).collect())
        .build();
    let mut media = MediaEngine::default();
    media.register_default_codecs().map_err(engine)?;
    for parameter in ["", "pli"] {
        media.register_feedback(RTCPFeedback { typ: "nack".to_owned(), parameter: parameter.to_owned() }, RtpCodecKind::Video);
    }
    // Transport-wide feedback, both ways: publishers' browsers estimate their uplink from the
    // worker's ingress's, the egress estimates each subscriber's downlink from its browser's.
    // No interceptors: the worker's ingress and egress do their work.
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        media.register_feedback(RTCPFeedback { typ: TYPE_RTCP_FB_TRANSPORT_CC.to_owned(), parameter: String::new() }, kind);
        let extension = RTCRtpHeaderExtensionCapability { uri: TRANSPORT_CC_URI.to_owned() };
        media.register_header_extension(extension, kind, None).map_err(engine)?;
    }
    if role == PeerRole::Publisher {
        // Simulcast layers are told apart by their RID (RFC 8852); rtc binds a layer's SSRC
        // to its RID from these extensions on its first packets.
        for uri in [SDES_MID_URI, SDES_RTP_STREAM_ID_URI, SDES_REPAIR_RTP_STREAM_ID_URI] {
            let extension = RTCRtpHeaderExtensionCapability { uri: uri.to_owned() };
            media.register_header_extension(extension, RtpCodecKind::Video, None).map_err(engine)?;
        }
        // The level of each audio packet, for the active speakers.
        let extension = RTCRtpHeaderExtensionCapability { uri: AUDIO_LEVEL_URI.to_owned() };
        media.register_header_extension(extension, RtpCodecKind::Audio, None).map_err(engine)?;
    }
    // A subscriber connection's RTCP is opened by its egress and never reaches the engine's
    // read path, so its tap lets nothing through.
    let wanted: fn(&dyn rtc::rtcp::Packet) -> bool = match role {
        PeerRole::Subscriber => |_| false,
        PeerRole::Publisher => publisher_feedback,
    };
    let registry = Registry::new().with(Slot::Custom(FEEDBACK_TAP_SLOT), FeedbackTap::delivering(wanted));
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(engine)?;
    let udp = shared.candidates.iter().map(|addr| HostCandidate::Udp(*addr));
    let tcp = shared.tcp_candidates.iter().map(|addr| HostCandidate::PassiveTcp(*addr));
    add_host_candidates(&mut pc, &udp.chain(tcp).collect::<Vec<_>>())?;
    Ok(NewPeer { pc, ufrag, password, keys })
}

/// A host candidate of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCandidate {
    /// UDP at this address.
    Udp(SocketAddr),
    /// TCP at this address, which the other side connects to (RFC 6544 `tcptype passive`).
    PassiveTcp(SocketAddr),
    /// TCP from this address, which connects to the other side's passive candidates
    /// (`tcptype active`, announced with the discard port 9 as RFC 6544 says).
    ActiveTcp(IpAddr),
}

/// Gives a connection host candidates, in their order, and ends its gathering (no
/// trickle): how the server's connections, and clients on the same engine, announce
/// themselves.
pub fn add_host_candidates(pc: &mut RTCPeerConnection, candidates: &[HostCandidate]) -> Result<(), SfuError> {
    for candidate in candidates {
        let (network, addr, tcp_type) = match *candidate {
            HostCandidate::Udp(addr) => ("udp", addr, TcpType::Unspecified),
            HostCandidate::PassiveTcp(addr) => ("tcp", addr, TcpType::Passive),
            HostCandidate::ActiveTcp(ip) => ("tcp", SocketAddr::new(ip, 9), TcpType::Active),
        };
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: network.to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            tcp_type,
        }
        .new_candidate_host()
        .map_err(engine)?;
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json().map_err(engine)?).map_err(engine)?;
    }
    pc.add_local_candidate(RTCIceCandidateInit::default()).map_err(engine)
}

fn engine(err: impl std::fmt::Display) -> SfuError {
    SfuError::Engine(err.to_string())
}
