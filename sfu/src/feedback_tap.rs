//! An interceptor that lets the RTCP the worker acts on through to it: a publisher's sender
//! reports (a subscriber's RTCP never reaches the engine: see [`crate::feedback`]).
//!
//! The `rtc` interceptor chain ends inbound RTCP before the application unless a packet is
//! marked for delivery. Taps (the recorder) follow a publisher's clock from its sender
//! reports; the tap marks exactly those.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Marks inbound RTCP for delivery to the application: what [`publisher_feedback`] picks on
/// a server's connection.
pub struct FeedbackTap {
    wanted: fn(&dyn rtcp::Packet) -> bool,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

/// What of a publisher connection's RTCP the worker acts on: sender reports.
pub fn publisher_feedback(packet: &dyn rtcp::Packet) -> bool {
    packet.as_any().is::<SenderReport>()
}

impl FeedbackTap {
    /// A tap that delivers the RTCP packets `wanted` picks (a test's client takes them all).
    pub fn delivering(wanted: fn(&dyn rtcp::Packet) -> bool) -> Self {
        Self { wanted, reads: VecDeque::new(), writes: VecDeque::new() }
    }

    fn wanted(&self, packet: &Packet) -> bool {
        let Packet::Rtcp(packets) = packet else { return false };
        packets.iter().any(|p| (self.wanted)(p.as_ref()))
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if self.wanted(&msg.message.packet) {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
