//! One simulated participant: its signaling over a WebSocket (Switchboard's `/ws`, or
//! another server's through a [`Dialect`]) and its two WebRTC connections on the sans-IO
//! `rtc` engine (its own ICE, DTLS and SRTP, each on its own UDP socket), publishing
//! synthetic media and receiving the room's.
//!
//! Every packet a publisher sends carries its send time (microseconds since the test's
//! epoch) in its last 8 payload bytes; the SFU forwards payloads untouched, so subscribers
//! measure the forwarding delay from it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rtc::interceptor::{ReceiverReportBuilder, Registry, Slot, TwccReceiverBuilder};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp;
use rtc::rtp::codec::vp8::Vp8Payloader;
use rtc::rtp::packetizer::Payloader;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
    TYPE_RTCP_FB_TRANSPORT_CC,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::sdp::extmap::{AUDIO_LEVEL_URI, TRANSPORT_CC_URI};
use rtc::shared::tcp_framing::{frame_packet, TcpFrameDecoder};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::{json, Value};
use sfu::peer::HostCandidate;
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::report::Counters;
use super::{Media, Transport};

/// Why a client stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The signaling connection failed or the server refused a request.
    #[error("signaling: {0}")]
    Signaling(String),
    /// The WebRTC engine failed.
    #[error("webrtc: {0}")]
    Engine(String),
    /// A socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

fn engine(err: impl std::fmt::Display) -> ClientError {
    ClientError::Engine(err.to_string())
}

/// What one client does.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// The server's WebSocket URL.
    pub ws_url: String,
    /// The address its media sockets bind to (its ICE host candidate).
    pub ip: IpAddr,
    /// How its media reaches the server.
    pub transport: Transport,
    /// What it publishes (`None`: it only listens).
    pub publish: Option<Media>,
    /// Whether it receives the room's media.
    pub subscribe: bool,
    /// When it stops.
    pub until: Instant,
}

/// How a connection's datagrams travel.
enum Link {
    /// Its own UDP socket.
    Udp(UdpSocket),
    /// ICE-TCP: a stream to the server's passive candidate (made once the server's
    /// description names it), carrying RFC 4571 frames.
    Tcp { stream: Option<TcpStream>, frames: TcpFrameDecoder, unsent: Vec<u8> },
}

/// Framed bytes a TCP link holds back for a full socket at most; past it, frames are
/// dropped as a full UDP socket drops datagrams.
const MAX_UNSENT: usize = 1 << 20;

impl Link {
    /// Sends one datagram to `to`.
    fn send(&mut self, datagram: &[u8], to: SocketAddr) {
        match self {
            Self::Udp(socket) => drop(socket.try_send_to(datagram, to)),
            Self::Tcp { stream: Some(_), unsent, .. } => {
                let framed = frame_packet(datagram);
                if unsent.len() + framed.len() <= MAX_UNSENT {
                    unsent.extend_from_slice(&framed);
                }
                self.write_unsent();
            }
            Self::Tcp { stream: None, .. } => {}
        }
    }

    /// Writes what a TCP link holds back, as far as its socket takes it; a stream that
    /// failed is dropped with it.
    fn write_unsent(&mut self) {
        let Self::Tcp { stream: stream @ Some(_), unsent, .. } = self else { return };
        while !unsent.is_empty() {
            match stream.as_ref().map(|s| s.try_write(unsent)) {
                Some(Ok(n)) if n > 0 => drop(unsent.drain(..n)),
                Some(Err(err)) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                _ => {
                    *stream = None;
                    unsent.clear();
                    break;
                }
            }
        }
    }

    /// Connects a TCP link to the first passive TCP candidate of the server's `sdp`, afresh
    /// when its stream ended.
    fn connect(&mut self, sdp: &str) -> Result<(), ClientError> {
        let Self::Tcp { stream: stream @ None, frames, unsent } = self else { return Ok(()) };
        frames.clear();
        unsent.clear();
        let passive = sdp
            .lines()
            .filter(|l| l.starts_with("a=candidate:") && l.contains(" tcp ") && l.contains("tcptype passive"))
            .find_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                Some(SocketAddr::new(fields.get(4)?.parse().ok()?, fields.get(5)?.parse().ok()?))
            });
        let addr = passive.ok_or_else(|| ClientError::Engine("the server offers no passive TCP candidate".into()))?;
        // Inside the namespace or on loopback, connecting takes a round trip.
        let connected = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        connected.set_nodelay(true)?;
        connected.set_nonblocking(true)?;
        *stream = Some(TcpStream::from_std(connected)?);
        Ok(())
    }
}

