//! Switchboard's typed configuration: one YAML file, every key overridable by environment
//! variables `SWITCHBOARD__SECTION__KEY`, validated with errors that name the bad key.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The embedded single-machine configuration (`config/default.yaml`).
pub const DEFAULT_YAML: &str = include_str!("../default.yaml");

/// The secret `default.yaml` ships with, refused in production mode.
pub const DEVELOPMENT_SECRET: &str = "switchboard-development-secret-change-me";
/// The placeholder `production.example.yaml` ships with, refused in production mode.
pub const EXAMPLE_SECRET: &str = "replace-with-a-long-random-secret";
/// The shortest secret production mode accepts: an HS256 key must be at least as long as
/// the hash's output, 32 bytes (RFC 7518 §3.2).
pub const MIN_PRODUCTION_SECRET_BYTES: usize = 32;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "SWITCHBOARD__";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not parse.
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    /// A key has the wrong type, is unknown, or is missing.
    #[error("config key `{key}`: {message}")]
    Key {
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Which backends run: embedded (single machine, development) or production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// In-memory state and local storage; the development token endpoint is on.
    Embedded,
    /// Real services; no development endpoints.
    Production,
}

/// An SRTP protection profile name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SrtpProfile {
    /// SRTP_AEAD_AES_128_GCM.
    #[serde(rename = "aead_aes_128_gcm")]
    AeadAes128Gcm,
    /// SRTP_AES128_CM_HMAC_SHA1_80.
    #[serde(rename = "aes128_cm_hmac_sha1_80")]
    Aes128CmHmacSha1_80,
}

/// A STUN or TURN server clients may use (the WebRTC `RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:`, `stuns:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// The TURN username.
    #[serde(default)]
    pub username: Option<String>,
    /// The TURN password.
    #[serde(default)]
    pub credential: Option<String>,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Embedded or production.
    pub mode: Mode,
    /// The HTTP server.
    pub http: HttpConfig,
    /// The media plane.
    pub media: MediaConfig,
    /// Access tokens.
    pub auth: AuthConfig,
    /// Abuse limits.
    pub limits: LimitsConfig,
    /// Signaling behaviour.
    pub signaling: SignalingConfig,
    /// This node's identity among the nodes sharing one state store.
    pub node: NodeConfig,
    /// Room and session state.
    pub state: StateConfig,
    /// Persistence of sessions, messages, rooms and streams.
    pub database: DatabaseConfig,
    /// Domain events and tasks.
    pub events: EventsConfig,
    /// Object storage (recordings, uploads).
    pub objects: ObjectsConfig,
    /// Recordings.
    pub recording: RecordingConfig,
}

/// This node's identity among the nodes sharing one state store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node id; empty: `node-` and a random suffix, new at every start.
    pub id: String,
    /// Base URL clients use to reach this node (`http://host:port`), given to clients sent
    /// here from another node; empty: `http://` and `http.listen`.
    pub public_url: String,
}

/// Where room and session state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    /// This process's memory (one node).
    Memory,
    /// Redis, shared by the nodes.
    Redis,
}

/// Room and session state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// memory or redis.
    pub backend: StateBackend,
    /// Redis URL (`redis://host:port/db`).
    pub redis_url: String,
    /// Seconds between refreshes of this node's sessions, rooms and node entry.
    pub heartbeat_secs: u64,
    /// Lifetime of `session:{id}` and `node:{id}` without a refresh, seconds.
    pub session_ttl_secs: u64,
    /// Lifetime of `room:{meeting_id}` without a refresh, days.
    pub room_ttl_days: u64,
    /// Lifetime of `lock:{resource}`, milliseconds.
    pub lock_ttl_ms: u64,
}

