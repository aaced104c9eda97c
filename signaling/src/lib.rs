//! Switchboard's signaling: protocol v1 over WebSocket, access tokens, limits, presence.
#![forbid(unsafe_code)]

pub mod auth;
pub mod bookkeeping;
pub mod events;
pub mod fuzz;
pub mod journal;
pub mod metrics;
pub mod names;
pub mod protocol;
pub mod rate;
pub mod recordings;
pub mod rooms;
pub mod session;
pub mod stamps;
pub mod state;
pub mod tasks;
