//! Switchboard's server: wires the media plane, signaling and the HTTP API together.
//!
//! Used by the binary and by the whole-server tests, which start a server on free ports.

mod admin;
mod api;
pub mod backends;
mod connections;
mod http;
pub mod loadtest;
mod origins;
mod recordings_api;
pub mod tls;
mod wish;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use rand::distr::{Alphanumeric, SampleString};
use recorder::upload::SpoolBudget;
use sb_config::{Config, Mode};
use sfu::{ForwarderSettings, Sfu, SfuConfig, SfuMetrics, SrtpProfile};
use signaling::auth::TokenAuthority;
use signaling::bookkeeping::Bookkeeping;
use signaling::journal::{Journal, JournalLimits};
use signaling::metrics::SignalingMetrics;
use signaling::recordings::{Formats, RecordingConfig, RecordingContext, Recordings};
use signaling::rooms::Rooms;
use signaling::session::{SessionLimits, SignalingContext};
use signaling::state::{NodeInfo, StateKeeper, StateTimings};

/// Everything needed to start a server, derived from the configuration.
pub struct Settings {
    /// The loaded configuration.
    pub config: Config,
    /// The media plane's settings.
    pub sfu: SfuConfig,
}

impl Settings {
    /// Derives the settings from a configuration.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let media = &config.media;
        let workers = if media.workers == 0 { SfuConfig::default().workers } else { media.workers };
        let sfu = SfuConfig {
            workers,
            bind_ip: media.bind_ip,
            port_base: media.port_base,
            tcp_port: media.tcp_port,
            announced_ips: media.announced_ips.clone(),
            srtp_profiles: media
                .srtp_profiles
                .iter()
                .map(|p| match p {
                    sb_config::SrtpProfile::AeadAes128Gcm => SrtpProfile::AeadAes128Gcm,
                    sb_config::SrtpProfile::Aes128CmHmacSha1_80 => SrtpProfile::Aes128CmHmacSha1_80,
                })
                .collect(),
            forwarder: ForwarderSettings {
                nack_cache_packets: media.nack_cache_packets,
                nack_cache_age: Duration::from_millis(media.nack_cache_ms),
                nack_cache_min_age: Duration::from_millis(media.nack_cache_min_ms),
                keyframe_interval: Duration::from_millis(media.keyframe_interval_ms),
            },
            max_tracks_per_participant: media.max_tracks_per_participant,
        };
        Ok(Self { config: config.clone(), sfu })
    }
}

/// A running server.
pub struct Server {
    /// Where the HTTP server listens.
    pub http_addr: SocketAddr,
    /// The address to open the page at: `http://` or, with TLS, `https://`.
    pub base_url: String,
    /// The UDP addresses of the media workers.
    pub media_addrs: Vec<SocketAddr>,
    /// This node.
    pub node: NodeInfo,
    context: Arc<SignalingContext>,
    shutdown_timeout: Duration,
}

