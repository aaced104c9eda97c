//! Where a client is reached: the source of its datagrams and where the server's go.

use std::net::SocketAddr;

use rtc::shared::{TransportContext, TransportProtocol};

/// A client's end of a path: a UDP address, or the address of a TCP stream to the node's
/// ICE-TCP port that carries RFC 4571 frames. The two are told apart, so a datagram from a
/// UDP address never speaks for a TCP stream from the same address, nor the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Remote {
    /// Datagrams to and from this UDP address.
    Udp(SocketAddr),
    /// Frames on the TCP stream from this address (one stream per address).
    Tcp(SocketAddr),
}

impl Remote {
    /// The other side of a transport the `rtc` engine read or wrote on.
    pub fn peer_of(transport: &TransportContext) -> Self {
        match transport.transport_protocol {
            TransportProtocol::TCP => Self::Tcp(transport.peer_addr),
            // The only other transport (the enum is open to more).
            _ => Self::Udp(transport.peer_addr),
        }
    }

    /// The client's address.
    pub fn addr(self) -> SocketAddr {
        match self {
            Self::Udp(addr) | Self::Tcp(addr) => addr,
        }
    }

    /// The transport, as the ICE agent names it.
    pub fn protocol(self) -> TransportProtocol {
        match self {
            Self::Udp(_) => TransportProtocol::UDP,
            Self::Tcp(_) => TransportProtocol::TCP,
        }
    }
}
