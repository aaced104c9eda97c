//! The node's ICE-TCP port: it accepts streams, reads each one's first frame (a
//! connectivity check, whose USERNAME names the connection's local ufrag and with it the
//! worker, see [`worker_of_ufrag`]), and hands the stream to that worker.
//!
//! Until then a stream is a stranger's: at most [`MAX_PENDING`] wait at once (a new one
//! pushes out the oldest), each for [`FIRST_FRAME_TIMEOUT`] and at most one frame's bytes,
//! and none is ever sent a byte. The worker checks the frame's integrity; at most
//! [`MAX_HANDED_OVER`](super::streams::MAX_HANDED_OVER) streams wait for it to take them.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::eventfd::EventFd;
use nix::sys::time::TimeSpec;
use tracing::{debug, info};

use super::frames::{frame_len, HEADER};
use super::{HandOver, TcpArrival};
use crate::mailbox::Mailbox;
use crate::peer::worker_of_ufrag;
use crate::stun;

/// Streams waiting for their first frame at once.
pub(crate) const MAX_PENDING: usize = 128;
/// How long a stream may take to send its first frame.
pub(crate) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the listener waits after an accept failed for want of resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the listener needs to run.
pub(crate) struct ListenerSetup {
    /// The node's ICE-TCP port, bound and non-blocking.
    pub listener: TcpListener,
    /// Announced addresses; a stream accepted on another (behind a NAT) is attributed to
    /// the first, as UDP datagrams are.
    pub candidates: Vec<Ipv4Addr>,
    /// Each worker's mailbox, by index.
    pub workers: Vec<Mailbox>,
    /// Rings when the media plane stops.
    pub stop: Arc<EventFd>,
}

/// A stream waiting for its first frame.
struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    received: Vec<u8>,
    deadline: Instant,
}

/// What a read brought a pending stream.
enum Progress {
    Waiting,
    Complete,
    Failed,
}

impl Pending {
    /// Reads no further than the end of the first frame.
    fn read(&mut self) -> Progress {
        loop {
            let whole = match frame_len(&self.received) {
                // A check is never empty.
                Ok(Some(0)) | Err(_) => return Progress::Failed,
                Ok(len) => len.map_or(HEADER, |len| HEADER + len),
            };
            let Some(missing) = whole.checked_sub(self.received.len()) else { return Progress::Failed };
            if missing == 0 && whole > HEADER {
                return Progress::Complete;
            }
            let mut buffer = [0; 1024];
            let want = missing.clamp(1, buffer.len());
            match self.stream.read(&mut buffer[..want]) {
                Ok(0) => return Progress::Failed,
                Ok(n) => self.received.extend_from_slice(&buffer[..n]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Failed,
            }
        }
    }
}

/// Runs the listener on the calling thread until `stop` rings.
pub(crate) fn run(setup: ListenerSetup) {
    let ListenerSetup { listener, candidates, workers, stop } = setup;
    let workers: Vec<(Mailbox, Arc<AtomicUsize>)> = workers.into_iter().map(|mailbox| (mailbox, Arc::default())).collect();
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    info!(port, "ICE-TCP listener started");
    let mut pending: Vec<Pending> = Vec::new();
    loop {
        let now = Instant::now();
        pending.retain(|p| p.deadline > now);
        let timeout = pending.iter().map(|p| p.deadline - now).min().unwrap_or(Duration::from_secs(3600));
        let (accept, stopped, readable) = {
            let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
            fds.extend(pending.iter().map(|p| PollFd::new(p.stream.as_fd(), PollFlags::POLLIN)));
            match ppoll(&mut fds, Some(TimeSpec::from_duration(timeout)), None) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(err) => {
                    tracing::warn!(%err, "ICE-TCP listener cannot wait");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]), fds[2..].iter().map(ready).collect::<Vec<_>>())
        };
        if stopped {
            break;
        }
        for index in (0..readable.len()).rev().filter(|&i| readable[i]) {
            match pending[index].read() {
                Progress::Waiting => {}
                Progress::Failed => drop(pending.swap_remove(index)),
                Progress::Complete => hand_over(pending.swap_remove(index), &workers),
            }
        }
        if accept {
            accept_waiting(&listener, port, &candidates, &mut pending);
        }
    }
    info!(port, "ICE-TCP listener stopped");
}

