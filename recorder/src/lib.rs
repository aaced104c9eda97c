//! Switchboard's recorder (see `../shared/DESIGN.md`, "Recording"), sans-IO pieces first:
//! a [`jitter`] buffer that reorders one stream and declares losses, a frame [`assembler`]
//! over the `rtc` depacketizers that never hands on a broken frame, the sender's [`clock`]
//! from RTCP sender reports for audio/video sync, the [`segmenter`] that cuts HLS segments on
//! keyframes, the HLS [`playlist`], and the [`objects`] store recordings are written through.
//! The MP4/fMP4 writer and the attachment to rooms come next.
#![forbid(unsafe_code)]

pub mod assembler;
pub mod clock;
pub mod fmp4;
pub mod jitter;
pub mod objects;
pub mod playlist;
pub mod segmenter;
