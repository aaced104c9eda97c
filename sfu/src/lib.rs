//! Switchboard's media plane.
//!
//! [`Sfu`] runs worker threads (by default one per CPU the process may use), each with one
//! UDP port and a room engine (`engine`, sans-IO) that owns every room placed on that
//! worker; signaling drives a participant's media through its [`MediaSession`] and a
//! recorder through its [`RoomTap`].
//! The engine's packet path is the [`ingress`], the [`forwarder`] (with its per-subscriber
//! [`munger`], the per-track [`packet_cache`], [`keyframe`] throttle and [`retransmit`]
//! budget) and the [`egress`]. `docs/architecture.md` walks the packet path file by file.
//!
//! One owner per fact:
//! - **Which worker holds a room**: this module's placement, and nothing else.
//! - **Media membership** (who is in a room's media, their connections, tracks and
//!   subscriptions): the room's engine alone. A subscription is held once, in the
//!   forwarder's table, with the engine's sender for it beside what the packet path needs.
//! - **Presence** (who joined, names, mute flags): signaling's `Rooms`; Redis mirrors the
//!   room's members and owning node for other nodes. The media plane tells signaling of
//!   tracks through [`SfuEvent`]s and never reads presence.
#![forbid(unsafe_code)]

pub mod allocation;
mod codec;
pub mod egress;
mod engine;
pub mod feedback;
mod feedback_tap;
pub mod forwarder;
pub mod fuzz;
mod h264;
mod h265;
pub mod ids;
pub mod ingress;
pub mod keyframe;
mod mailbox;
pub mod metrics;
pub mod munger;
mod outbox;
pub mod packet_cache;
pub mod peer;
pub mod remote;
pub mod retransmit;
mod round_trip;
mod schedule;
pub mod simulcast;
mod socket;
pub mod speakers;
pub mod srtp;
mod stun;
pub mod tap;
mod tcp;
pub mod vp8;
mod vp9;
mod worker;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtc::peer_connection::transport::RTCIceCandidateInit;
use tokio::sync::{mpsc, oneshot};

pub use forwarder::{ForwarderSettings, MediaKind, Negotiated, RtxStream, View};
pub use ids::{ParticipantId, ParticipantKey, RoomId, TrackId};
pub use metrics::SfuMetrics;
pub use peer::{PeerRole, SrtpProfile};
pub use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
pub use simulcast::FrameSize;
pub use tap::{TapEvent, TappedRtp};

use engine::{Command, EngineSettings, Joining};
use mailbox::Mailbox;
use worker::WorkerSetup;

/// Failures of the media plane, each mapped to a protocol error code by signaling.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    /// The session description could not be parsed or applied.
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    /// The ICE candidate could not be parsed or applied.
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
    /// The participant's grants do not allow this.
    #[error("not allowed by the access grants")]
    NotAllowed,
    /// A publisher offer sends more tracks than a participant may publish.
    #[error("the offer sends {offered} tracks, more than the {max} a participant may publish")]
    TooManyTracks {
        /// Sending media sections in the offer.
        offered: usize,
        /// The limit (`media.max_tracks_per_participant`).
        max: usize,
    },
    /// The participant is not in the media plane (never joined, or already left).
    #[error("unknown participant")]
    UnknownParticipant,
    /// The track named is not one the participant receives.
    #[error("the track is not one this participant receives")]
    NotSubscribed,
    /// The participant is already in the media plane.
    #[error("participant already joined")]
    AlreadyJoined,
    /// A viewer offer from a participant that already has a receiving connection.
    #[error("this participant already has a receiving connection")]
    AlreadyReceiving,
    /// The message does not fit the negotiation state (e.g. an answer with no offer out).
    #[error("no negotiation in progress on that connection")]
    NotNegotiated,
    /// The worker owning the room is gone (shutting down).
    #[error("media worker unavailable")]
    WorkerGone,
    /// The WebRTC engine failed.
    #[error("media engine: {0}")]
    Engine(String),
    /// A UDP port could not be bound.
    #[error("cannot bind media port {port}: {source}")]
    Bind {
        /// The port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// The ICE-TCP port could not be bound, or its listener started.
    #[error("cannot start ICE-TCP port {port}: {source}")]
    TcpStart {
        /// The port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// A media worker's thread or its command queue's eventfd could not be created.
    #[error("cannot start media worker {index}: {source}")]
    WorkerStart {
        /// The worker's index.
        index: usize,
        /// Why.
        source: std::io::Error,
    },
}

/// The name of an error's kind, as its `Debug` text begins (an enum variant's name), without
/// what the error carries: refusals sent to clients and recorded name the fault this way,
/// since the carried text can be the client's own input.
pub(crate) fn fault_kind(err: &dyn std::fmt::Debug) -> String {
    /// Takes the leading identifier of what is written to it, at most 48 characters.
    struct Identifier(String);
    impl std::fmt::Write for Identifier {
        fn write_str(&mut self, text: &str) -> std::fmt::Result {
            for c in text.chars() {
                if !(c.is_ascii_alphanumeric() || c == '_') || self.0.len() >= 48 {
                    return Err(std::fmt::Error);
                }
                self.0.push(c);
            }
            Ok(())
        }
    }
    let mut name = Identifier(String::new());
    // Writing stops with an error at the first character past the identifier.
    let _ = std::fmt::write(&mut name, format_args!("{err:?}"));
    if name.0.is_empty() {
        "unnamed".into()
    } else {
        name.0
    }
}

/// What a participant may do with media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaGrants {
    /// May send tracks.
    pub publish: bool,
    /// May receive the room's tracks.
    pub subscribe: bool,
}

