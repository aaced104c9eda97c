//! Caps on open signaling connections, in total and per client address: a WebSocket holds
//! memory and a task from its upgrade on, joined or not, so one address cannot take them all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Which cap a refused connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReached {
    /// The node holds its most connections.
    Total,
    /// The client's address holds its most connections.
    PerAddress,
}

/// The open connections, counted against their caps.
#[derive(Debug)]
pub struct ConnectionCaps {
    total: usize,
    per_address: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; its place is given back when it is dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    caps: Arc<ConnectionCaps>,
    address: IpAddr,
}

impl ConnectionCaps {
    /// Caps of `total` connections, `per_address` of them from one IP address.
    pub fn new(total: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self { total, per_address, open: Mutex::default() })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for a connection from `address`, or the cap it would pass.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionSlot, CapReached> {
        let mut open = self.open();
        if open.total >= self.total {
            return Err(CapReached::Total);
        }
        let from_address = open.by_address.entry(address).or_default();
        if *from_address >= self.per_address {
            return Err(CapReached::PerAddress);
        }
        *from_address += 1;
        open.total += 1;
        Ok(ConnectionSlot { caps: self.clone(), address })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.caps.open();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_and_the_node_are_held_to_their_caps_and_dropped_slots_free_their_place() {
        let caps = ConnectionCaps::new(3, 2);
        let (a, b, c) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap(), "192.0.2.3".parse().unwrap());
        let first = caps.admit(a).expect("first from a");
        let _second = caps.admit(a).expect("second from a");
        assert_eq!(caps.admit(a).unwrap_err(), CapReached::PerAddress);
        let _third = caps.admit(b).expect("b has its own cap");
        assert_eq!(caps.admit(c).unwrap_err(), CapReached::Total);
        drop(first);
        assert!(caps.admit(a).is_ok(), "a's place is free again");
        assert!(caps.open().by_address.len() <= 2, "no entry is kept for an address with no connection");
    }
}
