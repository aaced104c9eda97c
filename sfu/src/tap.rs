//! Taps: in-process listeners on a room's published media, attached like a subscriber
//! without a network (the recorder is one).
//!
//! A tap gets every published track of its room ([`TapEvent::TrackPublished`], the tracks
//! already there first), each packet the publishers send as it arrives (before any
//! rewriting: the publisher's own sequence numbers and timestamps), the publishers' RTCP
//! sender reports, and the end of each track. A tap's queue holds a bounded number of
//! packets: a tap that falls behind loses packets (counted in
//! `switchboard_tap_packets_dropped_total`) and sees the loss as a sequence gap; forwarding
//! never waits for it. Track events and sender reports are never dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::metrics::{Counter, Counters};
use crate::{RoomId, TrackId, TrackInfo};

/// An RTP packet as a publisher sent it: the header fields a depacketizer needs and the
/// payload (shared with the forwarder, not copied).
#[derive(Debug, Clone)]
pub struct TappedRtp {
    /// The stream (a simulcast track has one per layer).
    pub ssrc: u32,
    /// Sequence number.
    pub sequence: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit.
    pub marker: bool,
    /// Payload.
    pub payload: Bytes,
}

/// What a tap receives.
#[derive(Debug, Clone)]
pub enum TapEvent {
    /// A track is in the room: published before the tap attached, or since.
    TrackPublished(TrackInfo),
    /// The tracks already in the room when the tap attached have all been announced.
    Attached,
    /// A track left the room (unpublished, or its publisher left).
    TrackUnpublished(TrackId),
    /// A packet of a track, with the time it was read from the socket.
    Rtp {
        /// The track.
        track: TrackId,
        /// When it arrived.
        at: Instant,
        /// The packet.
        packet: TappedRtp,
    },
    /// An RTCP sender report of a track's publisher: its NTP wall clock at an RTP time.
    SenderReport {
        /// The track.
        track: TrackId,
        /// The reporting stream.
        ssrc: u32,
        /// NTP timestamp (32.32 fixed point).
        ntp_time: u64,
        /// The RTP timestamp at that instant.
        rtp_time: u32,
    },
}

/// One tap as its worker holds it: the queue, and how many packets wait in it.
struct Tap {
    id: u64,
    sink: mpsc::UnboundedSender<TapEvent>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

/// A worker's attached taps, by room.
#[derive(Default)]
pub(crate) struct Taps {
    by_room: HashMap<RoomId, Vec<Tap>>,
}

impl Taps {
    /// Whether no room of the worker is tapped (the packet path's only cost then).
    pub(crate) fn is_empty(&self) -> bool {
        self.by_room.is_empty()
    }

    /// Whether a tap is attached to `room`.
    pub(crate) fn is_tapped(&self, room: &RoomId) -> bool {
        self.by_room.contains_key(room)
    }

    pub(crate) fn attach(
        &mut self,
        room: RoomId,
        id: u64,
        sink: mpsc::UnboundedSender<TapEvent>,
        queued: Arc<AtomicUsize>,
        capacity: usize,
    ) {
        self.by_room.entry(room).or_default().push(Tap { id, sink, queued, capacity });
    }

    pub(crate) fn detach(&mut self, room: &RoomId, id: u64) {
        if let Some(taps) = self.by_room.get_mut(room) {
            taps.retain(|tap| tap.id != id);
            if taps.is_empty() {
                self.by_room.remove(room);
            }
        }
    }

    /// Hands a packet to every tap of the room, without waiting; a tap whose queue holds
    /// `capacity` packets loses it.
    pub(crate) fn send_rtp(&self, counters: &mut Counters, room: &RoomId, track: &TrackId, at: Instant, packet: &rtc::rtp::Packet) {
        let Some(taps) = self.by_room.get(room) else { return };
        for tap in taps {
            if tap.queued.load(Ordering::Relaxed) >= tap.capacity {
                counters.add(Counter::TapPacketsDropped, 1);
                continue;
            }
            let tapped = TappedRtp {
                ssrc: packet.header.ssrc,
                sequence: packet.header.sequence_number,
                timestamp: packet.header.timestamp,
                marker: packet.header.marker,
                payload: packet.payload.clone(),
            };
            if tap.sink.send(TapEvent::Rtp { track: *track, at, packet: tapped }).is_ok() {
                tap.queued.fetch_add(1, Ordering::Relaxed);
                counters.add(Counter::TapPackets, 1);
            }
        }
    }

    /// Hands a track or clock event to every tap of the room (never dropped).
    pub(crate) fn send(&self, room: &RoomId, event: impl Fn() -> TapEvent) {
        let Some(taps) = self.by_room.get(room) else { return };
        for tap in taps {
            // A closed queue is a tap being detached; the worker hears of it next.
            let _ = tap.sink.send(event());
        }
    }
}