/// A published track as the room sees it.
#[derive(Debug, Clone)]
pub struct TrackInfo {
    /// The node-unique track id.
    pub id: TrackId,
    /// Who publishes it.
    pub publisher: ParticipantId,
    /// Audio or video.
    pub kind: MediaKind,
    /// What the publisher captures with it, as it said.
    pub source: TrackSource,
    /// The codec the publisher negotiated.
    pub codec: RTCRtpCodec,
}

/// What a published track captures, as its publisher said with its offer (LiveKit's
/// `TrackSource`): lets subscribers tell a screen share from a camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrackSource {
    /// Not said.
    #[default]
    Unknown,
    /// A camera.
    Camera,
    /// A microphone.
    Microphone,
    /// A shared screen or window.
    ScreenShare,
    /// The audio of a shared screen or tab.
    ScreenShareAudio,
}

/// What the media plane tells a participant's signaling session.
#[derive(Debug, Clone)]
pub enum SfuEvent {
    /// A track was published in the room (the participant's own included).
    TrackPublished(TrackInfo),
    /// A track left the room.
    TrackUnpublished(TrackId),
    /// The server offers on the subscriber connection; answer with
    /// [`MediaSession::subscriber_answer`].
    SubscriberOffer(String),
    /// One of the participant's connections failed (ICE or DTLS).
    ConnectionFailed,
    /// The room's active speakers changed: who speaks, loudest first, with the smoothed
    /// loudness (0 to 1) of their loudest audio track.
    ActiveSpeakers(Vec<(ParticipantId, f32)>),
    /// Dynacast: which simulcast layers of one of the participant's tracks anyone needs; the
    /// client pauses the others (`RTCRtpSender.setParameters`).
    PublishLayers {
        /// The track.
        track: TrackId,
        /// The mid of its section of the publisher connection.
        mid: String,
        /// Each layer by RID, lowest first: whether to send it.
        active: Vec<(String, bool)>,
    },
}

/// How to run the media plane.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Worker threads, each with its own UDP port (default: one per CPU the process may use,
    /// which `available_parallelism` reads from the affinity mask and a cgroup CPU quota).
    pub workers: usize,
    /// The address the UDP sockets bind to.
    pub bind_ip: Ipv4Addr,
    /// The first worker's port; worker `i` uses `port_base + i` (0: any free ports).
    pub port_base: u16,
    /// The node's ICE-TCP port, for clients whose network blocks UDP (0: any free port;
    /// `None`: no TCP candidates).
    pub tcp_port: Option<u16>,
    /// Addresses announced as host candidates (empty: every local IPv4 interface address).
    pub announced_ips: Vec<Ipv4Addr>,
    /// SRTP profiles offered to clients.
    pub srtp_profiles: Vec<SrtpProfile>,
    /// Forwarding tunables.
    pub forwarder: ForwarderSettings,
    /// Most tracks one participant may publish.
    pub max_tracks_per_participant: usize,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            bind_ip: Ipv4Addr::UNSPECIFIED,
            port_base: 50_000,
            tcp_port: Some(7881),
            announced_ips: Vec::new(),
            srtp_profiles: vec![SrtpProfile::AeadAes128Gcm],
            forwarder: ForwarderSettings::default(),
            max_tracks_per_participant: 16,
        }
    }
}

