//! Switchboard's recorder (see `../shared/DESIGN.md`, "Recording"), sans-IO pieces first:
//! a [`jitter`] buffer that reorders one stream and declares losses, a frame [`assembler`]
//! over the `rtc` depacketizers that never hands on a broken frame, the sender's [`clock`]
//! from RTCP sender reports for audio/video sync, the [`segmenter`] that cuts HLS segments on
//! keyframes, the fragmented MP4 writer ([`fmp4`]), the HLS [`playlist`], and one
//! participant's whole pipeline from RTP to segments ([`recording`]); the [`objects`] store
//! recordings are written through by the [`upload`]er (whose crash record lets [`resume`]
//! finish a recording after a crash); and the [`room`] recorder that taps a
//! room's media in the SFU and records each publishing participant.
#![forbid(unsafe_code)]

pub mod assembler;
pub mod clock;
pub mod fmp4;
pub mod fuzz;
pub mod jitter;
pub mod objects;
pub mod playlist;
pub mod recording;
pub mod resume;
pub mod room;
pub mod segmenter;
pub mod upload;
pub mod vp8;

#[cfg(test)]
mod test_support;