/// One of the client's connections and its link.
struct Connection {
    pc: RTCPeerConnection,
    link: Link,
    /// Its candidate's address (an active TCP candidate's port is the placeholder 9).
    local: SocketAddr,
    connected: bool,
}

impl Connection {
    /// A connection on a socket of its own (or, over TCP, a stream once the server's
    /// description names its candidate); `receives` gives it receiver reports, which a
    /// browser's receiving connection sends and an SFU reads round-trip times from.
    async fn new(ip: IpAddr, transport: Transport, answering_role: RTCDtlsRole, receives: bool) -> Result<Self, ClientError> {
        let (link, local, candidate) = match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind((ip, 0)).await?;
                let local = socket.local_addr()?;
                (Link::Udp(socket), local, HostCandidate::Udp(local))
            }
            Transport::Tcp => {
                let link = Link::Tcp { stream: None, frames: TcpFrameDecoder::new(), unsent: Vec::new() };
                (link, SocketAddr::new(ip, 9), HostCandidate::ActiveTcp(ip))
            }
        };
        let mut media = MediaEngine::default();
        media.register_default_codecs().map_err(engine)?;
        // Audio packets carry their level, as browsers' do.
        let level = RTCRtpHeaderExtensionCapability { uri: AUDIO_LEVEL_URI.to_owned() };
        media.register_header_extension(level, RtpCodecKind::Audio, None).map_err(engine)?;
        let settings = SettingEngineBuilder::new().with_answering_dtls_role(answering_role).build();
        let mut registry = Registry::new();
        if receives {
            // A browser's receiving connection reports its reception, and which packets arrived
            // when (transport-wide feedback, which the server estimates its downlink from).
            for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
                media.register_feedback(RTCPFeedback { typ: TYPE_RTCP_FB_TRANSPORT_CC.to_owned(), parameter: String::new() }, kind);
                let extension = RTCRtpHeaderExtensionCapability { uri: TRANSPORT_CC_URI.to_owned() };
                media.register_header_extension(extension, kind, None).map_err(engine)?;
            }
            registry = registry
                .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
                .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build());
        }
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .map_err(engine)?;
        sfu::peer::add_host_candidates(&mut pc, &[candidate]).map_err(engine)?;
        Ok(Self { pc, link, local, connected: false })
    }

    /// Applies the server's description, and connects a TCP link to its candidate.
    fn set_remote(&mut self, description: RTCSessionDescription) -> Result<(), ClientError> {
        let sdp = description.sdp.clone();
        self.pc.set_remote_description(Instant::now(), description).map_err(engine)?;
        self.link.connect(&sdp)
    }

    /// Takes what the link received from `from`: a datagram, or a TCP stream's bytes (none:
    /// the stream ended).
    fn deliver(&mut self, received: &[u8], from: SocketAddr) {
        let now = Instant::now();
        let udp = TransportContext { local_addr: self.local, peer_addr: from, ecn: None, transport_protocol: TransportProtocol::UDP };
        match &mut self.link {
            Link::Udp(_) => {
                let _ = self.pc.handle_read(TaggedBytesMut { now, transport: udp, message: BytesMut::from(received) });
            }
            Link::Tcp { stream, frames, .. } => {
                if received.is_empty() {
                    *stream = None;
                    return;
                }
                frames.extend_from_slice(received);
                let transport = TransportContext { transport_protocol: TransportProtocol::TCP, ..udp };
                while let Some(frame) = frames.next_packet() {
                    let _ = self.pc.handle_read(TaggedBytesMut { now, transport, message: BytesMut::from(&frame[..]) });
                }
            }
        }
    }

    /// Runs the engine's due timers, sends what it wrote and notes its state changes.
    fn flush(&mut self) {
        let now = Instant::now();
        if self.pc.poll_timeout().is_some_and(|t| t <= now) {
            let _ = self.pc.handle_timeout(now);
        }
        loop {
            while let Some(out) = self.pc.poll_write() {
                self.link.send(&out.message, out.transport.peer_addr);
            }
            self.link.write_unsent();
            let mut ice_connected = false;
            while let Some(event) = self.pc.poll_event() {
                match event {
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                        self.connected = state == RTCPeerConnectionState::Connected
                    }
                    RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(RTCIceConnectionState::Connected) => ice_connected = true,
                    _ => {}
                }
            }
            if !ice_connected {
                break;
            }
            // The engine queues a DTLS client's first flight when ICE connects without asking
            // for a wake-up; a browser sends it at once.
            let _ = self.pc.handle_timeout(now);
        }
    }

    fn deadline(&mut self) -> Instant {
        self.pc.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_millis(100))
    }
}

