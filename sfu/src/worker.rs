//! A media worker: one thread, one UDP port, the ICE-TCP streams of its connections, and the
//! [`Engine`] holding every room assigned to it.
//!
//! The worker is the engine's driver and nothing else: it waits in one `ppoll` on its
//! socket, its [`Inbox`]'s eventfd and its TCP streams' epoll, reads the waiting datagrams
//! with `recvmmsg`, hands datagrams, then TCP frames, then commands (for at most
//! [`COMMAND_BUDGET`] a turn), then deadlines to the engine with the time it read from the
//! clock, and sends what the engine transmits as UDP GSO trains ([`Outbox`]) or queues it on
//! the client's TCP stream. Signaling talks to it only through the mailbox, so nothing on
//! the packet path takes a lock.
//!
//! A panic that escapes the engine's own isolation (which covers each connection's engine
//! calls and each command) ends that engine: its participants are told their media
//! connection failed, and a fresh engine takes the worker's socket and mailbox.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{error, info, warn};

use crate::engine::{Engine, EngineSettings, Transmit};
use crate::mailbox::{Delivery, Inbox};
use crate::metrics::{Counter, Counters, WorkerMetrics};
use crate::outbox::Outbox;
use crate::remote::Remote;
use crate::socket::{MediaSocket, RECV_BATCH};
use crate::tcp::{TcpFrames, TcpStreams};

/// What a worker needs to run.
pub(crate) struct WorkerSetup {
    pub index: usize,
    pub socket: MediaSocket,
    /// Where the ICE-TCP streams the listener hands over are served.
    pub streams: TcpStreams,
    pub engine: EngineSettings,
    /// Where the engine's figures are published, once per turn.
    pub metrics: Arc<WorkerMetrics>,
}

/// What a worker reads from and writes to.
struct WorkerIo {
    socket: MediaSocket,
    outbox: Outbox,
    streams: TcpStreams,
    frames: TcpFrames,
    /// When idle TCP streams are next looked for.
    next_sweep: Instant,
}

/// How often idle TCP streams are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl WorkerIo {
    fn sending(&mut self) -> Sending<'_> {
        Sending { socket: &self.socket, outbox: &mut self.outbox, streams: &mut self.streams }
    }

    /// Hands the engine the TCP frames read, closing each stream whose frame came from no
    /// connection of the engine's (so a stream that does not authenticate at once holds
    /// nothing).
    fn handle_frames(&mut self, engine: &mut Engine, now: Instant) {
        let mut sending = Sending { socket: &self.socket, outbox: &mut self.outbox, streams: &mut self.streams };
        for frame in self.frames.iter() {
            if sending.streams.is_open(frame.peer)
                && !engine.handle_datagram(now, frame.payload, Remote::Tcp(frame.peer), frame.local, &mut sending)
            {
                sending.streams.close(frame.peer);
            }
        }
    }
}

/// The engine's datagrams on their way out: UDP ones queued in the outbox, which is sent
/// when a batch is handled or when it fills up; TCP ones on their stream's queue.
struct Sending<'a> {
    socket: &'a MediaSocket,
    outbox: &'a mut Outbox,
    streams: &'a mut TcpStreams,
}

impl Sending<'_> {
    fn send(&mut self) {
        if !self.outbox.is_empty() {
            self.socket.send_trains(self.outbox);
            self.outbox.clear();
        }
    }
}

impl Transmit for Sending<'_> {
    fn transmit(&mut self, datagram: &[u8], to: Remote) {
        match to {
            Remote::Udp(addr) => {
                if self.outbox.is_full() {
                    self.send();
                }
                self.outbox.push(datagram, addr);
            }
            Remote::Tcp(addr) => self.streams.queue(addr, datagram),
        }
    }
}

