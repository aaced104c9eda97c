//! A worker's UDP socket, bound to all addresses, that tells which local address each
//! datagram arrived on (IP_PKTINFO) so ICE sees the candidate the client actually used.
//!
//! The worker thread owns it without a runtime: [`MediaSocket::wait`] blocks in one `ppoll`
//! on the socket, the worker's mailbox bell (an eventfd) and its ICE-TCP streams' epoll until
//! one is ready or the deadline passes, and [`MediaSocket::recv_batch`] takes every queued datagram (up to [`RECV_BATCH`]) with
//! one `recvmmsg`. A wake-up thus costs two system calls however many datagrams it brings
//! (a third, `epoll_wait`, when TCP streams are ready).
//! [`MediaSocket::send_trains`] sends an [`Outbox`]'s trains, each with one UDP GSO
//! `sendmsg`; a kernel or route that refuses GSO gets its datagrams one by one from then on.

use std::cell::Cell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::socket::{recvmmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn};
use nix::sys::time::TimeSpec;

use crate::outbox::{Outbox, Train, MAX_SEGMENTS};

/// Largest datagram read; larger ones are truncated by the kernel and rejected by SRTP/DTLS.
const MAX_DATAGRAM: usize = 1500;
/// Datagrams read by one `recvmmsg`.
pub(crate) const RECV_BATCH: usize = 64;
/// The receive buffer asked for: what arrives while the worker cannot run (a CPU quota's
/// throttled period, a burst of DTLS handshakes) waits here instead of being dropped. The
/// kernel's default (208 KiB, some 90 full-sized datagrams) overflowed within one throttled
/// period at a few thousand packets per second, losing media and handshake flights.
const RECEIVE_BUFFER: usize = 16 << 20;

/// One received datagram.
pub struct Datagram<'a> {
    /// The bytes received.
    pub payload: &'a [u8],
    /// Who sent it.
    pub peer: SocketAddr,
    /// The local candidate address it arrived on.
    pub local: SocketAddr,
}

/// How long a received datagram is, and whom it came from (`None`: no source address, which
/// UDP over IPv4 always has).
#[derive(Clone, Copy)]
struct Received {
    len: usize,
    peer: Option<SocketAddr>,
    local: SocketAddr,
}

/// What woke the worker.
#[derive(Debug, Default, Clone, Copy)]
pub struct Readiness {
    /// Datagrams are waiting on the socket.
    pub datagrams: bool,
    /// The inbox's bell rang.
    pub commands: bool,
    /// An ICE-TCP stream is ready.
    pub streams: bool,
}

/// The worker's socket.
pub struct MediaSocket {
    socket: UdpSocket,
    port: u16,
    /// Candidate addresses; a datagram arriving on another address (behind a NAT that
    /// announces a public IP) is attributed to the first.
    candidates: Vec<Ipv4Addr>,
    buffers: Box<[[u8; MAX_DATAGRAM]; RECV_BATCH]>,
    headers: MultiHeaders<SockaddrIn>,
    received: Vec<Received>,
    /// Trains go out as one GSO send each; cleared when the kernel refuses one.
    gso: Cell<bool>,
}