/// A publisher's stream: its sender, the packets' payload type, SSRC and sequence, and
/// when its next frame is due.
struct Outbound {
    sender: RTCRtpSenderId,
    video: bool,
    payload_type: u8,
    /// The audio level extension's id, when negotiated.
    audio_level: Option<u8>,
    ssrc: u32,
    sequence: u16,
    frames: u32,
    next: Instant,
}

/// What the client has received of one stream (by SSRC): extended sequence numbers.
#[derive(Default)]
struct Inbound {
    first: Option<u64>,
    highest: u64,
    received: u64,
}

impl Inbound {
    fn on(&mut self, sequence: u16) {
        self.received += 1;
        if self.first.is_none() {
            self.first = Some(u64::from(sequence));
            self.highest = u64::from(sequence);
            return;
        }
        // Unwrap against the highest so far (forward within half the sequence space).
        let delta = sequence.wrapping_sub(self.highest as u16);
        if delta != 0 && delta < 0x8000 {
            self.highest += u64::from(delta);
        }
    }

    fn lost(&self) -> u64 {
        self.first.map_or(0, |first| (self.highest - first + 1).saturating_sub(self.received))
    }
}

/// Runs one client until `plan.until`: connects its signaling, lets `dialect` drive the
/// negotiation, sends media once the publisher is up and counts what arrives.
pub async fn run(plan: ClientPlan, mut dialect: Box<dyn Dialect>, epoch: Instant, counters: Arc<Counters>) -> Result<(), ClientError> {
    let signaling = |e: tokio_tungstenite::tungstenite::Error| ClientError::Signaling(e.to_string());
    let mut request = plan.ws_url.as_str().into_client_request().map_err(signaling)?;
    if let Some(protocol) = dialect.subprotocol() {
        let value = HeaderValue::from_static(protocol);
        request.headers_mut().insert("Sec-WebSocket-Protocol", value);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.map_err(signaling)?;
    let joined_at = Instant::now();
    send_all(&mut ws, dialect.opening()).await?;
    let mut peers = Peers::new(&plan, dialect.answering_dtls_role()).await?;
    // Remote tracks seen, and their sequences in the measurement window (for loss).
    let mut tracks: HashSet<u32> = HashSet::new();
    let mut measured: HashMap<u32, Inbound> = HashMap::new();
    let mut first_media = false;
    let mut buffers = [vec![0u8; 2048], vec![0u8; 2048]];
    let mut payloader = Vp8Payloader::default();
    let mut counted_connected = false;
    let mut next_keepalive = Instant::now() + KEEPALIVE;
    loop {
        let now = Instant::now();
        if now >= plan.until {
            break;
        }
        let mut deadline = plan.until.min(next_keepalive);
        for connection in peers.connections() {
            deadline = deadline.min(connection.deadline());
        }
        if peers.publisher.as_ref().is_some_and(|p| p.connected) {
            deadline = peers.outbound.iter().map(|o| o.next).fold(deadline, Instant::min);
        }
        let [pub_buffer, sub_buffer] = &mut buffers;
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    tracing::trace!(message = %text, "signaling from the server");
                    let replies = dialect.on_message(&value, &mut peers)?;
                    send_all(&mut ws, replies).await?;
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(signaling(err)),
                None => return Err(ClientError::Signaling("the server closed the connection".into())),
            },
            received = recv(peers.publisher.as_ref().map(|c| &c.link), pub_buffer) => {
                if let (Ok((len, from)), Some(p)) = (received, peers.publisher.as_mut()) {
                    p.deliver(&pub_buffer[..len], from);
                }
            },
            received = recv(peers.subscriber.as_ref().map(|c| &c.link), sub_buffer) => {
                if let (Ok((len, from)), Some(s)) = (received, peers.subscriber.as_mut()) {
                    s.deliver(&sub_buffer[..len], from);
                }
            },
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
        if Instant::now() >= next_keepalive {
            next_keepalive = Instant::now() + KEEPALIVE;
            send_all(&mut ws, dialect.keepalive()).await?;
        }
        // Media due now.
        if let (Some(media), Some(p)) = (&plan.publish, peers.publisher.as_mut()) {
            if p.connected {
                let now = Instant::now();
                for stream in peers.outbound.iter_mut().filter(|o| o.next <= now) {
                    send_frame(p, stream, media, epoch, &mut payloader, &counters);
                }
            }
        }
        for connection in peers.connections() {
            connection.flush();
        }
        if let Some(p) = peers.publisher.as_mut() {
            while let Some(message) = p.pc.poll_read() {
                if let RTCMessage::RtcpPacket(_, packets) = message.message {
                    count_feedback(&packets, &counters);
                }
            }
        }
        if let Some(s) = peers.subscriber.as_mut() {
            while let Some(message) = s.pc.poll_read() {
                if let RTCMessage::RtpPacket(_, packet) = message.message {
                    if !first_media {
                        first_media = true;
                        Counters::sample(&counters.joins, joined_at.elapsed());
                    }
                    on_packet(&packet, &mut tracks, &mut measured, epoch, &counters);
                }
            }
            s.flush();
        }
        let up = peers.publisher.as_ref().is_none_or(|p| p.connected) && peers.subscriber.as_ref().is_none_or(|s| s.connected);
        if up && !counted_connected {
            counted_connected = true;
            Counters::add(&counters.connected, 1);
        }
    }
    Counters::add(&counters.packets_lost, measured.values().map(Inbound::lost).sum());
    Counters::add(&counters.tracks_received, tracks.len() as u64);
    let _ = send_all(&mut ws, dialect.closing()).await;
    Ok(())
}

