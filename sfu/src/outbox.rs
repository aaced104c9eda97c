//! Forwarded datagrams held back until the end of a read batch, grouped per destination
//! into trains that one UDP GSO send (`UDP_SEGMENT`) carries.
//!
//! A keyframe arrives as a burst of packets of one size, each forwarded to every
//! subscriber. Sent one by one, every datagram costs a system call and a trip through the
//! kernel's UDP and IP output. A train is a run of datagrams to one destination, all of one
//! length except a shorter last one, which is what the kernel segments a GSO send into; it
//! costs one trip however many datagrams it carries.
//!
//! The bytes live in one arena that keeps its allocation, and each datagram links to the
//! next of its train, so queueing copies the datagram once and allocates nothing.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Datagrams one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS` before Linux 6.9).
pub const MAX_SEGMENTS: usize = 64;
/// Bytes one GSO send may carry: an IPv4 datagram's payload, less room for headers.
const MAX_TRAIN_BYTES: usize = 65_000;
/// Bytes queued after which the worker sends what it holds without waiting for the batch to
/// end, so the first subscriber of a large fan-out is not held up by the last.
const FULL_BYTES: usize = 128 * 1024;
/// No next datagram.
const END: usize = usize::MAX;

/// One queued datagram: where its bytes are in the arena and which datagram follows it in
/// its train.
struct Queued {
    start: usize,
    len: usize,
    next: usize,
}

/// A run of datagrams to one destination.
struct TrainHead {
    to: SocketAddr,
    /// The length of every datagram but a shorter last one.
    segment: usize,
    count: usize,
    bytes: usize,
    first: usize,
    last: usize,
    /// A shorter datagram ended it.
    closed: bool,
}

impl TrainHead {
    fn takes(&self, len: usize) -> bool {
        !self.closed && len <= self.segment && self.count < MAX_SEGMENTS && self.bytes + len <= MAX_TRAIN_BYTES
    }
}

/// The datagrams of one read batch, by destination, in the order they were queued.
#[derive(Default)]
pub struct Outbox {
    arena: Vec<u8>,
    queued: Vec<Queued>,
    trains: Vec<TrainHead>,
    /// The last train to each destination, the only one a datagram to it may join.
    latest: HashMap<SocketAddr, usize>,
}

/// A train to send: every datagram but the last is `segment` bytes long.
pub struct Train<'a> {
    outbox: &'a Outbox,
    head: &'a TrainHead,
}

impl Outbox {
    /// Queues a copy of `datagram` for `to`, joining the last train to `to` where it can.
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) {
        let index = self.queued.len();
        self.queued.push(Queued { start: self.arena.len(), len: datagram.len(), next: END });
        self.arena.extend_from_slice(datagram);
        let len = datagram.len();
        if let Some(head) = self.latest.get(&to).and_then(|&t| self.trains.get_mut(t)).filter(|head| head.takes(len)) {
            self.queued[head.last].next = index;
            head.last = index;
            head.count += 1;
            head.bytes += len;
            head.closed = len < head.segment;
            return;
        }
        self.latest.insert(to, self.trains.len());
        self.trains.push(TrainHead { to, segment: len, count: 1, bytes: len, first: index, last: index, closed: false });
    }

    /// Whether it holds enough to be sent before the batch ends.
    pub fn is_full(&self) -> bool {
        self.arena.len() >= FULL_BYTES
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.trains.is_empty()
    }

    /// The trains, in the order each was started.
    pub fn trains(&self) -> impl Iterator<Item = Train<'_>> {
        self.trains.iter().map(move |head| Train { outbox: self, head })
    }

    /// Forgets every datagram, keeping the allocations.
    pub fn clear(&mut self) {
        self.arena.clear();
        self.queued.clear();
        self.trains.clear();
        self.latest.clear();
    }
}

impl<'a> Train<'a> {
    /// Where it goes.
    pub fn to(&self) -> SocketAddr {
        self.head.to
    }

    /// The length of every datagram but the last.
    pub fn segment(&self) -> usize {
        self.head.segment
    }

    /// How many datagrams it carries.
    pub fn len(&self) -> usize {
        self.head.count
    }

    /// Its datagrams, in order.
    pub fn datagrams(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let outbox = self.outbox;
        std::iter::successors(Some(self.head.first), move |&i| Some(outbox.queued[i].next).filter(|&next| next != END))
            .map(move |i| &outbox.arena[outbox.queued[i].start..][..outbox.queued[i].len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn trains(outbox: &Outbox) -> Vec<(u16, usize, Vec<Vec<u8>>)> {
        outbox.trains().map(|t| (t.to().port(), t.segment(), t.datagrams().map(<[u8]>::to_vec).collect())).collect()
    }

    #[test]
    fn datagrams_to_one_destination_form_trains_of_one_length_ended_by_a_shorter_one() {
        let mut outbox = Outbox::default();
        for (byte, len, port) in [(1, 100, 1), (2, 100, 2), (3, 100, 1), (4, 60, 1), (5, 100, 1), (6, 120, 2), (7, 100, 2)] {
            outbox.push(&vec![byte; len], addr(port));
        }
        assert_eq!(
            trains(&outbox),
            vec![
                (1, 100, vec![vec![1; 100], vec![3; 100], vec![4; 60]]),
                // A longer datagram cannot join: it starts the next train to its destination.
                (2, 100, vec![vec![2; 100]]),
                (1, 100, vec![vec![5; 100]]),
                (2, 120, vec![vec![6; 120], vec![7; 100]]),
            ]
        );
        outbox.clear();
        assert!(outbox.is_empty());
        assert_eq!(outbox.trains().count(), 0);
    }

    #[test]
    fn a_train_holds_at_most_the_segments_and_bytes_one_send_may_carry() {
        let mut outbox = Outbox::default();
        for _ in 0..MAX_SEGMENTS + 1 {
            outbox.push(&[0; 10], addr(1));
        }
        assert_eq!(outbox.trains().map(|t| t.len()).collect::<Vec<_>>(), vec![MAX_SEGMENTS, 1]);
        outbox.clear();
        for _ in 0..60 {
            outbox.push(&[0; 1200], addr(1));
        }
        let lens: Vec<_> = outbox.trains().map(|t| t.len()).collect();
        assert_eq!(lens, vec![MAX_TRAIN_BYTES / 1200, 60 - MAX_TRAIN_BYTES / 1200]);
        assert!(outbox.trains().all(|t| t.datagrams().map(<[u8]>::len).sum::<usize>() <= MAX_TRAIN_BYTES));
    }

    #[test]
    fn it_is_full_past_the_bytes_held_back() {
        let mut outbox = Outbox::default();
        while !outbox.is_full() {
            outbox.push(&[0; 1200], addr(1));
        }
        assert_eq!(outbox.arena.len(), FULL_BYTES.div_ceil(1200) * 1200);
    }
}
