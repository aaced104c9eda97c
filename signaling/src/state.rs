//! Room and session state shared by the nodes of a cluster, after the seed design:
//! `session:{id}`, `room:{meeting_id}`, `rate:{user}`, `lock:{resource}` and `node:{id}`.
//!
//! The store ([`StateStore`]) holds primitives; the policy lives here, in [`StateKeeper`]:
//! which node owns a room, what this node writes and when. This node's memory is the source
//! of truth for what it hosts: every heartbeat rewrites all of it, so a store that lost its
//! data (a restarted Redis) is rebuilt, and an unreachable store never stops a join or media,
//! it only makes the node answer from its own memory until the store returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::stamps::unix_ms;

/// A node as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Base URL clients use to reach it.
    pub url: String,
}

/// A node's load, published with its entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Rooms it hosts.
    pub rooms: usize,
    /// Participants it hosts.
    pub participants: usize,
}

/// A joined session, as `session:{id}` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// Session id (the one `resume` takes).
    pub session_id: String,
    /// The user's identity (token subject).
    pub identity: String,
    /// The participant id in the room.
    pub participant_id: String,
    /// The room (meeting id).
    pub room: String,
    /// The node hosting the session.
    pub node: String,
    /// When it joined, Unix milliseconds.
    pub joined_at_ms: u64,
    /// Its last sign of life, Unix milliseconds.
    pub last_ping_ms: u64,
}

/// A room, as `room:{meeting_id}` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomState {
    /// The node that owns the room: the only one hosting its participants and media.
    pub owner: NodeInfo,
    /// When the room was opened, Unix milliseconds.
    pub created_at_ms: u64,
    /// Participant id → identity.
    pub participants: BTreeMap<String, String>,
}

/// The store could not be reached or answered with an error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store unavailable: {0}")]
pub struct StateError(pub String);

/// Primitives of the shared state store (in-memory or Redis).
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Writes a session, to expire after `ttl` without a rewrite.
    async fn put_session(&self, session: &SessionState, ttl: Duration) -> Result<(), StateError>;
    /// Deletes a session.
    async fn remove_session(&self, session_id: &str) -> Result<(), StateError>;
    /// Reads a session.
    async fn session(&self, session_id: &str) -> Result<Option<SessionState>, StateError>;
    /// Writes a room entry, replacing the previous one, to expire after `ttl`.
    async fn put_room(&self, room: &str, state: &RoomState, ttl: Duration) -> Result<(), StateError>;
    /// Deletes a room entry if `owner` still owns it.
    async fn remove_room(&self, room: &str, owner: &str) -> Result<(), StateError>;
    /// Reads a room entry.
    async fn room(&self, room: &str) -> Result<Option<RoomState>, StateError>;
    /// Writes this node's entry, to expire after `ttl`.
    async fn put_node(&self, node: &NodeInfo, load: NodeLoad, ttl: Duration) -> Result<(), StateError>;
    /// Reads a node's entry; `None` once it expired (the node is gone).
    async fn node(&self, id: &str) -> Result<Option<NodeInfo>, StateError>;
    /// Takes one token from the bucket `rate:{key}` (refill `rate`/s, capacity `burst`).
    async fn take_token(&self, key: &str, rate: u32, burst: u32) -> Result<bool, StateError>;
    /// Takes `lock:{resource}` for `ttl` if free; returns the token that releases it.
    async fn lock(&self, resource: &str, ttl: Duration) -> Result<Option<String>, StateError>;
    /// Releases a lock if `token` still holds it; false when it expired or another holds it.
    async fn unlock(&self, resource: &str, token: &str) -> Result<bool, StateError>;
}

/// Lifetimes and periods of the state this node writes.
#[derive(Debug, Clone, Copy)]
pub struct StateTimings {
    /// Period of the rewrite of everything this node hosts.
    pub heartbeat: Duration,
    /// Lifetime of session and node entries.
    pub session_ttl: Duration,
    /// Lifetime of room entries.
    pub room_ttl: Duration,
    /// Lifetime of locks.
    pub lock_ttl: Duration,
}

/// Who owns a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// This node (it just claimed the room, or already had it).
    Here,
    /// Another live node; clients go there.
    Elsewhere(NodeInfo),
}

/// A change to send to the store, in order.
enum Write {
    Session(SessionState),
    SessionGone(String),
    Room(String),
    RoomGone(String),
}

