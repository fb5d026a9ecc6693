//! Every Redis key Baton writes is built here: `baton:<namespace>:<pattern>:{<unit>}:<part>`.
//!
//! The `{unit}` hash tag (rate-limit key, lock name, queue name, cache key, session hash)
//! keeps all keys one script touches in one Redis Cluster slot. The namespace is the
//! tenant's, so tenants never see each other's keys.
//!
//! Names come from callers and may hold any character. The unit is written with `%`, `{`
//! and `}` percent-encoded, so it holds no brace: the first `}` ends it, a name can never
//! reach into the part after it, and Redis Cluster hashes exactly the encoded unit. Names
//! without those three characters, which is nearly all of them, keep the plain layout.
//!
//! A name that starts with a hash tag of its own, `{tag}rest`, keeps Redis's meaning of it
//! (names sharing a tag share a slot, so one Check can span them in Cluster mode): it is
//! written `{<tag>}+<rest>:<part>`, the tag encoded as a unit and the rest with `:` encoded
//! as well, so the first `:` after the `+` still ends it. Either way two distinct (pattern,
//! unit, part) triples never share a key; the property test below parses every key back.

use std::borrow::Cow;
use std::sync::Arc;

/// The namespace used when no tenant is configured.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The pattern segment of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    RateLimit,
    Lock,
    Election,
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
            Self::Election => "elect",
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
    namespace: Arc<str>,
}

impl KeyBuilder {
    pub fn new(namespace: impl Into<Arc<str>>) -> Self {
        Self { namespace: namespace.into() }
    }

    /// The pub/sub channel on which scripts announce changes to `unit` (lock releases,
    /// ready jobs). Shaped like a key so one `baton:*` subscription hears every channel.
    pub fn channel(&self, pattern: Pattern, unit: &str) -> String {
        self.key(pattern, unit, "notify")
    }

    /// The namespace these keys belong to.
    /// The namespace, shared rather than copied.
    pub fn namespace_arc(&self) -> Arc<str> {
        self.namespace.clone()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A namespace-wide key, outside every pattern's units (the set of a namespace's queues).
    pub fn index(&self, name: &str) -> String {
        format!("baton:{}:{name}", self.namespace)
    }

    /// A SCAN pattern for the `part` keys of every plain unit (no hash tag of its own) of
    /// `pattern` that starts with `prefix`; None for a prefix that is itself a hash tag.
    pub fn units_starting_with(&self, pattern: Pattern, prefix: &str, part: &str) -> Option<String> {
        if prefix.starts_with('{') {
            return None;
        }
        let encoded = percent_encode(prefix, &['%', '{', '}']);
        let mut glob = String::with_capacity(encoded.len() + 8);
        for c in encoded.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                glob.push('\\');
            }
            glob.push(c);
        }
        Some(format!("baton:{}:{}:{{{glob}*}}:{part}", self.namespace, pattern.segment()))
    }

    /// The plain unit a `part` key of `pattern` belongs to: the inverse of [`Self::key`]
    /// for units without a hash tag of their own.
    pub fn unit_of(&self, pattern: Pattern, key: &str, part: &str) -> Option<String> {
        let head = format!("baton:{}:{}:{{", self.namespace, pattern.segment());
        let encoded = key.strip_prefix(&head)?.strip_suffix(&format!("}}:{part}"))?;
        (!encoded.contains('}')).then(|| percent_decode(encoded))
    }

    /// The key of `part` of `unit` under `pattern`.
    pub fn key(&self, pattern: Pattern, unit: &str, part: &str) -> String {
        let (namespace, segment) = (&self.namespace, pattern.segment());
        match own_hash_tag(unit) {
            Some((tag, rest)) => format!(
                "baton:{namespace}:{segment}:{{{}}}+{}:{part}",
                percent_encode(tag, &['%', '{', '}']),
                percent_encode(rest, &['%', '{', '}', ':'])
            ),
            None => format!("baton:{namespace}:{segment}:{{{}}}:{part}", percent_encode(unit, &['%', '{', '}'])),
        }
    }
}

/// `{tag}rest` → (tag, rest) when `unit` starts with a non-empty hash tag, as Redis reads one.
fn own_hash_tag(unit: &str) -> Option<(&str, &str)> {
    let inner = unit.strip_prefix('{')?;
    let end = inner.find('}')?;
    (end > 0).then(|| (&inner[..end], &inner[end + 1..]))
}

/// `text` with each of `special` (which includes `%`) written as `%XX`; borrowed when it
/// has none.
fn percent_encode<'a>(text: &'a str, special: &[char]) -> Cow<'a, str> {
    if !text.contains(special) {
        return Cow::Borrowed(text);
    }
    let mut encoded = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if special.contains(&c) {
            encoded.push_str(&format!("%{:02X}", c as u32));
        } else {
            encoded.push(c);
        }
    }
    Cow::Owned(encoded)
}

