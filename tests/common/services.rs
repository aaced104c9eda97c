//! The real services tests run against: a private `redis-server` per test server, a database
//! per test server on the PostgreSQL at `SWITCHBOARD_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`), and one `tansu` broker and one `s3s-fs` per test
//! binary (scripts/test installs both and puts them on PATH). A TCP [`Proxy`] in front of a
//! service lets a test take it away and bring it back without touching the service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

/// Credentials of the test S3 server.
pub const S3_ACCESS_KEY: &str = "switchboard-test";
pub const S3_SECRET_KEY: &str = "switchboard-test-secret";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A random lowercase suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("{prefix}{}", Alphanumeric.sample_string(&mut rand::rng(), 10).to_lowercase())
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A folder removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique("switchboard-test-"));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Finds a service binary on PATH, failing with how to install it.
fn binary(name: &str, install: &str) -> String {
    let found =
        std::env::var_os("PATH").map(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).any(|p| p.is_file())).unwrap_or(false);
    assert!(found, "`{name}` is not on PATH; run the tests with scripts/test, which installs it ({install})");
    name.to_owned()
}

/// A private redis-server on a free port; killed when dropped.
pub struct Redis {
    pub port: u16,
    child: Mutex<Option<Child>>,
}

impl Redis {
    pub fn start() -> Self {
        let redis = Self { port: free_port(), child: Mutex::new(None) };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server: its data is gone.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts an empty server on the same port.
    pub fn restart(&self) {
        self.stop();
        let child = Command::new(binary("redis-server", "apt-get install redis-server"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        *self.child.lock().unwrap() = Some(child);
        wait_listening(self.port, "redis-server");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The PostgreSQL server tests use.
pub fn postgres_base() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Creates an empty database; returns its URL.
pub async fn postgres_database() -> String {
    use sqlx::Connection;
    let name = unique("sbtest_");
    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_base())).await.expect("PostgreSQL reachable for tests");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.expect("test database created");
    format!("{}/{name}", postgres_base())
}

/// Spawns `command` under a shell that ends it when this test process ends, so brokers
/// started once per test binary do not outlive it.
fn spawn_tied_to_this_process(program: &str, args: &[String], log: &Path) -> Child {
    let quoted: Vec<String> = std::iter::once(program.to_owned()).chain(args.iter().cloned()).map(|a| format!("'{a}'")).collect();
    let script = format!(
        "{} >'{}' 2>&1 & c=$!; while kill -0 {} 2>/dev/null && kill -0 $c 2>/dev/null; do sleep 0.5; done; kill $c 2>/dev/null",
        quoted.join(" "),
        log.display(),
        std::process::id()
    );
    Command::new("sh").args(["-c", &script]).spawn().expect("service starts")
}

/// A Kafka-protocol broker (tansu, in memory) for this test binary.
pub struct Broker {
    /// `host:port` clients bootstrap from.
    pub brokers: String,
    _process: Child,
    _dir: TempDir,
}

impl Broker {
    /// Starts a broker on a free port.
    pub fn start() -> Self {
        Self::start_on(free_port(), None)
    }

    /// Starts a broker on `port` advertising `advertised` (its own port when `None`, or a
    /// proxy's).
    pub fn start_on(port: u16, advertised: Option<u16>) -> Self {
        let advertised = advertised.unwrap_or(port);
        let dir = TempDir::new();
        let args = vec![
            "broker".into(),
            "--listener-url".into(),
            format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url".into(),
            format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine".into(),
            "memory://tansu/".into(),
        ];
        let tansu = binary("tansu", "cargo install tansu@0.6.0 --locked --features dynostore");
        let process = spawn_tied_to_this_process(&tansu, &args, &dir.path().join("tansu.log"));
        wait_listening(port, "tansu");
        Self { brokers: format!("127.0.0.1:{port}"), _process: process, _dir: dir }
    }

    /// The broker shared by the tests of this binary.
    pub fn shared() -> &'static Broker {
        static BROKER: OnceLock<Broker> = OnceLock::new();
        BROKER.get_or_init(Broker::start)
    }
}

/// An S3 server (s3s-fs, signatures checked) for this test binary.
pub struct S3 {
    /// Endpoint URL.
    pub endpoint: String,
    pub port: u16,
    _process: Child,
    _dir: TempDir,
}

impl S3 {
    pub fn start() -> Self {
        let port = free_port();
        let dir = TempDir::new();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("s3 data dir");
        let args = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--access-key".into(),
            S3_ACCESS_KEY.into(),
            "--secret-key".into(),
            S3_SECRET_KEY.into(),
            data.display().to_string(),
        ];
        let s3s = binary("s3s-fs", "cargo install s3s-fs@0.14.1 --locked --features binary");
        let process = spawn_tied_to_this_process(&s3s, &args, &dir.path().join("s3s.log"));
        wait_listening(port, "s3s-fs");
        Self { endpoint: format!("http://127.0.0.1:{port}"), port, _process: process, _dir: dir }
    }

    /// The S3 server shared by the tests of this binary.
    pub fn shared() -> &'static S3 {
        static S3_SERVER: OnceLock<S3> = OnceLock::new();
        S3_SERVER.get_or_init(S3::start)
    }
}

