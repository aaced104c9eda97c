//! The HTTP surface: demo page and client library, `/ws` signaling, `/healthz`, `/metrics`,
//! and the development token endpoint (embedded mode only).

use std::sync::Arc;

use crate::api::{AppState, SignedQuery};
use crate::connections::CapReached;
use crate::tls::ClientAddr;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use recorder::objects::ObjectError;
use serde::Deserialize;
use signaling::auth::{AuthError, Grants};
use signaling::session::{run_session, CloseReason, Inbound, Transport};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

/// Outbound frames queued per connection before broadcasts to it are dropped.
const OUTBOX_CAPACITY: usize = 256;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { static_file("text/html; charset=utf-8", include_str!("../web/index.html")) }))
        .route("/switchboard.js", get(|| async { static_file("text/javascript; charset=utf-8", include_str!("../web/switchboard.js")) }))
        .route("/meeting.js", get(|| async { static_file("text/javascript; charset=utf-8", include_str!("../web/meeting.js")) }))
        .route("/meeting.css", get(|| async { static_file("text/css; charset=utf-8", include_str!("../web/meeting.css")) }))
        // Browsers ask for it on every page; the page has none.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/dev/token", get(dev_token))
        .route("/ws", get(websocket))
        .route("/objects/{*key}", get(object))
        .merge(crate::admin::routes())
        .merge(crate::recordings_api::routes())
        .merge(crate::wish::routes())
        .with_state(state)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    state.sfu_metrics.render(&mut out);
    state.signaling_metrics.render(&mut out);
    state.signaling.books.journal.metrics().render(&mut out);
    if let Some(events) = &state.event_metrics {
        events.render(&mut out);
    }
    let degraded = u8::from(state.signaling.books.state.degraded());
    out.push_str(&format!(
        "# HELP switchboard_state_store_unreachable 1 while the state store (Redis) does not answer.\n# TYPE switchboard_state_store_unreachable gauge\nswitchboard_state_store_unreachable {degraded}\n"
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Serves an object of the local store to a presigned URL, streamed from its file (a range
/// from where it starts): a download holds a 64 KiB buffer, however large the object. At
/// most `http.max_concurrent_downloads` are served at once; more get 503.
async fn object(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(key): axum::extract::Path<String>,
    Query(query): Query<SignedQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(objects) = state.local_objects.as_ref() else {
        return (StatusCode::NOT_FOUND, "objects are stored in S3; use its presigned URLs").into_response();
    };
    if !objects.verify(&key, query.expires, &query.signature) {
        return (StatusCode::FORBIDDEN, "invalid or expired signature").into_response();
    }
    let Ok(permit) = state.downloads.clone().try_acquire_owned() else {
        let busy = "this node serves its most downloads at once (http.max_concurrent_downloads); retry shortly";
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], busy).into_response();
    };
    let (mut file, len) = match objects.open(&key).await {
        Ok(opened) => opened,
        Err(ObjectError::NotFound(_)) => return (StatusCode::NOT_FOUND, "no such object").into_response(),
        Err(err @ ObjectError::InvalidKey(..)) => return (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
        Err(err) => return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    };
    let content_type = (header::CONTENT_TYPE, content_type_of(&key));
    let ranges = (header::ACCEPT_RANGES, "bytes");
    match headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(|v| byte_range(v, len)) {
        None => ([content_type, ranges], file_body(file, len, permit)).into_response(),
        Some(Some((start, end))) => {
            use tokio::io::AsyncSeekExt;
            if let Err(err) = file.seek(std::io::SeekFrom::Start(start)).await {
                return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response();
            }
            let content_range = [(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))];
            let body = file_body(file, end - start + 1, permit);
            (StatusCode::PARTIAL_CONTENT, [content_type, ranges], content_range, body).into_response()
        }
        Some(None) => (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{len}"))]).into_response(),
    }
}

/// Bytes read from a download's file per chunk of its body.
const DOWNLOAD_CHUNK_BYTES: u64 = 64 * 1024;

/// A body of the next `len` bytes of `file`, read a chunk at a time as the client takes
/// them; the download's permit goes with it, and is given back when the body ends or the
/// client goes away.
fn file_body(file: tokio::fs::File, len: u64, permit: OwnedSemaphorePermit) -> axum::body::Body {
    use tokio::io::AsyncReadExt;
    let chunks = futures_util::stream::unfold((file, len, permit), |(mut file, left, permit)| async move {
        if left == 0 {
            return None;
        }
        let mut chunk = vec![0; left.min(DOWNLOAD_CHUNK_BYTES) as usize];
        match file.read(&mut chunk).await {
            // The file is shorter than it was: the body ends short, which the client sees.
            Ok(0) => None,
            Ok(read) => {
                chunk.truncate(read);
                Some((Ok(bytes::Bytes::from(chunk)), (file, left - read as u64, permit)))
            }
            Err(err) => Some((Err(err), (file, 0, permit))),
        }
    });
    axum::body::Body::from_stream(chunks)
}

/// The first and last byte of a single-range `Range` header (`bytes=a-b`, `bytes=a-`,
/// `bytes=-n`) over `len` bytes; `None` when it cannot be satisfied (players seek with
/// these, and ffmpeg reads a fragmented MP4's length only from a seekable source).
fn byte_range(header: &str, len: u64) -> Option<(u64, u64)> {
    let (first, last) = header.strip_prefix("bytes=")?.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => (len.checked_sub(suffix.parse::<u64>().ok()?.min(len))?, len.checked_sub(1)?),
        (start, "") => (start.parse().ok()?, len.checked_sub(1)?),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(len.checked_sub(1)?)),
    };
    (start <= end && end < len).then_some((start, end))
}

