//! Input checks shared by every service, run before any Redis call.

use crate::config::Limits;
use crate::error::Error;

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
