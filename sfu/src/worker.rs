//! A media worker: one thread, one UDP port, and the [`Engine`] holding every room assigned
//! to it.
//!
//! The worker is the engine's driver and nothing else: it waits in one `ppoll` on its
//! socket and its [`Inbox`]'s eventfd, reads every waiting datagram with one `recvmmsg`,
//! hands commands, datagrams and deadlines to the engine with the time it read from the
//! clock, and sends what the engine transmits as UDP GSO trains ([`Outbox`]). Signaling
//! talks to it only through the mailbox, so nothing on the packet path takes a lock.
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
use crate::socket::MediaSocket;

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
    loop {
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| turn(&mut engine, &mut socket, &mut outbox, &inbox)));
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

/// One wait and what it brought; `false` once every mailbox is gone.
fn turn(engine: &mut Engine, socket: &mut MediaSocket, outbox: &mut Outbox, inbox: &Inbox) -> bool {
    let deadline = engine.next_deadline(Instant::now());
    let ready = match socket.wait(inbox, deadline.saturating_duration_since(Instant::now())) {
        Ok(ready) => ready,
        Err(err) => {
            warn!(%err, "media worker cannot wait for its socket");
            std::thread::sleep(Duration::from_millis(10));
            return true;
        }
    };
    if ready.commands {
        inbox.silence();
        loop {
            match inbox.next() {
                Delivery::Command(command) => engine.handle_command(Instant::now(), command, &mut Sending { socket: &*socket, outbox }),
                Delivery::Empty => break,
                Delivery::Closed => return false,
            }
        }
    }
    if ready.datagrams {
        match socket.recv_batch() {
            Ok(received) => {
                let now = Instant::now();
                for index in 0..received {
                    let Some(datagram) = socket.datagram(index) else { continue };
                    engine.handle_datagram(now, datagram.payload, datagram.peer, datagram.local, &mut Sending { socket, outbox });
                }
            }
            Err(err) => warn!(%err, "media socket receive failed"),
        }
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