/// The content type of an object, from its extension.
fn content_type_of(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, ext)| ext) {
        Some("mp4") => "video/mp4",
        Some("m4s") => "video/iso.segment",
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("log" | "txt") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    room: String,
    identity: String,
    name: Option<String>,
    /// Comma-separated grant names.
    grants: Option<String>,
}

async fn dev_token(State(state): State<Arc<AppState>>, Query(query): Query<TokenQuery>) -> Response {
    let Some(dev) = state.dev_tokens.as_ref() else {
        return (StatusCode::NOT_FOUND, "the development token endpoint is only enabled in embedded mode").into_response();
    };
    let grants = match query.grants.as_deref() {
        Some(names) => match Grants::from_names(names.split(',').filter(|n| !n.is_empty())) {
            Ok(grants) => grants,
            Err(err) => return (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
        },
        None => Grants::participant(),
    };
    if grants.admin {
        let refusal = "the development token endpoint does not grant admin; `switchboard token --grant admin` prints such a token";
        return (StatusCode::FORBIDDEN, refusal).into_response();
    }
    match dev.authority.issue(&query.room, &query.identity, query.name.as_deref(), grants, dev.ttl_secs) {
        Ok(token) => axum::Json(serde_json::json!({ "token": token })).into_response(),
        Err(err @ AuthError::BadName(_)) => (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

async fn websocket(
    State(state): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let header = |name| headers.get(name).and_then(|value: &HeaderValue| value.to_str().ok());
    if !state.origins.allows(header(header::ORIGIN), header(header::HOST)) {
        return (StatusCode::FORBIDDEN, "this page's origin may not open a signaling connection (http.allowed_origins)").into_response();
    }
    let slot = match state.connections.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(CapReached::Total) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "this node holds its most signaling connections (limits.max_connections)")
                .into_response()
        }
        Err(CapReached::PerAddress) => {
            let refusal = "too many signaling connections from this address (limits.max_connections_per_ip)";
            return (StatusCode::TOO_MANY_REQUESTS, refusal).into_response();
        }
    };
    upgrade
        // Signaling messages are small: an 8 KiB read buffer rather than tungstenite's
        // 128 KiB per connection (larger messages still arrive whole).
        .read_buffer_size(8 * 1024)
        .max_message_size(state.max_frame_bytes)
        .max_frame_size(state.max_frame_bytes)
        .on_upgrade(move |socket| async move {
            connection(state, socket).await;
            drop(slot);
        })
}

/// How long a connection lives on once its session is over: time for the server's Close to
/// be written and the client's to come back.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Why [`read_frames`] stopped.
enum ReadEnd {
    /// The client closed the connection, or it broke.
    ClientGone,
    /// The session let go of the connection.
    SessionGone,
}

/// Feeds the session with the client's frames until the client closes or the session no
/// longer takes them.
async fn read_frames(stream: &mut SplitStream<WebSocket>, inbound: mpsc::Sender<Inbound>) -> ReadEnd {
    while let Some(message) = stream.next().await {
        let message = match message {
            Ok(message) => message,
            Err(err) => {
                tracing::debug!(%err, "signaling connection ended by a transport error");
                return ReadEnd::ClientGone;
            }
        };
        let frame = match message {
            Message::Text(text) => Inbound::Text(text.to_string()),
            Message::Binary(_) => Inbound::Binary,
            Message::Close(_) => return ReadEnd::ClientGone,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if inbound.send(frame).await.is_err() {
            return ReadEnd::SessionGone;
        }
    }
    ReadEnd::ClientGone
}

/// Reads and drops what the client still sends until its Close. Leaving its frames unread
/// would make the kernel answer the socket's close with a reset, and a client that is still
/// sending (a flood that was just cut off) would then lose the server's Close unread.
async fn discard_until_close(stream: &mut SplitStream<WebSocket>) {
    while let Some(Ok(message)) = stream.next().await {
        if matches!(message, Message::Close(_)) {
            return;
        }
    }
}

/// Pumps frames between the WebSocket and the session that owns the connection (the one it
/// starts, or the one it resumes).
async fn connection(state: Arc<AppState>, socket: WebSocket) {
    use std::sync::atomic::Ordering;
    state.signaling_metrics.connections.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let (inbound_tx, inbound) = mpsc::channel(64);
    let (outbox, mut outbox_rx) = mpsc::channel::<String>(OUTBOX_CAPACITY);
    let (close, close_rx) = oneshot::channel::<CloseReason>();
    let (closing_tx, mut closing_rx) = oneshot::channel::<()>();
    tokio::spawn(run_session(state.signaling.clone(), Transport { inbound, outbox, close }));
    // Everything the session queued is written, then the close it asked for, if any. The
    // outbox closes when the session lets go of the connection.
    let mut writer = tokio::spawn(async move {
        while let Some(text) = outbox_rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
        if let Ok(reason) = close_rx.await {
            let _ = sink.send(Message::Close(Some(CloseFrame { code: reason.code, reason: reason.reason.into() }))).await;
            let _ = closing_tx.send(());
        }
    });
    // Once the session is over, the connection lingers while its Close goes out and the
    // client's comes back, reading what the client still sends.
    let linger = tokio::select! {
        end = read_frames(&mut stream, inbound_tx) => matches!(end, ReadEnd::SessionGone),
        // The server's Close went out while the client was quiet.
        sent = &mut closing_rx => sent.is_ok(),
    };
    if linger {
        let _ = tokio::time::timeout(CLOSE_GRACE, discard_until_close(&mut stream)).await;
    }
    // The writer ends with the session; a client that stops reading does not keep it.
    if tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_err() {
        writer.abort();
    }
    state.signaling_metrics.connections.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn byte_ranges_are_read_like_http_says() {
        assert_eq!(byte_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(byte_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(byte_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(byte_range("bytes=990-2000", 1000), Some((990, 999)));
        assert_eq!(byte_range("bytes=1000-", 1000), None);
        assert_eq!(byte_range("bytes=5-1", 1000), None);
        assert_eq!(byte_range("items=0-1", 1000), None);
        assert_eq!(byte_range("bytes=0-1", 0), None);
    }
}