impl MediaSocket {
    /// Binds `bind:port` (IPv4), non-blocking.
    pub fn bind(bind: Ipv4Addr, port: u16, candidates: Vec<Ipv4Addr>) -> io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddrV4::new(bind, port))?;
        socket.set_nonblocking(true)?;
        setsockopt(&socket, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)?;
        enlarge_receive_buffer(&socket);
        let port = socket.local_addr()?.port();
        Ok(Self {
            socket,
            port,
            candidates,
            buffers: Box::new([[0; MAX_DATAGRAM]; RECV_BATCH]),
            headers: MultiHeaders::preallocate(RECV_BATCH, Some(nix::cmsg_space!(nix::libc::in_pktinfo))),
            received: Vec::with_capacity(RECV_BATCH),
            gso: Cell::new(true),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port)))
    }

    /// Blocks until datagrams wait, the inbox's bell rings, a TCP stream of `streams` (an
    /// epoll) is ready, or `timeout` passes (then none is set). A signal interrupting the
    /// wait counts as a timeout.
    pub fn wait(&self, bell: &impl AsFd, streams: &impl AsFd, timeout: Duration) -> io::Result<Readiness> {
        let mut fds = [
            PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(bell.as_fd(), PollFlags::POLLIN),
            PollFd::new(streams.as_fd(), PollFlags::POLLIN),
        ];
        match ppoll(&mut fds, Some(TimeSpec::from_duration(timeout)), None) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Readiness::default()),
            Err(err) => return Err(err.into()),
        }
        // An error condition on the socket (an ICMP error, say) is read out by recvmmsg.
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        Ok(Readiness { datagrams: ready(&fds[0]), commands: ready(&fds[1]), streams: ready(&fds[2]) })
    }

    /// Reads every datagram waiting, up to [`RECV_BATCH`]; returns how many, each then
    /// available through [`MediaSocket::datagram`] until the next call.
    pub fn recv_batch(&mut self) -> io::Result<usize> {
        self.received.clear();
        let mut slices = self.buffers.each_mut().map(|buffer| [IoSliceMut::new(buffer)]);
        let results = match recvmmsg(self.socket.as_raw_fd(), &mut self.headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None) {
            Ok(results) => results,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(0),
            Err(err) => return Err(err.into()),
        };
        for message in results {
            // One entry per message, so an index names its buffer.
            let peer = message.address.map(|a| SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port())));
            let mut local_ip = None;
            if let Ok(cmsgs) = message.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                        local_ip = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                    }
                }
            }
            let local_ip = local_ip
                .filter(|ip| self.candidates.contains(ip))
                .or_else(|| self.candidates.first().copied())
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            let local = SocketAddr::from((local_ip, self.port));
            self.received.push(Received { len: message.bytes.min(MAX_DATAGRAM), peer, local });
        }
        Ok(self.received.len())
    }

    /// The `index`th datagram of the last [`MediaSocket::recv_batch`]; `None` past its end or
    /// for a datagram without a source.
    pub fn datagram(&self, index: usize) -> Option<Datagram<'_>> {
        let received = self.received.get(index)?;
        Some(Datagram { payload: &self.buffers[index][..received.len], peer: received.peer?, local: received.local })
    }

    /// Sends one datagram; a full socket buffer drops it (as the network would).
    pub fn send(&self, payload: &[u8], to: SocketAddr) {
        if let Err(err) = self.socket.send_to(payload, to) {
            tracing::debug!(%to, %err, "media send dropped");
        }
    }

    /// Sends every train of `outbox`: one datagram as itself, more as one GSO send.
    pub fn send_trains(&self, outbox: &Outbox) {
        for train in outbox.trains() {
            if train.len() == 1 || !self.gso.get() || !self.send_segmented(&train) {
                train.datagrams().for_each(|datagram| self.send(datagram, train.to()));
            }
        }
    }

    /// One GSO send of `train`; `false` (and no GSO from then on) if the kernel refuses it
    /// for a reason other than a full buffer, which drops it as the network would.
    fn send_segmented(&self, train: &Train<'_>) -> bool {
        let SocketAddr::V4(to) = train.to() else { return false };
        let Ok(segment) = u16::try_from(train.segment()) else { return false };
        let mut slices = [IoSlice::new(&[]); MAX_SEGMENTS];
        let count = slices.iter_mut().zip(train.datagrams()).map(|(slice, datagram)| *slice = IoSlice::new(datagram)).count();
        let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
        match sendmsg(self.socket.as_raw_fd(), &slices[..count], &cmsg, MsgFlags::MSG_DONTWAIT, Some(&SockaddrIn::from(to))) {
            Ok(_) => true,
            Err(err @ (Errno::EAGAIN | Errno::ENOBUFS)) => {
                tracing::debug!(%to, %err, datagrams = count, "media send dropped");
                true
            }
            Err(err) => {
                tracing::warn!(%to, %err, "UDP GSO refused; sending datagrams one by one from now on");
                self.gso.set(false);
                false
            }
        }
    }
}

