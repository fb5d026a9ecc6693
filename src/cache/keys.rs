//! Where the cache lives: one hash per entry (the only key of every entry script), and one
//! generation stamp per tag in the tag's own slot.

use crate::store::KeyBuilder;
use crate::store::keys::Pattern;

pub(super) struct CacheKeys<'a>(pub(super) &'a KeyBuilder);

impl CacheKeys<'_> {
    pub(super) fn entry(&self, key: &str) -> String {
        self.0.key(Pattern::Cache, key, "e")
    }

    pub(super) fn tag(&self, tag: &str) -> String {
        self.0.key(Pattern::CacheTag, tag, "gen")
    }

    /// Where a key's fill is announced to its waiters.
    pub(super) fn channel(&self, key: &str) -> String {
        self.0.channel(Pattern::Cache, key)
    }
}
