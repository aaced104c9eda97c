//! Switchboard's media plane.
//!
//! The [`forwarder`] is the sans-IO core: the forwarding table with its per-subscriber
//! [`munger`], the per-track [`packet_cache`] for NACKs and the [`keyframe`] throttle.
#![forbid(unsafe_code)]

pub mod forwarder;
pub mod ids;
pub mod keyframe;
pub mod munger;
pub mod packet_cache;

pub use ids::{ParticipantId, RoomId, TrackId};
