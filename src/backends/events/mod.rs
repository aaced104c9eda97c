//! Event sinks (the log, or Kafka) and the Kafka tasks consumer.

pub mod kafka;
pub mod log;
pub mod tasks;
