//! ICE over TCP (RFC 6544), for clients whose network blocks UDP: passive candidates on one
//! TCP port per node, their datagrams carried as RFC 4571 frames.
//!
//! [`listener`] accepts the streams and hands each to the worker its first connectivity
//! check names; the worker serves them ([`TcpStreams`]) beside its UDP socket, and its engine
//! tells their frames apart from datagrams by their [`crate::remote::Remote`].

mod frames;
pub(crate) mod listener;
mod streams;

pub(crate) use streams::{HandOver, TcpArrival, TcpFrames, TcpStreams};
