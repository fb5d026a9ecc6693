//! The keys of one election, in the order its scripts take them (see prelude.lua).

use crate::store::KeyBuilder;
use crate::store::keys::Pattern;

/// KEYS[1..2] of every election script: the leader's state, the history of changes.
pub(super) fn election_keys(keys: &KeyBuilder, name: &str) -> [String; 2] {
    [keys.key(Pattern::Election, name, "state"), keys.key(Pattern::Election, name, "history")]
}

/// Announces each change to waiting candidates and observers.
pub(super) fn channel(keys: &KeyBuilder, name: &str) -> String {
    keys.channel(Pattern::Election, name)
}
