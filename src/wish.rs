//! WHIP ingest (RFC 9725) and WHEP playback (draft-ietf-wish-whep): publishers and players
//! that speak HTTP instead of the signaling WebSocket, as OBS Studio (30 and later),
//! GStreamer's `whipclientsink` and `whepsrc`, and WHEP players do.
//!
//! - `POST /whip/{room}` with an SDP offer and a bearer token with the `publish` grant, or
//!   `POST /whep/{room}` with a `subscribe` token (and `?identity=` for whose tracks):
//!   `201 Created`, the SDP answer, `Location` of the session and its `ETag`.
//! - `PATCH` of the session with `application/trickle-ice-sdpfrag` and `If-Match` of its
//!   ETag: trickled candidates (`204`); an ICE restart is refused (`422`).
//! - `DELETE` of the session: it leaves the room (`200`).
//!
//! A session is a signaling session like any other, driven here instead of by a WebSocket:
//! it joins with `subscribe: false` and sends the offer as `publish_offer` (WHIP) or
//! `view_offer` (WHEP). A WHIP publisher is then seen, forwarded and recorded like anyone; a
//! WHEP player receives one participant's audio and video (the identity asked for, or the
//! room's first publisher, kept while it is in the room and publishes, then the next). A
//! session ends on `DELETE`, when its media connection fails, when the room is closed or an
//! operator removes it, and for WHIP when no track of it reached the server within
//! `signaling.whip_media_timeout_secs` (30 s).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::Router;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};
use signaling::auth::Grants;
use signaling::session::{run_session, CloseReason, Inbound, Transport};
use tokio::sync::{mpsc, oneshot};

use crate::api::{bearer_of, bearer_token, read_body, refusal, AppState, Refusal};
use crate::connections::{CapReached, ConnectionSlot};
use crate::tls::ClientAddr;

/// The content type of offers and answers.
const SDP: &str = "application/sdp";
/// The content type of trickled candidates and ICE restarts (RFC 8840).
const SDP_FRAGMENT: &str = "application/trickle-ice-sdpfrag";
/// How long the session takes to answer a request before the request fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Server messages queued for a session's driver.
const OUTBOX_CAPACITY: usize = 64;

/// Which of the two protocols an endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    /// WHIP: the client publishes.
    Whip,
    /// WHEP: the client plays.
    Whep,
}

impl Endpoint {
    /// The first segment of its paths.
    fn path(self) -> &'static str {
        match self {
            Self::Whip => "whip",
            Self::Whep => "whep",
        }
    }

    /// The grant a token needs, by name and as a check.
    fn grant(self) -> (&'static str, fn(&Grants) -> bool) {
        match self {
            Self::Whip => ("publish", |grants| grants.publish),
            Self::Whep => ("subscribe", |grants| grants.subscribe),
        }
    }

    /// The signaling connection its media and candidates belong to.
    fn target(self) -> &'static str {
        match self {
            Self::Whip => "publisher",
            Self::Whep => "subscriber",
        }
    }
}

/// The WHIP and WHEP routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/whip/{room}", post(create_whip).options(options).get(no_content))
        .route("/whep/{room}", post(create_whep).options(options).get(no_content))
        .route("/whip/{room}/{resource}", patch(update_whip).delete(end_whip).options(session_options).get(no_content))
        .route("/whep/{room}/{resource}", patch(update_whep).delete(end_whep).options(session_options).get(no_content))
        .layer(axum::middleware::map_response(cross_origin))
}

/// Lets web pages of any origin use WHIP and WHEP (RFC 9725 §4.2 asks for CORS): every
/// request needs a bearer token, which a page of another origin cannot obtain from this
/// server, so no ambient credential is exposed. The headers a client reads are exposed to it.
async fn cross_origin(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Location, ETag, Accept-Patch, Accept-Post, Link"));
    response
}

/// A preflight's answer: the methods of `methods`, the request headers WHIP and WHEP use.
fn preflight(methods: &'static str) -> [(header::HeaderName, &'static str); 3] {
    [
        (header::ACCESS_CONTROL_ALLOW_METHODS, methods),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, "Authorization, Content-Type, If-Match"),
        (header::ACCESS_CONTROL_MAX_AGE, "86400"),
    ]
}

