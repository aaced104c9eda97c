//! A media worker: one thread, one UDP port, and the [`Engine`] holding every room assigned
//! to it.
//!
//! The worker is the engine's driver and nothing else: it waits in one `ppoll` on its
//! socket and its [`Inbox`]'s eventfd, reads the waiting datagrams with `recvmmsg`, hands
//! datagrams, then commands (for at most [`COMMAND_BUDGET`] a turn), then deadlines to the
//! engine with the time it read from the clock, and sends what the engine transmits as UDP
//! GSO trains ([`Outbox`]). Signaling talks to it only through the mailbox, so nothing on the
//! packet path takes a lock.
//!
//! A panic that escapes the engine's own isolation (which covers each connection's engine
//! calls and each command) ends that engine: its participants are told their media
//! connection failed, and a fresh engine takes the worker's socket and mailbox.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{error, info, warn};

use crate::engine::{Engine, EngineSettings, Transmit};
use crate::mailbox::{Delivery, Inbox};
use crate::metrics::{Counter, Counters, WorkerMetrics};
use crate::outbox::Outbox;
use crate::socket::{MediaSocket, RECV_BATCH};

/// What a worker needs to run.
pub(crate) struct WorkerSetup {
    pub index: usize,
    pub socket: MediaSocket,
    pub engine: EngineSettings,
    /// Where the engine's figures are published, once per turn.
    pub metrics: Arc<WorkerMetrics>,
}

/// The engine's datagrams on their way out: queued in the outbox, which is sent when a
/// batch is handled or when it fills up.
struct Sending<'a> {
    socket: &'a MediaSocket,
    outbox: &'a mut Outbox,
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
    fn transmit(&mut self, datagram: &[u8], to: SocketAddr) {
        if self.outbox.is_full() {
            self.send();
        }
        self.outbox.push(datagram, to);
    }
}

/// Runs a worker on the calling thread until every [`crate::mailbox::Mailbox`] is gone.
pub(crate) fn run(setup: WorkerSetup, inbox: Inbox) {
    let WorkerSetup { index, mut socket, engine: settings, metrics } = setup;
    info!(worker = index, addr = %socket.local_addr(), "media worker started");
    let new_engine = |counters| Engine::new(settings.clone(), counters, Instant::now(), SystemTime::now(), StdRng::from_os_rng());
    let mut engine = new_engine(Counters::default());
    let mut outbox = Outbox::default();
    let mut commands_waiting = false;
    loop {
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            turn(&mut engine, &mut socket, &mut outbox, &inbox, COMMAND_BUDGET, &mut commands_waiting)
        }));
        match turn {
            Ok(true) => engine.publish_metrics(&metrics),
            Ok(false) => break,
            Err(_) => {
                error!(worker = index, "media engine panicked; its participants' media failed, a new engine takes over");
                outbox.clear();
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
fn turn(
    engine: &mut Engine,
    socket: &mut MediaSocket,
    outbox: &mut Outbox,
    inbox: &Inbox,
    command_budget: Duration,
    commands_waiting: &mut bool,
) -> bool {
    let deadline = engine.next_deadline(Instant::now());
    let timeout = if *commands_waiting { Duration::ZERO } else { deadline.saturating_duration_since(Instant::now()) };
    let ready = match socket.wait(inbox, timeout) {
        Ok(ready) => ready,
        Err(err) => {
            warn!(%err, "media worker cannot wait for its socket");
            std::thread::sleep(Duration::from_millis(10));
            return true;
        }
    };
    // Media first: datagrams are read before commands, and commands get a budget.
    if ready.datagrams {
        for _ in 0..BATCHES_PER_TURN {
            match socket.recv_batch() {
                Ok(received) => {
                    let now = Instant::now();
                    for index in 0..received {
                        let Some(datagram) = socket.datagram(index) else { continue };
                        engine.handle_datagram(now, datagram.payload, datagram.peer, datagram.local, &mut Sending { socket, outbox });
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
    if ready.commands || *commands_waiting {
        if ready.commands {
            inbox.silence();
        }
        let started = Instant::now();
        *commands_waiting = loop {
            match inbox.next() {
                Delivery::Command(command) => {
                    engine.handle_command(Instant::now(), command, &mut Sending { socket: &*socket, outbox });
                    if started.elapsed() >= command_budget {
                        break true;
                    }
                }
                Delivery::Empty => break false,
                Delivery::Closed => return false,
            }
        };
    }
    let now = Instant::now();
    if now >= deadline {
        engine.handle_timeout(now);
    }
    let mut sending = Sending { socket: &*socket, outbox };
    engine.flush(Instant::now(), &mut sending);
    sending.send();
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
            peers: PeerSettings { candidates: vec![], srtp_profiles: vec![SrtpProfile::AeadAes128Gcm] },
            forwarder: ForwarderSettings::default(),
            max_tracks: 16,
        };
        Engine::new(settings, Counters::default(), Instant::now(), SystemTime::now(), StdRng::seed_from_u64(5))
    }

    #[test]
    fn a_turn_reads_the_waiting_datagrams_before_commands_and_leaves_commands_past_its_budget() {
        let mut socket = MediaSocket::bind(Ipv4Addr::LOCALHOST, 0, vec![Ipv4Addr::LOCALHOST]).expect("bind");
        let (mailbox, inbox) = mailbox().expect("mailbox");
        let mut engine = engine();
        let mut outbox = Outbox::default();
        for name in ["a", "b", "c"] {
            mailbox.send(Command::Leave { participant: ParticipantId::new(name) }).expect("sent");
        }
        let stranger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        for _ in 0..2 {
            stranger.send_to(b"not from a connection", socket.local_addr()).expect("send");
        }
        while !socket.wait(&inbox, Duration::from_secs(5)).expect("wait").datagrams {}

        // No budget: each turn takes one command, after every datagram that waits.
        let mut waiting = false;
        assert!(turn(&mut engine, &mut socket, &mut outbox, &inbox, Duration::ZERO, &mut waiting));
        assert_eq!(engine.counters().get(Counter::Unroutable), 2, "both datagrams were handled");
        assert!(waiting, "two commands are left");
        assert!(matches!(inbox.next(), Delivery::Command(Command::Leave { participant }) if participant.as_str() == "b"));
        // The next turn does not wait for the bell it already silenced.
        assert!(turn(&mut engine, &mut socket, &mut outbox, &inbox, Duration::ZERO, &mut waiting));
        assert!(matches!(inbox.next(), Delivery::Empty), "the turn took the last command");
        assert!(turn(&mut engine, &mut socket, &mut outbox, &inbox, Duration::ZERO, &mut waiting));
        assert!(!waiting, "the inbox is empty");
    }
}
