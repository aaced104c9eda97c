//! The forwarded media of a subscriber connection, protected and addressed by the worker.
//!
//! Each forwarded packet would otherwise go through every stage of the engine's write
//! pipeline (endpoint, interceptors, SRTP, DTLS, ICE, demuxer), each queueing it until
//! polled. The forwarder has already rewritten what a subscriber negotiated, so all that is
//! left is the SRTP (RFC 3711, RFC 7714 for AES-GCM) and a datagram to the client's address:
//! [`Egress`] does that with keys of its own ([`crate::srtp`]: AES-128-GCM sealed in place in
//! one reused buffer; other profiles through an `rtc` SRTP context), and keeps the sender
//! report figures the engine's report interceptor would have ([`reports`]). It also opens
//! the subscriber's SRTCP with the client's keys ([`Egress::open_rtcp`]), so its feedback
//! never goes through the engine's RTCP read path ([`crate::feedback`] reads it); the sender
//! reports go out through the engine, whose SRTCP context shares the master key (SRTP and
//! SRTCP keys and indexes are separate).

mod probe;
mod rate_control;
mod reports;
mod transport_wide;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp;
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

use crate::feedback::TransportFeedback;
use crate::remote::Remote;
use crate::schedule::REPORT_INTERVAL;
use crate::srtp::gcm::{GcmRtcpReceiver, GcmSender};
use crate::srtp::{connection_keys, srtp, KeyCapture, SrtpError};
use crate::vp8::Vp8Patch;
use probe::PADDING_LEN;
use reports::SentStream;
use transport_wide::TransportWide;

/// The header extension block the transport-wide sequence number is sent in: its header and
/// one word of elements.
const NUMBER_EXTENSION_LEN: usize = 8;

/// The send side of one subscriber connection.
pub struct Egress {
    keys: Arc<KeyCapture>,
    protection: Option<Protection>,
    /// Opens what the client sends: its RTCP.
    rtcp: Option<RtcpOpening>,
    remote: Option<Remote>,
    /// The datagram being sent: kept to save an allocation per packet.
    datagram: Vec<u8>,
    streams: Vec<SentStream>,
    next_report: Option<Instant>,
    /// Transport-wide congestion control, once the subscriber negotiated it.
    transport_wide: Option<TransportWide>,
}

impl Egress {
    /// A connection's egress, to be started once its DTLS handshake has run through `keys`.
    pub fn new(keys: Arc<KeyCapture>) -> Self {
        Self {
            keys,
            protection: None,
            rtcp: None,
            remote: None,
            datagram: Vec::new(),
            streams: Vec::new(),
            next_report: None,
            transport_wide: None,
        }
    }

    /// Whether [`Egress::start`] has keyed it.
    pub fn is_started(&self) -> bool {
        self.protection.is_some()
    }

    /// Keys the SRTP context from the exporter output, once `pc` (the connection built with
    /// this egress's [`KeyCapture`]) has finished its DTLS handshake: with the profile and the
    /// DTLS role it settled, as its statistics give them.
    /// The first sender reports go at `first_report` (see [`crate::schedule`]).
    pub fn start(&mut self, now: Instant, pc: &mut RTCPeerConnection, first_report: Instant) -> Result<(), SrtpError> {
        let config = connection_keys(now, pc, &self.keys)?;
        let profile = config.profile;
        let (key, salt) = (&config.keys.local_master_key, &config.keys.local_master_salt);
        let crypto = self.keys.unwatched();
        self.protection = Some(match profile {
            ProtectionProfile::AeadAes128Gcm => Protection::Gcm(GcmSender::new(crypto, key, salt)?),
            _ => Protection::Context(Box::new(Context::new(key, salt, profile, None, None, crypto).map_err(srtp)?)),
        });
        let (key, salt) = (&config.keys.remote_master_key, &config.keys.remote_master_salt);
        self.rtcp = Some(match profile {
            ProtectionProfile::AeadAes128Gcm => RtcpOpening::Gcm(GcmRtcpReceiver::new(crypto, key, salt)?),
            _ => RtcpOpening::Context(Box::new(Context::new(key, salt, profile, None, None, crypto).map_err(srtp)?)),
        });
        self.next_report = Some(first_report);
        Ok(())
    }

    /// Where the client receives: the address of its last authenticated connectivity check
    /// that nominated the pair (see `engine/ice.rs`).
    pub fn set_remote(&mut self, remote: Remote) {
        self.remote = Some(remote);
    }

