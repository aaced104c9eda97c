//! The embedded state store: this process's memory, with the same expiry semantics as Redis
//! (entries vanish `ttl` after their last write), for a single node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use signaling::rate::TokenBucket;
use signaling::state::{NodeInfo, NodeLoad, RoomState, SessionState, StateError, StateStore};

struct Expiring<T> {
    value: T,
    until: Instant,
}

#[derive(Default)]
struct Maps {
    sessions: HashMap<String, Expiring<SessionState>>,
    rooms: HashMap<String, Expiring<RoomState>>,
    nodes: HashMap<String, Expiring<NodeInfo>>,
    locks: HashMap<String, Expiring<String>>,
    buckets: HashMap<String, TokenBucket>,
}

/// Users' rate buckets kept before idle ones are forgotten.
const BUCKETS_BEFORE_PRUNING: usize = 4096;
/// Idle time after which any bucket has refilled (bursts are far below rate × this).
const BUCKET_IDLE: Duration = Duration::from_secs(600);

/// State in memory.
#[derive(Default)]
pub struct MemoryState {
    maps: Mutex<Maps>,
}

fn live<T: Clone>(map: &mut HashMap<String, Expiring<T>>, key: &str) -> Option<T> {
    match map.get(key) {
        Some(entry) if entry.until > Instant::now() => Some(entry.value.clone()),
        Some(_) => {
            map.remove(key);
            None
        }
        None => None,
    }
}

fn expiring<T>(value: T, ttl: Duration) -> Expiring<T> {
    Expiring { value, until: Instant::now() + ttl }
}

impl MemoryState {
    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl StateStore for MemoryState {
    async fn put_session(&self, session: &SessionState, ttl: Duration) -> Result<(), StateError> {
        self.maps().sessions.insert(session.session_id.clone(), expiring(session.clone(), ttl));
        Ok(())
    }

    async fn remove_session(&self, session_id: &str) -> Result<(), StateError> {
        self.maps().sessions.remove(session_id);
        Ok(())
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionState>, StateError> {
        Ok(live(&mut self.maps().sessions, session_id))
    }

    async fn put_room(&self, room: &str, state: &RoomState, ttl: Duration) -> Result<(), StateError> {
        self.maps().rooms.insert(room.to_owned(), expiring(state.clone(), ttl));
        Ok(())
    }

    async fn remove_room(&self, room: &str, owner: &str) -> Result<(), StateError> {
        let mut maps = self.maps();
        if live(&mut maps.rooms, room).is_some_and(|state| state.owner.id == owner) {
            maps.rooms.remove(room);
        }
        Ok(())
    }

    async fn room(&self, room: &str) -> Result<Option<RoomState>, StateError> {
        Ok(live(&mut self.maps().rooms, room))
    }

    async fn put_node(&self, node: &NodeInfo, _load: NodeLoad, ttl: Duration) -> Result<(), StateError> {
        self.maps().nodes.insert(node.id.clone(), expiring(node.clone(), ttl));
        Ok(())
    }

    async fn node(&self, id: &str) -> Result<Option<NodeInfo>, StateError> {
        Ok(live(&mut self.maps().nodes, id))
    }

    async fn take_token(&self, key: &str, rate: u32, burst: u32) -> Result<bool, StateError> {
        let now = Instant::now();
        let mut maps = self.maps();
        if maps.buckets.len() > BUCKETS_BEFORE_PRUNING && !maps.buckets.contains_key(key) {
            // A bucket idle this long is full again: forgetting it changes nothing.
            maps.buckets.retain(|_, bucket| now.duration_since(bucket.last_used()) < BUCKET_IDLE);
        }
        let bucket = maps.buckets.entry(key.to_owned()).or_insert_with(|| TokenBucket::new(now, rate, burst));
        Ok(bucket.try_take(now))
    }

    async fn lock(&self, resource: &str, ttl: Duration) -> Result<Option<String>, StateError> {
        let mut maps = self.maps();
        if live(&mut maps.locks, resource).is_some() {
            return Ok(None);
        }
        let token = signaling::stamps::new_id("LK_");
        maps.locks.insert(resource.to_owned(), expiring(token.clone(), ttl));
        Ok(Some(token))
    }

    async fn unlock(&self, resource: &str, token: &str) -> Result<bool, StateError> {
        let mut maps = self.maps();
        if live(&mut maps.locks, resource).is_some_and(|held| held == token) {
            maps.locks.remove(resource);
            return Ok(true);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use signaling::state::{Ownership, StateKeeper, StateTimings};

    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo { id: id.into(), url: format!("http://{id}") }
    }

    fn session(id: &str, room: &str, node: &str) -> SessionState {
        SessionState {
            session_id: id.into(),
            identity: format!("user-{id}"),
            participant_id: format!("PA_{id}"),
            room: room.into(),
            node: node.into(),
            joined_at_ms: 1,
            last_ping_ms: 1,
        }
    }

    const TIMINGS: StateTimings = StateTimings {
        heartbeat: Duration::from_millis(50),
        session_ttl: Duration::from_millis(200),
        room_ttl: Duration::from_secs(3600),
        lock_ttl: Duration::from_secs(1),
    };

    #[tokio::test]
    async fn nodes_sharing_a_store_agree_on_owners_and_take_over_rooms_of_dead_nodes() {
        let store = Arc::new(MemoryState::default());
        let a = StateKeeper::start(store.clone(), node("a"), TIMINGS);
        let b = StateKeeper::start(store.clone(), node("b"), TIMINGS);
        tokio::time::sleep(Duration::from_millis(20)).await;

        assert_eq!(a.claim_room("r").await, Ownership::Here);
        a.participant_joined(session("s1", "r", "a"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(b.claim_room("r").await, Ownership::Elsewhere(node("a")));
        let room = store.room("r").await.unwrap().expect("room entry");
        assert_eq!(room.participants.get("PA_s1").map(String::as_str), Some("user-s1"));
        assert!(store.session("s1").await.unwrap().is_some());

        // The room goes with its last participant.
        a.participant_left("s1");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(store.room("r").await.unwrap(), None);
        assert_eq!(store.session("s1").await.unwrap(), None);

        // A node that stops refreshing its entry loses its rooms to the others.
        assert_eq!(a.claim_room("r2").await, Ownership::Here);
        a.participant_joined(session("s2", "r2", "a"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        assert_eq!(b.claim_room("r2").await, Ownership::Elsewhere(node("a")));
        tokio::time::sleep(TIMINGS.session_ttl + Duration::from_millis(100)).await;
        assert_eq!(b.claim_room("r2").await, Ownership::Here);
        assert_eq!(store.room("r2").await.unwrap().expect("room entry").owner, node("b"));
    }

    #[tokio::test]
    async fn locks_expire_and_release_only_with_their_token_and_buckets_refill() {
        let store = MemoryState::default();
        let token = store.lock("x", Duration::from_millis(30)).await.unwrap().expect("free");
        assert_eq!(store.lock("x", Duration::from_millis(30)).await.unwrap(), None);
        assert!(!store.unlock("x", "other").await.unwrap());
        assert!(store.unlock("x", &token).await.unwrap());
        store.lock("x", Duration::from_millis(30)).await.unwrap().expect("released");
        tokio::time::sleep(Duration::from_millis(40)).await;
        store.lock("x", Duration::from_millis(30)).await.unwrap().expect("expired");

        let taken = futures_util::future::join_all((0..5).map(|_| store.take_token("u", 1, 3))).await;
        assert_eq!(taken.into_iter().filter(|t| *t.as_ref().unwrap()).count(), 3, "the burst, then nothing");
    }
}
