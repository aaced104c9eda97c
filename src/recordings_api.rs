//! The recordings HTTP API. Requests carry an access token for the room with the `record`
//! or `admin` grant (`Authorization: Bearer <token>`).
//!
//! - `POST /api/rooms/{room}/recordings` (JSON body, optional: `{"format": "mp4" | "hls" |
//!   "mp4+hls", "identity": "…"}`): starts recording the room (every publisher, or one):
//!   201 `{"recordings": [...]}` with the participants recorded at once.
//! - `POST /api/rooms/{room}/recordings/{id}/stop`: stops one participant's recording.
//! - `POST /api/rooms/{room}/recordings/stop`: stops the room's recording.
//! - `GET /api/recordings?meeting=…`: the meeting's recordings from `meeting_recordings` with
//!   status, size, duration, format and download links: `mp4_url` (presigned by the object
//!   store) and `hls_url` (the playlist, served signed by this node with each segment's URL
//!   presigned, so a player needs no credentials).
//!
//! Refusals: 401/403 token (checked before the body is read), 400 bad body, 413 body over
//! 4 KiB, 404 room not open here or no such recording, 409 already recording, 503 database
//! unavailable.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use recorder::objects::{keys, ObjectError};
use serde::Deserialize;
use serde_json::{json, Value};
use signaling::recordings::RecordingError;

use crate::api::{bearer_of, optional_json, refusal, AppState, Refusal, SignedQuery};
use crate::backends::db::RecordingRow;

/// The recordings routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/rooms/{room}/recordings", post(start))
        .route("/api/rooms/{room}/recordings/stop", post(stop_room))
        .route("/api/rooms/{room}/recordings/{id}/stop", post(stop_one))
        .route("/api/recordings", get(list))
        .route("/recordings/{meeting}/{recording}/index.m3u8", get(playlist))
}

/// The caller's identity, if its token may record in `room`.
fn recorder_of(state: &AppState, headers: &HeaderMap, room: &str) -> Result<String, Refusal> {
    bearer_of(state, headers, room, "record", |grants| grants.record || grants.admin)
}

fn refused(err: RecordingError) -> Response {
    let (status, code) = match &err {
        RecordingError::NoSuchRoom(_) => (StatusCode::NOT_FOUND, "not_found"),
        RecordingError::NotRecording(_) => (StatusCode::NOT_FOUND, "not_recording"),
        RecordingError::NoSuchParticipant(_) | RecordingError::BadFormat(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
        RecordingError::AlreadyRecording(_) => (StatusCode::CONFLICT, "already_recording"),
        RecordingError::Media(_) => (StatusCode::SERVICE_UNAVAILABLE, "media_unavailable"),
    };
    refusal(status, code, err.to_string()).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartBody {
    format: Option<String>,
    identity: Option<String>,
}

async fn start(State(state): State<Arc<AppState>>, Path(room): Path<String>, headers: HeaderMap, body: axum::body::Body) -> Response {
    if let Err(refused) = recorder_of(&state, &headers, &room) {
        return refused.into_response();
    }
    let body: StartBody = match optional_json(body).await {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    match state.signaling.recordings.start(&room, body.format.as_deref(), body.identity.as_deref()).await {
        Ok(recordings) => (StatusCode::CREATED, Json(json!({ "meeting_id": room, "recordings": recordings }))).into_response(),
        Err(err) => refused(err),
    }
}

async fn stop_room(State(state): State<Arc<AppState>>, Path(room): Path<String>, headers: HeaderMap) -> Response {
    stop(&state, &headers, &room, None)
}

async fn stop_one(State(state): State<Arc<AppState>>, Path((room, id)): Path<(String, String)>, headers: HeaderMap) -> Response {
    stop(&state, &headers, &room, Some(&id))
}

fn stop(state: &AppState, headers: &HeaderMap, room: &str, recording_id: Option<&str>) -> Response {
    if let Err(refused) = recorder_of(state, headers, room) {
        return refused.into_response();
    }
    match state.signaling.recordings.stop(room, recording_id) {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "meeting_id": room, "stopping": recording_id }))).into_response(),
        Err(err) => refused(err),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    meeting: String,
}

