//! Commands to a media worker, and ICE-TCP streams for it: a queue, and an eventfd that
//! wakes the worker's poll.
//!
//! The worker thread blocks in one `ppoll` on its UDP socket and this eventfd, so a command
//! costs the sender one eventfd write and the worker nothing while none arrive. Every
//! [`Mailbox`] rings the bell as it is dropped, after letting go of its queue end, so the
//! worker sees the queue closed once the last one is gone.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::engine::Command;
use crate::tcp::TcpArrival;

/// What a mailbox carries.
enum Letter {
    Command(Command),
    Stream(TcpArrival),
}

/// The sending end, held by signaling sessions and taps; cheap to clone.
#[derive(Clone)]
pub(crate) struct Mailbox {
    /// `None` only while dropping.
    queue: Option<mpsc::Sender<Letter>>,
    bell: Arc<EventFd>,
}

/// The worker's end.
pub(crate) struct Inbox {
    queue: mpsc::Receiver<Letter>,
    bell: Arc<EventFd>,
}

/// The worker has stopped; the command was not delivered.
#[derive(Debug)]
pub(crate) struct WorkerStopped;

/// A new mailbox and the inbox it delivers to.
pub(crate) fn mailbox() -> io::Result<(Mailbox, Inbox)> {
    let bell = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map_err(io::Error::from)?);
    let (tx, rx) = mpsc::channel();
    Ok((Mailbox { queue: Some(tx), bell: bell.clone() }, Inbox { queue: rx, bell }))
}

impl Mailbox {
    /// Queues a command and wakes the worker.
    pub(crate) fn send(&self, command: Command) -> Result<(), WorkerStopped> {
        self.post(Letter::Command(command))
    }

    /// Hands the worker an ICE-TCP stream its first check names, and wakes it.
    pub(crate) fn hand_over(&self, stream: TcpArrival) -> Result<(), WorkerStopped> {
        self.post(Letter::Stream(stream))
    }

    fn post(&self, letter: Letter) -> Result<(), WorkerStopped> {
        self.queue.as_ref().ok_or(WorkerStopped)?.send(letter).map_err(|_| WorkerStopped)?;
        self.ring();
        Ok(())
    }

    fn ring(&self) {
        if let Err(err) = self.bell.write(1) {
            tracing::warn!(%err, "media worker could not be woken");
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        drop(self.queue.take());
        self.ring();
    }
}

/// What the inbox held when the worker looked.
pub(crate) enum Delivery {
    /// A command to handle.
    Command(Command),
    /// An ICE-TCP stream to serve.
    Stream(TcpArrival),
    /// Nothing more for now.
    Empty,
    /// Every mailbox is gone: the worker should stop.
    Closed,
}

impl Inbox {
    /// Clears the bell; call once the poll said it rang, then [`Inbox::next`] until empty.
    pub(crate) fn silence(&self) {
        // A non-blocking read that finds the counter at zero (another read won) is fine.
        let _ = self.bell.read();
    }

    /// The next queued command or stream, if any.
    pub(crate) fn next(&self) -> Delivery {
        match self.queue.try_recv() {
            Ok(Letter::Command(command)) => Delivery::Command(command),
            Ok(Letter::Stream(stream)) => Delivery::Stream(stream),
            Err(TryRecvError::Empty) => Delivery::Empty,
            Err(TryRecvError::Disconnected) => Delivery::Closed,
        }
    }
}

impl AsFd for Inbox {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::MediaSocket;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn leave(name: &str) -> Command {
        Command::Leave { participant: crate::ParticipantId::new(name) }
    }

    #[test]
    fn a_command_wakes_the_wait_and_the_last_mailbox_closes_the_inbox() {
        let socket = MediaSocket::bind(Ipv4Addr::LOCALHOST, 0, vec![Ipv4Addr::LOCALHOST]).expect("bind");
        let (mailbox, inbox) = mailbox().expect("mailbox");
        let streams = crate::tcp::TcpStreams::new().expect("epoll");
        let idle = socket.wait(&inbox, &streams, Duration::from_millis(20)).expect("wait");
        assert!(!idle.commands && !idle.datagrams, "nothing rang");

        let second = mailbox.clone();
        second.send(leave("a")).expect("sent");
        let rang = socket.wait(&inbox, &streams, Duration::from_secs(5)).expect("wait");
        assert!(rang.commands);
        inbox.silence();
        assert!(matches!(inbox.next(), Delivery::Command(Command::Leave { participant }) if participant.as_str() == "a"));
        assert!(matches!(inbox.next(), Delivery::Empty));
        let quiet = socket.wait(&inbox, &streams, Duration::from_millis(20)).expect("wait");
        assert!(!quiet.commands, "the bell was silenced");

        drop(second);
        inbox.silence();
        assert!(matches!(inbox.next(), Delivery::Empty), "one mailbox is left");
        drop(mailbox);
        let closing = socket.wait(&inbox, &streams, Duration::from_secs(5)).expect("wait");
        assert!(closing.commands, "the last mailbox rang as it went");
        assert!(matches!(inbox.next(), Delivery::Closed));
    }
}