/// Undoes [`percent_encode`] (an undecodable escape stays as it is).
fn percent_decode(text: &str) -> String {
    let mut bytes = Vec::with_capacity(text.len());
    let raw = text.as_bytes();
    let mut index = 0;
    while index < raw.len() {
        let escaped =
            raw.get(index + 1..index + 3).and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (raw[index], escaped) {
            (b'%', Some(byte)) => {
                bytes.push(byte);
                index += 3;
            }
            (byte, _) => {
                bytes.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
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
    fn a_prefix_finds_its_units_and_they_read_back() {
        let keys = KeyBuilder::new("acme");
        let glob = keys.units_starting_with(Pattern::Lock, "or*d{", "holders").unwrap();
        assert_eq!(glob, "baton:acme:lock:{or\\*d%7B*}:holders");
        for name in ["orders/42", "a%b{c}", "x:y"] {
            let key = keys.key(Pattern::Lock, name, "holders");
            assert_eq!(keys.unit_of(Pattern::Lock, &key, "holders").as_deref(), Some(name), "{key}");
        }
        assert_eq!(keys.units_starting_with(Pattern::Lock, "{tag}", "holders"), None);
        let other_tenant = KeyBuilder::new("other").key(Pattern::Lock, "orders/42", "holders");
        assert_eq!(keys.unit_of(Pattern::Lock, &other_tenant, "holders"), None);
    }

    fn decode(text: &str) -> String {
        text.replace("%7B", "{").replace("%7D", "}").replace("%3A", ":").replace("%25", "%")
    }

    /// Splits a key back into (namespace, pattern segment, unit, part): possible only
    /// because the layout is injective, which is what the property below proves.
    fn parse(key: &str) -> (String, String, String, String) {
        let rest = key.strip_prefix("baton:").unwrap();
        let (head, tail) = rest.split_once(":{").unwrap();
        let (namespace, segment) = head.rsplit_once(':').unwrap();
        let (tag, after) = tail.split_once('}').unwrap();
        let (unit, part) = match after.strip_prefix('+') {
            Some(after) => {
                let (rest, part) = after.split_once(':').unwrap();
                (format!("{{{}}}{}", decode(tag), decode(rest)), part)
            }
            None => (decode(tag), after.strip_prefix(':').unwrap()),
        };
        (namespace.to_owned(), segment.to_owned(), unit, part.to_owned())
    }

    /// What Redis Cluster hashes: the text between the first `{` and the next `}`.
    fn cluster_tag(key: &str) -> &str {
        let tag = &key[key.find('{').unwrap() + 1..];
        &tag[..tag.find('}').unwrap()]
    }

    const PATTERNS: [Pattern; 8] = [
        Pattern::RateLimit,
        Pattern::Lock,
        Pattern::Election,
        Pattern::Queue,
        Pattern::Cache,
        Pattern::CacheTag,
        Pattern::Session,
        Pattern::SessionIndex,
    ];

    proptest::proptest! {
        #[test]
        fn distinct_triples_never_share_a_key(
            pattern in 0..PATTERNS.len(),
            unit in "[a-z{}%:+7BDd3A]{0,12}",
            part in "[a-z{}%:+]{0,12}",
        ) {
            let pattern = PATTERNS[pattern];
            let key = KeyBuilder::new("acme").key(pattern, &unit, &part);
            let (namespace, segment, parsed_unit, parsed_part) = parse(&key);
            proptest::prop_assert_eq!(namespace, "acme");
            proptest::prop_assert_eq!(segment, pattern.segment());
            proptest::prop_assert_eq!(&parsed_unit, &unit);
            proptest::prop_assert_eq!(&parsed_part, &part);
            // The slot follows the name's own hash tag when it has one, else the whole name.
            let expected = match own_hash_tag(&unit) {
                Some((tag, _)) => percent_encode(tag, &['%', '{', '}']),
                None => percent_encode(&unit, &['%', '{', '}']),
            };
            proptest::prop_assert_eq!(cluster_tag(&key), &*expected);
        }
    }

    #[test]
    fn a_brace_in_a_name_cannot_reach_another_objects_keys() {
        let keys = KeyBuilder::new("t");
        // A dedup key `x}:paused` on queue `jobs` against the `paused` flag of the queue
        // named `jobs}:dedup:x`: the review's collision.
        assert_ne!(
            keys.key(Pattern::Queue, "jobs", "dedup:x}:paused"),
            keys.key(Pattern::Queue, "jobs}:dedup:x", "paused")
        );
        assert_eq!(keys.key(Pattern::Lock, "a%7D", "p"), "baton:t:lock:{a%257D}:p");
    }

    #[test]
    fn names_sharing_their_own_hash_tag_share_a_slot() {
        let keys = KeyBuilder::new("t");
        let minute = keys.key(Pattern::RateLimit, "{user:42}:minute", "fw");
        let hour = keys.key(Pattern::RateLimit, "{user:42}:hour", "fw");
        assert_eq!(minute, "baton:t:rl:{user:42}+%3Aminute:fw");
        assert_eq!(cluster_tag(&minute), cluster_tag(&hour));
        assert_ne!(keys.key(Pattern::RateLimit, "{user:42}", "fw"), keys.key(Pattern::RateLimit, "user:42", "fw"));
    }

    #[test]
    fn tenants_never_share_keys() {
        let a = KeyBuilder::new("a").key(Pattern::RateLimit, "k", "p");
        let b = KeyBuilder::new("b").key(Pattern::RateLimit, "k", "p");
        assert_ne!(a, b);
    }
}