#[derive(Default)]
struct Local {
    sessions: HashMap<String, SessionState>,
    rooms: HashMap<String, RoomState>,
    /// Deletions the store missed while unreachable, retried at each heartbeat.
    missed_removals: HashSet<Deletion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Deletion {
    Session(String),
    Room(String),
}

/// This node's view of the shared state, and the writer that keeps the store in step.
pub struct StateKeeper {
    store: Arc<dyn StateStore>,
    node: NodeInfo,
    timings: StateTimings,
    local: Mutex<Local>,
    writes: mpsc::UnboundedSender<Write>,
    /// True while the last store operation failed; flips log once per outage.
    degraded: std::sync::atomic::AtomicBool,
}

/// How many times a claim retries a busy room-creation lock (every 50 ms).
const CLAIM_LOCK_TRIES: u32 = 40;

impl StateKeeper {
    /// Starts the keeper's writer and heartbeat; needs a Tokio runtime.
    pub fn start(store: Arc<dyn StateStore>, node: NodeInfo, timings: StateTimings) -> Arc<Self> {
        let (writes, queue) = mpsc::unbounded_channel();
        let keeper = Arc::new(Self { store, node, timings, local: Mutex::new(Local::default()), writes, degraded: false.into() });
        tokio::spawn(Self::write_loop(Arc::downgrade(&keeper), queue));
        keeper
    }