/// Starts the backends, the media workers and the HTTP server; returns once all listen.
pub async fn serve(settings: Settings) -> anyhow::Result<Server> {
    let config = settings.config;
    let listener = tokio::net::TcpListener::bind(config.http.listen).await.with_context(|| format!("binding {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let scheme = if config.http.tls.files().is_some() { "https" } else { "http" };
    if config.mode == Mode::Embedded && !http_addr.ip().is_loopback() {
        tracing::warn!(
            %http_addr,
            "EMBEDDED MODE BEYOND LOOPBACK (http.allow_remote_embedded): anyone who reaches this address gets a token from \
             /dev/token, and tokens are signed with the public development key; use production mode for anything but a trusted LAN"
        );
    }
    let node = NodeInfo {
        id: if config.node.id.is_empty() {
            format!("node-{}", Alphanumeric.sample_string(&mut rand::rng(), 8).to_lowercase())
        } else {
            config.node.id.clone()
        },
        url: if config.node.public_url.is_empty() { format!("{scheme}://{http_addr}") } else { config.node.public_url.clone() },
    };
    let backends = backends::connect(&config, &node.url).await?;
    let sfu_metrics = Arc::new(SfuMetrics::default());
    let sfu = Arc::new(Sfu::start(&settings.sfu, sfu_metrics.clone()).context("starting media workers")?);
    let media_addrs = sfu.media_addrs().to_vec();
    let tls = tls_config(&config, http_addr, sfu.announced_ips())?;
    let signaling_metrics = Arc::new(SignalingMetrics::default());
    let limits = &config.limits;
    let timings = StateTimings {
        heartbeat: Duration::from_secs(config.state.heartbeat_secs),
        session_ttl: Duration::from_secs(config.state.session_ttl_secs),
        room_ttl: Duration::from_secs(config.state.room_ttl_days * 86_400),
        lock_ttl: Duration::from_millis(config.state.lock_ttl_ms),
    };
    let journal_limits = JournalLimits {
        queue_capacity: config.database.queue_capacity,
        queue_max_bytes: config.database.queue_max_bytes,
        batch_size: config.database.batch_size,
    };
    let journal = Journal::start(Arc::new(backends.database.clone()), journal_limits);
    if config.database.message_retention_days > 0 {
        tokio::spawn(backends.database.clone().keep_messages_for(config.database.message_retention_days));
    }
    let books =
        Bookkeeping { state: StateKeeper::start(backends.state.clone(), node.clone(), timings), journal, events: backends.events.clone() };
    let recording = recording_config(&config);
    let objects = backends.objects.clone();
    let context = Arc::new_cyclic(|context: &Weak<SignalingContext>| SignalingContext {
        sfu,
        rooms: Rooms::new(limits.max_participants_per_room, limits.max_rooms),
        auth: TokenAuthority::new(config.auth.keys.clone(), config.auth.signing_key.clone()),
        limits: SessionLimits {
            max_message_bytes: limits.max_message_bytes,
            messages_per_second: limits.messages_per_second,
            message_burst: limits.message_burst,
            abuse_threshold: limits.abuse_threshold,
            ping_interval: Duration::from_secs(config.signaling.ping_interval_secs),
            resume_grace: Duration::from_secs(config.signaling.resume_grace_secs),
            join_timeout: Duration::from_secs(config.signaling.join_timeout_secs),
        },
        metrics: signaling_metrics.clone(),
        resumable: Default::default(),
        books,
        recordings: Recordings::new(recording, objects, context.clone() as Weak<dyn RecordingContext>),
        ice_servers: config
            .media
            .ice_servers
            .iter()
            .map(|s| signaling::protocol::IceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect(),
    });
    context.recordings.recover_crashed();
    if let Some(kafka) = &backends.kafka {
        let consumer = backends::events::tasks::TaskConsumer::new(
            kafka,
            &config.events.consumer_group,
            config.events.task_attempts,
            backends.database.clone(),
            context.clone(),
        )
        .context("creating the Kafka tasks consumer")?;
        tokio::spawn(consumer.run());
    }
    let state = api::AppState {
        signaling: context.clone(),
        database: backends.database.clone(),
        objects: backends.objects.clone(),
        signer: backends.signer.clone(),
        presign_expiry: Duration::from_secs(config.objects.presign_expiry_secs),
        sfu_metrics,
        signaling_metrics,
        event_metrics: backends.event_metrics.clone(),
        local_objects: backends.local_objects.clone(),
        dev_tokens: (config.mode == Mode::Embedded).then(|| api::DevTokens {
            authority: TokenAuthority::new(config.auth.keys.clone(), config.auth.signing_key.clone()),
            ttl_secs: config.auth.token_ttl_secs,
        }),
        max_frame_bytes: limits.max_message_bytes.saturating_mul(4),
        connections: connections::ConnectionCaps::new(limits.max_connections, limits.max_connections_per_ip),
        origins: origins::OriginPolicy::new(config.mode, &config.http.allowed_origins),
        downloads: Arc::new(tokio::sync::Semaphore::new(config.http.max_concurrent_downloads)),
        wish: Default::default(),
        whip_media_deadline: Duration::from_secs(config.signaling.whip_media_timeout_secs),
    };
    let router = http::router(Arc::new(state));
    let listener = tls::HttpListener::new(listener, tls)?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router.into_make_service_with_connect_info::<tls::ClientAddr>()).await {
            tracing::error!(%err, "HTTP server stopped");
        }
    });
    tracing::info!(%http_addr, media = ?media_addrs, node = %node.id, "switchboard listening");
    let shutdown_timeout = Duration::from_secs(config.recording.shutdown_timeout_secs);
    let shown_host = if http_addr.ip().is_unspecified() { format!("localhost:{}", http_addr.port()) } else { http_addr.to_string() };
    Ok(Server { http_addr, base_url: format!("{scheme}://{shown_host}"), media_addrs, node, context, shutdown_timeout })
}

/// The listener's TLS configuration (`http.tls`), making the self-signed certificate first
/// when asked and none is there yet: for `localhost`, the host name, loopback, the listen
/// address and the addresses announced for media.
fn tls_config(
    config: &Config,
    http_addr: SocketAddr,
    announced: &[std::net::Ipv4Addr],
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let Some((cert, key)) = config.http.tls.files() else { return Ok(None) };
    if config.http.tls.self_signed {
        let mut names = vec!["localhost".to_owned()];
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            names.push(host.trim().to_owned());
        }
        names.extend(["127.0.0.1".to_owned(), "::1".to_owned()]);
        if !http_addr.ip().is_unspecified() {
            names.push(http_addr.ip().to_string());
        }
        names.extend(announced.iter().map(|ip| ip.to_string()));
        names.retain(|name| !name.is_empty());
        names.sort();
        names.dedup();
        if tls::ensure_self_signed(&cert, &key, &names)? {
            tracing::info!(cert = %cert.display(), ?names, "made a self-signed certificate; browsers will ask to trust it");
        }
    }
    Ok(Some(tls::server_config(&cert, &key)?))
}

/// The recorder's settings from the `recording` and `objects` sections.
fn recording_config(config: &Config) -> RecordingConfig {
    let r = &config.recording;
    RecordingConfig {
        default_formats: Formats::parse(&r.default_format).unwrap_or(Formats { mp4: true, hls: true }),
        segment: Duration::from_secs(r.segment_secs),
        max_duration: Duration::from_secs(r.max_duration_secs),
        part_bytes: config.objects.multipart_part_bytes,
        spool_dir: (!r.spool_dir.is_empty()).then(|| r.spool_dir.clone().into()),
        spool_budget: SpoolBudget::new(r.spool_max_bytes),
        finish_retry: Duration::from_secs(r.finish_retry_secs),
        auto_record: r.auto_record.clone(),
        queue_packets: r.queue_packets,
    }
}

impl Server {
    /// Graceful shutdown: finishes every open recording and waits until they are stored,
    /// their rows written and their events sent (each step up to
    /// `recording.shutdown_timeout_secs`).
    pub async fn shutdown(&self) {
        self.context.recordings.shutdown(self.shutdown_timeout).await;
        if !self.context.books.journal.drained(self.shutdown_timeout).await {
            tracing::warn!("database records still queued at shutdown");
        }
        let events = self.context.books.events.clone();
        let timeout = self.shutdown_timeout;
        let _ = tokio::task::spawn_blocking(move || events.flush(timeout)).await;
    }
}
