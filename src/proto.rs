//! Generated protobuf and gRPC code for `baton.v1`, and conversions between proto
//! well-known types and Rust types used by every service.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("baton.v1");
}

/// Envoy's rate limit service API (the subset `ShouldRateLimit` uses), in Envoy's packages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod envoy {
    pub mod service {
        pub mod ratelimit {
            pub mod v3 {
                tonic::include_proto!("envoy.service.ratelimit.v3");
            }
        }
    }
    pub mod extensions {
        pub mod common {
            pub mod ratelimit {
                pub mod v3 {
                    tonic::include_proto!("envoy.extensions.common.ratelimit.v3");
                }
            }
        }
    }
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod r#type {
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
}

/// The encoded descriptor set of `baton.v1` (and the Envoy API), served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// Reads an optional proto Duration: `None` or zero comes back as `None` (the caller's
/// "server default"); negative or malformed values are INVALID_ARGUMENT naming `field`.
pub fn duration_from_proto(field: &str, value: Option<&prost_types::Duration>) -> Result<Option<Duration>, Error> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.seconds < 0 || value.nanos < 0 || value.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "must be a non-negative duration"));
    }
    let duration = Duration::new(value.seconds as u64, value.nanos as u32);
    Ok((!duration.is_zero()).then_some(duration))
}

pub fn duration_to_proto(value: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(value.as_secs()).unwrap_or(i64::MAX),
        nanos: value.subsec_nanos() as i32,
    }
}

/// A timestamp from Unix microseconds (as Redis's clock gives them).
pub fn timestamp_from_micros(micros: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (micros / 1_000_000) as i64, nanos: ((micros % 1_000_000) * 1000) as i32 }
}

/// The current wall-clock time in Unix microseconds; only for values that no replica
/// compares (logs), never for lease arithmetic, which uses Redis's clock.
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_reject_negatives() {
        let proto = duration_to_proto(Duration::from_millis(1500));
        assert_eq!(duration_from_proto("ttl", Some(&proto)).unwrap(), Some(Duration::from_millis(1500)));
        assert_eq!(duration_from_proto("ttl", None).unwrap(), None);
        assert_eq!(duration_from_proto("ttl", Some(&prost_types::Duration::default())).unwrap(), None);
        let negative = prost_types::Duration { seconds: -1, nanos: 0 };
        let err = duration_from_proto("ttl", Some(&negative)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { field, .. } if field == "ttl"));
        let bad_nanos = prost_types::Duration { seconds: 0, nanos: -5 };
        assert!(duration_from_proto("ttl", Some(&bad_nanos)).is_err());
    }

    #[test]
    fn timestamps_split_micros() {
        let ts = timestamp_from_micros(1_700_000_000_123_456);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_000));
    }
}
