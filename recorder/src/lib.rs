//! Switchboard's recorder: will attach to a room like a subscriber without a network,
//! depacketize and reorder the forwarded RTP, and write MP4 and HLS through the object store
//! (see `../shared/DESIGN.md`, "Recording"). Empty until the recording work lands; it is a
//! workspace member now so the crate boundaries of the design exist from the start.
#![forbid(unsafe_code)]