/// A `GET` of the endpoint or of a session: 2xx and no content (RFC 9725 §4.1).
async fn no_content() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// This node's WHIP and WHEP sessions, by resource id.
#[derive(Default)]
pub struct HttpSessions {
    sessions: Mutex<HashMap<String, HttpSession>>,
}

/// What a session's HTTP requests need: what and where it is, and a way to its signaling
/// session.
#[derive(Clone)]
struct HttpSession {
    endpoint: Endpoint,
    room: String,
    etag: String,
    frames: mpsc::Sender<Inbound>,
}

impl HttpSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HttpSession>> {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, endpoint: Endpoint, room: &str, resource: &str) -> Option<HttpSession> {
        self.lock().get(resource).filter(|s| s.endpoint == endpoint && s.room == room).cloned()
    }
}

/// What the endpoint takes (RFC 9725 §4.2), and a CORS preflight's answer.
async fn options() -> Response {
    (StatusCode::OK, preflight("POST, OPTIONS"), [(header::HeaderName::from_static("accept-post"), SDP)]).into_response()
}

/// What a session takes, and a CORS preflight's answer.
async fn session_options() -> Response {
    (StatusCode::OK, preflight("PATCH, DELETE, OPTIONS"), [(header::HeaderName::from_static("accept-patch"), SDP_FRAGMENT)]).into_response()
}

/// Hands `message` to a session's signaling session; false once that session is over.
async fn send(frames: &mpsc::Sender<Inbound>, message: Value) -> bool {
    frames.send(Inbound::Text(message.to_string())).await.is_ok()
}

/// The signaling session an HTTP session drives: requests in, replies out.
struct Driver {
    frames: mpsc::Sender<Inbound>,
    replies: mpsc::Receiver<String>,
    next_id: u64,
}

impl Driver {
    /// Sends `message` with a fresh id and waits for the reply carrying it; answers the
    /// session's pings meanwhile and lets everything else by.
    async fn request(&mut self, mut message: Value) -> Option<Value> {
        self.next_id += 1;
        let id = self.next_id;
        message["id"] = json!(id);
        if !send(&self.frames, message).await {
            return None;
        }
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let text = tokio::time::timeout_at(deadline, self.replies.recv()).await.ok()??;
            let Ok(reply) = serde_json::from_str::<Value>(&text) else { continue };
            if reply["id"] == json!(id) {
                return Some(reply);
            }
            if reply["type"] == "ping" {
                send(&self.frames, json!({"type": "pong"})).await;
            }
        }
    }

    /// Ends the session (its participant leaves the room).
    async fn leave(&self) {
        send(&self.frames, json!({"type": "leave"})).await;
    }
}