/// Binds the ICE-TCP port, non-blocking.
fn bind_tcp(ip: Ipv4Addr, port: u16) -> Result<(std::net::TcpListener, SocketAddr), SfuError> {
    let bound = std::net::TcpListener::bind((ip, port)).and_then(|listener| {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok((listener, addr))
    });
    bound.map_err(|source| SfuError::TcpStart { port, source })
}

/// Starts the thread that accepts ICE-TCP streams and hands them to `workers`.
fn start_tcp_listener(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    announced: &[Ipv4Addr],
    workers: &[Mailbox],
) -> Result<TcpPort, SfuError> {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    let started = |source| SfuError::TcpStart { port: addr.port(), source };
    let stop = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map_err(|e| started(e.into()))?);
    let setup = tcp::listener::ListenerSetup { listener, candidates: announced.to_vec(), workers: workers.to_vec(), stop: stop.clone() };
    std::thread::Builder::new().name("media-tcp".into()).spawn(move || tcp::listener::run(setup)).map_err(started)?;
    Ok(TcpPort { addr, stop })
}

/// Room placement: which worker owns each room, and how many participants and taps hold it
/// there.
#[derive(Default)]
struct Placement {
    rooms: HashMap<RoomId, (usize, usize)>,
    rooms_per_worker: Vec<usize>,
}

/// The running media plane.
pub struct Sfu {
    workers: Vec<Mailbox>,
    addrs: Vec<SocketAddr>,
    announced: Vec<Ipv4Addr>,
    placement: Arc<Mutex<Placement>>,
    next_tap: std::sync::atomic::AtomicU64,
    tcp: Option<TcpPort>,
}

/// The running ICE-TCP listener; stopped when dropped.
struct TcpPort {
    addr: SocketAddr,
    stop: Arc<nix::sys::eventfd::EventFd>,
}

impl Drop for TcpPort {
    fn drop(&mut self) {
        if let Err(err) = self.stop.write(1) {
            tracing::warn!(%err, "ICE-TCP listener could not be stopped");
        }
    }
}

impl Sfu {
    /// Binds every worker's port and the ICE-TCP port, and starts the worker threads and
    /// the ICE-TCP listener.
    pub fn start(config: &SfuConfig, metrics: Arc<SfuMetrics>) -> Result<Self, SfuError> {
        let announced = if config.announced_ips.is_empty() { local_ipv4_addresses() } else { config.announced_ips.clone() };
        let tcp_listener = match config.tcp_port {
            Some(port) => Some(bind_tcp(config.bind_ip, port)?),
            None => None,
        };
        let tcp_port = tcp_listener.as_ref().map(|(_, addr)| addr.port());
        let mut workers = Vec::new();
        let mut addrs = Vec::new();
        for index in 0..config.workers.clamp(1, peer::MAX_WORKERS) {
            let port = if config.port_base == 0 { 0 } else { config.port_base.saturating_add(index as u16) };
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (tx, inbox) = mailbox::mailbox().map_err(|source| SfuError::WorkerStart { index, source })?;
            let announced_ips = announced.clone();
            let forwarder = config.forwarder.clone();
            let max_tracks = config.max_tracks_per_participant;
            let metrics = metrics.worker();
            let bind_ip = config.bind_ip;
            let srtp_profiles = config.srtp_profiles.clone();
            std::thread::Builder::new()
                .name(format!("media-{index}"))
                .spawn(move || {
                    let socket = match socket::MediaSocket::bind(bind_ip, port, announced_ips.clone()) {
                        Ok(socket) => socket,
                        Err(source) => return drop(ready_tx.send(Err(SfuError::Bind { port, source }))),
                    };
                    let streams = match tcp::TcpStreams::new() {
                        Ok(streams) => streams,
                        Err(source) => return drop(ready_tx.send(Err(SfuError::WorkerStart { index, source }))),
                    };
                    let port = socket.local_addr().port();
                    let candidates = announced_ips.iter().map(|ip| SocketAddr::from((*ip, port))).collect();
                    let tcp_candidates = tcp_port.map(|port| announced_ips.iter().map(|ip| SocketAddr::from((*ip, port))).collect());
                    let _ = ready_tx.send(Ok(port));
                    let peers =
                        peer::PeerSettings { worker: index, candidates, tcp_candidates: tcp_candidates.unwrap_or_default(), srtp_profiles };
                    let engine = EngineSettings { peers, forwarder, max_tracks };
                    worker::run(WorkerSetup { index, socket, streams, engine, metrics }, inbox);
                })
                .map_err(|source| SfuError::WorkerStart { index, source })?;
            let port = ready_rx.recv().map_err(|_| SfuError::WorkerGone)??;
            addrs.push(SocketAddr::from((config.bind_ip, port)));
            workers.push(tx);
        }
        let tcp = match tcp_listener {
            Some((listener, addr)) => Some(start_tcp_listener(listener, addr, &announced, &workers)?),
            None => None,
        };
        let placement = Placement { rooms: HashMap::new(), rooms_per_worker: vec![0; workers.len()] };
        Ok(Self { workers, addrs, announced, placement: Arc::new(Mutex::new(placement)), next_tap: Default::default(), tcp })
    }