    /// Numbers every packet from now on in header extension `extension_id` (the subscriber
    /// negotiated transport-wide congestion control with it) and estimates the subscriber's
    /// downlink from its feedback.
    pub fn enable_transport_wide(&mut self, now: Instant, extension_id: u8) {
        if self.transport_wide.as_ref().is_none_or(|t| t.extension_id() != extension_id) {
            self.transport_wide = Some(TransportWide::new(extension_id, now));
        }
    }

    /// Authenticates and decrypts the client's SRTCP datagram in `buf` in place; returns the
    /// compound RTCP packet it holds, at the start of `buf`.
    pub fn open_rtcp<'b>(&mut self, buf: &'b mut [u8]) -> Result<&'b [u8], SrtpError> {
        let end = match self.rtcp.as_mut().ok_or(SrtpError::NotConnected)? {
            RtcpOpening::Gcm(receiver) => receiver.open(buf)?,
            RtcpOpening::Context(context) => {
                let clear = context.decrypt_rtcp(buf).map_err(srtp)?;
                let end = clear.len().min(buf.len());
                buf[..end].copy_from_slice(&clear[..end]);
                end
            }
        };
        Ok(&buf[..end])
    }

    /// Takes the share of its packets the subscriber lost, as its receiver reports say (the
    /// most of any stream's).
    pub fn on_receiver_loss(&mut self, now: Instant, fraction: f64) {
        if let Some(transport_wide) = self.transport_wide.as_mut() {
            transport_wide.on_receiver_loss(now, fraction);
        }
    }

    /// Takes the subscriber's transport-wide feedback.
    pub fn on_transport_feedback(&mut self, now: Instant, feedback: &TransportFeedback) {
        if let Some(transport_wide) = self.transport_wide.as_mut() {
            transport_wide.on_feedback(now, feedback);
        }
    }

    /// The bitrate the subscriber's downlink carries, in bits per second, once it negotiated
    /// transport-wide congestion control.
    pub fn estimate(&self) -> Option<f64> {
        self.transport_wide.as_ref().map(TransportWide::estimate)
    }

    /// Reports on the stream of `ssrc` from now on, at `clock_rate` (a stream reported on
    /// already keeps its counts and takes the new rate).
    pub fn add_stream(&mut self, ssrc: u32, clock_rate: u32) {
        match self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
            Some(stream) => stream.set_clock_rate(clock_rate),
            None => self.streams.push(SentStream::new(ssrc, clock_rate)),
        }
    }

    /// Stops reporting on the stream of `ssrc`.
    pub fn remove_stream(&mut self, ssrc: u32) {
        self.streams.retain(|s| s.ssrc != ssrc);
        if let Some(Protection::Gcm(sender)) = &mut self.protection {
            sender.remove(ssrc);
        }
    }

    /// Encrypts `packet` for the client, its payload renumbered by `patch` and, once
    /// negotiated, a transport-wide sequence number added; counts it, and returns the datagram
    /// and where it goes.
    pub fn protect(&mut self, now: Instant, packet: &Packet, patch: Option<&Vp8Patch>) -> Result<(&[u8], Remote), SrtpError> {
        self.seal(now, packet, patch, false)
    }

    /// Encrypts a padding-only packet of the probe cluster being sent, on the repair stream
    /// whose SSRC, payload type and next sequence number `header` holds; returns the datagram
    /// and where it goes.
    pub fn protect_padding(&mut self, now: Instant, header: Header) -> Result<(&[u8], Remote), SrtpError> {
        let packet = Packet { header, payload: Bytes::from_static(&PADDING) };
        self.seal(now, &packet, None, true)
    }

    /// Starts probing the subscriber's downlink for `desired` bits per second if its estimate
    /// is under it (see [`probe`]); returns whether a cluster started.
    pub fn probe_toward(&mut self, now: Instant, desired: f64) -> bool {
        self.transport_wide.as_mut().is_some_and(|t| t.probe_toward(now, desired))
    }

    /// Whether a probe cluster is being sent.
    pub fn is_probing(&self) -> bool {
        self.transport_wide.as_ref().and_then(TransportWide::padding_deadline).is_some()
    }

    /// Whether a padding packet of the probe cluster is due at `now` (counted as sent).
    pub fn padding_due(&mut self, now: Instant) -> bool {
        self.transport_wide.as_mut().is_some_and(|t| t.prober().padding_due(now))
    }

    /// Gives up the probe cluster being sent: nothing can carry its padding.
    pub fn cancel_probe(&mut self, now: Instant) {
        if let Some(transport_wide) = self.transport_wide.as_mut() {
            transport_wide.prober().cancel(now);
        }
    }

    /// Seals `packet` (see [`Egress::protect`]); `padding` sets its padding bit, its payload
    /// being all padding.
    fn seal(&mut self, now: Instant, packet: &Packet, patch: Option<&Vp8Patch>, padding: bool) -> Result<(&[u8], Remote), SrtpError> {
        let (Some(protection), Some(remote)) = (self.protection.as_mut(), self.remote) else { return Err(SrtpError::NotConnected) };
        // The forwarder strips the publisher's header extensions, so the transport-wide
        // number is the packet's only one.
        let numbered = self.transport_wide.as_mut().filter(|_| !packet.header.extension).map(|transport_wide| {
            let size = packet.marshal_size() + NUMBER_EXTENSION_LEN + SRTP_OVERHEAD;
            (transport_wide.extension_id(), transport_wide.stamp(now, size, padding))
        });
        let header_len = marshal_numbered(packet, numbered, &mut self.datagram)?;
        if padding {
            self.datagram[0] |= PADDING_BIT;
        }
        if let Some(patch) = patch {
            patch.apply(&mut self.datagram[header_len..]);
        }
        match protection {
            Protection::Gcm(sender) => sender.seal(&mut self.datagram, header_len)?,
            Protection::Context(context) => {
                let protected = context.encrypt_rtp(&self.datagram).map_err(srtp)?;
                self.datagram.clear();
                self.datagram.extend_from_slice(&protected);
            }
        }
        if let Some(stream) = self.streams.iter_mut().find(|s| s.ssrc == packet.header.ssrc) {
            stream.sent(now, packet);
        }
        Ok((&self.datagram, remote))
    }

    /// When the next sender reports, or the next padding packet of a probe, are due.
    pub fn deadline(&self) -> Option<Instant> {
        let padding = self.transport_wide.as_ref().and_then(TransportWide::padding_deadline);
        self.next_report.into_iter().chain(padding).min()
    }

    /// The sender reports of every stream that has sent, if they are due at `now`.
    pub fn due_reports(&mut self, now: Instant, wall_clock: SystemTime) -> Option<Vec<Box<dyn rtcp::Packet>>> {
        if self.next_report.is_none_or(|due| due > now) {
            return None;
        }
        self.next_report = Some(now + REPORT_INTERVAL);
        let reports: Vec<Box<dyn rtcp::Packet>> =
            self.streams.iter().filter_map(|s| s.report(now, wall_clock)).map(|r| Box::new(r) as Box<dyn rtcp::Packet>).collect();
        (!reports.is_empty()).then_some(reports)
    }
}