/// Asks for [`RECEIVE_BUFFER`]: within `net.core.rmem_max`, or past it where the process may
/// (CAP_NET_ADMIN); a smaller buffer is kept with a warning naming the sysctl.
fn enlarge_receive_buffer(socket: &UdpSocket) {
    // The kernel reports twice the size asked for (the other half is its bookkeeping).
    let granted = || nix::sys::socket::getsockopt(socket, sockopt::RcvBuf).unwrap_or(0) / 2;
    if setsockopt(socket, sockopt::RcvBuf, &RECEIVE_BUFFER).is_ok() && granted() >= RECEIVE_BUFFER {
        return;
    }
    if setsockopt(socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_ok() && granted() >= RECEIVE_BUFFER {
        return;
    }
    tracing::warn!(
        granted = granted(),
        wanted = RECEIVE_BUFFER,
        "media socket receive buffer is smaller than wanted; raise net.core.rmem_max to avoid drops in bursts"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn local(socket: &MediaSocket) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, socket.local_addr().port()))
    }

    #[test]
    fn every_waiting_datagram_is_read_in_one_batch_with_its_source_and_local_address() {
        let mut server = MediaSocket::bind(Ipv4Addr::LOCALHOST, 0, vec![Ipv4Addr::LOCALHOST]).expect("bind");
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        for i in 0..3u8 {
            client.send_to(&vec![i; 100 + usize::from(i)], local(&server)).expect("send");
        }
        let (_mailbox, inbox) = crate::mailbox::mailbox().expect("mailbox");
        let streams = crate::tcp::TcpStreams::new().expect("epoll");
        assert!(server.wait(&inbox, &streams, Duration::from_secs(5)).expect("wait").datagrams);
        // Loopback delivers each datagram within its send, so all three wait by now.
        assert_eq!(server.recv_batch().expect("recv"), 3);
        let read: Vec<_> = (0..3).filter_map(|i| server.datagram(i)).map(|d| (d.payload.to_vec(), d.peer, d.local)).collect();
        assert_eq!(read.len(), 3);
        for (i, (payload, peer, at)) in read.into_iter().enumerate() {
            assert_eq!(payload, vec![i as u8; 100 + i]);
            assert_eq!(peer, client.local_addr().expect("addr"));
            assert_eq!(at, local(&server));
        }
        assert_eq!(server.recv_batch().expect("recv"), 0, "nothing more waits");
        assert!(server.datagram(0).is_none());
    }

    #[test]
    fn the_receive_buffer_is_as_large_as_the_kernel_allows() {
        let server = MediaSocket::bind(Ipv4Addr::LOCALHOST, 0, vec![Ipv4Addr::LOCALHOST]).expect("bind");
        let granted = nix::sys::socket::getsockopt(&server.socket, sockopt::RcvBuf).expect("SO_RCVBUF") / 2;
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").expect("rmem_max").trim().parse().expect("number");
        // As root (CI) the buffer is forced past rmem_max; otherwise rmem_max bounds it.
        assert!(granted >= RECEIVE_BUFFER.min(rmem_max), "granted {granted}, rmem_max {rmem_max}");
    }

    #[test]
    fn each_train_arrives_as_the_datagrams_it_was_made_of() {
        let server = MediaSocket::bind(Ipv4Addr::LOCALHOST, 0, vec![Ipv4Addr::LOCALHOST]).expect("bind");
        let clients = [UdpSocket::bind("127.0.0.1:0").expect("client"), UdpSocket::bind("127.0.0.1:0").expect("client")];
        let mut outbox = Outbox::default();
        let mut sent = [Vec::new(), Vec::new()];
        // A keyframe's burst to each client (a shorter last packet), then an audio packet.
        for i in 0..9u8 {
            for (client, sent) in clients.iter().zip(&mut sent) {
                let datagram = vec![i; if i == 8 { 700 } else { 1200 }];
                outbox.push(&datagram, client.local_addr().expect("addr"));
                sent.push(datagram);
            }
        }
        for (client, sent) in clients.iter().zip(&mut sent) {
            outbox.push(&[0xfc; 90], client.local_addr().expect("addr"));
            sent.push(vec![0xfc; 90]);
        }
        assert_eq!(outbox.trains().count(), 4, "one train per client and burst, one per audio packet");
        server.send_trains(&outbox);
        assert!(server.gso.get(), "the kernel took every train as one GSO send");
        for (client, sent) in clients.iter().zip(sent) {
            client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut buffer = [0; 2000];
            for expected in sent {
                let (len, from) = client.recv_from(&mut buffer).expect("a datagram of the train");
                assert_eq!(&buffer[..len], &expected[..]);
                assert_eq!(from, local(&server));
            }
        }
    }
}
