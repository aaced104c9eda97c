//! Which connection a datagram belongs to, and which sources may speak for one.
//!
//! Every connection on a worker shares its UDP port (and the node's ICE-TCP port). A STUN
//! binding request names its connection by the local ICE ufrag in its USERNAME; anything
//! else is known only by its source ([`Remote`]: a UDP address or a TCP stream). An address is bound to a connection only once a binding request from it
//! passes MESSAGE-INTEGRITY under the connection's password (which never leaves signaling's
//! TLS or the answer), so whoever merely sniffed the ufrag can neither attach a source of
//! theirs nor make the server answer one. Non-STUN datagrams are taken only from bound
//! addresses; a connection keeps at most [`MAX_ADDRESSES`] of them (the latest win).

use ring::hmac;
use std::collections::{HashMap, VecDeque};

use super::participant::PeerKey;
use crate::remote::Remote;
use crate::stun;

/// Source addresses one connection keeps bound: a client checks from each of its
/// candidates (host, reflexive, relayed, both address families), and a roaming one from
/// new ones. Past it, the one that checked least recently is unbound.
pub(crate) const MAX_ADDRESSES: usize = 8;

/// What a received datagram is, as far as routing goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// An authenticated connectivity check of the connection; `nominated` when it carries
    /// USE-CANDIDATE, making its source the pair media goes to.
    Check { key: PeerKey, nominated: bool },
    /// From an address bound to the connection.
    Bound(PeerKey),
    /// A check naming a connection that fails integrity: dropped unanswered.
    Forged,
    /// From nobody the worker knows.
    Unknown,
}

/// A connection's credentials and the addresses bound to it.
struct Connection {
    key: PeerKey,
    integrity: hmac::Key,
    /// Oldest first.
    addresses: VecDeque<Remote>,
}

/// A bound address: the connection it speaks for, found with one lookup on the packet path,
/// and that connection's ufrag, to unbind it.
struct Bound {
    key: PeerKey,
    ufrag: String,
}

/// The worker's demultiplexing table.
#[derive(Default)]
pub(crate) struct IceRoutes {
    by_ufrag: HashMap<String, Connection>,
    by_addr: HashMap<Remote, Bound>,
    /// TCP streams no longer bound to any connection (it closed, or their address was pushed
    /// out), for the worker to close: see [`IceRoutes::take_unbound_streams`].
    unbound_streams: Vec<std::net::SocketAddr>,
}

impl IceRoutes {
    /// Makes a connection reachable by checks that name `ufrag` and carry integrity under
    /// `password`.
    pub fn add(&mut self, ufrag: String, password: &str, key: PeerKey) {
        let connection = Connection { key, integrity: stun::integrity_key(password), addresses: VecDeque::new() };
        self.by_ufrag.insert(ufrag, connection);
    }

    /// Forgets a connection and every address bound to it.
    pub fn remove(&mut self, ufrag: &str) {
        if let Some(connection) = self.by_ufrag.remove(ufrag) {
            for addr in connection.addresses {
                self.unbind(addr);
            }
        }
    }

