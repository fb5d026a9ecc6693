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

    /// For acquire: the common keys, the request key, the waiters marker.
    pub(super) fn acquire(self, keys: &KeyBuilder, name: &str, request_id: Option<&str>) -> Vec<String> {
        let request = match request_id {
            Some(request_id) => keys.key(Pattern::Lock, name, &format!("req:{request_id}")),
            // Unused by the script, but every KEYS entry must share the lock's slot.
            None => keys.key(Pattern::Lock, name, "req"),
        };
        let [holders, leases, fence] = self.common;
        vec![holders, leases, fence, request, self.waiters]
    }

    /// For release: the common keys, then the waiters marker.
    pub(super) fn release(self) -> Vec<String> {
        let [holders, leases, fence] = self.common;
        vec![holders, leases, fence, self.waiters]
    }
}
