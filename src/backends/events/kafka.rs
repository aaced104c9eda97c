//! The Kafka event sink (crate `rdkafka`, bundled librdkafka): events go to
//! `<prefix>.system_events`, keyed by meeting id so that one meeting's events stay in order
//! on one partition.
//!
//! `publish` only enqueues into librdkafka's queue. While the broker is unreachable the queue
//! holds up to `events.buffer_messages` events for up to [`BUFFER_TIMEOUT`]; events beyond
//! the bound, or older than that, are dropped, logged and counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use signaling::events::{Event, EventSink};
use tracing::{info, warn};

/// How long an event may wait for an unreachable broker before it is dropped.
pub const BUFFER_TIMEOUT: Duration = Duration::from_secs(600);

/// Counters of the event sink, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct EventMetrics {
    /// Events the broker acknowledged.
    pub delivered: AtomicU64,
    /// Events dropped: the buffer was full, or they waited past [`BUFFER_TIMEOUT`].
    pub dropped: AtomicU64,
}

impl EventMetrics {
    /// Renders the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let delivered = self.delivered.load(Ordering::Relaxed);
        let dropped = self.dropped.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP switchboard_events_delivered_total Events the broker acknowledged.\n# TYPE switchboard_events_delivered_total counter\nswitchboard_events_delivered_total {delivered}");
        let _ = writeln!(out, "# HELP switchboard_events_dropped_total Events dropped: buffer full or broker away too long.\n# TYPE switchboard_events_dropped_total counter\nswitchboard_events_dropped_total {dropped}");
    }
}

/// Delivery reports: counts them, and logs the first failure of an outage.
struct DeliveryCounter {
    metrics: Arc<EventMetrics>,
    failing: AtomicBool,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.metrics.delivered.fetch_add(1, Ordering::Relaxed);
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!("Kafka deliveries succeed again");
                }
            }
            Err((err, _)) => {
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(%err, "an event could not be delivered to Kafka and was dropped");
                }
            }
        }
    }
}

/// Settings of the Kafka clients.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Events buffered while the broker is away.
    pub buffer_messages: u32,
}

impl KafkaSettings {
    /// `<prefix>.system_events`.
    pub fn events_topic(&self) -> String {
        format!("{}.system_events", self.topic_prefix)
    }

    /// `<prefix>.tasks`.
    pub fn tasks_topic(&self) -> String {
        format!("{}.tasks", self.topic_prefix)
    }

    /// `<prefix>.tasks.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.tasks.dlq", self.topic_prefix)
    }

    /// Client settings shared by producers and consumers.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("socket.connection.setup.timeout.ms", "3000");
        config
    }

    /// Producer settings: ordered per partition, buffered through outages.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("message.timeout.ms", BUFFER_TIMEOUT.as_millis().to_string())
            .set("queue.buffering.max.messages", self.buffer_messages.max(1).to_string())
            .set("queue.buffering.max.ms", "5")
            .set("max.in.flight.requests.per.connection", "1")
            .set("enable.idempotence", "false")
            .set("acks", "all");
        config
    }
}

/// Creates the three topics if they do not exist. A broker that cannot be reached is logged,
/// not fatal: producers buffer and consumers wait for it.
pub async fn ensure_topics(settings: &KafkaSettings) {
    let admin: AdminClient<DefaultClientContext> = match settings.client_config().create() {
        Ok(admin) => admin,
        Err(err) => return warn!(%err, "cannot create a Kafka admin client"),
    };
    let names = [settings.events_topic(), settings.tasks_topic(), settings.dead_letter_topic()];
    let topics: Vec<NewTopic<'_>> = names.iter().map(|name| NewTopic::new(name, 1, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))).request_timeout(Some(Duration::from_secs(5)));
    match admin.create_topics(&topics, &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(topic) => info!(topic, "Kafka topic created"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => warn!(topic, ?code, "cannot create Kafka topic"),
                }
            }
        }
        Err(err) => warn!(%err, "Kafka unreachable while creating topics; events are buffered until it answers"),
    }
}

/// Events to Kafka.
pub struct KafkaEvents {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    tasks_topic: String,
    metrics: Arc<EventMetrics>,
    full: AtomicBool,
}

impl KafkaEvents {
    /// A producer for `settings`.
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let metrics = Arc::new(EventMetrics::default());
        let context = DeliveryCounter { metrics: metrics.clone(), failing: AtomicBool::new(false) };
        let producer = settings.producer_config().create_with_context(context)?;
        Ok(Self { producer, topic: settings.events_topic(), tasks_topic: settings.tasks_topic(), metrics, full: AtomicBool::new(false) })
    }

    /// The sink's counters.
    pub fn metrics(&self) -> &Arc<EventMetrics> {
        &self.metrics
    }
}

impl KafkaEvents {
    /// Hands a message to the producer's buffer; a full buffer drops it (counted, logged once
    /// per episode).
    fn send(&self, topic: &str, key: &str, payload: &[u8], what: &str) {
        let record = BaseRecord::to(topic).key(key.as_bytes()).payload(payload);
        match self.producer.send(record) {
            Ok(()) => self.full.store(false, Ordering::Relaxed),
            Err((err, _)) => {
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.full.swap(true, Ordering::Relaxed) {
                    warn!(%err, what, meeting = %key, "Kafka buffer full; events are dropped");
                }
            }
        }
    }
}

impl EventSink for KafkaEvents {
    fn publish(&self, event: Event) {
        match serde_json::to_vec(&event) {
            Ok(payload) => self.send(&self.topic, &event.meeting_id, &payload, event.kind.name()),
            Err(err) => warn!(%err, "event not serializable; dropped"),
        }
    }

    fn submit_task(&self, meeting_id: &str, task: &serde_json::Value) {
        self.send(&self.tasks_topic, meeting_id, task.to_string().as_bytes(), "task");
    }

    fn flush(&self, timeout: std::time::Duration) {
        if let Err(err) = self.producer.flush(timeout) {
            warn!(%err, "events still buffered at shutdown");
        }
    }
}