/// Accepts every stream waiting in the backlog.
fn accept_waiting(listener: &TcpListener, port: u16, candidates: &[Ipv4Addr], pending: &mut Vec<Pending>) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
            Err(err) if err.kind() == io::ErrorKind::ConnectionAborted || err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                // Out of file descriptors, say: the backlog stays readable, so wait a little
                // instead of spinning on it.
                debug!(%err, "ICE-TCP accept failed");
                std::thread::sleep(ACCEPT_BACKOFF);
                return;
            }
        };
        if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
            continue;
        }
        let accepted_on = match stream.local_addr() {
            Ok(SocketAddr::V4(addr)) => Some(*addr.ip()),
            _ => None,
        };
        let ip = accepted_on.filter(|ip| candidates.contains(ip)).or_else(|| candidates.first().copied()).unwrap_or(Ipv4Addr::UNSPECIFIED);
        if pending.len() >= MAX_PENDING {
            // The oldest: the one whose time runs out first.
            if let Some(oldest) = pending.iter().enumerate().min_by_key(|(_, p)| p.deadline).map(|(index, _)| index) {
                pending.swap_remove(oldest);
            }
        }
        let deadline = Instant::now() + FIRST_FRAME_TIMEOUT;
        pending.push(Pending { stream, peer, local: SocketAddr::from((ip, port)), received: Vec::with_capacity(256), deadline });
    }
}