/// Runs a worker on the calling thread until every [`crate::mailbox::Mailbox`] is gone.
pub(crate) fn run(setup: WorkerSetup, inbox: Inbox) {
    let WorkerSetup { index, socket, streams, engine: settings, metrics } = setup;
    info!(worker = index, addr = %socket.local_addr(), "media worker started");
    let new_engine = |counters| Engine::new(settings.clone(), counters, Instant::now(), SystemTime::now(), StdRng::from_os_rng());
    let mut engine = new_engine(Counters::default());
    let mut io = WorkerIo { socket, outbox: Outbox::default(), streams, frames: TcpFrames::default(), next_sweep: Instant::now() };
    let mut commands_waiting = false;
    loop {
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            turn(&mut engine, &mut io, &inbox, COMMAND_BUDGET, &mut commands_waiting)
        }));
        match turn {
            Ok(true) => {
                engine.publish_metrics(&metrics);
                metrics.publish_tcp(io.streams.len(), io.streams.dropped());
            }
            Ok(false) => break,
            Err(_) => {
                error!(worker = index, "media engine panicked; its participants' media failed, a new engine takes over");
                io.outbox.clear();
                let mut counters = engine.counters().clone();
                counters.add(Counter::EngineRestarts, 1);
                let failed = std::mem::replace(&mut engine, new_engine(counters));
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| failed.abandon())).is_err() {
                    error!(worker = index, "the failed engine could not tell its participants");
                }
            }
        }
    }
    info!(worker = index, "media worker stopped");
}

/// How long a turn spends on commands at most (it always takes one that waits): each
/// negotiation costs a millisecond or more of `rtc`'s SDP work, and a burst of joins handled
/// at once held up the datagrams behind it until the socket's receive buffer overflowed.
/// The rest waits for the next turn, which comes without a wait.
const COMMAND_BUDGET: Duration = Duration::from_millis(1);

/// Batches of datagrams a turn reads at most before it handles commands and sends.
const BATCHES_PER_TURN: usize = 4;

