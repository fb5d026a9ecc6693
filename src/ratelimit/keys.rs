//! Where counters live: one key per (rate-limit key, limit), the limit's algorithm, size
//! and period in the part, so changing a limit starts a fresh counter.

use super::LimitSpec;
use crate::store::KeyBuilder;
use crate::store::keys::Pattern;

/// check.lua's KEYS are these counters, one per limit, in the order of the limits.
pub(super) fn counter(keys: &KeyBuilder, key: &str, spec: &LimitSpec) -> String {
    keys.key(Pattern::RateLimit, key, &spec.key_part())
}