/// How often a dialect may send a keepalive.
const KEEPALIVE: Duration = Duration::from_secs(20);

async fn send_all(ws: &mut Ws, messages: Vec<Value>) -> Result<(), ClientError> {
    for message in messages {
        ws.send(Message::text(message.to_string())).await.map_err(|e| ClientError::Signaling(e.to_string()))?;
    }
    Ok(())
}

/// Waits for a datagram on a connection's socket, or for bytes on its TCP stream (none
/// when it ended); forever when there is neither.
async fn recv(link: Option<&Link>, buffer: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match link {
        Some(Link::Udp(socket)) => socket.recv_from(buffer).await,
        Some(Link::Tcp { stream: Some(stream), .. }) => loop {
            stream.readable().await?;
            match stream.try_read(buffer) {
                Ok(n) => return Ok((n, stream.peer_addr()?)),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        },
        _ => std::future::pending().await,
    }
}

/// Counts the feedback a publisher gets from the server: NACKs and picture-loss requests.
fn count_feedback(packets: &[Box<dyn rtc::rtcp::Packet>], counters: &Counters) {
    for packet in packets {
        let any = packet.as_any();
        if any.is::<TransportLayerNack>() {
            Counters::add(&counters.nacks, 1);
        } else if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
            Counters::add(&counters.plis, 1);
        }
    }
}

/// A signaling protocol a load client speaks: what it sends first, how it answers the
/// server's messages (driving the client's connections through [`Peers`]), its keepalives
/// and its goodbye. Sans-IO: it returns the JSON messages to send.
pub trait Dialect: Send {
    /// The WebSocket subprotocol to ask for, if any.
    fn subprotocol(&self) -> Option<&'static str> {
        None
    }
    /// The DTLS role the client takes when it answers an offer. Browsers take the client
    /// role (setup:active) and retransmit a lost first flight after 50 ms; this engine waits
    /// a second, so a server that drops a ClientHello arriving just before its own ICE
    /// check completes is better served by the server role.
    fn answering_dtls_role(&self) -> RTCDtlsRole {
        RTCDtlsRole::Client
    }
    /// The messages sent once the WebSocket is open.
    fn opening(&mut self) -> Vec<Value>;
    /// The replies to a message from the server.
    fn on_message(&mut self, message: &Value, peers: &mut Peers) -> Result<Vec<Value>, ClientError>;
    /// The messages that keep the session alive (sent every 20 s).
    fn keepalive(&mut self) -> Vec<Value> {
        Vec::new()
    }
    /// The messages sent when the client leaves.
    fn closing(&mut self) -> Vec<Value>;
}

/// The client's connections, as the signaling sees them: a publisher connection (when it
/// publishes) and a subscriber connection (when it receives), each negotiated by SDP.
pub struct Peers {
    publish: Option<Media>,
    publisher: Option<Connection>,
    subscriber: Option<Connection>,
    outbound: Vec<Outbound>,
}