/// Which database persists signaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseBackend {
    /// An SQLite file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Persistence of sessions, messages, rooms and streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// sqlite or postgres.
    pub backend: DatabaseBackend,
    /// Connection URL (`sqlite://path?mode=rwc` or `postgres://user@host/db`).
    pub url: String,
    /// Most open connections.
    pub max_open: u32,
    /// Connections kept open while idle.
    pub max_idle: u32,
    /// Seconds a connection lives before it is replaced.
    pub max_lifetime_secs: u64,
    /// Records waiting to be written; beyond it new records are shed and counted.
    pub queue_capacity: usize,
    /// Bytes those records may weigh (their JSON payloads and a fixed part each); beyond it
    /// new records are shed and counted.
    #[serde(default = "default_queue_max_bytes")]
    pub queue_max_bytes: u64,
    /// Records written per transaction.
    pub batch_size: usize,
    /// Days `signaling_messages` rows are kept; older ones are deleted, a batch at a time,
    /// every hour. 0 keeps them forever.
    #[serde(default = "default_message_retention_days")]
    pub message_retention_days: u32,
}

fn default_message_retention_days() -> u32 {
    30
}

/// Where domain events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventsBackend {
    /// Written to the log; no tasks are consumed.
    Log,
    /// Kafka topics; tasks consumed from `<prefix>.tasks`.
    Kafka,
}

/// Domain events and tasks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// log or kafka.
    pub backend: EventsBackend,
    /// Kafka bootstrap servers, comma-separated.
    pub brokers: String,
    /// Topic prefix: `<prefix>.system_events`, `<prefix>.tasks`, `<prefix>.tasks.dlq`.
    pub topic_prefix: String,
    /// Consumer group of the tasks consumer.
    pub consumer_group: String,
    /// Events buffered while the broker is unreachable; beyond it events are dropped and
    /// counted.
    pub buffer_messages: u32,
    /// Attempts at a task before it goes to the dead-letter topic.
    pub task_attempts: u32,
}

/// Where objects are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectsBackend {
    /// A local folder with the same keys.
    Local,
    /// S3 or MinIO.
    S3,
}

/// Object storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsConfig {
    /// local or s3.
    pub backend: ObjectsBackend,
    /// Folder of the local backend.
    pub local_dir: String,
    /// Bucket.
    pub bucket: String,
    /// S3 endpoint URL (MinIO: `http://host:9000`); empty: AWS.
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Path-style addressing (`endpoint/bucket/key`), as MinIO needs.
    pub path_style: bool,
    /// Lifetime of presigned download URLs, seconds.
    pub presign_expiry_secs: u64,
    /// Part size of multipart uploads, bytes (at least 5 MiB).
    pub multipart_part_bytes: usize,
}

/// Recordings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// Formats when a request names none: `mp4`, `hls` or `mp4+hls`.
    pub default_format: String,
    /// HLS segment length, seconds.
    pub segment_secs: u64,
    /// Longest recording of one participant, seconds.
    pub max_duration_secs: u64,
    /// Folder where uploads wait while the object store is unreachable.
    pub spool_dir: String,
    /// Bytes the node's recordings may hold for an unreachable store (spooled, or in memory
    /// without a spool folder); a recording that would pass it fails.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// How long a finished recording's last uploads are retried while the store is away,
    /// seconds.
    pub finish_retry_secs: u64,
    /// Rooms recorded as soon as they open (`*`: every room).
    pub auto_record: Vec<String>,
    /// Packets queued for a recorder before it loses some.
    pub queue_packets: usize,
    /// How long a graceful shutdown waits for recordings to be stored, seconds.
    pub shutdown_timeout_secs: u64,
}

/// The HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Lets embedded mode listen beyond loopback, although its development key is public and
    /// its `/dev/token` hands out tokens to anyone who asks.
    #[serde(default)]
    pub allow_remote_embedded: bool,
    /// Origins (`scheme://host[:port]`) whose pages may open a signaling WebSocket; empty:
    /// the server's own pages and this machine's in embedded mode, any page in production.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Downloads of the local object store (`/objects/…`) served at once; more get 503.
    #[serde(default = "default_max_concurrent_downloads")]
    pub max_concurrent_downloads: usize,
    /// HTTPS and WSS on the listen address instead of HTTP and WS.
    #[serde(default)]
    pub tls: TlsConfig,
}

