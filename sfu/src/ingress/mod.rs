//! The media a publisher connection receives, opened and acknowledged by the worker.
//!
//! Every packet would otherwise go through the engine's read pipeline (ICE and DTLS
//! demultiplexing, SRTP, its receiver report, NACK generator and TWCC interceptors, the moves
//! between its stages) before the forwarder sees it. [`Ingress`] opens the SRTP of the
//! streams the worker knows (AES-128-GCM in place in the datagram's own buffer, [`crate::srtp`];
//! other profiles through an `rtc` SRTP context) and keeps what the publisher needs back:
//! receiver reports ([`reception`]), NACKs for missing video packets ([`nack`]) and
//! transport-wide congestion control feedback ([`twcc`]), which browsers estimate their
//! uplink from. That RTCP goes out through the engine, whose SRTCP context shares the master
//! key. Datagrams of streams not known yet (the first packets of a track, before the engine
//! announces it), RTX and RTCP still go through the engine, and the packets it delivers are
//! counted here as well.

mod nack;
mod reception;
mod twcc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{nack_pairs_from_sequence_numbers, TransportLayerNack};
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::Unmarshal;
use rtc::srtp::context::Context;
use rtc::srtp::option::srtp_replay_protection;
use rtc::srtp::protection_profile::ProtectionProfile;

use crate::ids::TrackId;
use crate::schedule::REPORT_INTERVAL;
use crate::srtp::gcm::GcmReceiver;
use crate::srtp::{connection_keys, srtp, KeyCapture, SrtpError};
use nack::MissingPackets;
use reception::Reception;
use twcc::TwccFeedback;
use twcc::FEEDBACK_INTERVAL;

/// How often missing packets are looked at while some are.
const NACK_INTERVAL: Duration = Duration::from_millis(20);
/// Packets the replay window of an `rtc` SRTP context remembers, as many as the GCM
/// receiver's.
const REPLAY_WINDOW: usize = crate::srtp::gcm::REPLAY_WINDOW as usize;

/// A stream the publisher sends, known by its SSRC.
struct Stream {
    ssrc: u32,
    /// The simulcast layer it carries.
    layer: Option<LayerName>,
    track: TrackId,
    reception: Reception,
    /// Video streams that negotiated NACK.
    missing: Option<MissingPackets>,
}

/// A simulcast layer, named as its packets name it: the MID of its track's media section and
/// its RID (RIDs are unique within one section only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerName {
    /// The media section's MID.
    pub mid: String,
    /// The layer's RID.
    pub rid: String,
}

/// What became of a datagram offered to [`Ingress::take`].
pub enum Taken {
    /// Not media of a known stream (or the ingress is not started): the engine's to read.
    Engine(BytesMut),
    /// Opened: forward it as the track's.
    Media(TrackId, Packet),
    /// Opened, and nothing to forward: padding on a repair stream (a browser probing its
    /// uplink), noted for the transport-wide feedback.
    Padding,
    /// Refused (failed authentication, a replay, malformed): dropped.
    Refused(SrtpError),
}

/// The receive side of one publisher connection.
pub struct Ingress {
    keys: Arc<KeyCapture>,
    unprotect: Option<Unprotect>,
    /// The SSRC the server's feedback is sent from.
    sender_ssrc: u32,
    streams: Vec<Stream>,
    /// The RTX streams (RFC 4588) of simulcast layers, with the SSRC each repairs: at most
    /// one per layer.
    repairs: Vec<(u32, u32)>,
    /// The ids of the MID and repaired-RID header extensions (RFC 8852), which name the layer
    /// a repair stream's first packets repair.
    repair_names: Option<(u8, u8)>,
    twcc: Option<TwccFeedback>,
    next_report: Option<Instant>,
    next_nack: Option<Instant>,
    next_twcc: Option<Instant>,
    /// Sequence numbers being NACKed, kept to save an allocation per feedback.
    nacked: Vec<u16>,
}

impl Ingress {
    /// A connection's ingress, to be started once its DTLS handshake has run through `keys`;
    /// its feedback is sent from `sender_ssrc`.
    pub fn new(keys: Arc<KeyCapture>, sender_ssrc: u32) -> Self {
        Self {
            keys,
            unprotect: None,
            sender_ssrc,
            streams: Vec::new(),
            repairs: Vec::new(),
            repair_names: None,
            twcc: None,
            next_report: None,
            next_nack: None,
            next_twcc: None,
            nacked: Vec::new(),
        }
    }