impl Peers {
    async fn new(plan: &ClientPlan, answering_role: RTCDtlsRole) -> Result<Self, ClientError> {
        let (ip, transport, publish) = (plan.ip, plan.transport, plan.publish);
        let publisher = match publish {
            Some(_) => Some(Connection::new(ip, transport, answering_role, false).await?),
            None => None,
        };
        let subscriber = if plan.subscribe { Some(Connection::new(ip, transport, answering_role, true).await?) } else { None };
        Ok(Self { publish, publisher, subscriber, outbound: Vec::new() })
    }

    fn connections(&mut self) -> impl Iterator<Item = &mut Connection> {
        [self.publisher.as_mut(), self.subscriber.as_mut()].into_iter().flatten()
    }

    /// Whether the client receives the room's media.
    pub fn subscribes(&self) -> bool {
        self.subscriber.is_some()
    }

    /// The publisher connection's offer, with its tracks (video and/or audio) added;
    /// `None` when the client does not publish.
    pub fn publish_offer(&mut self) -> Result<Option<String>, ClientError> {
        let (Some(media), Some(p)) = (&self.publish, self.publisher.as_mut()) else { return Ok(None) };
        let stream = format!("load-{}", rand::random::<u32>());
        if media.video.is_some() {
            p.pc.add_track(track(&stream, "video", RtpCodecKind::Video, vp8(), rand::random())).map_err(engine)?;
        }
        if media.audio {
            p.pc.add_track(track(&stream, "audio", RtpCodecKind::Audio, opus(), rand::random())).map_err(engine)?;
        }
        let offer = p.pc.create_offer(None).map_err(engine)?;
        p.pc.set_local_description(Instant::now(), offer.clone()).map_err(engine)?;
        Ok(Some(offer.sdp))
    }

    /// Applies the server's answer to the publisher connection and readies its streams.
    pub fn accept_publish_answer(&mut self, sdp: &str) -> Result<(), ClientError> {
        let Some(p) = self.publisher.as_mut() else { return Ok(()) };
        p.set_remote(RTCSessionDescription::answer(sdp.to_owned()).map_err(engine)?)?;
        let senders: Vec<RTCRtpSenderId> = p.pc.get_senders().collect();
        for id in senders {
            let Some(mut sender) = p.pc.rtp_sender(id) else { continue };
            let parameters = sender.get_parameters();
            let Some(codec) = parameters.rtp_parameters.codecs.first() else { continue };
            let video = codec.rtp_codec.mime_type.to_ascii_lowercase().starts_with("video");
            let ssrc = parameters.encodings.first().map(|e| e.rtp_coding_parameters.ssrc.unwrap_or(0)).unwrap_or(0);
            let extensions = &parameters.rtp_parameters.header_extensions;
            let audio_level = extensions.iter().find(|e| e.uri == AUDIO_LEVEL_URI && !video).and_then(|e| u8::try_from(e.id).ok());
            self.outbound.push(Outbound {
                sender: id,
                video,
                payload_type: codec.payload_type,
                audio_level,
                ssrc,
                sequence: 0,
                frames: 0,
                next: Instant::now(),
            });
        }
        Ok(())
    }

    /// Answers the server's offer on the subscriber connection; `None` when the client
    /// does not receive.
    pub fn answer_subscription(&mut self, sdp: &str) -> Result<Option<String>, ClientError> {
        let Some(s) = self.subscriber.as_mut() else { return Ok(None) };
        s.set_remote(RTCSessionDescription::offer(sdp.to_owned()).map_err(engine)?)?;
        let answer = s.pc.create_answer(None).map_err(engine)?;
        s.pc.set_local_description(Instant::now(), answer.clone()).map_err(engine)?;
        Ok(Some(answer.sdp))
    }
}

/// Switchboard's own signaling on `/ws` (docs/protocol.md): join with a token, publish by
/// offer, answer the server's subscription offers.
pub struct SwitchboardDialect {
    /// The access token.
    pub token: String,
}

impl Dialect for SwitchboardDialect {
    fn opening(&mut self) -> Vec<Value> {
        vec![json!({"type": "join", "id": 1, "token": self.token})]
    }

    fn on_message(&mut self, value: &Value, peers: &mut Peers) -> Result<Vec<Value>, ClientError> {
        let sdp = || value["sdp"].as_str().unwrap_or_default();
        Ok(match value["type"].as_str().unwrap_or_default() {
            "joined" => peers.publish_offer()?.map(|sdp| json!({"type": "publish_offer", "id": 2, "sdp": sdp})).into_iter().collect(),
            "publish_answer" => {
                peers.accept_publish_answer(sdp())?;
                Vec::new()
            }
            "subscribe_offer" => {
                peers.answer_subscription(sdp())?.map(|sdp| json!({"type": "subscribe_answer", "sdp": sdp})).into_iter().collect()
            }
            "ping" => vec![json!({"type": "pong"})],
            "error" if value["id"].is_number() => return Err(ClientError::Signaling(value.to_string())),
            _ => Vec::new(),
        })
    }

