//! The real and embedded implementations of the core crates' traits, chosen by the
//! configuration: state (memory | Redis), persistence (SQLite | PostgreSQL), events (log |
//! Kafka) and objects (local folder | S3/MinIO).

pub mod db;
pub mod events;
pub mod objects;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use recorder::objects::ObjectStore;
use sb_config::{Config, DatabaseBackend, EventsBackend, ObjectsBackend, StateBackend};
use signaling::events::EventSink;
use signaling::state::StateStore;

use self::db::{Database, Dialect, PoolSettings};
use self::events::kafka::{EventMetrics, KafkaEvents, KafkaSettings};
use self::objects::local::{LocalObjects, UrlSigner};
use self::objects::s3::{S3Objects, S3Settings};

/// The backends a node runs with.
pub struct Backends {
    /// Room and session state.
    pub state: Arc<dyn StateStore>,
    /// Persistence.
    pub database: Database,
    /// Domain events.
    pub events: Arc<dyn EventSink>,
    /// Counters of the Kafka sink, when events go to Kafka.
    pub event_metrics: Option<Arc<EventMetrics>>,
    /// Kafka settings, when events go to Kafka (the tasks consumer runs then).
    pub kafka: Option<KafkaSettings>,
    /// Objects.
    pub objects: Arc<dyn ObjectStore>,
    /// The local object store, when objects are local (its presigned URLs are served at
    /// `/objects`).
    pub local_objects: Option<Arc<LocalObjects>>,
    /// Signs this node's own download URLs (`/objects`, HLS playlists).
    pub signer: UrlSigner,
}

/// Opens the database named by the configuration and applies its migrations.
pub async fn open_database(config: &Config) -> anyhow::Result<Database> {
    let db = &config.database;
    let dialect = match db.backend {
        DatabaseBackend::Sqlite => Dialect::Sqlite,
        DatabaseBackend::Postgres => Dialect::Postgres,
    };
    let pool = PoolSettings { max_open: db.max_open, max_idle: db.max_idle, max_lifetime: Duration::from_secs(db.max_lifetime_secs) };
    Database::open(dialect, &db.url, pool).await.with_context(|| format!("opening the {:?} database", db.backend))
}

/// Connects the backends. Redis and Kafka connect in the background (the node starts
/// while they are away); the database must answer at start, for its migrations; the S3
/// bucket is created when missing if S3 answers.
pub async fn connect(config: &Config, public_url: &str) -> anyhow::Result<Backends> {
    let state: Arc<dyn StateStore> = match config.state.backend {
        StateBackend::Memory => Arc::new(state::memory::MemoryState::default()),
        StateBackend::Redis => Arc::new(state::redis::RedisState::connect(&config.state.redis_url).context("configuring Redis")?),
    };
    let database = open_database(config).await?;
    let (events, event_metrics, kafka): (Arc<dyn EventSink>, _, _) = match config.events.backend {
        EventsBackend::Log => (Arc::new(events::log::LogEvents), None, None),
        EventsBackend::Kafka => {
            let settings = KafkaSettings {
                brokers: config.events.brokers.clone(),
                topic_prefix: config.events.topic_prefix.clone(),
                buffer_messages: config.events.buffer_messages,
            };
            events::kafka::ensure_topics(&settings).await;
            let sink = KafkaEvents::new(&settings).context("creating the Kafka producer")?;
            let metrics = sink.metrics().clone();
            (Arc::new(sink), Some(metrics), Some(settings))
        }
    };
    let o = &config.objects;
    let url_key = database.url_signing_key().await.context("reading the URL signing key from the database")?;
    let signer = UrlSigner::new(url_key.as_bytes());
    let (objects, local_objects): (Arc<dyn ObjectStore>, _) = match o.backend {
        ObjectsBackend::Local => {
            let local = LocalObjects::new(&o.local_dir, public_url.to_owned(), signer.clone())
                .with_context(|| format!("creating the objects folder {}", o.local_dir))?;
            let local = Arc::new(local);
            (local.clone(), Some(local))
        }
        ObjectsBackend::S3 => {
            let s3 = S3Objects::new(&S3Settings {
                endpoint: o.endpoint.clone(),
                region: o.region.clone(),
                bucket: o.bucket.clone(),
                access_key: o.access_key.clone(),
                secret_key: o.secret_key.clone(),
                path_style: o.path_style,
            });
            if let Err(err) = s3.ensure_bucket().await {
                tracing::warn!(%err, bucket = %o.bucket, "object store unreachable at start; the bucket is checked again at its first use");
            }
            (Arc::new(s3), None)
        }
    };
    Ok(Backends { state, database, events, event_metrics, kafka, objects, local_objects, signer })
}