    /// The ICE-TCP port's address, when the node has one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().map(|tcp| tcp.addr)
    }

    /// The UDP addresses the workers listen on.
    pub fn media_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The addresses announced to clients as host candidates: where clients reach this node.
    pub fn announced_ips(&self) -> &[Ipv4Addr] {
        &self.announced
    }

    /// Brings a participant into a room's media: returns its session and the tracks already
    /// published there. Events for it arrive on `events`.
    pub async fn join(
        &self,
        room: RoomId,
        participant: ParticipantId,
        identity: String,
        grants: MediaGrants,
        events: mpsc::UnboundedSender<SfuEvent>,
    ) -> Result<(MediaSession, Vec<TrackInfo>), SfuError> {
        let hold = self.hold(&room);
        let (reply, rx) = oneshot::channel();
        let session = MediaSession { worker: self.workers[hold.worker].clone(), participant: participant.clone(), _hold: hold };
        let command = Command::Join { joining: Joining { room, participant, identity, grants, events }, reply };
        let tracks = session.request(command, rx).await?;
        Ok((session, tracks))
    }

    /// Attaches a tap to a room's media (see [`tap`]): the room's tracks, packets and sender
    /// reports arrive on the returned [`RoomTap`], whose queue holds at most `capacity`
    /// packets. The room stays on its worker while tapped.
    pub async fn tap(&self, room: RoomId, capacity: usize) -> Result<RoomTap, SfuError> {
        let hold = self.hold(&room);
        let worker = self.workers[hold.worker].clone();
        let (sink, events) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let id = self.next_tap.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let command = Command::AttachTap { room: room.clone(), id, sink, queued: queued.clone(), capacity, reply };
        worker.send(command).map_err(|_| SfuError::WorkerGone)?;
        match tokio::time::timeout(WORKER_REPLY_TIMEOUT, rx).await {
            Ok(Ok(())) => Ok(RoomTap { id, room, worker, events, queued, _hold: hold }),
            _ => Err(SfuError::WorkerGone),
        }
    }

    /// Places `room` (see [`Sfu::place`]) and holds it there until the hold is dropped.
    fn hold(&self, room: &RoomId) -> RoomHold {
        RoomHold { worker: self.place(room), room: room.clone(), placement: self.placement.clone() }
    }

    /// Picks the worker owning `room`, placing a new room on the least-loaded worker.
    fn place(&self, room: &RoomId) -> usize {
        let mut placement = self.placement.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((worker, count)) = placement.rooms.get_mut(room) {
            *count += 1;
            return *worker;
        }
        let worker = (0..placement.rooms_per_worker.len()).min_by_key(|&w| placement.rooms_per_worker[w]).unwrap_or(0);
        placement.rooms_per_worker[worker] += 1;
        placement.rooms.insert(room.clone(), (worker, 1));
        worker
    }
}

/// One participant's handle on the media plane; dropping it leaves the room's media.
pub struct MediaSession {
    worker: Mailbox,
    participant: ParticipantId,
    _hold: RoomHold,
}