/// The HTTP status for a protocol error the session answered with.
fn status_of(error: &Value) -> (StatusCode, &'static str) {
    match error["code"].as_str().unwrap_or_default() {
        "unauthorized" => (StatusCode::UNAUTHORIZED, "unauthorized"),
        "token_expired" => (StatusCode::UNAUTHORIZED, "token_expired"),
        "forbidden" => (StatusCode::FORBIDDEN, "forbidden"),
        "invalid_sdp" => (StatusCode::BAD_REQUEST, "invalid_sdp"),
        "too_many_tracks" => (StatusCode::UNPROCESSABLE_ENTITY, "too_many_tracks"),
        "room_full" => (StatusCode::SERVICE_UNAVAILABLE, "room_full"),
        "too_many_rooms" => (StatusCode::SERVICE_UNAVAILABLE, "too_many_rooms"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

fn refused_by_session(error: &Value) -> Refusal {
    let (status, code) = status_of(error);
    refusal(status, code, error["message"].as_str().unwrap_or("refused").to_owned())
}

fn has_content_type(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(wanted)))
}

fn wrong_content_type(wanted: &str) -> Response {
    refusal(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", format!("the body must be {wanted}")).into_response()
}

async fn create_whip(
    State(state): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    create(state, Endpoint::Whip, peer.ip(), room, Play::default(), headers, body).await
}

/// What a WHEP request's query may say.
#[derive(serde::Deserialize)]
struct PlayQuery {
    /// Whose tracks to play (by default the room's first publisher).
    identity: Option<String>,
}

/// Whose tracks a WHEP player asked for, and its query as sent (for a redirect).
#[derive(Default)]
struct Play {
    identity: Option<String>,
    query: Option<String>,
}

async fn create_whep(
    State(state): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    Path(room): Path<String>,
    Query(parsed): Query<PlayQuery>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    create(state, Endpoint::Whep, peer.ip(), room, Play { identity: parsed.identity, query }, headers, body).await
}

/// Creates a session: joins the room as the token's holder, applies the offer and answers
/// `201` with the answer and the session's `Location` and `ETag`.
async fn create(
    state: Arc<AppState>,
    endpoint: Endpoint,
    peer: IpAddr,
    room: String,
    play: Play,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (grant, allowed) = endpoint.grant();
    if let Err(refused) = bearer_of(&state, &headers, &room, grant, allowed) {
        return refused.into_response();
    }
    // bearer_of found it.
    let token = bearer_token(&headers).unwrap_or_default().to_owned();
    if !has_content_type(&headers, SDP) {
        return wrong_content_type(SDP);
    }
    let offer = match read_body(body, state.signaling.limits.max_message_bytes).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(refused) => return refused.into_response(),
    };
    let slot = match state.connections.admit(peer) {
        Ok(slot) => slot,
        Err(CapReached::Total) => {
            return refusal(StatusCode::SERVICE_UNAVAILABLE, "busy", "this node holds its most sessions").into_response()
        }
        Err(CapReached::PerAddress) => {
            return refusal(StatusCode::TOO_MANY_REQUESTS, "too_many_sessions", "too many sessions from this address").into_response()
        }
    };
    let (frames, inbound) = mpsc::channel(16);
    let (outbox, replies) = mpsc::channel(OUTBOX_CAPACITY);
    let (close, closed) = oneshot::channel::<CloseReason>();
    tokio::spawn(run_session(state.signaling.clone(), Transport { inbound, outbox, close }));
    let mut driver = Driver { frames, replies, next_id: 0 };

    let Some(joined) = driver.request(json!({"type": "join", "token": token, "subscribe": false})).await else {
        return refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the session did not answer").into_response();
    };
    match joined["type"].as_str() {
        Some("joined") => {}
        Some("redirect") => {
            // Another node hosts the room: the client posts there (RFC 9725 §4.5).
            let node = joined["url"].as_str().unwrap_or_default().trim_end_matches('/');
            let query = play.query.map(|q| format!("?{q}")).unwrap_or_default();
            let url = format!("{node}/{}/{room}{query}", endpoint.path());
            return match HeaderValue::from_str(&url) {
                Ok(location) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response(),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            };
        }
        _ => return refused_by_session(&joined).into_response(),
    }
    let participant = joined["participant"]["participant_id"].as_str().unwrap_or_default().to_owned();
    let (request, answered) = match endpoint {
        Endpoint::Whip => (json!({"type": "publish_offer", "sdp": offer}), "publish_answer"),
        Endpoint::Whep => (json!({"type": "view_offer", "sdp": offer, "identity": play.identity}), "view_answer"),
    };
    let answer = match driver.request(request).await {
        Some(reply) if reply["type"] == answered => reply["sdp"].as_str().unwrap_or_default().to_owned(),
        Some(error) => {
            driver.leave().await;
            return refused_by_session(&error).into_response();
        }
        None => {
            driver.leave().await;
            return refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the session did not answer").into_response();
        }
    };
    let resource = Alphanumeric.sample_string(&mut rand::rng(), 24);
    let etag = Alphanumeric.sample_string(&mut rand::rng(), 16);
    let session = HttpSession { endpoint, room: room.clone(), etag: etag.clone(), frames: driver.frames.clone() };
    state.wish.lock().insert(resource.clone(), session);
    tracing::info!(%room, %participant, %resource, ?endpoint, "HTTP media session started");
    let media_deadline = (endpoint == Endpoint::Whip).then_some(state.whip_media_deadline);
    tokio::spawn(watch(state.clone(), resource.clone(), participant, driver, media_deadline, closed, slot));
    let location = format!("/{}/{room}/{resource}", endpoint.path());
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(SDP)),
        (header::LOCATION, HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/"))),
        (header::ETAG, HeaderValue::from_str(&format!("\"{etag}\"")).unwrap_or(HeaderValue::from_static("\"\""))),
        (header::HeaderName::from_static("accept-patch"), HeaderValue::from_static(SDP_FRAGMENT)),
    ];
    let mut response = (StatusCode::CREATED, headers, answer).into_response();
    for link in ice_server_links(&joined["ice_servers"]) {
        response.headers_mut().append(header::LINK, link);
    }
    response
}

