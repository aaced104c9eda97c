//! A worker's ICE-TCP streams: each one carries a client's datagrams as RFC 4571 frames.
//!
//! The node's listener hands a stream to the worker whose connection its first
//! connectivity check names ([`TcpArrival`]). From then on, every frame the stream carries
//! must be an authenticated check or come from a bound source ([`crate::engine::Engine::handle_datagram`]
//! says which); the first one that is neither closes it, so a stream that does not
//! authenticate at once holds nothing. The streams are registered in one epoll, whose fd the
//! worker's `ppoll` waits on beside its UDP socket: with no stream, the UDP path costs
//! nothing more. Reads go through [`TcpFrames`], copied out of the streams the way
//! `recvmmsg` copies datagrams, so the engine can answer on any stream while it handles
//! them; writes are queued per stream and written at the end of the turn.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use super::frames::{FrameReader, FrameWriter};

/// Streams one worker keeps; a stream past it is closed at once.
pub(crate) const MAX_STREAMS: usize = 4096;
/// A stream that brought no frame for this long is closed: a live ICE connection checks its
/// pair every few seconds (consent freshness), so only an abandoned stream stays silent.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from one stream per turn at most, so one busy stream cannot hold up the rest.
const READ_PER_STREAM: usize = 64 * 1024;
/// Bytes read from all streams per turn at most, so the streams cannot hold up the UDP
/// socket; the rest stay ready for the next turn.
const READ_PER_TURN: usize = 256 * 1024;
/// Readiness events taken per wait.
const EVENTS: usize = 256;

/// Streams handed to one worker and not yet taken at most; the listener closes the rest,
/// so a flood of first frames that merely name a worker holds no more than this.
pub(crate) const MAX_HANDED_OVER: usize = 256;

/// A stream's place among those handed to a worker and not yet taken (or dropped by it),
/// given back when the arrival is gone.
pub(crate) struct HandOver(Arc<AtomicUsize>);

impl HandOver {
    /// A place among the worker's `handed` ones, if one is free.
    pub fn take(handed: &Arc<AtomicUsize>) -> Option<Self> {
        if handed.fetch_add(1, Ordering::Relaxed) >= MAX_HANDED_OVER {
            handed.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(handed.clone()))
    }
}

impl Drop for HandOver {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream the listener accepted, on its way to the worker its first check names.
pub(crate) struct TcpArrival {
    /// The stream, non-blocking.
    pub stream: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's passive candidate the client connected to.
    pub local: SocketAddr,
    /// What the listener read: the first frame, with its length.
    pub received: Vec<u8>,
    /// Its place among the worker's streams handed over.
    pub place: HandOver,
}

/// One frame read, and which stream carried it.
pub(crate) struct TcpFrame<'a> {
    /// The datagram it carries.
    pub payload: &'a [u8],
    /// The client's address: the stream's name.
    pub peer: SocketAddr,
    /// The server's candidate the stream was made to.
    pub local: SocketAddr,
}

/// Frames read in one turn, copied out of their streams.
#[derive(Default)]
pub(crate) struct TcpFrames {
    arena: Vec<u8>,
    /// Where each frame's bytes are in the arena, with its stream's addresses.
    frames: Vec<(usize, usize, SocketAddr, SocketAddr)>,
}

impl TcpFrames {
    /// The frames, in the order they were read.
    pub fn iter(&self) -> impl Iterator<Item = TcpFrame<'_>> {
        self.frames.iter().map(|&(start, len, peer, local)| TcpFrame { payload: &self.arena[start..start + len], peer, local })
    }

    fn push(&mut self, payload: &[u8], peer: SocketAddr, local: SocketAddr) {
        self.frames.push((self.arena.len(), payload.len(), peer, local));
        self.arena.extend_from_slice(payload);
    }

    fn clear(&mut self) {
        self.arena.clear();
        self.frames.clear();
    }
}

struct Stream {
    socket: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    reader: FrameReader,
    writer: FrameWriter,
    last_frame: Instant,
    /// Registered for writability: its queue is waiting on a full socket.
    waits_to_write: bool,
}

/// A worker's streams.
pub(crate) struct TcpStreams {
    epoll: Epoll,
    /// Slots by epoll token; closed streams leave `None` for the next to reuse.
    slots: Vec<Option<Stream>>,
    free: Vec<usize>,
    by_peer: HashMap<SocketAddr, usize>,
    /// Streams with frames queued since their last write.
    unwritten: Vec<usize>,
    events: Vec<EpollEvent>,
    scratch: Box<[u8]>,
    /// Frames dropped on full queues, since the worker started.
    dropped: u64,
    /// Where in the ready list reading starts this turn.
    first: usize,
}

