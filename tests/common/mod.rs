//! Test harness: a server on free ports, a signaling client over `/ws`, and WebRTC clients
//! built on the async `webrtc` crate.
#![allow(dead_code)] // each test binary uses part of the harness

pub mod services;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::{serve, Settings};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const WAIT: Duration = Duration::from_secs(15);

/// The configuration every test server starts from, with `overrides` as env-style pairs.
pub fn test_config(overrides: &[(&str, &str)]) -> sb_config::Config {
    let mut env: Vec<(String, String)> = vec![
        ("SWITCHBOARD__HTTP__LISTEN".into(), "127.0.0.1:0".into()),
        ("SWITCHBOARD__MEDIA__PORT_BASE".into(), "0".into()),
        ("SWITCHBOARD__MEDIA__TCP_PORT".into(), "0".into()),
        ("SWITCHBOARD__MEDIA__WORKERS".into(), "2".into()),
        ("SWITCHBOARD__MEDIA__ANNOUNCED_IPS".into(), "[127.0.0.1]".into()),
        // Dropped connections leave the room quickly unless a test resumes them.
        ("SWITCHBOARD__SIGNALING__RESUME_GRACE_SECS".into(), "1".into()),
    ];
    env.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    sb_config::Config::from_yaml_and_env(sb_config::DEFAULT_YAML, env).expect("test config")
}

/// A Janus 1.1.2 process (Debian's `janus`) with the side-by-side bench's configuration
/// (benches/janus) on a free WebSocket port; killed when dropped.
pub struct Janus {
    child: std::process::Child,
    _dir: services::TempDir,
    /// Its WebSocket port on 127.0.0.1.
    pub port: u16,
}

impl Janus {
    /// Starts Janus with its media candidates on `host_ip` (it offers no loopback ones) and
    /// waits until its WebSocket port accepts connections.
    pub fn start(host_ip: std::net::Ipv4Addr) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = services::TempDir::new();
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/janus");
        for entry in std::fs::read_dir(&source).expect("benches/janus") {
            let path = entry.expect("a config file").path();
            let text = std::fs::read_to_string(&path)
                .expect("a config file")
                .replace("ws_port = 8188", &format!("ws_port = {port}"))
                .replace("@HOST_IP@", &host_ip.to_string());
            std::fs::write(dir.path().join(path.file_name().expect("a file name")), text).expect("config written");
        }
        let config = dir.path().join("janus.jcfg");
        let child = std::process::Command::new("janus")
            .arg("-F")
            .arg(dir.path())
            .arg("-C")
            .arg(&config)
            .arg("--disable-colors")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("janus runs (apt-get install janus)");
        let janus = Self { child, _dir: dir, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return janus;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Janus did not open its WebSocket port {port}");
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set in the copy of a test that [`own_network`] runs inside a network namespace.
const NETNS_ENV: &str = "SWITCHBOARD_TEST_NETNS";

/// For a test that needs an address besides loopback (Janus offers no loopback candidates):
/// runs the test `name` of this binary again inside a network namespace of its own
/// (`unshare -n`, which needs root), and returns `None` once that copy passed. The copy gets
/// `Some(address)`: loopback is up, and a veth pair has 10.77.0.1 and 10.77.0.2, so nothing
/// goes to the machine's own interfaces.
pub fn own_network(name: &str) -> Option<std::net::Ipv4Addr> {
    if std::env::var_os(NETNS_ENV).is_some() {
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip").args(args).status().expect("ip (iproute2) runs");
            assert!(status.success(), "ip {args:?} failed");
        };
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "sb-test0", "type", "veth", "peer", "name", "sb-test1"]);
        ip(&["addr", "add", "10.77.0.1/24", "dev", "sb-test0"]);
        ip(&["addr", "add", "10.77.0.2/24", "dev", "sb-test1"]);
        ip(&["link", "set", "sb-test0", "up"]);
        ip(&["link", "set", "sb-test1", "up"]);
        return Some(std::net::Ipv4Addr::new(10, 77, 0, 1));
    }
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let run = std::process::Command::new("unshare")
        .arg("-n")
        .arg(test_binary)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(NETNS_ENV, "1")
        .output()
        .expect("unshare runs (util-linux; the test needs root for a network namespace)");
    // Its output is shown only when it failed, so the test's result is reported once.
    assert!(
        run.status.success(),
        "{name}, run inside a network namespace of its own, failed ({}):\n{}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    None
}

