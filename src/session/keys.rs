//! Where sessions live: each session in its own slot (its id's hash), each subject's index
//! in the subject's, and the namespace's gauge set of every session with its deadline.

use crate::store::KeyBuilder;
use crate::store::keys::Pattern;

pub(super) struct SessionKeys<'a>(pub(super) &'a KeyBuilder);

impl SessionKeys<'_> {
    /// The session of an id's hash (the only key of every session script but rotate.lua,
    /// which takes the old session's, then the new one's).
    pub(super) fn session(&self, hash: &str) -> String {
        self.0.key(Pattern::Session, hash, "s")
    }

    pub(super) fn index(&self, subject: &str) -> String {
        self.0.key(Pattern::SessionIndex, subject, "i")
    }

    /// All sessions of the namespace whose absolute deadline is ahead, for the gauge.
    pub(super) fn active(&self) -> String {
        self.0.key(Pattern::SessionIndex, "*active*", "all")
    }
}