impl TcpStreams {
    /// No streams yet.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?,
            slots: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            unwritten: Vec::new(),
            events: vec![EpollEvent::empty(); EVENTS],
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
            dropped: 0,
            first: 0,
        })
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        self.by_peer.len()
    }

    /// Frames dropped because a stream's queue was full, since the worker started.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Takes a stream the listener accepted and reads the bytes it came with into
    /// `frames`. A second stream from the same address replaces the first.
    pub fn adopt(&mut self, now: Instant, arrival: TcpArrival, frames: &mut TcpFrames) {
        frames.clear();
        if let Some(previous) = self.by_peer.get(&arrival.peer).copied() {
            self.close_slot(previous);
        }
        if self.len() >= MAX_STREAMS {
            return;
        }
        let TcpArrival { stream, peer, local, received, place } = arrival;
        // Taken: its place is free for the next.
        drop(place);
        let mut reader = FrameReader::default();
        if reader.push(&received, &mut |frame| frames.push(frame, peer, local)).is_err() {
            return;
        }
        let slot = self.free.last().copied().unwrap_or(self.slots.len());
        if self.epoll.add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, slot as u64)).is_err() {
            return;
        }
        let adopted =
            Stream { socket: stream, peer, local, reader, writer: FrameWriter::default(), last_frame: now, waits_to_write: false };
        if self.free.pop().is_none() {
            self.slots.push(None);
        }
        self.slots[slot] = Some(adopted);
        self.by_peer.insert(peer, slot);
    }

    /// Handles what the epoll says is ready: reads every readable stream's frames into
    /// `frames`, writes what waited on a full socket, and closes the streams that ended,
    /// failed or sent a frame longer than a datagram.
    pub fn take_ready(&mut self, now: Instant, frames: &mut TcpFrames) {
        frames.clear();
        let ready = match self.epoll.wait(&mut self.events, PollTimeout::ZERO) {
            Ok(ready) => ready,
            Err(err) => return tracing::warn!(%err, "ICE-TCP streams cannot be polled"),
        };
        // Start one further along each turn: the epoll reports ready streams in the same
        // order turn after turn, and those past the budget must not always be the same.
        self.first = self.first.wrapping_add(1);
        for k in 0..ready {
            if frames.arena.len() >= READ_PER_TURN {
                // The rest stay ready (level-triggered) and are taken next turn.
                break;
            }
            let event = self.events[(self.first % ready + k) % ready];
            let slot = event.data() as usize;
            let flags = event.events();
            if flags.contains(EpollFlags::EPOLLOUT) && !self.write(slot) {
                self.close_slot(slot);
                continue;
            }
            if flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) && !self.read(now, slot, frames) {
                self.close_slot(slot);
            }
        }
    }

    /// Reads what `slot`'s stream holds, up to [`READ_PER_STREAM`]; `false` when it ended
    /// or broke the framing.
    fn read(&mut self, now: Instant, slot: usize, frames: &mut TcpFrames) -> bool {
        let Some(stream) = self.slots.get_mut(slot).and_then(Option::as_mut) else { return true };
        let mut budget = READ_PER_STREAM;
        while budget > 0 {
            let n = match stream.socket.read(&mut self.scratch) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            let (peer, local) = (stream.peer, stream.local);
            let before = frames.frames.len();
            if stream.reader.push(&self.scratch[..n], &mut |frame| frames.push(frame, peer, local)).is_err() {
                return false;
            }
            if frames.frames.len() > before {
                stream.last_frame = now;
            }
            budget = budget.saturating_sub(n);
        }
        true
    }

    /// Queues `datagram` for the stream from `peer`, if there is one and its queue has room.
    pub fn queue(&mut self, peer: SocketAddr, datagram: &[u8]) {
        let Some(&slot) = self.by_peer.get(&peer) else { return };
        let Some(stream) = self.slots.get_mut(slot).and_then(Option::as_mut) else { return };
        let was_empty = stream.writer.is_empty();
        if !stream.writer.queue(datagram) {
            self.dropped += 1;
            return;
        }
        if was_empty && !stream.waits_to_write {
            self.unwritten.push(slot);
        }
    }

    /// Writes every stream's queued frames as far as its socket takes them; a stream
    /// whose socket is full is woken to write the rest when it drains.
    pub fn write_queued(&mut self) {
        while let Some(slot) = self.unwritten.pop() {
            if !self.write(slot) {
                self.close_slot(slot);
            }
        }
    }

    /// Writes `slot`'s queue, and registers for writability while some is left; `false`
    /// when the stream failed.
    fn write(&mut self, slot: usize) -> bool {
        let Some(stream) = self.slots.get_mut(slot).and_then(Option::as_mut) else { return true };
        if stream.writer.write_to(&mut stream.socket).is_err() {
            return false;
        }
        let waits = !stream.writer.is_empty();
        if waits != stream.waits_to_write {
            let flags = if waits { EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT } else { EpollFlags::EPOLLIN };
            if self.epoll.modify(&stream.socket, &mut EpollEvent::new(flags, slot as u64)).is_err() {
                return false;
            }
            stream.waits_to_write = waits;
        }
        true
    }

    /// Closes the stream from `peer`.
    pub fn close(&mut self, peer: SocketAddr) {
        if let Some(slot) = self.by_peer.get(&peer).copied() {
            self.close_slot(slot);
        }
    }

    /// Whether a stream from `peer` is open.
    pub fn is_open(&self, peer: SocketAddr) -> bool {
        self.by_peer.contains_key(&peer)
    }

    /// Closes every stream that brought no frame for [`IDLE_TIMEOUT`].
    pub fn close_idle(&mut self, now: Instant) {
        let idle: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, stream)| stream.as_ref().filter(|s| now.duration_since(s.last_frame) >= IDLE_TIMEOUT).map(|_| slot))
            .collect();
        for slot in idle {
            self.close_slot(slot);
        }
    }

    fn close_slot(&mut self, slot: usize) {
        let Some(stream) = self.slots.get_mut(slot).and_then(Option::take) else { return };
        let _ = self.epoll.delete(&stream.socket);
        self.by_peer.remove(&stream.peer);
        self.unwritten.retain(|s| *s != slot);
        self.free.push(slot);
    }
}

impl AsFd for TcpStreams {
    /// The epoll's fd: readable when a stream is.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_handed_at_most_its_share_of_streams_until_it_takes_them() {
        let handed = Arc::default();
        let mut places: Vec<HandOver> = (0..MAX_HANDED_OVER).map(|_| HandOver::take(&handed).expect("a free place")).collect();
        assert!(HandOver::take(&handed).is_none(), "every place is taken");
        places.pop();
        assert!(HandOver::take(&handed).is_some(), "a stream taken frees its place");
    }
}
