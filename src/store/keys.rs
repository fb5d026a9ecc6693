//! Every Redis key Baton writes is built here: `baton:<namespace>:<pattern>:{<unit>}:<part>`.
//!
//! The `{unit}` hash tag (rate-limit key, lock name, queue name, cache key, session hash)
//! keeps all keys one script touches in one Redis Cluster slot. The namespace is the
//! tenant's, so tenants never see each other's keys.

/// The namespace used when no tenant is configured.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The pattern segment of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    RateLimit,
    Lock,
    Queue,
    Cache,
    /// A cache tag's generation stamp (its own slot: tags span many entries).
    CacheTag,
    /// A session, keyed by the SHA-256 of its id.
    Session,
    /// A subject's index of its sessions.
    SessionIndex,
}

impl Pattern {
    fn segment(self) -> &'static str {
        match self {
            Self::RateLimit => "rl",
            Self::Lock => "lock",
            Self::Queue => "queue",
            Self::Cache => "cache",
            Self::CacheTag => "ctag",
            Self::Session => "sess",
            Self::SessionIndex => "sessidx",
        }
    }
}

/// Builds keys for one namespace.
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    namespace: String,
}

impl KeyBuilder {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self { namespace: namespace.into() }
    }

    /// The pub/sub channel on which scripts announce changes to `unit` (lock releases,
    /// ready jobs). Shaped like a key so one `baton:*` subscription hears every channel.
    pub fn channel(&self, pattern: Pattern, unit: &str) -> String {
        self.key(pattern, unit, "notify")
    }

    /// The namespace these keys belong to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The key of `part` of `unit` under `pattern`.
    pub fn key(&self, pattern: Pattern, unit: &str, part: &str) -> String {
        format!("baton:{}:{}:{{{unit}}}:{part}", self.namespace, pattern.segment())
    }
}

impl Default for KeyBuilder {
    fn default() -> Self {
        Self::new(DEFAULT_NAMESPACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_namespace_pattern_and_hash_tag() {
        let keys = KeyBuilder::new("acme");
        assert_eq!(keys.key(Pattern::RateLimit, "user:1", "fw:10:1000"), "baton:acme:rl:{user:1}:fw:10:1000");
    }

    #[test]
    fn tenants_never_share_keys() {
        let a = KeyBuilder::new("a").key(Pattern::RateLimit, "k", "p");
        let b = KeyBuilder::new("b").key(Pattern::RateLimit, "k", "p");
        assert_ne!(a, b);
    }
}
