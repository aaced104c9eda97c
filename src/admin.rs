//! The administrative HTTP API: operators act on a room with an access token that has the
//! `admin` grant for that room (`Authorization: Bearer <token>`). The actions are the ones
//! `meeting.tasks` carries, executed the same way; each is recorded in `operation_logs`.
//!
//! - `POST /api/rooms/{room}/close` (JSON body, optional: `{"reason": "…"}`)
//! - `POST /api/rooms/{room}/participants/{identity}/mute`
//! - `POST /api/rooms/{room}/participants/{identity}/remove` (JSON body, optional:
//!   `{"reason": "…"}`): the participant gets `removed` and its connection is closed with
//!   code 4003; its token still admits it (removal does not ban)
//!
//! Answers: 200 `{"sessions": n}`; 401 without a valid token; 403 without the grant (both
//! before the body is read); 400 for a body that does not parse, 413 for one over 4 KiB;
//! 404 when the room (or the participant) is not on this node.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use signaling::journal::Record;
use signaling::stamps::unix_ms;
use signaling::tasks::{Command, TaskError};

use crate::api::{bearer_of, optional_json, refusal, AppState, Refusal};

/// The admin routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/rooms/{room}/close", post(close_room))
        .route("/api/rooms/{room}/participants/{identity}/mute", post(mute_participant))
        .route("/api/rooms/{room}/participants/{identity}/remove", post(remove_participant))
}

/// The identity of an admin of `room`, from the request's bearer token.
fn admin_of(state: &AppState, headers: &HeaderMap, room: &str) -> Result<String, Refusal> {
    bearer_of(state, headers, room, "admin", |grants| grants.admin)
}

/// Runs `command` for `admin` and records it.
async fn act(
    state: &AppState,
    admin: String,
    command: Command,
    resource_type: &str,
    resource_id: String,
    details: serde_json::Value,
) -> Response {
    match command.execute(&state.signaling).await {
        Ok(sessions) => {
            tracing::info!(%admin, operation = command.kind(), %resource_id, sessions, "admin action");
            let mut details = details;
            details["sessions"] = json!(sessions);
            state.signaling.books.journal.record(Record::Operation {
                identity: Some(admin),
                operation: command.kind().to_owned(),
                resource_type: resource_type.to_owned(),
                resource_id,
                details,
                at_ms: unix_ms(),
            });
            Json(json!({ "sessions": sessions })).into_response()
        }
        Err(err @ (TaskError::NoSuchRoom(_) | TaskError::NoSuchParticipant { .. })) => {
            refusal(StatusCode::NOT_FOUND, "not_found", err.to_string()).into_response()
        }
        Err(err) => refusal(StatusCode::UNPROCESSABLE_ENTITY, "failed", err.to_string()).into_response(),
    }
}

/// The optional body of a close or a removal.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

/// The admin's identity and the optional reason of a close or a removal: the token is
/// checked before the body is read.
async fn admin_and_reason(
    state: &AppState,
    headers: &HeaderMap,
    room: &str,
    body: axum::body::Body,
) -> Result<(String, Option<String>), Refusal> {
    let admin = admin_of(state, headers, room)?;
    let body: ReasonBody = optional_json(body).await?;
    Ok((admin, body.reason))
}

async fn close_room(State(state): State<Arc<AppState>>, Path(room): Path<String>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let (admin, reason) = match admin_and_reason(&state, &headers, &room, body).await {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let details = json!({ "reason": reason });
    act(&state, admin, Command::CloseRoom { meeting_id: room.clone(), reason }, "room", room, details).await
}

async fn mute_participant(
    State(state): State<Arc<AppState>>,
    Path((room, identity)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let admin = match admin_of(&state, &headers, &room) {
        Ok(admin) => admin,
        Err(refused) => return refused.into_response(),
    };
    let resource = format!("{room}/{identity}");
    act(&state, admin, Command::MuteParticipant { meeting_id: room, identity }, "participant", resource, json!({})).await
}

async fn remove_participant(
    State(state): State<Arc<AppState>>,
    Path((room, identity)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let (admin, reason) = match admin_and_reason(&state, &headers, &room, body).await {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let resource = format!("{room}/{identity}");
    let details = json!({ "reason": reason });
    act(&state, admin, Command::RemoveParticipant { meeting_id: room, identity, reason }, "participant", resource, details).await
}