/// How long a command may wait for its worker before the caller gives up.
const WORKER_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl MediaSession {
    /// Applies the client's offer on its publisher connection; returns the server's answer.
    /// `sources` says what each of the offer's sections (by mid) captures.
    pub async fn publisher_offer(&self, sdp: String, sources: HashMap<String, TrackSource>) -> Result<String, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::PublisherOffer { participant: self.participant.clone(), sdp, sources, reply }, rx).await
    }

    /// Applies the client's answer to the server's latest subscriber offer.
    pub async fn subscriber_answer(&self, sdp: String) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::SubscriberAnswer { participant: self.participant.clone(), sdp, reply }, rx).await
    }

    /// Applies a viewer's offer (the participant joined without a subscriber connection):
    /// its connection receives `source`'s tracks (an identity; `None`: the room's first
    /// publisher, kept while it is in the room and publishes, then the next) and is never
    /// renegotiated. Returns the server's answer.
    pub async fn viewer_offer(&self, sdp: String, source: Option<String>) -> Result<String, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::ViewerOffer { participant: self.participant.clone(), sdp, source, reply }, rx).await
    }

    /// Adds a client ICE candidate to one of its connections.
    pub async fn remote_candidate(
        &self,
        role: PeerRole,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
    ) -> Result<(), SfuError> {
        let candidate = RTCIceCandidateInit { candidate, sdp_mid, sdp_mline_index, ..Default::default() };
        let (reply, rx) = oneshot::channel();
        self.request(Command::RemoteCandidate { participant: self.participant.clone(), role, candidate, reply }, rx).await
    }

    /// Mutes or unmutes one of the participant's published tracks: a muted track's media is
    /// dropped at the forwarder (subscribers and recorders get none); unmuting asks the
    /// participant for a keyframe so its subscribers resume at once.
    pub fn set_muted(&self, track: TrackId, muted: bool) {
        let _ = self.worker.send(Command::SetMuted { participant: self.participant.clone(), track, muted });
    }

    /// Tells how the participant shows one of the tracks it receives (adaptive stream): a
    /// paused track is not sent to it at all, and of a simulcast track it gets no layer
    /// larger than the box it shows it in needs.
    pub async fn set_view(&self, track: TrackId, view: View) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::SetView { participant: self.participant.clone(), track, view, reply }, rx).await
    }

    async fn request<T>(&self, command: Command, rx: oneshot::Receiver<Result<T, SfuError>>) -> Result<T, SfuError> {
        self.worker.send(command).map_err(|_| SfuError::WorkerGone)?;
        match tokio::time::timeout(WORKER_REPLY_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            _ => Err(SfuError::WorkerGone),
        }
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        let _ = self.worker.send(Command::Leave { participant: self.participant.clone() });
    }
}

/// A tap's end: the room's media as [`TapEvent`]s. Dropping it detaches the tap.
pub struct RoomTap {
    id: u64,
    room: RoomId,
    worker: Mailbox,
    events: mpsc::UnboundedReceiver<TapEvent>,
    queued: Arc<AtomicUsize>,
    _hold: RoomHold,
}

impl RoomTap {
    /// The next event; `None` once the media plane is gone.
    pub async fn recv(&mut self) -> Option<TapEvent> {
        let event = self.events.recv().await?;
        if matches!(event, TapEvent::Rtp { .. }) {
            self.queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        Some(event)
    }

    /// Asks the track's publisher for a keyframe (throttled like subscribers' requests).
    pub fn request_keyframe(&self, track: &TrackId) {
        let _ = self.worker.send(Command::TapKeyframeRequest { track: *track });
    }
}

impl Drop for RoomTap {
    fn drop(&mut self) {
        let _ = self.worker.send(Command::DetachTap { room: self.room.clone(), tap: self.id });
    }
}

/// Keeps a room on its worker: the room is placed afresh once no participant or tap holds it.
pub(crate) struct RoomHold {
    worker: usize,
    room: RoomId,
    placement: Arc<Mutex<Placement>>,
}

impl Drop for RoomHold {
    fn drop(&mut self) {
        let mut placement = self.placement.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((worker, count)) = placement.rooms.get_mut(&self.room) {
            *count -= 1;
            if *count == 0 {
                let worker = *worker;
                placement.rooms.remove(&self.room);
                placement.rooms_per_worker[worker] -= 1;
            }
        }
    }
}

/// Every IPv4 address of the machine's interfaces, loopback included.
fn local_ipv4_addresses() -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
        .map(|addrs| addrs.filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip()))).collect())
        .unwrap_or_default();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        ips.push(Ipv4Addr::LOCALHOST);
    }
    ips
}