/// The HTTP listener's TLS: a certificate of the operator's, or one made for this machine.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate chain, the server's certificate first.
    #[serde(default)]
    pub cert: String,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: String,
    /// Makes a self-signed certificate for this machine's names at first start and keeps it
    /// in `cert` and `key` (default `tls/cert.pem` and `tls/key.pem`); later starts reuse it.
    #[serde(default)]
    pub self_signed: bool,
}

impl TlsConfig {
    /// The certificate and key files, when TLS is on.
    pub fn files(&self) -> Option<(PathBuf, PathBuf)> {
        if !self.cert.is_empty() {
            Some((self.cert.clone().into(), self.key.clone().into()))
        } else if self.self_signed {
            Some(("tls/cert.pem".into(), "tls/key.pem".into()))
        } else {
            None
        }
    }
}

fn default_max_concurrent_downloads() -> usize {
    64
}

fn default_queue_max_bytes() -> u64 {
    64 << 20
}

fn default_spool_max_bytes() -> u64 {
    2 << 30
}

/// The media plane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// Bind address of the UDP sockets.
    pub bind_ip: Ipv4Addr,
    /// First UDP port (0: any free ports).
    pub port_base: u16,
    /// The node's ICE-TCP port, for clients whose network blocks UDP (0: any free port;
    /// `null`: no TCP candidates).
    pub tcp_port: Option<u16>,
    /// Addresses announced as host candidates (empty: interface addresses).
    pub announced_ips: Vec<Ipv4Addr>,
    /// STUN/TURN servers handed to clients (`joined`, WHIP/WHEP `Link` headers); none are
    /// needed to reach this node, which is ICE-lite on the announced addresses.
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
    /// SRTP profiles accepted from clients.
    pub srtp_profiles: Vec<SrtpProfile>,
    /// Most packets kept per video track for NACKs.
    pub nack_cache_packets: usize,
    /// Most milliseconds a packet is kept for NACKs.
    pub nack_cache_ms: u64,
    /// Least milliseconds a packet is kept for NACKs; between the two, four round trips of
    /// the track's slowest subscriber.
    pub nack_cache_min_ms: u64,
    /// Minimum milliseconds between keyframe requests to one publisher track.
    pub keyframe_interval_ms: u64,
    /// Most tracks one participant may publish.
    pub max_tracks_per_participant: usize,
}

/// Access-token keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Key id → HS256 secret.
    pub keys: BTreeMap<String, String>,
    /// The key id used to issue tokens.
    pub signing_key: String,
    /// Lifetime of issued tokens, seconds.
    pub token_ttl_secs: u64,
}

/// Abuse limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest signaling frame, bytes.
    pub max_message_bytes: usize,
    /// Signaling messages per second per connection.
    pub messages_per_second: u32,
    /// Token-bucket burst.
    pub message_burst: u32,
    /// Violations before the connection is closed.
    pub abuse_threshold: u32,
    /// Participants per room.
    pub max_participants_per_room: usize,
    /// Rooms per node.
    pub max_rooms: usize,
    /// Open signaling connections per node, joined or not.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open signaling connections from one IP address.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
}

fn default_max_connections() -> usize {
    10_000
}

fn default_max_connections_per_ip() -> usize {
    1_000
}

/// Signaling behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalingConfig {
    /// Seconds between server pings.
    pub ping_interval_secs: u64,
    /// Seconds a joined session whose connection dropped keeps its media and waits for
    /// `resume` (0: it ends at once).
    pub resume_grace_secs: u64,
    /// Seconds a new connection has to `join` (or `resume`); pings do not extend it.
    #[serde(default = "default_join_timeout_secs")]
    pub join_timeout_secs: u64,
    /// Seconds a WHIP session has for a track of it to reach the server before it ends.
    #[serde(default = "default_whip_media_timeout_secs")]
    pub whip_media_timeout_secs: u64,
}

