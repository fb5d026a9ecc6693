//! The keys of one lock, in the order its scripts take them (see each script's header).

use crate::store::KeyBuilder;
use crate::store::keys::Pattern;

pub(super) struct LockKeys {
    /// KEYS[1..3] of every lock script: lease ids by expiry, lease details, the fence counter.
    common: [String; 3],
    /// Present while some Acquire waits, so a release only publishes when somebody listens.
    waiters: String,
}

impl LockKeys {
    pub(super) fn new(keys: &KeyBuilder, name: &str) -> Self {
        let key = |part| keys.key(Pattern::Lock, name, part);
        Self { common: [key("holders"), key("leases"), key("fence")], waiters: key("waiters") }
    }

    pub(super) fn waiters_marker(&self) -> &str {
        &self.waiters
    }

    /// For renew, held and describe.
    pub(super) fn common(&self) -> &[String] {
        &self.common
    }

    /// For acquire and release: the common keys, then the waiters marker.
    pub(super) fn with_waiters(self) -> Vec<String> {
        let [holders, leases, fence] = self.common;
        vec![holders, leases, fence, self.waiters]
    }
}
