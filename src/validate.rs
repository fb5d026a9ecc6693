//! Input checks shared by every service, run before any Redis call.

use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;

/// Bounds enforced on requests before any Redis call.
/// Read straight from the config file's `[limits]`; what the file omits keeps its default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Longest accepted ttl or period.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// The sliding-window log keeps one entry per admitted unit, so its `limit` is capped.
    pub max_sliding_window_limit: u64,
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Most keys in one cache batch.
    pub max_batch_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 512,
            max_value_bytes: 1024 * 1024,
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            max_sliding_window_limit: 10_000,
            redis_timeout: Duration::from_secs(1),
            max_message_bytes: 4 * 1024 * 1024,
            max_batch_keys: 1000,
        }
    }
}

/// A key or name: 1..=`max_key_bytes` bytes of UTF-8 (proto strings are already UTF-8).
pub fn key(field: &str, value: &str, limits: &Limits) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > limits.max_key_bytes {
        return Err(Error::invalid(field, format!("must be at most {} bytes", limits.max_key_bytes)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_non_empty_and_bounded() {
        let limits = Limits::default();
        assert!(key("key", "a", &limits).is_ok());
        assert!(key("key", &"a".repeat(512), &limits).is_ok());
        assert!(key("key", "", &limits).is_err());
        let err = key("limits[0].key", &"a".repeat(513), &limits).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { field, .. } if field == "limits[0].key"));
    }
}