fn default_join_timeout_secs() -> u64 {
    10
}

fn default_whip_media_timeout_secs() -> u64 {
    30
}

impl Config {
    /// Loads `path` (or the embedded default), then applies the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?,
            None => DEFAULT_YAML.to_owned(),
        };
        Self::from_yaml_and_env(&text, std::env::vars())
    }

    /// Parses YAML text, applies `SWITCHBOARD__A__B=value` overrides from `env`, validates.
    pub fn from_yaml_and_env(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut tree: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        for (name, value) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else { continue };
            let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
            let parsed: serde_yaml::Value = serde_yaml::from_str(&value).unwrap_or(serde_yaml::Value::String(value.clone()));
            set_path(&mut tree, &keys, parsed).map_err(|message| ConfigError::Key { key: keys.join("."), message })?;
        }
        let config: Config = serde_path_to_error::deserialize(tree)
            .map_err(|e| ConfigError::Key { key: e.path().to_string(), message: e.inner().to_string() })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| Err(ConfigError::Key { key: key.to_owned(), message: message.to_owned() });
        if !self.auth.keys.contains_key(&self.auth.signing_key) {
            return bad("auth.signing_key", "names no key in auth.keys");
        }
        if !["mp4", "hls", "mp4+hls"].contains(&self.recording.default_format.as_str()) {
            return bad("recording.default_format", "must be mp4, hls or mp4+hls");
        }
        if self.http.tls.cert.is_empty() != self.http.tls.key.is_empty() {
            return bad("http.tls", "cert and key are set together (or neither, with self_signed for a certificate made here)");
        }
        if self.http.max_concurrent_downloads == 0 {
            return bad("http.max_concurrent_downloads", "must be positive");
        }
        if self.recording.segment_secs == 0 || self.recording.queue_packets == 0 {
            return bad("recording", "segment_secs and queue_packets must be positive");
        }
        if self.auth.keys.values().any(|secret| secret.len() < 16) {
            return bad("auth.keys", "every secret must be at least 16 bytes");
        }
        if self.mode == Mode::Production {
            for (kid, secret) in &self.auth.keys {
                let key = format!("auth.keys.{kid}");
                if secret == DEVELOPMENT_SECRET || secret == EXAMPLE_SECRET {
                    return bad(&key, "production mode needs a secret of its own, not the one shipped in the example files");
                }
                if secret.len() < MIN_PRODUCTION_SECRET_BYTES {
                    return bad(&key, "production mode needs secrets of at least 32 bytes (RFC 7518 §3.2)");
                }
            }
        }
        if self.mode == Mode::Embedded && !self.http.listen.ip().is_loopback() && !self.http.allow_remote_embedded {
            return bad(
                "http.listen",
                "embedded mode serves this machine only (its development key is public and /dev/token gives anyone a token): \
                 listen on a loopback address, run in production mode, or set http.allow_remote_embedded",
            );
        }
        if self.limits.max_message_bytes < 1024 {
            return bad("limits.max_message_bytes", "must be at least 1024");
        }
        if self.limits.messages_per_second == 0 || self.limits.message_burst == 0 {
            return bad("limits.messages_per_second", "rate and burst must be positive");
        }
        if self.media.announced_ips.iter().any(|ip| ip.is_unspecified() || ip.is_multicast()) {
            return bad("media.announced_ips", "must be unicast addresses clients can reach");
        }
        for server in &self.media.ice_servers {
            let schemes = ["stun:", "stuns:", "turn:", "turns:"];
            if server.urls.is_empty() || !server.urls.iter().all(|url| schemes.iter().any(|s| url.starts_with(s))) {
                return bad("media.ice_servers", "each needs urls, every one stun:, stuns:, turn: or turns:");
            }
            let turn = server.urls.iter().any(|url| url.starts_with("turn"));
            if turn != server.username.is_some() || turn != server.credential.is_some() {
                return bad("media.ice_servers", "a TURN server needs a username and a credential, a STUN server neither");
            }
            // What a Link header would have to quote, or where one URL would end.
            let unsafe_char = |c: char| c.is_control() || c.is_whitespace() || "\"\\<>,;".contains(c);
            let text = server.urls.iter().chain(&server.username).chain(&server.credential);
            if text.clone().any(|t| t.chars().any(unsafe_char)) {
                return bad("media.ice_servers", "URLs, usernames and credentials may not hold spaces, control characters or any of \" \\ < > , ;");
            }
        }
        if self.state.heartbeat_secs == 0 || self.state.session_ttl_secs <= self.state.heartbeat_secs {
            return bad("state.session_ttl_secs", "must be longer than state.heartbeat_secs, which must be positive");
        }
        if self.state.room_ttl_days == 0 || self.state.lock_ttl_ms == 0 {
            return bad("state.lock_ttl_ms", "room and lock lifetimes must be positive");
        }
        if self.database.queue_capacity == 0 || self.database.queue_max_bytes == 0 || self.database.batch_size == 0 || self.database.max_open == 0 {
            return bad("database.queue_capacity", "queue capacity and bytes, batch size and max_open must be positive");
        }
        if self.events.task_attempts == 0 || self.events.topic_prefix.is_empty() {
            return bad("events.task_attempts", "at least one attempt and a non-empty topic prefix are needed");
        }
        if self.objects.bucket.is_empty() {
            return bad("objects.bucket", "must not be empty");
        }
        if self.objects.multipart_part_bytes < 5 * 1024 * 1024 {
            return bad("objects.multipart_part_bytes", "S3 needs parts of at least 5 MiB");
        }
        if self.media.srtp_profiles.is_empty() {
            return bad("media.srtp_profiles", "must name at least one profile");
        }
        if self.media.nack_cache_min_ms > self.media.nack_cache_ms {
            return bad("media.nack_cache_min_ms", "must not exceed media.nack_cache_ms");
        }
        if self.signaling.join_timeout_secs == 0 {
            return bad("signaling.join_timeout_secs", "must be positive");
        }
        if self.signaling.whip_media_timeout_secs == 0 {
            return bad("signaling.whip_media_timeout_secs", "must be positive");
        }
        if self.signaling.ping_interval_secs == 0 {
            return bad("signaling.ping_interval_secs", "must be positive");
        }
        Ok(())
    }
}