/// A running server and a token authority with its keys.
pub struct TestServer {
    pub http: SocketAddr,
    pub config: sb_config::Config,
    /// This server's node.
    pub node: signaling::state::NodeInfo,
    /// The real services it uses, when it uses them.
    pub services: Option<services::RealServices>,
    /// Its SQLite file and objects folder.
    pub dir: services::TempDir,
}

impl TestServer {
    /// A server on the embedded backends, or on real services of its own when
    /// `SWITCHBOARD_TEST_BACKENDS=real`.
    pub async fn start(overrides: &[(&str, &str)]) -> Self {
        let services = if services::real_backends_requested() { Some(services::RealServices::start().await) } else { None };
        let mut all: Vec<(String, String)> = services.as_ref().map(|s| s.overrides()).unwrap_or_default();
        all.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let server = Self::start_with(all, services).await;
        if let Some(services) = &server.services {
            services.assert_in_use(&server.node).await;
        }
        server
    }

    /// A server on the embedded backends plus `overrides`, whatever the environment asks.
    pub async fn start_with(overrides: Vec<(String, String)>, services: Option<services::RealServices>) -> Self {
        // RUST_LOG=debug shows the server's logs next to a failing test's output.
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
        let dir = services::TempDir::new();
        let mut env = vec![
            ("SWITCHBOARD__DATABASE__URL".to_owned(), format!("sqlite://{}/switchboard.db?mode=rwc", dir.path().display())),
            ("SWITCHBOARD__OBJECTS__LOCAL_DIR".to_owned(), dir.path().join("objects").display().to_string()),
            ("SWITCHBOARD__RECORDING__SPOOL_DIR".to_owned(), dir.path().join("spool").display().to_string()),
        ];
        env.extend(overrides);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let config = test_config(&pairs);
        let server = serve(Settings::from_config(&config).expect("settings")).await.expect("server starts");
        Self { http: server.http_addr, config, node: server.node, services, dir }
    }

    pub fn token(&self, room: &str, identity: &str, grants: &[&str]) -> String {
        self.token_with_ttl(room, identity, grants, 600)
    }

    pub fn token_with_ttl(&self, room: &str, identity: &str, grants: &[&str], ttl: u64) -> String {
        let authority = signaling::auth::TokenAuthority::new(self.config.auth.keys.clone(), self.config.auth.signing_key.clone());
        let grants = signaling::auth::Grants::from_names(grants.iter().copied()).expect("grants");
        authority.issue(room, identity, Some(identity), grants, ttl).expect("token")
    }

    pub async fn connect(&self) -> Signal {
        Signal::connect(self.http).await
    }

    /// A connection that joined `room` as `identity`; returns it and its participant id.
    pub async fn joined(&self, room: &str, identity: &str, grants: &[&str]) -> (Signal, String) {
        let mut signal = self.connect().await;
        let joined = signal.join(&self.token(room, identity, grants)).await;
        let id = joined["participant"]["participant_id"].as_str().expect("participant id").to_owned();
        (signal, id)
    }

    /// A plain HTTP/1.1 GET: the status code and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = http_request(self.http, "GET", path, &[], "").await;
        (response.status, response.body)
    }

    /// The value of one Prometheus metric from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing from:\n{body}"))
    }

    /// Several metrics at once, in the order asked.
    pub async fn metrics<const N: usize>(&self, names: [&str; N]) -> [f64; N] {
        let mut values = [0.0; N];
        for (value, name) in values.iter_mut().zip(names) {
            *value = self.metric(name).await;
        }
        values
    }
}

