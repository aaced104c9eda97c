//! Switchboard's recorder. Today: the object store recordings are written through
//! ([`objects`]). The recorder itself (depacketizing, jitter buffer, MP4 and HLS writers,
//! see `../shared/DESIGN.md`, "Recording") lands with the recording work.
#![forbid(unsafe_code)]

pub mod assembler;
pub mod jitter;
pub mod objects;
