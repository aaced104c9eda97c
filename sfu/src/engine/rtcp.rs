//! RTCP: what subscribers tell the server (NACKs answered from the publisher's packet
//! cache, keyframe requests relayed to the publisher, receiver reports that give their round
//! trip), what publishers tell it (sender reports, for taps), and the reports and feedback
//! the server sends on its own schedule (sender reports to subscribers; receiver reports,
//! NACKs and transport-wide feedback to publishers).

use std::time::Instant;

use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::rtcp;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use tracing::debug;

use super::participant::egress_of;
use super::{isolate, Engine, Transmit};
use crate::feedback::{self, Feedback};
use crate::forwarder::KeyframeRequest;
use crate::metrics::Counter;
use crate::peer::PeerRole;
use crate::round_trip;
use crate::tap::TapEvent;
use crate::{ParticipantKey, TrackId};

impl Engine {
    /// Acts on a subscriber's RTCP, the compound packet its egress opened: NACKs answered
    /// from the publisher's packet cache, keyframe requests relayed to the publisher, receiver
    /// reports' round trips and losses (the most any of its streams lost) and transport-wide
    /// feedback into the subscriber's downlink estimate.
    pub(super) fn subscriber_feedback(&mut self, now: Instant, subscriber: ParticipantKey, compound: &[u8], out: &mut dyn Transmit) {
        for feedback in feedback::read(compound) {
            match feedback {
                Feedback::Nack { media_ssrc, lost } => {
                    let Some(track) = self.track_sent_as(subscriber, media_ssrc) else { continue };
                    self.counters.add(Counter::Nacks, lost.count() as u64);
                    let mut outgoing = std::mem::take(&mut self.outgoing);
                    let found = self.forwarder.on_nack(now, &track, &subscriber, lost, &mut outgoing);
                    self.counters.add(Counter::Retransmits, found as u64);
                    self.send_outgoing(now, &mut outgoing, out);
                    self.outgoing = outgoing;
                }
                Feedback::KeyframeRequest { media_ssrc } => {
                    let Some(track) = self.track_sent_as(subscriber, media_ssrc) else { continue };
                    self.counters.add(Counter::KeyframeRequests, 1);
                    // A throttled request is deferred: a deadline of the forwarder's.
                    self.forget_deadline();
                    if let Some(request) = self.forwarder.keyframe_request(now, &track, Some(&subscriber)) {
                        self.send_keyframe_request(now, request);
                    }
                }
                Feedback::Reports(blocks) => {
                    let lost = blocks.map(|b| b.fraction_lost).max();
                    let egress = egress_of(&mut self.participants, subscriber);
                    if let (Some(egress), Some(lost)) = (egress, lost) {
                        egress.on_receiver_loss(now, f64::from(lost) / 256.0);
                        self.allocate(now, subscriber);
                    }
                    let arrival = round_trip::ntp_middle(self.wall_clock(now));
                    let echoed = blocks.filter_map(|b| round_trip::round_trip(arrival, b.last_sender_report, b.delay));
                    if let Some(rtt) = echoed.max() {
                        self.counters.add(Counter::RoundTrips, 1);
                        self.counters.add(Counter::RoundTripMicros, rtt.as_micros() as u64);
                        self.forwarder.set_round_trip(&subscriber, rtt);
                    }
                }
                Feedback::TransportWide(feedback) => {
                    let egress = egress_of(&mut self.participants, subscriber);
                    if let Some(egress) = egress {
                        egress.on_transport_feedback(now, &feedback);
                        self.allocate(now, subscriber);
                    }
                }
            }
        }
    }

    /// The track `subscriber` receives as the stream `ssrc`.
    fn track_sent_as(&self, subscriber: ParticipantKey, ssrc: u32) -> Option<TrackId> {
        self.forwarder.subscriptions_of(subscriber).find(|(_, sent_as, _)| *sent_as == ssrc).map(|(track, _, _)| track)
    }

    /// Acts on a publisher's RTCP about one of its tracks: sender reports feed the receiver
    /// reports the ingress sends back, and the taps' clocks.
    pub(super) fn publisher_rtcp(
        &mut self,
        now: Instant,
        publisher: ParticipantKey,
        media_track_id: &str,
        packets: &[Box<dyn rtcp::Packet>],
    ) {
        let Some(participant) = self.participants.get_mut(&publisher) else { return };
        let Some(track) = participant.published.get(media_track_id).map(|p| &p.track) else { return };
        let mut ingress = participant.publisher.as_deref_mut().and_then(|p| p.ingress.as_mut());
        for packet in packets {
            let Some(report) = packet.as_any().downcast_ref::<SenderReport>() else { continue };
            if let Some(ingress) = ingress.as_mut() {
                ingress.sender_report(now, report.ssrc, report.ntp_time);
            }
            let event =
                || TapEvent::SenderReport { track: *track, ssrc: report.ssrc, ntp_time: report.ntp_time, rtp_time: report.rtp_time };
            self.taps.send(&participant.room, event);
        }
    }

    /// Sends a PLI to the publisher of the requested track.
    pub(super) fn send_keyframe_request(&mut self, now: Instant, request: KeyframeRequest) {
        let Some(publisher) = self.participants.get_mut(&request.publisher) else { return };
        let Some(receiver) = publisher.published.values().find(|p| p.track == request.track).map(|p| p.receiver) else {
            return;
        };
        let Some(peer) = publisher.publisher.as_mut() else { return };
        let Some(mut receiver) = peer.pc.rtp_receiver(receiver) else { return };
        let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: request.media_ssrc };
        match receiver.write_rtcp(now, vec![Box::new(pli)]) {
            Ok(()) => {
                self.counters.add(Counter::PlisSent, 1);
                self.dirty.insert((request.publisher, PeerRole::Publisher));
            }
            Err(err) => debug!(track = %request.track, %err, "PLI not sent"),
        }
    }

    /// Writes the reports and feedback due at `now` on every connection: sender reports to
    /// subscribers; receiver reports, NACKs and transport-wide feedback to publishers.
    pub(super) fn send_due_feedback(&mut self, now: Instant) {
        let wall_clock = self.wall_clock(now);
        for (key, participant) in &mut self.participants {
            for role in [PeerRole::Publisher, PeerRole::Subscriber] {
                let Some(peer) = participant.peer_mut(role) else { continue };
                let mut feedback = peer.egress.as_mut().and_then(|e| e.due_reports(now, wall_clock)).unwrap_or_default();
                if let Some(ingress) = peer.ingress.as_mut().filter(|i| i.deadline().is_some_and(|due| due <= now)) {
                    let nacked = ingress.due_feedback(now, &mut feedback);
                    self.counters.add(Counter::PublisherNacks, nacked as u64);
                }
                if feedback.is_empty() {
                    continue;
                }
                let message = RTCMessage::RtcpPacket(String::new(), feedback);
                match isolate(|| peer.pc.handle_write(TaggedRTCMessage { now, message })) {
                    Some(Ok(())) => {}
                    Some(Err(err)) => debug!(participant = %participant.id, ?role, %err, "RTCP not sent"),
                    None => self.poisoned.push(*key),
                }
                self.dirty.insert((*key, role));
            }
        }
    }
}