/// A TLS client configuration that trusts the one certificate `pem` (a self-signed one).
pub fn tls_client(pem: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.expect("a PEM certificate")).expect("a certificate rustls takes");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr` that verified the server's certificate for `localhost`.
pub async fn tls_connect(tls: &tokio_rustls::TlsConnector, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connects");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a server name");
    tls.connect(name, tcp).await.expect("TLS handshake with the certificate trusted")
}

/// Writes `request` and reads until the peer closes (or a few seconds pass); the bytes read,
/// as text.
pub async fn http_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// The transport under a signaling connection: WS, or WSS through [`tls_connect`].
pub trait SignalStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> SignalStream for S {}

/// A signaling connection that keeps unsolicited messages in arrival order.
pub struct Signal {
    ws: WebSocketStream<Box<dyn SignalStream>>,
    backlog: VecDeque<Value>,
    next_id: u64,
}

impl Signal {
    pub async fn connect(http: SocketAddr) -> Self {
        let tcp = TcpStream::connect(http).await.expect("connects");
        Self::upgrade(format!("ws://{http}/ws"), tcp).await
    }

    /// A signaling connection to `url` over `stream` (TCP, or TLS for `wss://`).
    pub async fn upgrade<S: SignalStream + 'static>(url: String, stream: S) -> Self {
        let (ws, _) = tokio_tungstenite::client_async(url, Box::new(stream) as Box<dyn SignalStream>).await.expect("ws connects");
        Self { ws, backlog: VecDeque::new(), next_id: 1 }
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("ws send");
    }

    /// Sends without failing the test when the server has hung up; returns whether it went.
    pub async fn try_send(&mut self, value: Value) -> bool {
        self.ws.send(Message::Text(value.to_string().into())).await.is_ok()
    }

    pub async fn send(&mut self, value: Value) {
        self.send_raw(Message::Text(value.to_string().into())).await;
    }

    /// Reads the next JSON message from the socket, or `None` once it is closed. Server pings
    /// are answered and skipped, but do not extend the deadline.
    async fn read(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next()).await.expect("message in time")?;
            match message {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(&text).expect("server sends JSON");
                    if value["type"] == "ping" {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    return Some(value);
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Sends a request with a fresh id and returns the reply carrying that id.
    pub async fn request(&mut self, mut value: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        value["id"] = json!(id);
        self.send(value).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let message = self.read(deadline).await.expect("connection open for the reply");
            if message["id"] == json!(id) {
                return message;
            }
            self.backlog.push_back(message);
        }
    }

    /// The next unsolicited message of type `kind` (earlier ones of other types stay queued).
    pub async fn expect(&mut self, kind: &str) -> Value {
        if let Some(pos) = self.backlog.iter().position(|m| m["type"] == kind) {
            return self.backlog.remove(pos).expect("position is valid");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let message = self.read(deadline).await.unwrap_or_else(|| panic!("connection closed while waiting for {kind}"));
            if message["type"] == kind {
                return message;
            }
            self.backlog.push_back(message);
        }
    }

    /// The next message, or `Err` with the close reason once the server closes.
    pub async fn next_message_or_close(&mut self) -> Result<Value, Option<String>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await.expect("message in time") {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).expect("server sends JSON")),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.reason.to_string())),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Waits for the server to close the connection; returns the close frame's reason.
    pub async fn closed(&mut self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await.expect("close in time") {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.reason.to_string()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn join(&mut self, token: &str) -> Value {
        let reply = self.request(json!({"type": "join", "token": token})).await;
        assert_eq!(reply["type"], "joined", "join refused: {reply}");
        reply
    }
}

/// Answers every subscribe offer that arrives on `signal` within `window` with `client`;
/// returns how many.
pub async fn answer_offers(signal: &mut Signal, client: &rtc_client::Client, window: Duration) -> usize {
    offers_answered(signal, client, window).await.len()
}

/// Answers every subscribe offer that arrives on `signal` within `window` with `client`;
/// returns the offers' SDP.
pub async fn offers_answered(signal: &mut Signal, client: &rtc_client::Client, window: Duration) -> Vec<String> {
    let mut offers = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(offer) = tokio::time::timeout_at(deadline, signal.expect("subscribe_offer")).await {
        let offer = offer["sdp"].as_str().expect("offer sdp").to_owned();
        let sdp = client.answer(&offer).await;
        let reply = signal.request(json!({"type": "subscribe_answer", "sdp": sdp})).await;
        assert_eq!(reply["type"], "ack", "answer refused: {reply}");
        offers.push(offer);
    }
    offers
}

/// An HTTP/1.1 response: its status, headers (names in lower case) and body.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of the header `name` (lower case), if it came.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 request with `headers` (`Content-Length` and `Connection: close` added) and
/// `body`.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.expect("request sent");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response read");
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers =
        lines.filter_map(|line| line.split_once(':')).map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    HttpResponse { status, headers, body: body.to_owned() }
}

