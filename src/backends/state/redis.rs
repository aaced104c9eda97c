//! The Redis state store (crate `fred`), with the seed's keys:
//!
//! - `session:{id}`: hash of the session (identity, participant, room, node, joined_at,
//!   last_ping), expiring a few heartbeats after its last refresh;
//! - `room:{meeting_id}`: hash with `owner`, `owner_url`, `created_at` and one
//!   `participant:{id}` field (the identity) per participant, expiring in days;
//! - `node:{id}`: hash with `url`, `rooms`, `participants`, `updated_at`, expiring like sessions;
//! - `rate:{user}`: token bucket (`tokens`, `ts`) updated by a Lua script on Redis's clock;
//! - `lock:{resource}`: a random token set with NX PX, released by a token-checked script.
//!
//! Commands time out after [`COMMAND_TIMEOUT`] so that a dead Redis answers with an error
//! quickly; the client reconnects forever in the background.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use signaling::state::{NodeInfo, NodeLoad, RoomState, SessionState, StateError, StateStore};

/// Longest wait for one Redis command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Replaces a hash with the fields in ARGV[2..] and sets its lifetime to ARGV[1] ms.
const REPLACE_HASH: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1";

/// Like REPLACE_HASH for a room, unless another live node owns it (ARGV[2] is this node).
const REPLACE_ROOM: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[2] and redis.call('EXISTS', 'node:' .. owner) == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1";