/// The `Link` header values (RFC 9725 §4.6) of the ICE servers a session's `joined` named:
/// one per URL, with the TURN credentials where there are some. (The configuration refuses
/// the characters that would need quoting.)
fn ice_server_links(servers: &Value) -> Vec<HeaderValue> {
    let mut links = Vec::new();
    for server in servers.as_array().into_iter().flatten() {
        let credentials = match (server["username"].as_str(), server["credential"].as_str()) {
            (Some(username), Some(credential)) => {
                format!("; username=\"{username}\"; credential=\"{credential}\"; credential-type=\"password\"")
            }
            _ => String::new(),
        };
        for url in server["urls"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if let Ok(link) = HeaderValue::from_str(&format!("<{url}>; rel=\"ice-server\"{credentials}")) {
                links.push(link);
            }
        }
    }
    links
}

/// Keeps a session going until it ends: answers its pings, ends it when its media fails or
/// (given `media_deadline`) a track of it does not arrive in time, and forgets it once it is
/// over.
async fn watch(
    state: Arc<AppState>,
    resource: String,
    participant: String,
    mut driver: Driver,
    media_deadline: Option<Duration>,
    closed: oneshot::Receiver<CloseReason>,
    slot: ConnectionSlot,
) {
    let deadline = tokio::time::sleep(media_deadline.unwrap_or_default());
    tokio::pin!(deadline);
    let mut media_arrived = media_deadline.is_none();
    loop {
        tokio::select! {
            text = driver.replies.recv() => {
                let Some(text) = text else { break };
                let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
                match message["type"].as_str() {
                    Some("ping") => {
                        send(&driver.frames, json!({"type": "pong"})).await;
                    }
                    Some("track_published") if message["track"]["participant_id"] == participant.as_str() => media_arrived = true,
                    Some("error") if message["code"] == "media_connection_failed" => driver.leave().await,
                    _ => {}
                }
            }
            () = &mut deadline, if !media_arrived => {
                tracing::info!(%resource, "WHIP session ended: no media within the deadline");
                driver.leave().await;
                media_arrived = true; // leave once
            }
        }
    }
    drop(closed);
    state.wish.lock().remove(&resource);
    drop(slot);
    tracing::info!(%resource, "HTTP media session over");
}

/// The session of a `PATCH` or `DELETE`, once the request's token has the endpoint's grant
/// in its room.
fn session_of(state: &AppState, endpoint: Endpoint, headers: &HeaderMap, room: &str, resource: &str) -> Result<HttpSession, Refusal> {
    let (grant, allowed) = endpoint.grant();
    bearer_of(state, headers, room, grant, allowed)?;
    state.wish.get(endpoint, room, resource).ok_or_else(|| refusal(StatusCode::NOT_FOUND, "not_found", "no such session"))
}