/// Hands a stream whose first frame names a worker's connection to that worker, while
/// fewer than [`MAX_HANDED_OVER`](super::streams::MAX_HANDED_OVER) wait for it; any other
/// stream is closed.
fn hand_over(pending: Pending, workers: &[(Mailbox, Arc<AtomicUsize>)]) {
    let Pending { stream, peer, local, received, .. } = pending;
    let ufrag = received.get(HEADER..).and_then(stun::local_ufrag);
    let Some((worker, handed)) = ufrag.and_then(worker_of_ufrag).and_then(|index| workers.get(index)) else { return };
    if let Some(place) = HandOver::take(handed) {
        let _ = worker.hand_over(TcpArrival { stream, peer, local, received, place });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;
    use std::net::Ipv4Addr;

    use nix::sys::eventfd::EfdFlags;

    use super::*;
    use crate::mailbox::{mailbox, Delivery, Inbox};
    use crate::stun::tests::binding_request;

    pub(crate) fn framed(datagram: &[u8]) -> Vec<u8> {
        let mut bytes = u16::try_from(datagram.len()).expect("short").to_be_bytes().to_vec();
        bytes.extend_from_slice(datagram);
        bytes
    }

    /// Waits for the next stream `inbox` is handed.
    fn next_stream(inbox: &Inbox) -> TcpArrival {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match inbox.next() {
                Delivery::Stream(arrival) => return arrival,
                Delivery::Empty if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => panic!("no stream handed over"),
            }
        }
    }

    /// A listener on a free loopback port, running on a thread of its own.
    struct Listening {
        addr: SocketAddr,
        stop: Arc<EventFd>,
        thread: std::thread::JoinHandle<()>,
    }

    impl Listening {
        fn start(workers: Vec<Mailbox>) -> Self {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            listener.set_nonblocking(true).expect("non-blocking");
            let addr = listener.local_addr().expect("addr");
            let stop = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).expect("eventfd"));
            let setup = ListenerSetup { listener, candidates: vec![Ipv4Addr::LOCALHOST], workers, stop: stop.clone() };
            Self { addr, stop, thread: std::thread::spawn(move || run(setup)) }
        }

        fn stop(self) {
            self.stop.write(1).expect("stop");
            self.thread.join().expect("the listener stops");
        }
    }

    /// Whether the server closed `client` without sending it a byte.
    pub(crate) fn closed_unanswered(mut client: TcpStream) -> bool {
        client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        match client.read(&mut [0; 64]) {
            Ok(0) => true,
            Err(err) => err.kind() == io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    #[test]
    fn a_stream_goes_to_the_worker_its_first_check_names_and_any_other_is_closed_unanswered() {
        let (first, first_inbox) = mailbox().expect("mailbox");
        let (second, second_inbox) = mailbox().expect("mailbox");
        let listening = Listening::start(vec![first, second]);
        let addr = listening.addr;

        // A check for worker 1's connection, sent in two pieces, and media after it.
        let check = framed(&binding_request(b"001abcdefghijklm:client", "any", true));
        let mut client = TcpStream::connect(addr).expect("connect");
        client.write_all(&check[..5]).expect("send");
        std::thread::sleep(Duration::from_millis(20));
        client.write_all(&check[5..]).expect("send");
        client.write_all(&framed(b"media that follows")).expect("send");
        let arrival = next_stream(&second_inbox);
        assert_eq!(arrival.received, check, "the listener read the first frame and nothing past it");
        assert_eq!(arrival.peer, client.local_addr().expect("addr"));
        assert_eq!(arrival.local, addr);
        assert!(matches!(first_inbox.next(), Delivery::Empty));

        // Not STUN; too long a frame; an empty one; a worker the node does not have.
        let strangers: [&[u8]; 4] = [
            &framed(b"\x80\x60 media with no check"),
            &[0xff, 0xff, 0, 0],
            &[0, 0, 1, 2, 3],
            &framed(&binding_request(b"007abcdefghijklm:c", "any", true)),
        ];
        for bytes in strangers {
            let mut stranger = TcpStream::connect(addr).expect("connect");
            stranger.write_all(bytes).expect("send");
            assert!(closed_unanswered(stranger), "closed without a byte sent");
        }
        assert!(matches!(first_inbox.next(), Delivery::Empty) && matches!(second_inbox.next(), Delivery::Empty));

        listening.stop();
        drop(arrival);
        assert!(matches!(first_inbox.next(), Delivery::Closed), "the stopped listener let go of the workers' mailboxes");
    }

    #[test]
    fn streams_that_send_nothing_are_dropped_oldest_first_past_the_limit() {
        let (worker, inbox) = mailbox().expect("mailbox");
        let listening = Listening::start(vec![worker]);
        let addr = listening.addr;
        // A client connects first and checks only once the listener is full of silent
        // streams, so its place goes to the newest of them.
        let mut client = TcpStream::connect(addr).expect("connect");
        let mut silent: Vec<TcpStream> = (0..MAX_PENDING - 1).map(|_| TcpStream::connect(addr).expect("connect")).collect();
        std::thread::sleep(Duration::from_millis(100));
        client.write_all(&framed(&binding_request(b"000abcdefghijklm:client", "any", true))).expect("send");
        assert_eq!(next_stream(&inbox).peer, client.local_addr().expect("addr"), "a client that checks gets through");
        silent.push(TcpStream::connect(addr).expect("connect"));
        std::thread::sleep(Duration::from_millis(100));
        // Full: the next one pushes out the oldest silent stream, and only that one.
        silent.push(TcpStream::connect(addr).expect("connect"));
        let oldest = silent.remove(0);
        assert!(closed_unanswered(oldest), "the oldest silent stream made room for the newest");
        for stream in &silent {
            stream.set_nonblocking(true).expect("non-blocking");
            let still_open = matches!((&*stream).read(&mut [0; 8]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            assert!(still_open, "a newer silent stream still waits");
        }
        listening.stop();
    }
}