    /// This node.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    fn lock_local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes the outcome of a store operation; logs when the store goes away and comes back.
    fn observe<T>(&self, what: &str, result: Result<T, StateError>) -> Option<T> {
        use std::sync::atomic::Ordering;
        match result {
            Ok(value) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    info!("state store reachable again; this node's state is rewritten at the next heartbeat");
                }
                Some(value)
            }
            Err(err) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    warn!(%err, operation = what, "state store unreachable; serving from this node's memory");
                }
                None
            }
        }
    }

    /// Whether the last store operation failed.
    pub fn degraded(&self) -> bool {
        self.degraded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Decides who hosts `room`: this node when it already does, when nobody does, or when
    /// the owner's node entry expired; otherwise the owner. Taken under `lock:room:{id}` so
    /// two nodes never both claim a room. With the store unreachable, this node hosts it.
    pub async fn claim_room(&self, room: &str) -> Ownership {
        if self.lock_local().rooms.contains_key(room) || self.degraded() {
            return Ownership::Here;
        }
        let resource = format!("room:{room}");
        let mut token = None;
        for _ in 0..CLAIM_LOCK_TRIES {
            match self.observe("lock", self.store.lock(&resource, self.timings.lock_ttl).await) {
                Some(Some(held)) => {
                    token = Some(held);
                    break;
                }
                Some(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                None => return Ownership::Here,
            }
        }
        let Some(token) = token else {
            warn!(room, "room-creation lock stayed busy; hosting the room here");
            return Ownership::Here;
        };
        let ownership = self.decide_owner(room).await;
        if ownership == Ownership::Here {
            // Claimed in the store now; this node's memory learns the room with its first
            // participant (or `abandon_claim` undoes the claim).
            let state = RoomState { owner: self.node.clone(), created_at_ms: unix_ms(), participants: BTreeMap::new() };
            self.observe("put_room", self.store.put_room(room, &state, self.timings.room_ttl).await);
        }
        self.observe("unlock", self.store.unlock(&resource, &token).await);
        ownership
    }

    async fn decide_owner(&self, room: &str) -> Ownership {
        let Some(entry) = self.observe("room", self.store.room(room).await) else { return Ownership::Here };
        let Some(entry) = entry else { return Ownership::Here };
        if entry.owner.id == self.node.id {
            return Ownership::Here;
        }
        match self.observe("node", self.store.node(&entry.owner.id).await) {
            Some(Some(owner)) => Ownership::Elsewhere(owner),
            Some(None) => {
                info!(room, dead_owner = %entry.owner.id, "taking over a room whose node is gone");
                Ownership::Here
            }
            None => Ownership::Here,
        }
    }

    /// Gives up a claim that no participant followed (the join failed after the claim).
    pub fn abandon_claim(&self, room: &str) {
        if !self.lock_local().rooms.contains_key(room) {
            self.send(Write::RoomGone(room.to_owned()));
        }
    }

    /// A participant entered a room this node hosts.
    pub fn participant_joined(&self, session: SessionState) {
        let room = session.room.clone();
        {
            let mut local = self.lock_local();
            let node = self.node.clone();
            let entry = local.rooms.entry(room.clone()).or_insert_with(|| RoomState {
                owner: node,
                created_at_ms: unix_ms(),
                participants: BTreeMap::new(),
            });
            entry.participants.insert(session.participant_id.clone(), session.identity.clone());
            local.missed_removals.remove(&Deletion::Session(session.session_id.clone()));
            local.missed_removals.remove(&Deletion::Room(room.clone()));
            local.sessions.insert(session.session_id.clone(), session.clone());
        }
        self.send(Write::Session(session));
        self.send(Write::Room(room));
    }

    /// A session showed a sign of life.
    pub fn session_alive(&self, session_id: &str) {
        if let Some(session) = self.lock_local().sessions.get_mut(session_id) {
            session.last_ping_ms = unix_ms();
        }
    }

    /// A participant left; the room entry goes with its last participant.
    pub fn participant_left(&self, session_id: &str) {
        let (session, room_empty) = {
            let mut local = self.lock_local();
            let Some(session) = local.sessions.remove(session_id) else { return };
            let room_empty = match local.rooms.get_mut(&session.room) {
                Some(room) => {
                    room.participants.remove(&session.participant_id);
                    room.participants.is_empty()
                }
                None => false,
            };
            if room_empty {
                local.rooms.remove(&session.room);
            }
            (session, room_empty)
        };
        self.send(Write::SessionGone(session.session_id));
        self.send(if room_empty { Write::RoomGone(session.room) } else { Write::Room(session.room) });
    }

    /// Takes a signaling-rate token for `user` from the bucket the nodes share; `None` when
    /// the store cannot say (the caller falls back to its own bucket).
    pub async fn take_rate_token(&self, user: &str, rate: u32, burst: u32) -> Option<bool> {
        if self.degraded() {
            // Not worth a timeout per message: the heartbeat tells when the store is back.
            return None;
        }
        self.observe("take_token", self.store.take_token(user, rate, burst).await)
    }

    fn send(&self, write: Write) {
        // The writer lives as long as the keeper; a send fails only during shutdown.
        let _ = self.writes.send(write);
    }

    async fn write_loop(keeper: std::sync::Weak<Self>, mut queue: mpsc::UnboundedReceiver<Write>) {
        let heartbeat_period = match keeper.upgrade() {
            Some(keeper) => keeper.timings.heartbeat,
            None => return,
        };
        let mut heartbeat = tokio::time::interval(heartbeat_period);
        loop {
            tokio::select! {
                write = queue.recv() => {
                    let (Some(write), Some(keeper)) = (write, keeper.upgrade()) else { return };
                    keeper.apply(write).await;
                }
                _ = heartbeat.tick() => {
                    let Some(keeper) = keeper.upgrade() else { return };
                    keeper.rewrite_all().await;
                }
            }
        }
    }

    async fn apply(&self, write: Write) {
        if self.degraded() {
            // The heartbeat rewrites everything once the store answers again; deletions are
            // kept for it.
            match write {
                Write::SessionGone(id) => self.lock_local().missed_removals.insert(Deletion::Session(id)),
                Write::RoomGone(room) => self.lock_local().missed_removals.insert(Deletion::Room(room)),
                Write::Session(_) | Write::Room(_) => false,
            };
            return;
        }
        let t = self.timings;
        match write {
            Write::Session(session) => {
                self.observe("put_session", self.store.put_session(&session, t.session_ttl).await);
            }
            Write::SessionGone(id) => {
                if self.observe("remove_session", self.store.remove_session(&id).await).is_none() {
                    self.lock_local().missed_removals.insert(Deletion::Session(id));
                }
            }
            Write::Room(room) => {
                let state = self.lock_local().rooms.get(&room).cloned();
                if let Some(state) = state {
                    self.observe("put_room", self.store.put_room(&room, &state, t.room_ttl).await);
                }
            }
            Write::RoomGone(room) => {
                if self.observe("remove_room", self.store.remove_room(&room, &self.node.id).await).is_none() {
                    self.lock_local().missed_removals.insert(Deletion::Room(room));
                }
            }
        }
    }

    /// Rewrites everything this node hosts, refreshing lifetimes and rebuilding a store that
    /// lost it; retries deletions the store missed.
    async fn rewrite_all(&self) {
        let (sessions, rooms, removals, load) = {
            let local = self.lock_local();
            let load = NodeLoad { rooms: local.rooms.len(), participants: local.sessions.len() };
            (
                local.sessions.values().cloned().collect::<Vec<_>>(),
                local.rooms.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>(),
                local.missed_removals.iter().cloned().collect::<Vec<_>>(),
                load,
            )
        };
        let t = self.timings;
        if self.observe("put_node", self.store.put_node(&self.node, load, t.session_ttl).await).is_none() {
            return;
        }
        for session in &sessions {
            if self.observe("put_session", self.store.put_session(session, t.session_ttl).await).is_none() {
                return;
            }
        }
        for (room, state) in &rooms {
            if self.observe("put_room", self.store.put_room(room, state, t.room_ttl).await).is_none() {
                return;
            }
        }
        for removal in removals {
            let result = match &removal {
                Deletion::Session(id) => self.store.remove_session(id).await,
                Deletion::Room(room) => self.store.remove_room(room, &self.node.id).await,
            };
            if self.observe("remove", result).is_some() {
                self.lock_local().missed_removals.remove(&removal);
            }
        }
    }
}