    /// Whether [`Ingress::start`] has keyed it.
    pub fn is_started(&self) -> bool {
        self.unprotect.is_some()
    }

    /// Keys the SRTP context that opens the client's media, once `pc` (the connection built
    /// with this ingress's [`KeyCapture`]) has finished its DTLS handshake; the first receiver
    /// reports go at `first_report` (see [`crate::schedule`]).
    pub fn start(&mut self, now: Instant, pc: &mut RTCPeerConnection, first_report: Instant) -> Result<(), SrtpError> {
        let config = connection_keys(now, pc, &self.keys)?;
        let profile = config.profile;
        let (key, salt) = (&config.keys.remote_master_key, &config.keys.remote_master_salt);
        let crypto = self.keys.unwatched();
        self.unprotect = Some(match profile {
            ProtectionProfile::AeadAes128Gcm => Unprotect::Gcm(GcmReceiver::new(crypto, key, salt)?),
            _ => {
                let replay = Some(srtp_replay_protection(REPLAY_WINDOW));
                Unprotect::Context(Box::new(Context::new(key, salt, profile, replay, None, crypto).map_err(srtp)?))
            }
        });
        self.next_report = Some(first_report);
        Ok(())
    }

    /// Opens the media of `ssrc` (the simulcast layer `layer`, if it is one; a layer's
    /// earlier stream is dropped) from now on as `track`'s, its timestamps at `clock_rate`;
    /// `nack` asks the publisher for the packets that go missing.
    pub fn add_stream(&mut self, now: Instant, ssrc: u32, layer: Option<LayerName>, track: TrackId, clock_rate: u32, nack: bool) {
        if self.streams.iter().any(|s| s.ssrc == ssrc) {
            return;
        }
        let replaced: Vec<u32> = self.streams.iter().filter(|s| layer.is_some() && s.layer == layer).map(|s| s.ssrc).collect();
        self.forget_streams(&replaced);
        let missing = nack.then(MissingPackets::default);
        self.streams.push(Stream { ssrc, layer, track, reception: Reception::new(ssrc, clock_rate, now), missing });
    }

    /// Takes the repair streams of simulcast layers, named by the MID and repaired-RID header
    /// extensions (`mid_extension`, `repaired_rid_extension`): their retransmissions are
    /// forwarded as the layer's packets, their padding counted for the transport-wide
    /// feedback. Only with AES-GCM, whose receiver keeps no state for a packet that fails
    /// authentication.
    pub fn enable_repair_streams(&mut self, mid_extension: u8, repaired_rid_extension: u8) {
        self.repair_names = Some((mid_extension, repaired_rid_extension));
    }

    /// Stops opening and reporting the streams of `track`.
    pub fn remove_track(&mut self, track: &TrackId) {
        let removed: Vec<u32> = self.streams.iter().filter(|s| &s.track == track).map(|s| s.ssrc).collect();
        self.forget_streams(&removed);
    }

    /// Forgets the streams `ssrcs`, their repair streams and their SRTP state.
    fn forget_streams(&mut self, ssrcs: &[u32]) {
        let repairs = self.repairs.iter().filter(|(_, primary)| ssrcs.contains(primary)).map(|(repair, _)| *repair);
        let forgotten: Vec<u32> = repairs.chain(ssrcs.iter().copied()).collect();
        if let Some(Unprotect::Gcm(receiver)) = &mut self.unprotect {
            for ssrc in &forgotten {
                receiver.remove(*ssrc);
            }
        }
        self.repairs.retain(|(repair, _)| !forgotten.contains(repair));
        self.streams.retain(|s| !forgotten.contains(&s.ssrc));
    }

    /// The stream `ssrc` repairs: a repair stream already known, or one whose packet names a
    /// layer in its (clear, not yet authenticated) header.
    fn repaired_by(&self, ssrc: u32, datagram: &[u8]) -> Option<u32> {
        if let Some((_, primary)) = self.repairs.iter().find(|(repair, _)| *repair == ssrc) {
            return Some(*primary);
        }
        let (mid_extension, rid_extension) = self.repair_names.filter(|_| matches!(self.unprotect, Some(Unprotect::Gcm(_))))?;
        let header = rtc::rtp::header::Header::unmarshal(&mut &datagram[..]).ok()?;
        let (mid, rid) = (header.get_extension(mid_extension)?, header.get_extension(rid_extension)?);
        let named = |name: &LayerName| name.mid.as_bytes() == mid.as_ref() && name.rid.as_bytes() == rid.as_ref();
        self.streams.iter().find(|s| s.layer.as_ref().is_some_and(named)).map(|s| s.ssrc)
    }