fn set_path(tree: &mut serde_yaml::Value, keys: &[String], value: serde_yaml::Value) -> Result<(), String> {
    let Some((last, parents)) = keys.split_last() else { return Err("empty key".into()) };
    let mut node = tree;
    for key in parents {
        let map = node.as_mapping_mut().ok_or_else(|| format!("`{key}` is not inside a section"))?;
        node = map.entry(serde_yaml::Value::String(key.clone())).or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    }
    let map = node.as_mapping_mut().ok_or_else(|| format!("`{last}` is not inside a section"))?;
    map.insert(serde_yaml::Value::String(last.clone()), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn default_config_loads() {
        let config = Config::from_yaml_and_env(DEFAULT_YAML, env(&[])).unwrap();
        assert_eq!(config.mode, Mode::Embedded);
        assert_eq!(config.http.listen.port(), 7880);
    }

    #[test]
    fn production_example_loads_with_real_backends() {
        // With its placeholder secret replaced, as the file asks.
        let secret = env(&[("SWITCHBOARD__AUTH__KEYS__PROD-2026", "a-secret-of-our-own-0123456789abcdef")]);
        let config = Config::from_yaml_and_env(include_str!("../production.example.yaml"), secret).unwrap();
        assert_eq!(config.mode, Mode::Production);
        assert_eq!(config.state.backend, StateBackend::Redis);
        assert_eq!(config.database.backend, DatabaseBackend::Postgres);
        assert_eq!(config.events.backend, EventsBackend::Kafka);
        assert_eq!(config.objects.backend, ObjectsBackend::S3);
        let bad = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__OBJECTS__MULTIPART_PART_BYTES", "1000")])).unwrap_err();
        assert!(bad.to_string().contains("objects.multipart_part_bytes"), "{bad}");
    }

    #[test]
    fn tls_is_off_by_default_and_takes_both_files_or_a_self_signed_certificate() {
        assert_eq!(Config::from_yaml_and_env(DEFAULT_YAML, env(&[])).unwrap().http.tls.files(), None);
        let made = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__HTTP__TLS__SELF_SIGNED", "true")])).unwrap();
        assert_eq!(made.http.tls.files(), Some(("tls/cert.pem".into(), "tls/key.pem".into())));
        let own = env(&[("SWITCHBOARD__HTTP__TLS__CERT", "/etc/sb/cert.pem"), ("SWITCHBOARD__HTTP__TLS__KEY", "/etc/sb/key.pem")]);
        assert_eq!(
            Config::from_yaml_and_env(DEFAULT_YAML, own).unwrap().http.tls.files(),
            Some(("/etc/sb/cert.pem".into(), "/etc/sb/key.pem".into()))
        );
        let half = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__HTTP__TLS__CERT", "/etc/sb/cert.pem")])).unwrap_err();
        assert!(half.to_string().contains("http.tls"), "{half}");
    }

    #[test]
    fn ice_servers_the_tcp_port_and_the_whip_deadline_are_checked() {
        let config = Config::from_yaml_and_env(DEFAULT_YAML, env(&[])).unwrap();
        assert_eq!((config.media.ice_servers.len(), config.media.tcp_port), (0, Some(7881)));
        let servers = "[{urls: [stun:stun.example.net]}, {urls: ['turn:turn.example.net?transport=udp'], username: u, credential: p}]";
        let config =
            Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__MEDIA__ICE_SERVERS", servers), ("SWITCHBOARD__MEDIA__TCP_PORT", "null")]))
                .unwrap();
        assert_eq!(config.media.tcp_port, None);
        assert_eq!(config.media.ice_servers[1].urls, vec!["turn:turn.example.net?transport=udp".to_owned()]);
        assert_eq!((config.media.ice_servers[1].username.as_deref(), config.media.ice_servers[1].credential.as_deref()), (Some("u"), Some("p")));
        for bad in [
            "[{urls: ['http://example.net']}]",
            "[{urls: []}]",
            r#"[{urls: [turn:a.example], username: 'a"b', credential: c}]"#,
            "[{urls: [turn:a.example], username: u}]",
            "[{urls: [stun:a.example], credential: c}]",
            "[{urls: ['stun:a.example, <x>']}]",
        ] {
            let err = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__MEDIA__ICE_SERVERS", bad)])).unwrap_err();
            assert!(err.to_string().contains("media.ice_servers"), "{bad}: {err}");
        }
        let err = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__SIGNALING__WHIP_MEDIA_TIMEOUT_SECS", "0")])).unwrap_err();
        assert!(err.to_string().contains("signaling.whip_media_timeout_secs"), "{err}");
    }

    #[test]
    fn environment_overrides_nested_keys_with_typed_values() {
        let config = Config::from_yaml_and_env(
            DEFAULT_YAML,
            env(&[
                ("SWITCHBOARD__HTTP__LISTEN", "0.0.0.0:9000"),
                ("SWITCHBOARD__HTTP__ALLOW_REMOTE_EMBEDDED", "true"),
                ("SWITCHBOARD__MEDIA__WORKERS", "3"),
                ("SWITCHBOARD__MEDIA__ANNOUNCED_IPS", "[203.0.113.7]"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.http.listen.port(), 9000);
        assert_eq!(config.media.workers, 3);
        assert_eq!(config.media.announced_ips, vec![Ipv4Addr::new(203, 0, 113, 7)]);
    }

    #[test]
    fn embedded_mode_listens_on_loopback_unless_told_otherwise() {
        for listen in ["0.0.0.0:7880", "192.0.2.4:7880", "[::]:7880"] {
            let err = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__HTTP__LISTEN", listen)])).unwrap_err();
            assert!(err.to_string().contains("http.listen") && err.to_string().contains("allow_remote_embedded"), "{err}");
        }
        for listen in ["127.0.0.1:7880", "[::1]:7880"] {
            assert!(Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__HTTP__LISTEN", listen)])).is_ok(), "{listen}");
        }
        let allowed = env(&[("SWITCHBOARD__HTTP__LISTEN", "0.0.0.0:7880"), ("SWITCHBOARD__HTTP__ALLOW_REMOTE_EMBEDDED", "true")]);
        assert!(Config::from_yaml_and_env(DEFAULT_YAML, allowed).unwrap().http.allow_remote_embedded);
    }

    #[test]
    fn srtp_profiles_parse_by_name() {
        let config = Config::from_yaml_and_env(
            DEFAULT_YAML,
            env(&[("SWITCHBOARD__MEDIA__SRTP_PROFILES", "[aead_aes_128_gcm, aes128_cm_hmac_sha1_80]")]),
        )
        .unwrap();
        assert_eq!(config.media.srtp_profiles, vec![SrtpProfile::AeadAes128Gcm, SrtpProfile::Aes128CmHmacSha1_80]);
        let err = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__MEDIA__SRTP_PROFILES", "[]")])).unwrap_err();
        assert!(err.to_string().contains("media.srtp_profiles"), "{err}");
    }

    #[test]
    fn the_least_nack_window_may_not_exceed_the_most() {
        let err = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__MEDIA__NACK_CACHE_MIN_MS", "1500")])).unwrap_err();
        assert!(err.to_string().contains("media.nack_cache_min_ms"), "{err}");
    }

    #[test]
    fn errors_name_the_bad_key() {
        let err = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__MEDIA__PORT_BASE", "lots")])).unwrap_err();
        assert!(err.to_string().contains("media.port_base"), "{err}");
        let err = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__HTTP__LISTNE", "1")])).unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
        let err = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__AUTH__SIGNING_KEY", "nope")])).unwrap_err();
        assert!(err.to_string().contains("auth.signing_key"), "{err}");
        assert!(matches!(Config::from_yaml_and_env("mode: [", env(&[])), Err(ConfigError::Yaml(_))));
        let err = Config::from_yaml_and_env(DEFAULT_YAML, env(&[("SWITCHBOARD__MODE", "production")])).unwrap_err();
        assert!(err.to_string().contains("auth.keys.dev"), "{err}");
        let production =
            env(&[("SWITCHBOARD__MODE", "production"), ("SWITCHBOARD__AUTH__KEYS__DEV", "a-secret-of-our-own-0123456789abcdef")]);
        assert_eq!(Config::from_yaml_and_env(DEFAULT_YAML, production).unwrap().mode, Mode::Production);
    }

    #[test]
    fn production_mode_refuses_the_example_placeholder_and_short_secrets() {
        let example = include_str!("../production.example.yaml");
        assert!(example.contains(EXAMPLE_SECRET), "the constant names the example's placeholder");
        let err = Config::from_yaml_and_env(example, env(&[])).unwrap_err();
        assert!(err.to_string().contains("auth.keys.prod-2026") && err.to_string().contains("example"), "{err}");
        let secret = |len: usize| "k".repeat(len);
        let with = |secret: String| Config::from_yaml_and_env(example, env(&[("SWITCHBOARD__AUTH__KEYS__PROD-2026", &secret)]));
        let err = with(secret(MIN_PRODUCTION_SECRET_BYTES - 1)).unwrap_err();
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
        assert_eq!(with(secret(MIN_PRODUCTION_SECRET_BYTES)).unwrap().mode, Mode::Production);
        // Embedded mode still takes a 16-byte secret.
        let embedded = env(&[("SWITCHBOARD__AUTH__KEYS__DEV", "sixteen-bytes-ok")]);
        assert_eq!(Config::from_yaml_and_env(DEFAULT_YAML, embedded).unwrap().mode, Mode::Embedded);
    }
}