/// Deletes KEYS[1] if its hash field `owner` is ARGV[1].
const REMOVE_OWNED: &str = r"
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Deletes the lock KEYS[1] if it holds the token ARGV[1].
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Token bucket on Redis's clock: ARGV[1] tokens per second, ARGV[2] capacity.
const TAKE_TOKEN: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(saved[1]) or burst
local ts = tonumber(saved[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return taken";

/// State in Redis, shared by the nodes.
pub struct RedisState {
    client: Client,
}

fn unavailable(err: Error) -> StateError {
    StateError(err.to_string())
}

fn millis(ttl: Duration) -> String {
    ttl.as_millis().max(1).to_string()
}

fn field(hash: &HashMap<String, String>, name: &str) -> String {
    hash.get(name).cloned().unwrap_or_default()
}

fn number(hash: &HashMap<String, String>, name: &str) -> u64 {
    hash.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl RedisState {
    /// A client for `url` that connects, and reconnects, in the background: the server
    /// starts whether or not Redis is up.
    pub fn connect(url: &str) -> Result<Self, Error> {
        let mut config = Config::from_url(url)?;
        config.fail_fast = false;
        let client = Builder::from_config(config)
            .with_connection_config(|connection| {
                connection.connection_timeout = COMMAND_TIMEOUT;
                connection.internal_command_timeout = COMMAND_TIMEOUT;
                connection.max_command_attempts = 1;
            })
            .with_performance_config(|performance| performance.default_command_timeout = COMMAND_TIMEOUT)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        client.connect();
        Ok(Self { client })
    }

    async fn script(&self, script: &'static str, key: String, args: Vec<String>) -> Result<i64, StateError> {
        self.client.eval(script, vec![key], args).await.map_err(unavailable)
    }

    async fn hash(&self, key: String) -> Result<Option<HashMap<String, String>>, StateError> {
        let hash: HashMap<String, String> = self.client.hgetall(key).await.map_err(unavailable)?;
        Ok((!hash.is_empty()).then_some(hash))
    }
}

#[async_trait]
impl StateStore for RedisState {
    async fn put_session(&self, s: &SessionState, ttl: Duration) -> Result<(), StateError> {
        let args = vec![
            millis(ttl),
            "identity".into(),
            s.identity.clone(),
            "participant_id".into(),
            s.participant_id.clone(),
            "room".into(),
            s.room.clone(),
            "node".into(),
            s.node.clone(),
            "joined_at".into(),
            s.joined_at_ms.to_string(),
            "last_ping".into(),
            s.last_ping_ms.to_string(),
        ];
        self.script(REPLACE_HASH, format!("session:{}", s.session_id), args).await.map(drop)
    }

    async fn remove_session(&self, session_id: &str) -> Result<(), StateError> {
        self.client.del::<i64, _>(format!("session:{session_id}")).await.map(drop).map_err(unavailable)
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionState>, StateError> {
        let Some(hash) = self.hash(format!("session:{session_id}")).await? else { return Ok(None) };
        Ok(Some(SessionState {
            session_id: session_id.to_owned(),
            identity: field(&hash, "identity"),
            participant_id: field(&hash, "participant_id"),
            room: field(&hash, "room"),
            node: field(&hash, "node"),
            joined_at_ms: number(&hash, "joined_at"),
            last_ping_ms: number(&hash, "last_ping"),
        }))
    }

    async fn put_room(&self, room: &str, state: &RoomState, ttl: Duration) -> Result<(), StateError> {
        let mut args = vec![
            millis(ttl),
            state.owner.id.clone(),
            "owner".into(),
            state.owner.id.clone(),
            "owner_url".into(),
            state.owner.url.clone(),
            "created_at".into(),
            state.created_at_ms.to_string(),
        ];
        for (participant, identity) in &state.participants {
            args.push(format!("participant:{participant}"));
            args.push(identity.clone());
        }
        if self.script(REPLACE_ROOM, format!("room:{room}"), args).await? == 0 {
            tracing::warn!(room, "room:{{meeting_id}} is owned by another live node; not overwritten");
        }
        Ok(())
    }

    async fn remove_room(&self, room: &str, owner: &str) -> Result<(), StateError> {
        self.script(REMOVE_OWNED, format!("room:{room}"), vec![owner.to_owned()]).await.map(drop)
    }

    async fn room(&self, room: &str) -> Result<Option<RoomState>, StateError> {
        let Some(hash) = self.hash(format!("room:{room}")).await? else { return Ok(None) };
        let participants: BTreeMap<String, String> = hash
            .iter()
            .filter_map(|(name, identity)| name.strip_prefix("participant:").map(|id| (id.to_owned(), identity.clone())))
            .collect();
        Ok(Some(RoomState {
            owner: NodeInfo { id: field(&hash, "owner"), url: field(&hash, "owner_url") },
            created_at_ms: number(&hash, "created_at"),
            participants,
        }))
    }

    async fn put_node(&self, node: &NodeInfo, load: NodeLoad, ttl: Duration) -> Result<(), StateError> {
        let args = vec![
            millis(ttl),
            "url".into(),
            node.url.clone(),
            "rooms".into(),
            load.rooms.to_string(),
            "participants".into(),
            load.participants.to_string(),
            "updated_at".into(),
            signaling::stamps::unix_ms().to_string(),
        ];
        self.script(REPLACE_HASH, format!("node:{}", node.id), args).await.map(drop)
    }

    async fn node(&self, id: &str) -> Result<Option<NodeInfo>, StateError> {
        let Some(hash) = self.hash(format!("node:{id}")).await? else { return Ok(None) };
        Ok(Some(NodeInfo { id: id.to_owned(), url: field(&hash, "url") }))
    }

    async fn take_token(&self, key: &str, rate: u32, burst: u32) -> Result<bool, StateError> {
        let args = vec![rate.max(1).to_string(), burst.max(1).to_string()];
        Ok(self.script(TAKE_TOKEN, format!("rate:{key}"), args).await? == 1)
    }

    async fn lock(&self, resource: &str, ttl: Duration) -> Result<Option<String>, StateError> {
        let token = signaling::stamps::new_id("LK_");
        let expiry = Expiration::PX(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1));
        let set: Option<String> = self
            .client
            .set(format!("lock:{resource}"), token.as_str(), Some(expiry), Some(SetOptions::NX), false)
            .await
            .map_err(unavailable)?;
        Ok(set.map(|_| token))
    }

    async fn unlock(&self, resource: &str, token: &str) -> Result<bool, StateError> {
        Ok(self.script(UNLOCK, format!("lock:{resource}"), vec![token.to_owned()]).await? == 1)
    }
}