    /// The TCP streams (by client address) unbound since the last call, which nothing
    /// routes to any more.
    pub fn take_unbound_streams(&mut self) -> std::vec::Drain<'_, std::net::SocketAddr> {
        self.unbound_streams.drain(..)
    }

    fn unbind(&mut self, addr: Remote) {
        self.by_addr.remove(&addr);
        if let Remote::Tcp(peer) = addr {
            self.unbound_streams.push(peer);
        }
    }

    /// Routes a datagram from `from`, binding `from` to its connection when it is an
    /// authenticated check.
    pub fn route(&mut self, datagram: &[u8], from: Remote) -> Route {
        if let Some(ufrag) = stun::local_ufrag(datagram) {
            let Some(connection) = self.by_ufrag.get_mut(ufrag) else { return Route::Unknown };
            if !stun::integrity_holds(datagram, &connection.integrity) {
                return Route::Forged;
            }
            let key = connection.key;
            let nominated = stun::nominates(datagram);
            self.bind(ufrag, from);
            return Route::Check { key, nominated };
        }
        match self.by_addr.get(&from) {
            Some(bound) => Route::Bound(bound.key),
            None => Route::Unknown,
        }
    }

    /// Binds `from` to the connection of `ufrag` (moving it from another connection),
    /// unbinding the connection's oldest address past [`MAX_ADDRESSES`].
    fn bind(&mut self, ufrag: &str, from: Remote) {
        if let Remote::Tcp(peer) = from {
            // Bound again before the worker closed it: it stays open.
            self.unbound_streams.retain(|unbound| *unbound != peer);
        }
        if let Some(previous) = self.by_addr.get(&from) {
            // Moved to the back, as the latest used (the nominated pair checks on, so it is
            // never the one pushed out).
            if let Some(other) = self.by_ufrag.get_mut(&previous.ufrag) {
                other.addresses.retain(|a| *a != from);
            }
            if previous.ufrag == ufrag {
                if let Some(connection) = self.by_ufrag.get_mut(ufrag) {
                    connection.addresses.push_back(from);
                }
                return;
            }
        }
        let Some(connection) = self.by_ufrag.get_mut(ufrag) else { return };
        connection.addresses.push_back(from);
        let key = connection.key;
        let pushed_out = if connection.addresses.len() > MAX_ADDRESSES { connection.addresses.pop_front() } else { None };
        if let Some(oldest) = pushed_out {
            self.unbind(oldest);
        }
        self.by_addr.insert(from, Bound { key, ufrag: ufrag.to_owned() });
    }

    /// Connections reachable by their ufrag.
    #[cfg(test)]
    pub fn connections(&self) -> usize {
        self.by_ufrag.len()
    }

    /// Addresses bound across every connection.
    #[cfg(test)]
    pub fn bound_addresses(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerRole;
    use crate::stun::tests::binding_request;
    use crate::ParticipantKey;

    fn key() -> PeerKey {
        static ALICE: std::sync::OnceLock<ParticipantKey> = std::sync::OnceLock::new();
        (*ALICE.get_or_init(ParticipantKey::next), PeerRole::Subscriber)
    }

    fn addr(port: u16) -> Remote {
        Remote::Udp(std::net::SocketAddr::from(([192, 0, 2, 1], port)))
    }

    #[test]
    fn only_an_authenticated_check_binds_its_source() {
        let mut routes = IceRoutes::default();
        routes.add("srv".into(), "the-password", key());
        let forged = binding_request(b"srv:cli", "guessed", true);
        assert_eq!(routes.route(&forged, addr(1)), Route::Forged);
        assert_eq!(routes.route(b"\x80\x60media", addr(1)), Route::Unknown, "a forged check binds nothing");
        let check = binding_request(b"srv:cli", "the-password", true);
        assert_eq!(routes.route(&check, addr(2)), Route::Check { key: key(), nominated: true });
        assert_eq!(routes.route(b"\x80\x60media", addr(2)), Route::Bound(key()));
        assert_eq!(routes.route(&binding_request(b"other:cli", "the-password", false), addr(3)), Route::Unknown);
        routes.remove("srv");
        assert_eq!(routes.route(b"\x80\x60media", addr(2)), Route::Unknown);
        assert_eq!(routes.bound_addresses(), 0);
    }

    #[test]
    fn a_udp_address_and_a_tcp_stream_from_the_same_address_are_bound_apart() {
        let mut routes = IceRoutes::default();
        routes.add("srv".into(), "pw", key());
        let tcp = Remote::Tcp(addr(7).addr());
        assert_eq!(routes.route(&binding_request(b"srv:cli", "pw", true), tcp), Route::Check { key: key(), nominated: true });
        assert_eq!(routes.route(b"\x80\x60media", tcp), Route::Bound(key()));
        assert_eq!(routes.route(b"\x80\x60media", addr(7)), Route::Unknown, "the UDP address was never checked");
        assert_eq!(routes.take_unbound_streams().count(), 0);
        routes.remove("srv");
        assert_eq!(routes.take_unbound_streams().collect::<Vec<_>>(), vec![addr(7).addr()], "the stream is to be closed");
    }

    #[test]
    fn a_connection_keeps_its_latest_addresses_only() {
        let mut routes = IceRoutes::default();
        routes.add("srv".into(), "pw", key());
        let check = binding_request(b"srv:cli", "pw", false);
        for port in 0..100 {
            routes.route(&check, addr(port));
        }
        assert_eq!(routes.bound_addresses(), MAX_ADDRESSES);
        assert_eq!(routes.route(b"\x80\x60media", addr(99)), Route::Bound(key()));
        assert_eq!(routes.route(b"\x80\x60media", addr(0)), Route::Unknown);
        assert_eq!(routes.take_unbound_streams().count(), 0, "UDP addresses have no stream to close");
        for port in 0..=MAX_ADDRESSES as u16 {
            routes.route(&check, Remote::Tcp(addr(port).addr()));
        }
        assert_eq!(routes.take_unbound_streams().collect::<Vec<_>>(), vec![addr(0).addr()], "the oldest stream was pushed out");
        // A source that checks again is the latest: the next one pushes out another.
        routes.route(&check, Remote::Tcp(addr(1).addr()));
        routes.route(&check, Remote::Tcp(addr(50).addr()));
        assert_eq!(routes.take_unbound_streams().collect::<Vec<_>>(), vec![addr(2).addr()]);
        assert_eq!(routes.route(b"\x80\x60media", Remote::Tcp(addr(1).addr())), Route::Bound(key()));
        // A stream pushed out and checked again before the worker closed it stays.
        routes.route(&check, Remote::Tcp(addr(51).addr()));
        routes.route(&check, Remote::Tcp(addr(3).addr()));
        let unbound: Vec<_> = routes.take_unbound_streams().collect();
        assert_eq!(unbound, vec![addr(4).addr()], "the stream checked again stays; the next oldest goes");
    }
}