/// An HTTP/1.1 request (JSON body, optional bearer token): the status and the JSON body
/// (`Null` when the body is not JSON).
pub async fn http_json(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>, body: &str) -> (u16, Value) {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let response = http_request(addr, method, path, &headers, body).await;
    (response.status, serde_json::from_str(&response.body).unwrap_or(Value::Null))
}

/// The status a request gets while its announced body of `announced` bytes has not been sent:
/// `None` when no answer comes within two seconds (the server waits for the body).
pub async fn status_before_body(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>, announced: usize) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {announced}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request sent");
    let mut response = Vec::new();
    let status_line = async {
        let mut buffer = [0u8; 256];
        while !response.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), status_line).await.ok()?;
    String::from_utf8_lossy(&response).split(' ').nth(1).and_then(|s| s.parse().ok())
}

/// What ffprobe reads of a file or URL: streams with their type, codec and counted frames,
/// and the container's duration.
pub fn ffprobe(url: &str) -> Value {
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,codec_name,nb_read_frames:format=duration",
            "-of",
            "json",
        ])
        .arg(url)
        .output()
        .expect("ffprobe runs (Debian package ffmpeg; scripts/test installs it)");
    assert!(output.status.success(), "ffprobe refused {url}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("ffprobe JSON")
}

/// ffmpeg's complaints when decoding all of a file or URL (empty: it decoded cleanly). The
/// decoded frames keep the file's own timestamps (`-enc_time_base -1`): by default the null
/// output rounds them to one over the frame rate ffmpeg guesses from the first frames, and a
/// browser's variable frame rate (frames 10 ms apart as its camera starts) then collides two
/// frames on one output timestamp, which ffmpeg reports as an error of its own muxer.
pub fn decode_errors(url: &str) -> String {
    let output = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i", url, "-enc_time_base", "-1", "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub mod rtc_client {
    //! WebRTC clients on the async `webrtc` crate.
    use super::*;
    use rtc::interceptor::{Interceptor, NackResponderBuilder, Packet as InterceptorPacket, Registry, Slot, StreamInfo, TaggedPacket};
    use rtc::media_stream::MediaStreamTrack;
    use rtc::peer_connection::configuration::interceptor_registry::configure_twcc_sender_only;
    use rtc::peer_connection::configuration::setting_engine::{SettingEngine, SettingEngineBuilder};
    use rtc::peer_connection::transport::RTCDtlsRole;
    use rtc::rtcp;
    use rtc::rtp;
    use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
    use rtc::sansio::Protocol;
    use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
    use webrtc::media_stream::track_local::TrackLocal;
    use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
    use webrtc::peer_connection::{
        MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCPeerConnectionState, RTCSessionDescription,
    };

    /// A packet a subscriber received: which stream (publisher) and track, codec, payload.
    #[derive(Debug, Clone)]
    pub struct Received {
        pub stream_id: String,
        pub track_id: String,
        pub mime_type: String,
        pub sequence_number: u16,
        pub media_ssrc: u32,
        pub payload: bytes::Bytes,
    }

    struct Handler {
        received: mpsc::UnboundedSender<Received>,
        remote_tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
        connected: mpsc::UnboundedSender<RTCPeerConnectionState>,
    }

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Handler {
        async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
            let _ = self.connected.send(state);
        }

        async fn on_track(&self, track: Arc<dyn TrackRemote>) {
            let _ = self.remote_tracks.send(track.clone());
            let received = self.received.clone();
            tokio::spawn(async move {
                let stream_id = track.stream_id().await.to_string();
                let track_id = track.track_id().await.to_string();
                while let Some(event) = track.poll().await {
                    if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                        let mime_type = track.codec(packet.header.ssrc).await.map(|c| c.mime_type).unwrap_or_default();
                        let _ = received.send(Received {
                            stream_id: stream_id.clone(),
                            track_id: track_id.clone(),
                            mime_type,
                            sequence_number: packet.header.sequence_number,
                            media_ssrc: packet.header.ssrc,
                            payload: packet.payload,
                        });
                    }
                }
            });
        }
    }

    /// One client-side peer connection with the channels its handler feeds.
    pub struct Client {
        pub pc: Box<dyn PeerConnection>,
        /// It has no UDP: it gathers only a TCP candidate and connects to the server's passive
        /// TCP candidates, which the `webrtc` crate connects to only when they are added as
        /// trickled candidates (see [`Client::set_remote`]).
        pub tcp_only: bool,
        pub received: mpsc::UnboundedReceiver<Received>,
        /// Remote tracks as they open, to send RTCP feedback on.
        pub remote_tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
        pub states: mpsc::UnboundedReceiver<RTCPeerConnectionState>,
    }

    pub async fn new_client() -> Client {
        client_with(SettingEngine::default(), false).await.0
    }

    /// A client whose network blocks UDP: it reaches the server over ICE-TCP or not at all.
    pub async fn new_tcp_only_client() -> Client {
        client_on(SettingEngine::default(), false, true).await.0
    }

    /// The RTCP a client connection received, every packet as its interceptors saw it.
    pub type SeenRtcp = Arc<std::sync::Mutex<Vec<Box<dyn rtcp::Packet>>>>;

    /// A client whose media carries transport-wide sequence numbers, as browsers' does, and
    /// that records the RTCP it receives: the server's feedback to a publisher.
    pub async fn new_client_seeing_feedback() -> (Client, SeenRtcp) {
        let (client, seen) = client_with(SettingEngine::default(), true).await;
        (client, seen.expect("recorded"))
    }

    /// Lets every packet through and keeps a copy of the inbound RTCP.
    struct RtcpRecorder {
        seen: SeenRtcp,
        reads: VecDeque<TaggedPacket>,
        writes: VecDeque<TaggedPacket>,
    }

    impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpRecorder {
        type Rout = TaggedPacket;
        type Wout = TaggedPacket;
        type Eout = ();
        type Error = rtc::shared::error::Error;
        type Time = std::time::Instant;

        fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
            if let InterceptorPacket::Rtcp(packets) = &msg.message.packet {
                self.seen.lock().expect("not poisoned").extend(packets.iter().cloned());
            }
            self.reads.push_back(msg);
            Ok(())
        }

        fn poll_read(&mut self) -> Option<TaggedPacket> {
            self.reads.pop_front()
        }

        fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
            self.writes.push_back(msg);
            Ok(())
        }

        fn poll_write(&mut self) -> Option<TaggedPacket> {
            self.writes.pop_front()
        }
    }

    impl Interceptor for RtcpRecorder {
        fn bind_local_stream(&mut self, _info: &StreamInfo) {}
        fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
        fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
        fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
    }

    /// A client that answers the server's offers as DTLS server (`setup:passive`), as the
    /// protocol allows and browsers do not: the server's side of the handshake is then the
    /// client's, and so are its SRTP keys.
    pub async fn new_client_answering_as_dtls_server() -> Client {
        client_with(SettingEngineBuilder::new().with_answering_dtls_role(RTCDtlsRole::Server).build(), false).await.0
    }

    async fn client_with(settings: SettingEngine, seeing_feedback: bool) -> (Client, Option<SeenRtcp>) {
        client_on(settings, seeing_feedback, false).await
    }

    async fn client_on(settings: SettingEngine, seeing_feedback: bool, tcp_only: bool) -> (Client, Option<SeenRtcp>) {
        let (received_tx, received) = mpsc::unbounded_channel();
        let (state_tx, states) = mpsc::unbounded_channel();
        let (tracks_tx, remote_tracks) = mpsc::unbounded_channel();
        let mut media = MediaEngine::default();
        media.register_default_codecs().expect("codecs");
        // Publishers answer the server's NACKs, as browsers do: a packet the loaded machine
        // drops is resent instead of costing the frames up to the next keyframe.
        let mut registry = Registry::new().with(Slot::NackResponder, NackResponderBuilder::new().build());
        let seen = seeing_feedback.then(SeenRtcp::default);
        if let Some(seen) = &seen {
            registry = configure_twcc_sender_only(registry, &mut media).expect("transport-wide sequence numbers");
            // Wire-most, so it sees the RTCP before any interceptor consumes it.
            let recorder = RtcpRecorder { seen: seen.clone(), reads: VecDeque::new(), writes: VecDeque::new() };
            registry = registry.with(Slot::Custom(1), recorder);
        }
        let builder = PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler { received: received_tx, remote_tracks: tracks_tx, connected: state_tx }));
        let builder = if tcp_only {
            builder.with_tcp_addrs(vec!["127.0.0.1:0"]).with_udp_addrs(Vec::<&str>::new())
        } else {
            builder.with_udp_addrs(vec!["127.0.0.1:0"])
        };
        let pc = builder.build().await.expect("client peer connection");
        (Client { pc: Box::new(pc), tcp_only, received, remote_tracks, states }, seen)
    }

    impl Client {
        pub async fn wait_connected(&mut self) {
            loop {
                let state = tokio::time::timeout(WAIT, self.states.recv()).await.expect("connects in time").expect("state");
                assert_ne!(state, RTCPeerConnectionState::Failed, "connection failed");
                if state == RTCPeerConnectionState::Connected {
                    return;
                }
            }
        }

        /// Applies the server's description; a TCP-only client then adds the server's passive
        /// TCP candidates as trickled ones, which makes it connect to them: once, on the first
        /// description, and one stream per address (the engine writes each candidate for two
        /// components, and webrtc-rs opens a stream for every candidate added, sending each
        /// packet on whichever of its streams to that address it finds first).
        pub async fn set_remote(&self, description: RTCSessionDescription) {
            let sdp = description.sdp.clone();
            let first = self.pc.remote_description().await.is_none();
            self.pc.set_remote_description(description).await.expect("apply the server's description");
            if !self.tcp_only || !first {
                return;
            }
            let mut dialled = std::collections::HashSet::new();
            for line in sdp.lines().filter(|l| l.starts_with("a=candidate:") && l.contains(" tcp ") && l.contains("tcptype passive")) {
                // a=candidate:<foundation> <component> <transport> <priority> <address> <port> ...
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.get(1) != Some(&"1") || !dialled.insert((fields.get(4).copied(), fields.get(5).copied())) {
                    continue;
                }
                let candidate = webrtc::peer_connection::RTCIceCandidateInit {
                    candidate: line.trim_start_matches("a=").to_owned(),
                    sdp_mid: Some("0".to_owned()),
                    sdp_mline_index: Some(0),
                    ..Default::default()
                };
                self.pc.add_ice_candidate(candidate).await.expect("the server's TCP candidate");
            }
        }

        /// Answers a server offer on this (subscriber) connection.
        pub async fn answer(&self, offer_sdp: &str) -> String {
            self.set_remote(RTCSessionDescription::offer(offer_sdp.to_owned()).expect("offer")).await;
            let answer = self.pc.create_answer(None).await.expect("answer");
            self.pc.set_local_description(answer.clone()).await.expect("apply answer");
            answer.sdp
        }
    }

    pub fn codec(mime_type: &str) -> RTCRtpCodec {
        match mime_type {
            "audio/opus" => RTCRtpCodec {
                mime_type: mime_type.into(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                rtcp_feedback: vec![],
            },
            "video/H264" => RTCRtpCodec {
                mime_type: mime_type.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f".into(),
                rtcp_feedback: vec![],
            },
            "video/VP9" | "video/AV1" => RTCRtpCodec {
                mime_type: mime_type.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: "profile-id=0".into(),
                rtcp_feedback: vec![],
            },
            _ => RTCRtpCodec {
                mime_type: mime_type.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            },
        }
    }

    /// A local track sending `mime_type`.
    pub fn local_track(stream: &str, id: &str, mime_type: &str) -> Arc<TrackLocalStaticRTP> {
        let kind = if mime_type.starts_with("audio") { RtpCodecKind::Audio } else { RtpCodecKind::Video };
        Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            stream.into(),
            id.into(),
            id.into(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(rand_ssrc(id)), ..Default::default() },
                active: true,
                codec: codec(mime_type),
                ..Default::default()
            }],
        )))
    }

    fn rand_ssrc(seed: &str) -> u32 {
        seed.bytes().fold(0x1234_5678u32, |h, b| h.rotate_left(5) ^ u32::from(b)).max(1)
    }

    /// The payload of the `index`-th packet of `track`: recognisable and never repeated.
    pub fn payload(track: &str, index: u32) -> bytes::Bytes {
        let mut bytes = format!("{track}:{index}:").into_bytes();
        bytes.resize(160 + (index as usize % 7) * 50, (index % 251) as u8);
        bytes::Bytes::from(bytes)
    }

    /// A published local track with the SSRC and payload type its packets must carry.
    #[derive(Clone)]
    pub struct Outbound {
        pub track: Arc<TrackLocalStaticRTP>,
        pub name: String,
        pub ssrc: u32,
        pub payload_type: u8,
    }

    /// Offers to receive one audio and one video track (as a WHEP player does) with the
    /// offer/answer exchange `exchange`; applies the answer.
    pub async fn play_with<F, Fut>(client: &Client, exchange: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            let init = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() };
            client.pc.add_transceiver_from_kind(kind, Some(init)).await.expect("transceiver");
        }
        let offer = client.pc.create_offer(None).await.expect("offer");
        client.pc.set_local_description(offer.clone()).await.expect("apply offer");
        let answer = RTCSessionDescription::answer(exchange(offer.sdp).await).expect("answer");
        client.set_remote(answer).await;
    }

    /// Publishes tracks over signaling and waits until the publisher connection is up.
    pub async fn publish(signal: &mut Signal, tracks: &[Arc<TrackLocalStaticRTP>]) -> (Client, Vec<Outbound>) {
        publish_on(new_client().await, signal, tracks).await
    }

    /// [`publish`] on a given client.
    pub async fn publish_on(client: Client, signal: &mut Signal, tracks: &[Arc<TrackLocalStaticRTP>]) -> (Client, Vec<Outbound>) {
        publish_with(client, tracks, move |offer| async move {
            let reply = signal.request(json!({"type": "publish_offer", "sdp": offer})).await;
            assert_eq!(reply["type"], "publish_answer", "publish refused: {reply}");
            reply["sdp"].as_str().expect("sdp").to_owned()
        })
        .await
    }

    /// Publishes tracks with the offer/answer exchange `exchange` (signaling, WHIP, ...),
    /// which takes the offer and gives the server's answer; waits until the connection is up.
    pub async fn publish_with<F, Fut>(mut client: Client, tracks: &[Arc<TrackLocalStaticRTP>], exchange: F) -> (Client, Vec<Outbound>)
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let mut senders = Vec::new();
        for track in tracks {
            senders.push(client.pc.add_track(track.clone() as Arc<dyn TrackLocal>).await.expect("add track"));
        }
        let offer = client.pc.create_offer(None).await.expect("offer");
        client.pc.set_local_description(offer.clone()).await.expect("apply offer");
        let answer = RTCSessionDescription::answer(exchange(offer.sdp).await).expect("answer");
        client.set_remote(answer).await;
        client.wait_connected().await;
        let mut outbound = Vec::new();
        for (track, sender) in tracks.iter().zip(senders) {
            let parameters = sender.get_parameters().await.expect("sender parameters");
            let local = track.track().await;
            let wanted = &local.codings()[0].codec;
            let payload_type = parameters
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| {
                    c.rtp_codec.mime_type.eq_ignore_ascii_case(&wanted.mime_type) && c.rtp_codec.sdp_fmtp_line == wanted.sdp_fmtp_line
                })
                .or_else(|| parameters.rtp_parameters.codecs.iter().find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&wanted.mime_type)))
                .unwrap_or_else(|| {
                    panic!(
                        "{} not negotiated: {:?}",
                        wanted.mime_type,
                        parameters
                            .rtp_parameters
                            .codecs
                            .iter()
                            .map(|c| (&c.rtp_codec.mime_type, &c.rtp_codec.sdp_fmtp_line))
                            .collect::<Vec<_>>()
                    )
                })
                .payload_type;
            let ssrc = local.ssrcs().next().expect("track has an ssrc");
            outbound.push(Outbound { track: track.clone(), name: local.track_id().to_string(), ssrc, payload_type });
        }
        (client, outbound)
    }

    /// Sends `count` packets on a published track, paced, with the payloads of [`payload`].
    pub async fn send_packets(out: Outbound, count: u32, clock_step: u32) {
        send_packets_but(out, count, clock_step, &[]).await
    }

    /// [`send_packets`], leaving out the packets of the indexes in `missing`.
    pub async fn send_packets_but(out: Outbound, count: u32, clock_step: u32, missing: &[u32]) {
        for index in (0..count).filter(|index| !missing.contains(index)) {
            let packet = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    marker: true,
                    ssrc: out.ssrc,
                    payload_type: out.payload_type,
                    sequence_number: index as u16,
                    timestamp: index.wrapping_mul(clock_step),
                    ..Default::default()
                },
                payload: payload(&out.name, index),
            };
            out.track.write_rtp(packet).await.expect("write rtp");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