    fn closing(&mut self) -> Vec<Value> {
        vec![json!({"type": "leave"})]
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec { mime_type: "video/VP8".into(), clock_rate: 90_000, channels: 0, sdp_fmtp_line: String::new(), rtcp_feedback: vec![] }
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    }
}

fn track(stream: &str, id: &str, kind: RtpCodecKind, codec: RTCRtpCodec, ssrc: u32) -> MediaStreamTrack {
    let encoding = RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
        active: true,
        codec,
        ..Default::default()
    };
    MediaStreamTrack::new(stream.into(), id.into(), id.into(), kind, vec![encoding])
}

/// Sends one frame of a stream: a VP8 frame of the configured size (keyframes larger) in
/// packets, or one Opus-sized packet; each packet ends with its send time.
fn send_frame(p: &mut Connection, stream: &mut Outbound, media: &Media, epoch: Instant, payloader: &mut Vp8Payloader, counters: &Counters) {
    let now = Instant::now();
    let sent_us = u64::try_from(now.duration_since(epoch).as_micros()).unwrap_or(u64::MAX);
    let (payloads, timestamp, interval) = match (&media.video, stream.video) {
        (Some(video), true) => {
            let keyframe = stream.frames.is_multiple_of(video.keyframe_every.max(1));
            let frame = video.frame(keyframe);
            let payloads = payloader.payload(1180, &frame).unwrap_or_default();
            (payloads, stream.frames.wrapping_mul(90_000 / video.fps), Duration::from_secs(1) / video.fps)
        }
        _ => (vec![Bytes::from(vec![0xfc; 80])], stream.frames.wrapping_mul(960), Duration::from_millis(20)),
    };
    let count = payloads.len();
    for (i, payload) in payloads.into_iter().enumerate() {
        let mut stamped = BytesMut::with_capacity(payload.len() + 8);
        stamped.extend_from_slice(&payload);
        stamped.put_u64(sent_us);
        let mut header = rtp::header::Header {
            version: 2,
            marker: i + 1 == count,
            payload_type: stream.payload_type,
            sequence_number: stream.sequence,
            timestamp,
            ssrc: stream.ssrc,
            ..Default::default()
        };
        if let Some(extension) = stream.audio_level {
            // Each publisher talks (-30 dBov, voice) for 3 s of every 9, the others silent.
            let talking = (stream.frames / 150).wrapping_add(stream.ssrc).is_multiple_of(3);
            let _ = header.set_extension(extension, Bytes::from_static(if talking { &[0x80 | 30] } else { &[127] }));
        }
        stream.sequence = stream.sequence.wrapping_add(1);
        let length = stamped.len() as u64;
        let Some(mut sender) = p.pc.rtp_sender(stream.sender) else { return };
        if sender.write_rtp(now, rtp::Packet { header, payload: stamped.freeze() }).is_ok() {
            Counters::add(&counters.packets_sent, 1);
            Counters::add(&counters.bytes_sent, length);
        }
    }
    stream.frames = stream.frames.wrapping_add(1);
    stream.next += interval;
    if stream.next < now {
        stream.next = now + interval;
    }
}

/// Counts a received packet and, in the measurement window, its sequence for loss and its
/// forwarding delay.
fn on_packet(packet: &rtp::Packet, tracks: &mut HashSet<u32>, measured: &mut HashMap<u32, Inbound>, epoch: Instant, counters: &Counters) {
    tracks.insert(packet.header.ssrc);
    Counters::add(&counters.packets_received, 1);
    Counters::add(&counters.bytes_received, packet.payload.len() as u64);
    if !counters.measuring() {
        return;
    }
    Counters::add(&counters.packets_measured, 1);
    measured.entry(packet.header.ssrc).or_default().on(packet.header.sequence_number);
    if let Some(stamp) = packet.payload.len().checked_sub(8).and_then(|at| packet.payload.get(at..)) {
        let sent_us = u64::from_be_bytes(stamp.try_into().unwrap_or_default());
        let now_us = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        Counters::sample(&counters.delays, Duration::from_micros(now_us.saturating_sub(sent_us)));
    }
}
