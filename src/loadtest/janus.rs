//! The load client's second signaling dialect: the Janus VideoRoom plugin over Janus's
//! WebSocket API (subprotocol `janus-protocol`), so the same scenarios run against Janus.
//!
//! Each client opens a session and a "publisher" handle that creates the room (a room that
//! already exists is fine) and joins it; a client that publishes joins with its offer
//! (`joinandconfigure`), one that only listens joins without media, which is how Janus
//! tells it about publishers. A client that receives attaches one subscriber handle and
//! subscribes to every publisher's feed on it (one connection for all, as on Switchboard):
//! the first feeds with `join`, later ones with `subscribe`, one negotiation at a time;
//! every offer Janus makes on it is answered with `start`.

use rtc::peer_connection::transport::RTCDtlsRole;
use serde_json::{json, Value};

use super::client::{ClientError, Dialect, Peers};

/// Janus's error code for "room already exists".
const ROOM_EXISTS: i64 = 427;

/// One client's conversation with Janus.
pub struct JanusDialect {
    room: u64,
    display: String,
    max_publishers: usize,
    session: Option<u64>,
    publisher: Option<u64>,
    subscriber: Option<u64>,
    attaching_subscriber: bool,
    /// The subscriber handle joined the room (its first offer came).
    subscribed: bool,
    /// A subscription request or offer is in flight on the subscriber handle.
    negotiating: bool,
    /// Publishers' feeds not subscribed to yet.
    pending: Vec<u64>,
    transactions: u64,
}

impl JanusDialect {
    /// A client of room `room` (created with room for `max_publishers`) shown as `display`.
    pub fn new(room: u64, display: String, max_publishers: usize) -> Self {
        Self {
            room,
            display,
            max_publishers,
            session: None,
            publisher: None,
            subscriber: None,
            attaching_subscriber: false,
            subscribed: false,
            negotiating: false,
            pending: Vec::new(),
            transactions: 0,
        }
    }

    /// A Janus request with a fresh transaction id that starts with `purpose`.
    fn request(&mut self, purpose: &str, mut message: Value) -> Value {
        self.transactions += 1;
        message["transaction"] = json!(format!("{purpose}:{}", self.transactions));
        if let Some(session) = self.session {
            message["session_id"] = json!(session);
        }
        message
    }

    /// A message to the VideoRoom plugin on `handle`, with an SDP if given.
    fn plugin_message(&mut self, purpose: &str, handle: u64, body: Value, jsep: Option<(&str, String)>) -> Value {
        let mut message = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some((kind, sdp)) = jsep {
            message["jsep"] = json!({"type": kind, "sdp": sdp});
        }
        self.request(purpose, message)
    }

    /// Tells Janus a handle's candidates are all in its SDP.
    fn candidates_done(&mut self, handle: u64) -> Value {
        self.request("trickle", json!({"janus": "trickle", "handle_id": handle, "candidate": {"completed": true}}))
    }