/// A TCP proxy in front of a service. `cut` closes its connections and refuses new ones
/// (the service is "gone" for whoever uses the proxy); `restore` lets them through again.
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    /// A proxy to `target` on a free port (or on `port`).
    pub async fn start(target: SocketAddr, port: Option<u16>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port.unwrap_or(0))).await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let open = Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let (flag, cuts) = (open.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                if !flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { addr, open, generation }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The service disappears: connections drop, new ones are closed at once.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The service is back.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// The real services one test server uses, and the configuration overrides naming them.
pub struct RealServices {
    pub redis: Redis,
    pub postgres_url: String,
    pub topic_prefix: String,
    pub bucket: String,
}

impl RealServices {
    /// A private Redis, a new database, a topic prefix and a bucket of their own on the
    /// shared broker and S3 server.
    pub async fn start() -> Self {
        Self { redis: Redis::start(), postgres_url: postgres_database().await, topic_prefix: unique("t"), bucket: unique("b") }
    }

    /// Checks that a server started on these services registered itself in Redis.
    pub async fn assert_in_use(&self, node: &signaling::state::NodeInfo) {
        use signaling::state::StateStore;
        let store = switchboard::backends::state::redis::RedisState::connect(&self.redis.url()).expect("redis client");
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.node(&node.id).await.ok().flatten().as_ref() != Some(node) {
            assert!(Instant::now() < deadline, "the server did not register node:{} in its Redis", node.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Overrides of the test configuration that select these services.
    pub fn overrides(&self) -> Vec<(String, String)> {
        ServiceAddresses {
            redis_url: self.redis.url(),
            postgres_url: self.postgres_url.clone(),
            brokers: Broker::shared().brokers.clone(),
            topic_prefix: self.topic_prefix.clone(),
            s3_endpoint: S3::shared().endpoint.clone(),
            bucket: self.bucket.clone(),
        }
        .overrides()
    }
}

/// Where a test server finds Redis, PostgreSQL, Kafka and S3.
pub struct ServiceAddresses {
    pub redis_url: String,
    pub postgres_url: String,
    pub brokers: String,
    pub topic_prefix: String,
    pub s3_endpoint: String,
    pub bucket: String,
}

impl ServiceAddresses {
    /// Overrides of the test configuration that select these services (the consumer group
    /// is named after the topic prefix).
    pub fn overrides(&self) -> Vec<(String, String)> {
        [
            ("STATE__BACKEND", "redis".to_owned()),
            ("STATE__REDIS_URL", self.redis_url.clone()),
            ("DATABASE__BACKEND", "postgres".to_owned()),
            ("DATABASE__URL", self.postgres_url.clone()),
            ("EVENTS__BACKEND", "kafka".to_owned()),
            ("EVENTS__BROKERS", self.brokers.clone()),
            ("EVENTS__TOPIC_PREFIX", self.topic_prefix.clone()),
            ("EVENTS__CONSUMER_GROUP", format!("{}-group", self.topic_prefix)),
            ("OBJECTS__BACKEND", "s3".to_owned()),
            ("OBJECTS__ENDPOINT", self.s3_endpoint.clone()),
            ("OBJECTS__BUCKET", self.bucket.clone()),
            ("OBJECTS__ACCESS_KEY", S3_ACCESS_KEY.to_owned()),
            ("OBJECTS__SECRET_KEY", S3_SECRET_KEY.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("SWITCHBOARD__{k}"), v))
        .collect()
    }
}

/// Whether the whole-server tests run against real services (`SWITCHBOARD_TEST_BACKENDS=real`)
/// rather than the embedded ones.
pub fn real_backends_requested() -> bool {
    std::env::var("SWITCHBOARD_TEST_BACKENDS").is_ok_and(|v| v == "real")
}

/// Runs the server binary on `config`, with `env`; its output goes to `log`.
pub fn spawn_server(config: &std::path::Path, env: &[(&str, &str)], log: &std::path::Path) -> std::process::Child {
    let file = std::fs::File::create(log).expect("log file");
    std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--config", &config.display().to_string(), "serve"])
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .expect("server process starts")
}

/// Reads `topic` from its start until `last` matches a message; returns the JSON messages
/// with their key checked against `meeting_id`.
pub async fn consume(topic: &str, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    consume_from(&Broker::shared().brokers, topic, last).await
}

/// [`consume`] from the broker at `brokers`.
pub async fn consume_from(brokers: &str, topic: &str, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let message = tokio::time::timeout_at(deadline, consumer.recv()).await.expect("messages in time").expect("message");
        let value: Value = serde_json::from_slice(message.payload().unwrap_or_default()).expect("JSON message");
        if let Some(meeting) = value["meeting_id"].as_str() {
            assert_eq!(message.key(), Some(meeting.as_bytes()), "keyed by meeting id");
        }
        let done = last(&value);
        out.push(value);
        if done {
            return out;
        }
    }
}

/// Produces one message to `topic` on the shared broker, keyed by its `meeting_id` (as the
/// server keys its own), or `task`.
pub async fn produce(topic: &str, payload: &str) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &Broker::shared().brokers).create().expect("producer");
    let meeting = serde_json::from_str::<Value>(payload).ok().and_then(|v| v["meeting_id"].as_str().map(str::to_owned));
    let key = meeting.unwrap_or_else(|| "task".to_owned());
    let record: FutureRecord<'_, str, str> = FutureRecord::to(topic).payload(payload).key(&key);
    producer.send(record, Duration::from_secs(10)).await.expect("task produced");
}
