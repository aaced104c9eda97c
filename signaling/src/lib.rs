//! Switchboard's signaling: protocol v1 over WebSocket, access tokens, limits, presence.
#![forbid(unsafe_code)]

pub mod auth;
pub mod metrics;
pub mod protocol;
pub mod rate;
pub mod rooms;
pub mod session;
