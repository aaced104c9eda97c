//! State stores: this process's memory, or Redis.

pub mod memory;
pub mod redis;
