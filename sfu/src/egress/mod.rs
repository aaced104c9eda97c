//! The forwarded media of a subscriber connection, protected and addressed by the worker.
//!
//! Each forwarded packet would otherwise go through every stage of the engine's write
//! pipeline (endpoint, interceptors, SRTP, DTLS, ICE, demuxer), each queueing it until
//! polled. The forwarder has already rewritten what a subscriber negotiated, so all that is
//! left is the SRTP (RFC 3711, RFC 7714 for AES-GCM) and a datagram to the client's address:
//! [`Egress`] does that with keys of its own ([`crate::srtp`]: AES-128-GCM sealed in place in
//! one reused buffer; other profiles through an `rtc` SRTP context), and keeps the sender
//! report figures the engine's report interceptor would have ([`reports`]). RTCP still goes
//! through the engine, whose SRTCP context shares the master key (SRTP and SRTCP keys and
//! indexes are separate).

mod reports;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

use crate::remote::Remote;
use crate::schedule::REPORT_INTERVAL;
use crate::srtp::gcm::GcmSender;
use crate::srtp::{connection_keys, srtp, KeyCapture, SrtpError};
use crate::vp8::Vp8Patch;
use reports::SentStream;

/// The send side of one subscriber connection.
pub struct Egress {
    keys: Arc<KeyCapture>,
    protection: Option<Protection>,
    remote: Option<Remote>,
    /// The datagram being sent: kept to save an allocation per packet.
    datagram: Vec<u8>,
    streams: Vec<SentStream>,
    next_report: Option<Instant>,
}

impl Egress {
    /// A connection's egress, to be started once its DTLS handshake has run through `keys`.
    pub fn new(keys: Arc<KeyCapture>) -> Self {
        Self { keys, protection: None, remote: None, datagram: Vec::new(), streams: Vec::new(), next_report: None }
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
        self.next_report = Some(first_report);
        Ok(())
    }

    /// Where the client receives: the address of its last authenticated connectivity check
    /// that nominated the pair (see `engine/ice.rs`).
    pub fn set_remote(&mut self, remote: Remote) {
        self.remote = Some(remote);
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

    /// Encrypts `packet` for the client, its payload renumbered by `patch`, and counts it;
    /// returns the datagram and where it goes.
    pub fn protect(&mut self, now: Instant, packet: &Packet, patch: Option<&Vp8Patch>) -> Result<(&[u8], Remote), SrtpError> {
        let (Some(protection), Some(remote)) = (self.protection.as_mut(), self.remote) else { return Err(SrtpError::NotConnected) };
        match protection {
            Protection::Gcm(sender) => sender.protect(packet, &mut self.datagram, |payload| {
                if let Some(patch) = patch {
                    patch.apply(payload);
                }
            })?,
            Protection::Context(context) => {
                let mut clear = packet.marshal().map_err(srtp)?;
                if let Some(patch) = patch {
                    let mut edited = clear.to_vec();
                    patch.apply(&mut edited[packet.header.marshal_size()..]);
                    clear = edited.as_slice().into();
                }
                let protected = context.encrypt_rtp_with_header(&clear, &packet.header).map_err(srtp)?;
                self.datagram.clear();
                self.datagram.extend_from_slice(&protected);
            }
        }
        if let Some(stream) = self.streams.iter_mut().find(|s| s.ssrc == packet.header.ssrc) {
            stream.sent(now, packet);
        }
        Ok((&self.datagram, remote))
    }

    /// When the next sender reports are due, once started.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_report
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

/// How forwarded RTP is protected: AES-128-GCM of our own, or `rtc`'s context for the others.
enum Protection {
    Gcm(GcmSender),
    Context(Box<Context>),
}
