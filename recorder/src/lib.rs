//! Switchboard's recorder (see `../shared/DESIGN.md`, "Recording"), sans-IO pieces first:
//! a [`jitter`] buffer that reorders one stream and declares losses, a frame [`assembler`]
//! over the `rtc` depacketizers that never hands on a broken frame, the sender's [`clock`]
//! from RTCP sender reports for audio/video sync, and the [`objects`] store recordings are
//! written through. The MP4/HLS writers and the attachment to rooms come next.
#![forbid(unsafe_code)]

pub mod assembler;
pub mod clock;
pub mod jitter;
pub mod objects;
pub mod segmenter;