async fn update_whip(
    State(state): State<Arc<AppState>>,
    Path((room, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    update(state, Endpoint::Whip, room, resource, headers, body).await
}

async fn update_whep(
    State(state): State<Arc<AppState>>,
    Path((room, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    update(state, Endpoint::Whep, room, resource, headers, body).await
}

/// Takes trickled candidates for a session's connection.
async fn update(state: Arc<AppState>, endpoint: Endpoint, room: String, resource: String, headers: HeaderMap, body: Body) -> Response {
    let session = match session_of(&state, endpoint, &headers, &room, &resource) {
        Ok(session) => session,
        Err(refused) => return refused.into_response(),
    };
    if !has_content_type(&headers, SDP_FRAGMENT) {
        return wrong_content_type(SDP_FRAGMENT);
    }
    // Conditional requests (RFC 9725 §4.3.1): the ICE session the client means.
    match headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::trim) {
        None => return refusal(StatusCode::PRECONDITION_REQUIRED, "if_match_required", "send If-Match with the ETag").into_response(),
        Some(tag) if tag != "*" && tag.trim_matches('"') != session.etag => {
            return refusal(StatusCode::PRECONDITION_FAILED, "etag_mismatch", "If-Match names another ICE session").into_response()
        }
        Some(_) => {}
    }
    let fragment = match read_body(body, state.signaling.limits.max_message_bytes).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(refused) => return refused.into_response(),
    };
    let trickle = match parse_fragment(&fragment) {
        Ok(trickle) => trickle,
        Err(refused) => return refused.into_response(),
    };
    for (candidate, mid) in trickle {
        let message = json!({"type": "trickle", "target": endpoint.target(), "candidate": candidate, "sdp_mid": mid});
        if !send(&session.frames, message).await {
            return refusal(StatusCode::NOT_FOUND, "not_found", "the session has ended").into_response();
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The candidates of a trickle fragment with the mid of the section each belongs to; an ICE
/// restart (new credentials) is refused.
fn parse_fragment(fragment: &str) -> Result<Vec<(String, Option<String>)>, Refusal> {
    let mut mid = None;
    let mut candidates = Vec::new();
    for line in fragment.lines().map(str::trim_end) {
        if line.starts_with("a=ice-ufrag:") || line.starts_with("a=ice-pwd:") {
            let message = "ICE restarts are not supported: end the session (DELETE) and post a new offer";
            return Err(refusal(StatusCode::UNPROCESSABLE_ENTITY, "ice_restart_unsupported", message));
        }
        if let Some(value) = line.strip_prefix("a=mid:") {
            mid = Some(value.to_owned());
        } else if let Some(candidate) = line.strip_prefix("a=").filter(|l| l.starts_with("candidate:")) {
            candidates.push((candidate.to_owned(), mid.clone()));
        }
    }
    Ok(candidates)
}

async fn end_whip(State(state): State<Arc<AppState>>, Path((room, resource)): Path<(String, String)>, headers: HeaderMap) -> Response {
    end(state, Endpoint::Whip, room, resource, headers).await
}

async fn end_whep(State(state): State<Arc<AppState>>, Path((room, resource)): Path<(String, String)>, headers: HeaderMap) -> Response {
    end(state, Endpoint::Whep, room, resource, headers).await
}

/// Ends a session: its participant leaves the room.
async fn end(state: Arc<AppState>, endpoint: Endpoint, room: String, resource: String, headers: HeaderMap) -> Response {
    let session = match session_of(&state, endpoint, &headers, &room, &resource) {
        Ok(session) => session,
        Err(refused) => return refused.into_response(),
    };
    state.wish.lock().remove(&resource);
    send(&session.frames, json!({"type": "leave"})).await;
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_servers_become_one_link_per_url_with_turn_credentials() {
        let servers = json!([
            {"urls": ["stun:stun.example.net"]},
            {"urls": ["turn:turn.example.net?transport=udp", "turns:turn.example.net"], "username": "u", "credential": "p"},
        ]);
        let links: Vec<String> = ice_server_links(&servers).iter().map(|l| l.to_str().expect("ascii").to_owned()).collect();
        assert_eq!(
            links,
            [
                r#"<stun:stun.example.net>; rel="ice-server""#,
                r#"<turn:turn.example.net?transport=udp>; rel="ice-server"; username="u"; credential="p"; credential-type="password""#,
                r#"<turns:turn.example.net>; rel="ice-server"; username="u"; credential="p"; credential-type="password""#,
            ]
        );
        assert!(ice_server_links(&json!([])).is_empty());
    }

    #[test]
    fn trickle_fragments_give_their_candidates_with_their_mid_and_refuse_ice_restarts() {
        let fragment = "a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            a=candidate:1 1 UDP 2130706431 192.0.2.1 50000 typ host\r\na=end-of-candidates\r\n";
        let parsed = parse_fragment(fragment).unwrap_or_default();
        assert_eq!(parsed, [("candidate:1 1 UDP 2130706431 192.0.2.1 50000 typ host".to_owned(), Some("0".to_owned()))]);
        let restart = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef01234567\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n";
        let refused = parse_fragment(restart).map(|_| ()).unwrap_err().into_response();
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