    /// Sends transport-wide congestion control feedback for the sequence numbers in header
    /// extension `extension_id` (the connection negotiated it).
    pub fn enable_twcc(&mut self, now: Instant, extension_id: u8) {
        if self.twcc.as_ref().is_none_or(|t| t.extension_id() != extension_id) {
            self.twcc = Some(TwccFeedback::new(extension_id, now));
        }
    }

    /// Opens `datagram` if it is RTP of a known stream; anything else is the engine's.
    pub fn take(&mut self, now: Instant, mut datagram: BytesMut) -> Taken {
        if self.unprotect.is_none() {
            return Taken::Engine(datagram);
        }
        let Some(ssrc) = rtp_ssrc(&datagram) else { return Taken::Engine(datagram) };
        let (primary, repaired) = match self.streams.iter().any(|s| s.ssrc == ssrc) {
            true => (ssrc, false),
            false => match self.repaired_by(ssrc, &datagram) {
                Some(primary) => (primary, true),
                None => return Taken::Engine(datagram),
            },
        };
        let Some(track) = self.streams.iter().find(|s| s.ssrc == primary).map(|s| s.track) else { return Taken::Engine(datagram) };
        let Some(unprotect) = self.unprotect.as_mut() else { return Taken::Engine(datagram) };
        let clear = match unprotect {
            Unprotect::Gcm(receiver) => match receiver.open(&mut datagram) {
                Ok(opened) => {
                    datagram.truncate(opened.end);
                    datagram.freeze()
                }
                Err(err) => return Taken::Refused(err),
            },
            Unprotect::Context(context) => match context.decrypt_rtp(&datagram) {
                Ok(clear) => clear.freeze(),
                Err(err) => return Taken::Refused(srtp(err)),
            },
        };
        // Parsed from the shared buffer: header extensions and payload are slices of it.
        let packet = match Packet::unmarshal(&mut clear.clone()) {
            Ok(packet) => packet,
            Err(err) => return Taken::Refused(srtp(err)),
        };
        let packet = match repaired {
            false => packet,
            true => {
                // Authenticated: the repair stream is known from now on (one per layer).
                if !self.repairs.iter().any(|(repair, _)| *repair == ssrc) {
                    let earlier: Vec<u32> = self.repairs.iter().filter(|(_, p)| *p == primary).map(|(r, _)| *r).collect();
                    if let Some(Unprotect::Gcm(receiver)) = &mut self.unprotect {
                        for repair in &earlier {
                            receiver.remove(*repair);
                        }
                    }
                    self.repairs.retain(|(_, p)| *p != primary);
                    self.repairs.push((ssrc, primary));
                }
                match unwrap_rtx(packet, primary) {
                    Ok(original) => original,
                    Err(padding) => {
                        self.note_transport(now, &padding.header);
                        return Taken::Padding;
                    }
                }
            }
        };
        self.received(now, &packet);
        Taken::Media(track, packet)
    }

    /// Counts a packet of the publisher's, opened here or delivered by the engine.
    pub fn received(&mut self, now: Instant, packet: &Packet) {
        let header = &packet.header;
        self.note_transport(now, header);
        let Some(stream) = self.streams.iter_mut().find(|s| s.ssrc == header.ssrc) else { return };
        stream.reception.received(now, header.sequence_number, header.timestamp);
        if let Some(missing) = &mut stream.missing {
            missing.received(now, header.sequence_number);
            if !missing.is_empty() {
                self.next_nack.get_or_insert(now + NACK_INTERVAL);
            }
        }
    }

