//! What every record is stamped with: a random id and the wall-clock time.

use rand::distr::{Alphanumeric, SampleString};

/// Now, Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A new random id with a prefix (`MS_`, `EV_`, ...).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", Alphanumeric.sample_string(&mut rand::rng(), 16))
}