/// One wait and what it brought; `false` once every mailbox is gone. Commands are handled
/// until `command_budget` is spent; `commands_waiting` says that a turn left some in the
/// inbox, and the next one then does not wait.
fn turn(engine: &mut Engine, io: &mut WorkerIo, inbox: &Inbox, command_budget: Duration, commands_waiting: &mut bool) -> bool {
    let deadline = engine.next_deadline(Instant::now());
    let wake = if io.streams.len() > 0 { deadline.min(io.next_sweep) } else { deadline };
    let timeout = if *commands_waiting { Duration::ZERO } else { wake.saturating_duration_since(Instant::now()) };
    let ready = match io.socket.wait(inbox, &io.streams, timeout) {
        Ok(ready) => ready,
        Err(err) => {
            warn!(%err, "media worker cannot wait for its socket");
            std::thread::sleep(Duration::from_millis(10));
            return true;
        }
    };
    // Media first: datagrams and frames are read before commands, and commands get a budget.
    if ready.datagrams {
        for _ in 0..BATCHES_PER_TURN {
            match io.socket.recv_batch() {
                Ok(received) => {
                    let now = Instant::now();
                    let mut sending = Sending { socket: &io.socket, outbox: &mut io.outbox, streams: &mut io.streams };
                    for index in 0..received {
                        let Some(datagram) = sending.socket.datagram(index) else { continue };
                        engine.handle_datagram(now, datagram.payload, Remote::Udp(datagram.peer), datagram.local, &mut sending);
                    }
                    if received < RECV_BATCH {
                        break;
                    }
                }
                Err(err) => {
                    warn!(%err, "media socket receive failed");
                    break;
                }
            }
        }
    }
    if ready.streams {
        let now = Instant::now();
        io.streams.take_ready(now, &mut io.frames);
        io.handle_frames(engine, now);
    }
    if ready.commands || *commands_waiting {
        if ready.commands {
            inbox.silence();
        }
        let started = Instant::now();
        *commands_waiting = loop {
            match inbox.next() {
                Delivery::Command(command) => engine.handle_command(Instant::now(), command, &mut io.sending()),
                Delivery::Stream(arrival) => {
                    let now = Instant::now();
                    io.streams.adopt(now, arrival, &mut io.frames);
                    io.handle_frames(engine, now);
                }
                Delivery::Empty => break false,
                Delivery::Closed => return false,
            }
            if started.elapsed() >= command_budget {
                break true;
            }
        };
    }
    let now = Instant::now();
    if now >= deadline {
        engine.handle_timeout(now);
    }
    if now >= io.next_sweep {
        io.streams.close_idle(now);
        io.next_sweep = now + SWEEP_INTERVAL;
    }
    let mut sending = io.sending();
    engine.flush(Instant::now(), &mut sending);
    sending.send();
    // What was queued for a stream goes out before the stream is closed (a leaving
    // connection's DTLS close_notify).
    io.streams.write_queued();
    for peer in engine.take_unbound_streams() {
        io.streams.close(peer);
    }
    true
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};

    use super::*;
    use crate::engine::Command;
    use crate::forwarder::ForwarderSettings;
    use crate::mailbox::mailbox;
    use crate::peer::{PeerSettings, SrtpProfile};
    use crate::ParticipantId;

    fn engine() -> Engine {
        let settings = EngineSettings {
            peers: PeerSettings { worker: 0, candidates: vec![], tcp_candidates: vec![], srtp_profiles: vec![SrtpProfile::AeadAes128Gcm] },
            forwarder: ForwarderSettings::default(),
            max_tracks: 16,
        };
        Engine::new(settings, Counters::default(), Instant::now(), SystemTime::now(), StdRng::seed_from_u64(5))
    }

    fn io() -> WorkerIo {
        WorkerIo {
            socket: MediaSocket::bind(Ipv4Addr::LOCALHOST, 0, vec![Ipv4Addr::LOCALHOST]).expect("bind"),
            outbox: Outbox::default(),
            streams: TcpStreams::new().expect("epoll"),
            frames: TcpFrames::default(),
            next_sweep: Instant::now(),
        }
    }

    #[test]
    fn a_turn_reads_the_waiting_datagrams_before_commands_and_leaves_commands_past_its_budget() {
        let mut io = io();
        let (mailbox, inbox) = mailbox().expect("mailbox");
        let mut engine = engine();
        for name in ["a", "b", "c"] {
            mailbox.send(Command::Leave { participant: ParticipantId::new(name) }).expect("sent");
        }
        let stranger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        for _ in 0..2 {
            stranger.send_to(b"not from a connection", io.socket.local_addr()).expect("send");
        }
        while !io.socket.wait(&inbox, &io.streams, Duration::from_secs(5)).expect("wait").datagrams {}

        // No budget: each turn takes one command, after every datagram that waits.
        let mut waiting = false;
        assert!(turn(&mut engine, &mut io, &inbox, Duration::ZERO, &mut waiting));
        assert_eq!(engine.counters().get(Counter::Unroutable), 2, "both datagrams were handled");
        assert!(waiting, "two commands are left");
        assert!(matches!(inbox.next(), Delivery::Command(Command::Leave { participant }) if participant.as_str() == "b"));
        // The next turn does not wait for the bell it already silenced.
        assert!(turn(&mut engine, &mut io, &inbox, Duration::ZERO, &mut waiting));
        assert!(matches!(inbox.next(), Delivery::Empty), "the turn took the last command");
        assert!(turn(&mut engine, &mut io, &inbox, Duration::ZERO, &mut waiting));
        assert!(!waiting, "the inbox is empty");
    }

    #[test]
    fn a_tcp_stream_whose_first_frame_comes_from_no_connection_is_closed_unanswered() {
        let mut io = io();
        let (mailbox, inbox) = mailbox().expect("mailbox");
        let mut engine = engine();
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (stream, peer) = listener.accept().expect("accept");
        stream.set_nonblocking(true).expect("non-blocking");
        let check = crate::stun::tests::binding_request(b"000abcdefghijklm:client", "guessed", true);
        let received = crate::tcp::listener::tests::framed(&check);
        let local = listener.local_addr().expect("addr");
        let place = crate::tcp::HandOver::take(&Arc::default()).expect("a free place");
        mailbox.hand_over(crate::tcp::TcpArrival { stream, peer, local, received, place }).expect("handed over");
        let mut waiting = false;
        assert!(turn(&mut engine, &mut io, &inbox, COMMAND_BUDGET, &mut waiting));
        assert_eq!(engine.counters().get(Counter::Unroutable), 1, "the check named no connection");
        assert_eq!(io.streams.len(), 0);
        assert!(crate::tcp::listener::tests::closed_unanswered(client));
    }
}