async fn list(State(state): State<Arc<AppState>>, Query(query): Query<ListQuery>, headers: HeaderMap) -> Response {
    if let Err(refused) = recorder_of(&state, &headers, &query.meeting) {
        return refused.into_response();
    }
    let rows = match state.database.recordings(&query.meeting).await {
        Ok(rows) => rows,
        Err(err) => return refusal(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", err.to_string()).into_response(),
    };
    let mut listed = Vec::with_capacity(rows.len());
    for row in rows {
        listed.push(describe(&state, row).await);
    }
    Json(json!({ "meeting_id": query.meeting, "recordings": listed })).into_response()
}

/// A row with its status name and download links (for a finished recording).
async fn describe(state: &AppState, row: RecordingRow) -> Value {
    let status = match row.status {
        1 => "recording",
        2 => "done",
        _ => "failed",
    };
    let has_mp4 = row.format.contains("mp4");
    let has_hls = row.format.contains("hls");
    let mut mp4_url = None;
    let mut hls_url = None;
    if row.status == 2 {
        if has_mp4 {
            let key = keys::recording(&row.meeting_id, &row.recording_id, "mp4");
            mp4_url = state.objects.presign_get(&key, state.presign_expiry).await.ok();
        }
        if has_hls {
            let key = keys::recording_part(&row.meeting_id, &row.recording_id, "index.m3u8");
            let expires = signaling::stamps::unix_ms() / 1000 + state.presign_expiry.as_secs();
            let signature = state.signer.sign(&key, expires);
            hls_url = Some(format!("{}/{key}?expires={expires}&signature={signature}", state.signaling.books.state.node().url));
        }
    }
    json!({
        "recording_id": row.recording_id,
        "meeting_id": row.meeting_id,
        "room_id": row.room_id,
        "status": status,
        "format": row.format,
        "size": row.file_size,
        "duration_secs": row.duration,
        "file_path": row.file_path,
        "started_at_ms": row.started_at_ms,
        "ended_at_ms": row.ended_at_ms,
        "mp4_url": mp4_url,
        "hls_url": hls_url,
    })
}

/// Serves a recording's HLS playlist to a signed link, its media references replaced by
/// presigned URLs of the object store (valid as long as the link).
async fn playlist(
    State(state): State<Arc<AppState>>,
    Path((meeting, recording)): Path<(String, String)>,
    Query(query): Query<SignedQuery>,
) -> Response {
    let key = keys::recording_part(&meeting, &recording, "index.m3u8");
    let now = signaling::stamps::unix_ms() / 1000;
    if !state.signer.verify(&key, query.expires, &query.signature, now) {
        return (StatusCode::FORBIDDEN, "invalid or expired signature").into_response();
    }
    let text = match state.objects.get(&key).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(ObjectError::NotFound(_)) => return (StatusCode::NOT_FOUND, "no such playlist").into_response(),
        Err(err) => return (StatusCode::SERVICE_UNAVAILABLE, err.to_string()).into_response(),
    };
    let expiry = Duration::from_secs(query.expires.saturating_sub(now).max(1));
    let mut out = String::with_capacity(text.len() * 4);
    for line in text.lines() {
        let rewritten = if let Some(uri) = line.strip_prefix("#EXT-X-MAP:URI=\"").and_then(|rest| rest.strip_suffix('"')) {
            match presigned(&state, &meeting, &recording, uri, expiry).await {
                Ok(url) => format!("#EXT-X-MAP:URI=\"{url}\""),
                Err(response) => return response,
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            match presigned(&state, &meeting, &recording, line, expiry).await {
                Ok(url) => url,
                Err(response) => return response,
            }
        } else {
            line.to_owned()
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    ([(header::CONTENT_TYPE, "application/vnd.apple.mpegurl"), (header::CACHE_CONTROL, "no-cache")], out).into_response()
}

/// The presigned URL of a file of the recording named in its playlist.
async fn presigned(state: &AppState, meeting: &str, recording: &str, name: &str, expiry: Duration) -> Result<String, Response> {
    if name.contains('/') || name.contains("..") {
        return Err((StatusCode::BAD_GATEWAY, "playlist names a file outside the recording").into_response());
    }
    let key = keys::recording_part(meeting, recording, name);
    state.objects.presign_get(&key, expiry).await.map_err(|err| (StatusCode::SERVICE_UNAVAILABLE, err.to_string()).into_response())
}