    /// Notes the transport-wide sequence number of a packet, for the feedback.
    fn note_transport(&mut self, now: Instant, header: &rtc::rtp::header::Header) {
        if let Some(twcc) = &mut self.twcc {
            if let Some(sequence) =
                header.get_extension(twcc.extension_id()).and_then(|e| e.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])))
            {
                twcc.received(now, sequence);
                self.next_twcc.get_or_insert(now + FEEDBACK_INTERVAL);
            }
        }
    }

    /// Notes a sender report of the publisher's, for the next receiver reports to echo.
    pub fn sender_report(&mut self, now: Instant, ssrc: u32, ntp_time: u64) {
        if let Some(stream) = self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
            stream.reception.sender_report(now, (ntp_time >> 16) as u32);
        }
    }

    /// When feedback is next due, once started.
    pub fn deadline(&self) -> Option<Instant> {
        [self.next_report, self.next_nack, self.next_twcc].into_iter().flatten().min()
    }

    /// Adds the feedback due at `now` to `out` (receiver reports, NACKs, transport-wide
    /// feedback); returns how many packets it NACKs.
    pub fn due_feedback(&mut self, now: Instant, out: &mut Vec<Box<dyn rtcp::Packet>>) -> usize {
        let mut nacked = 0;
        if self.next_report.is_some_and(|due| due <= now) {
            self.next_report = Some(now + REPORT_INTERVAL);
            let reports: Vec<_> = self.streams.iter_mut().filter_map(|s| s.reception.report(now)).collect();
            // One report carries at most 31 blocks (RFC 3550 §6.4.2).
            for reports in reports.chunks(31) {
                out.push(Box::new(ReceiverReport {
                    ssrc: self.sender_ssrc,
                    reports: reports.to_vec(),
                    profile_extensions: Default::default(),
                }));
            }
        }
        if self.next_nack.is_some_and(|due| due <= now) {
            self.next_nack = None;
            for stream in &mut self.streams {
                let Some(missing) = &mut stream.missing else { continue };
                self.nacked.clear();
                missing.due(now, &mut self.nacked);
                if !self.nacked.is_empty() {
                    nacked += self.nacked.len();
                    let nacks = nack_pairs_from_sequence_numbers(&self.nacked);
                    out.push(Box::new(TransportLayerNack { sender_ssrc: self.sender_ssrc, media_ssrc: stream.ssrc, nacks }));
                }
                if !missing.is_empty() {
                    self.next_nack = Some(now + NACK_INTERVAL);
                }
            }
        }
        if self.next_twcc.is_some_and(|due| due <= now) {
            self.next_twcc = None;
            let media_ssrc = self.streams.first().map_or(0, |s| s.ssrc);
            if let Some(feedback) = self.twcc.as_mut().and_then(|t| t.feedback(self.sender_ssrc, media_ssrc)) {
                out.push(Box::new(feedback));
            }
            if self.twcc.as_ref().is_some_and(|t| !t.is_empty()) {
                self.next_twcc = Some(now + FEEDBACK_INTERVAL);
            }
        }
        nacked
    }
}

/// How the publisher's media is opened: AES-128-GCM of our own, or `rtc`'s context for the others.
enum Unprotect {
    Gcm(GcmReceiver),
    Context(Box<Context>),
}

/// The packet an RTX packet (RFC 4588) of a repair stream carries, as the stream `primary`
/// sent it: its original sequence number leads the payload. Padding alone (no original
/// sequence number) is given back as it came.
fn unwrap_rtx(mut packet: Packet, primary: u32) -> Result<Packet, Packet> {
    let Some(original) = packet.payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else { return Err(packet) };
    packet.payload = packet.payload.slice(2..);
    packet.header.ssrc = primary;
    packet.header.sequence_number = original;
    packet.header.padding = false;
    Ok(packet)
}

/// The SSRC of an RTP datagram; `None` for anything else (RTCP shares the first byte's
/// version bits and is told apart by its packet type, 192 to 223, RFC 5761 §4).
fn rtp_ssrc(datagram: &[u8]) -> Option<u32> {
    let header = datagram.get(..12)?;
    let is_rtp = header[0] >> 6 == 2 && !(192..=223).contains(&header[1]);
    is_rtp.then(|| u32::from_be_bytes([header[8], header[9], header[10], header[11]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::rtp::header::Header;

    #[test]
    fn an_rtx_packet_is_unwrapped_to_the_packet_it_repairs_and_padding_is_told_apart() {
        let header = Header { ssrc: 9, sequence_number: 500, padding: true, payload_type: 97, timestamp: 3000, ..Default::default() };
        let rtx = Packet { header: header.clone(), payload: Bytes::from_static(&[0x12, 0x34, 0xAA, 0xBB]) };
        let original = unwrap_rtx(rtx, 7).expect("a retransmission");
        assert_eq!((original.header.ssrc, original.header.sequence_number), (7, 0x1234));
        assert_eq!((original.header.timestamp, original.header.padding), (3000, false));
        assert_eq!(&original.payload[..], [0xAA, 0xBB]);
        let padding = Packet { header, payload: Bytes::new() };
        assert_eq!(unwrap_rtx(padding, 7).expect_err("padding").header.ssrc, 9, "given back as it came");
    }
}