/// The RTP header's padding and extension bits (RFC 3550 §5.1).
const PADDING_BIT: u8 = 0x20;
const EXTENSION_BIT: u8 = 0x10;

/// The payload of a probe's padding packet: all padding, the last octet counting it.
static PADDING: [u8; PADDING_LEN] = {
    let mut padding = [0; PADDING_LEN];
    padding[PADDING_LEN - 1] = PADDING_LEN as u8;
    padding
};

/// What SRTP adds to a packet: the AES-GCM tag (SHA1-80's is 10 bytes).
const SRTP_OVERHEAD: usize = 16;

/// Marshals `packet` (which has no header extension) into `out`, replacing what it held,
/// with the transport-wide sequence number `numbered` names (the extension's ID and the
/// number) in a one-byte header extension (RFC 8285 §4.2) after its CSRCs; returns the
/// length of the header.
fn marshal_numbered(packet: &Packet, numbered: Option<(u8, u16)>, out: &mut Vec<u8>) -> Result<usize, SrtpError> {
    let header_len = packet.header.marshal_size();
    out.clear();
    out.resize(packet.marshal_size(), 0);
    let written = packet.marshal_to(out).map_err(srtp)?;
    out.truncate(written);
    let Some((id, number)) = numbered else { return Ok(header_len) };
    let [high, low] = number.to_be_bytes();
    out.resize(written + NUMBER_EXTENSION_LEN, 0);
    out.copy_within(header_len..written, header_len + NUMBER_EXTENSION_LEN);
    // The profile, one word of elements, then the element: ID, length less one, the number.
    let extension = [0xBE, 0xDE, 0, 1, id << 4 | 1, high, low, 0];
    out[header_len..header_len + NUMBER_EXTENSION_LEN].copy_from_slice(&extension);
    out[0] |= EXTENSION_BIT;
    Ok(header_len + NUMBER_EXTENSION_LEN)
}

/// How the client's SRTCP is opened: AES-128-GCM of our own, or `rtc`'s context for the
/// others.
enum RtcpOpening {
    Gcm(GcmRtcpReceiver),
    Context(Box<Context>),
}

/// How forwarded RTP is protected: AES-128-GCM of our own, or `rtc`'s context for the others.
enum Protection {
    Gcm(GcmSender),
    Context(Box<Context>),
}
