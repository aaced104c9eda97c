//! A worker's UDP socket, bound to all addresses, that tells which local address each
//! datagram arrived on (IP_PKTINFO) so ICE sees the candidate the client actually used.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Largest datagram read; larger ones are truncated by the kernel and rejected by SRTP/DTLS.
const MAX_DATAGRAM: usize = 1500;

/// One received datagram.
pub struct Datagram<'a> {
    /// The bytes received.
    pub payload: &'a [u8],
    /// Who sent it.
    pub peer: SocketAddr,
    /// The local candidate address it arrived on.
    pub local: SocketAddr,
}

/// The worker's socket.
pub struct MediaSocket {
    socket: UdpSocket,
    port: u16,
    /// Candidate addresses; a datagram arriving on another address (behind a NAT that
    /// announces a public IP) is attributed to the first.
    candidates: Vec<Ipv4Addr>,
    buf: Box<[u8; MAX_DATAGRAM]>,
    cmsg: Vec<u8>,
}

impl MediaSocket {
    /// Binds `bind:port` (IPv4) inside the current tokio runtime.
    pub fn bind(bind: Ipv4Addr, port: u16, candidates: Vec<Ipv4Addr>) -> io::Result<Self> {
        let std_socket = StdUdpSocket::bind(SocketAddrV4::new(bind, port))?;
        std_socket.set_nonblocking(true)?;
        setsockopt(&std_socket, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)?;
        let port = std_socket.local_addr()?.port();
        Ok(Self {
            socket: UdpSocket::from_std(std_socket)?,
            port,
            candidates,
            buf: Box::new([0; MAX_DATAGRAM]),
            cmsg: nix::cmsg_space!(nix::libc::in_pktinfo),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port)))
    }

    /// Waits until a datagram can be read.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Reads one datagram if one is waiting.
    pub fn try_recv(&mut self) -> io::Result<Option<Datagram<'_>>> {
        let fd = self.socket.as_raw_fd();
        let buf = &mut self.buf[..];
        let cmsg = &mut self.cmsg;
        let received = self.socket.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(buf)];
            let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(cmsg), MsgFlags::empty()).map_err(io::Error::from)?;
            let mut local_ip = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                        local_ip = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                    }
                }
            }
            let peer = msg.address.map(|a| SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port())));
            Ok((msg.bytes, peer, local_ip))
        });
        let (len, peer, local_ip) = match received {
            Ok(r) => r,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(err) => return Err(err),
        };
        let Some(peer) = peer else { return Ok(None) };
        let local_ip = local_ip
            .filter(|ip| self.candidates.contains(ip))
            .or_else(|| self.candidates.first().copied())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ok(Some(Datagram { payload: &self.buf[..len], peer, local: SocketAddr::from((local_ip, self.port)) }))
    }

    /// Sends one datagram; a full socket buffer drops it (as the network would).
    pub fn send(&self, payload: &[u8], to: SocketAddr) {
        if let Err(err) = self.socket.try_send_to(payload, to) {
            tracing::debug!(%to, %err, "media send dropped");
        }
    }
}