    fn attach(&mut self, purpose: &str) -> Value {
        self.request(purpose, json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))
    }

    /// Joins the room on the publisher handle: with an offer when publishing.
    fn join(&mut self, handle: u64, peers: &mut Peers) -> Result<Vec<Value>, ClientError> {
        let body = |request: &str| json!({"request": request, "room": self.room, "ptype": "publisher", "display": self.display});
        Ok(match peers.publish_offer()? {
            Some(offer) => {
                let join = body("joinandconfigure");
                vec![self.plugin_message("join", handle, join, Some(("offer", offer))), self.candidates_done(handle)]
            }
            None => {
                let join = body("join");
                vec![self.plugin_message("join", handle, join, None)]
            }
        })
    }

    /// Asks for the pending feeds when nothing else is being negotiated.
    fn subscribe_pending(&mut self, peers: &Peers) -> Vec<Value> {
        if !peers.subscribes() || self.pending.is_empty() || self.negotiating {
            return Vec::new();
        }
        let Some(handle) = self.subscriber else {
            if self.attaching_subscriber {
                return Vec::new();
            }
            self.attaching_subscriber = true;
            return vec![self.attach("subscriber")];
        };
        let streams: Vec<Value> = self.pending.drain(..).map(|feed| json!({"feed": feed})).collect();
        self.negotiating = true;
        let body = if self.subscribed {
            json!({"request": "subscribe", "streams": streams})
        } else {
            json!({"request": "join", "room": self.room, "ptype": "subscriber", "streams": streams})
        };
        vec![self.plugin_message("subscribe", handle, body, None)]
    }

    /// Notes the feeds of a `publishers` list.
    fn add_publishers(&mut self, data: &Value) {
        for feed in data["publishers"].as_array().into_iter().flatten().filter_map(|p| p["id"].as_u64()) {
            if !self.pending.contains(&feed) {
                self.pending.push(feed);
            }
        }
    }

    /// A synchronous reply (`success`) to one of our requests.
    fn on_success(&mut self, purpose: &str, message: &Value, peers: &mut Peers) -> Result<Vec<Value>, ClientError> {
        let id = message["data"]["id"].as_u64();
        match (purpose, id) {
            ("create", Some(session)) => {
                self.session = Some(session);
                Ok(vec![self.attach("publisher")])
            }
            ("publisher", Some(handle)) => {
                self.publisher = Some(handle);
                let create = json!({
                    "request": "create",
                    "room": self.room,
                    "publishers": self.max_publishers,
                    "permanent": false,
                    "audiocodec": "opus",
                    "videocodec": "vp8",
                });
                Ok(vec![self.plugin_message("room", handle, create, None)])
            }
            ("room", _) => {
                let data = &message["plugindata"]["data"];
                if let Some(code) = data["error_code"].as_i64().filter(|&code| code != ROOM_EXISTS) {
                    return Err(ClientError::Signaling(format!("janus refused the room ({code}): {}", data["error"])));
                }
                let handle = self.publisher.ok_or_else(|| ClientError::Signaling("no publisher handle".into()))?;
                self.join(handle, peers)
            }
            ("subscriber", Some(handle)) => {
                self.subscriber = Some(handle);
                self.attaching_subscriber = false;
                Ok(self.subscribe_pending(peers))
            }
            _ => Ok(Vec::new()),
        }
    }

    /// An asynchronous event from the plugin on one of our handles.
    fn on_event(&mut self, message: &Value, peers: &mut Peers) -> Result<Vec<Value>, ClientError> {
        let data = &message["plugindata"]["data"];
        let jsep = &message["jsep"];
        let sdp = jsep["sdp"].as_str();
        let sender = message["sender"].as_u64();
        if sender.is_some() && sender == self.publisher {
            if let Some(code) = data["error_code"].as_i64() {
                return Err(ClientError::Signaling(format!("janus refused ({code}): {}", data["error"])));
            }
            if let (Some("answer"), Some(sdp)) = (jsep["type"].as_str(), sdp) {
                peers.accept_publish_answer(sdp)?;
            }
            self.add_publishers(data);
            if let Some(gone) = data["unpublished"].as_u64().or(data["leaving"].as_u64()) {
                self.pending.retain(|&feed| feed != gone);
            }
            return Ok(self.subscribe_pending(peers));
        }
        let Some(handle) = sender.filter(|&s| Some(s) == self.subscriber) else { return Ok(Vec::new()) };
        if data["error_code"].is_i64() {
            // A feed that left before we asked for it: carry on with the others.
            tracing::debug!(error = %data["error"], "janus refused a subscription");
            self.negotiating = false;
            return Ok(self.subscribe_pending(peers));
        }
        let (Some("offer"), Some(sdp)) = (jsep["type"].as_str(), sdp) else { return Ok(Vec::new()) };
        let Some(answer) = peers.answer_subscription(sdp)? else { return Ok(Vec::new()) };
        let mut replies = vec![self.plugin_message("start", handle, json!({"request": "start"}), Some(("answer", answer)))];
        if !self.subscribed {
            self.subscribed = true;
            replies.push(self.candidates_done(handle));
        }
        self.negotiating = false;
        replies.extend(self.subscribe_pending(peers));
        Ok(replies)
    }
}

impl Dialect for JanusDialect {
    fn subprotocol(&self) -> Option<&'static str> {
        Some("janus-protocol")
    }

    /// Janus answers the first ClientHello only once its own ICE agent has completed, which
    /// can be just after the client's: as the DTLS server the client never waits for a
    /// retransmission.
    fn answering_dtls_role(&self) -> RTCDtlsRole {
        RTCDtlsRole::Server
    }

    fn opening(&mut self) -> Vec<Value> {
        vec![self.request("create", json!({"janus": "create"}))]
    }

    fn on_message(&mut self, message: &Value, peers: &mut Peers) -> Result<Vec<Value>, ClientError> {
        let purpose = message["transaction"].as_str().and_then(|t| t.split(':').next()).unwrap_or_default();
        match message["janus"].as_str().unwrap_or_default() {
            "success" => self.on_success(purpose, message, peers),
            "event" => self.on_event(message, peers),
            "error" => Err(ClientError::Signaling(format!("janus: {}", message["error"]))),
            "timeout" => Err(ClientError::Signaling("janus timed the session out".into())),
            _ => Ok(Vec::new()),
        }
    }

    fn keepalive(&mut self) -> Vec<Value> {
        if self.session.is_none() {
            return Vec::new();
        }
        vec![self.request("keepalive", json!({"janus": "keepalive"}))]
    }

    fn closing(&mut self) -> Vec<Value> {
        if self.session.is_none() {
            return Vec::new();
        }
        vec![self.request("destroy", json!({"janus": "destroy"}))]
    }
}
