//! What the HTTP handlers share: the application state, the refusals the JSON API answers
//! with, bearer-token checks, optional JSON bodies and signed download links. The page and
//! WebSocket (`http`), the admin API (`admin`), the recordings API (`recordings_api`) and
//! WHIP and WHEP (`wish`) all build on it and on nothing of each other's.

use std::error::Error as _;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::LengthLimitError;
use recorder::objects::ObjectStore;
use serde::Deserialize;
use serde_json::json;
use sfu::SfuMetrics;
use signaling::auth::{AuthError, Grants, TokenAuthority};
use signaling::metrics::SignalingMetrics;
use signaling::session::SignalingContext;

use crate::backends::db::Database;
use crate::backends::events::kafka::EventMetrics;
use crate::backends::objects::local::{LocalObjects, UrlSigner};

/// Issues tokens over HTTP for the demo page; only in embedded mode.
pub struct DevTokens {
    pub authority: TokenAuthority,
    pub ttl_secs: u64,
}

/// Shared state of the HTTP handlers.
pub struct AppState {
    pub signaling: Arc<SignalingContext>,
    /// The database (the recordings API reads it).
    pub database: Database,
    /// The object store.
    pub objects: Arc<dyn ObjectStore>,
    /// Signs this node's download links.
    pub signer: UrlSigner,
    /// Lifetime of download links.
    pub presign_expiry: std::time::Duration,
    pub sfu_metrics: Arc<SfuMetrics>,
    pub signaling_metrics: Arc<SignalingMetrics>,
    pub event_metrics: Option<Arc<EventMetrics>>,
    /// The local object store, whose presigned URLs `/objects/...` serves.
    pub local_objects: Option<Arc<LocalObjects>>,
    pub dev_tokens: Option<DevTokens>,
    /// Frames above this close the connection; between the protocol limit and this they get
    /// a `message_too_large` error.
    pub max_frame_bytes: usize,
    /// The open signaling connections and their caps.
    pub connections: Arc<crate::connections::ConnectionCaps>,
    /// The web pages that may open a signaling connection.
    pub origins: crate::origins::OriginPolicy,
    /// Permits of the downloads served at once (`http.max_concurrent_downloads`).
    pub downloads: Arc<tokio::sync::Semaphore>,
    /// The WHIP sessions of this node.
    pub wish: crate::wish::HttpSessions,
    /// How long a WHIP session has for a track of it to arrive.
    pub whip_media_deadline: std::time::Duration,
}

/// The query of a signed download link.
#[derive(Deserialize)]
pub(crate) struct SignedQuery {
    /// Unix seconds after which the link is refused.
    pub expires: u64,
    /// Hex HMAC-SHA256 of the key and `expires`.
    pub signature: String,
}

/// A refused request: its status, a stable code and an explanation.
pub(crate) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.code, "message": self.message }))).into_response()
    }
}

/// A refusal with this status, code and explanation.
pub(crate) fn refusal(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { status, code, message: message.into() }
}

/// The largest request body the API reads: its bodies are a few short JSON fields.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024;

/// A request's optional JSON body, read only when this is called, which handlers do after
/// they checked the token: the defaults when it is empty, 413 `body_too_large` past
/// [`MAX_BODY_BYTES`], 400 `invalid_body` when it is cut short or does not parse.
pub(crate) async fn optional_json<T: serde::de::DeserializeOwned + Default>(body: Body) -> Result<T, Refusal> {
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    if bytes.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|err| refusal(StatusCode::BAD_REQUEST, "invalid_body", err.to_string()))
}

/// A request's body, up to `max` bytes: 413 `body_too_large` past them, 400 `invalid_body`
/// when it is cut short.
pub(crate) async fn read_body(body: Body, max: usize) -> Result<axum::body::Bytes, Refusal> {
    match axum::body::to_bytes(body, max).await {
        Ok(bytes) => Ok(bytes),
        Err(err) if err.source().is_some_and(|e| e.is::<LengthLimitError>()) => {
            Err(refusal(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("request bodies are at most {max} bytes")))
        }
        Err(_) => Err(refusal(StatusCode::BAD_REQUEST, "invalid_body", "the request body could not be read")),
    }
}

/// The token of the request's `Authorization: Bearer` header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(|value| value.strip_prefix("Bearer "))
}

/// The identity in the request's bearer token, if the token is for `room` and `allowed`
/// accepts its grants (`what` names them in the refusal).
pub(crate) fn bearer_of(
    state: &AppState,
    headers: &HeaderMap,
    room: &str,
    what: &str,
    allowed: impl Fn(&Grants) -> bool,
) -> Result<String, Refusal> {
    let token = bearer_token(headers)
        .ok_or_else(|| refusal(StatusCode::UNAUTHORIZED, "unauthorized", "an `Authorization: Bearer <token>` header is needed"))?;
    let claims = state.signaling.auth.verify(token).map_err(|err| match err {
        AuthError::Expired => refusal(StatusCode::UNAUTHORIZED, "token_expired", "access token expired"),
        err => refusal(StatusCode::UNAUTHORIZED, "unauthorized", err.to_string()),
    })?;
    if !allowed(&claims.grants) || claims.room != room {
        return Err(refusal(StatusCode::FORBIDDEN, "forbidden", format!("the token does not grant {what} of room `{room}`")));
    }
    Ok(claims.sub)
}
