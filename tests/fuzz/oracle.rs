//! The oracle: what API.md says must be INVALID_ARGUMENT. Only rules the contract states
//! outright; anything it leaves to the server is not judged here.

use super::*;

/// Why the request must be rejected, if it must.
pub type Verdict = Option<String>;

pub fn first(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    verdicts.into_iter().flatten().next()
}

pub fn key(field: &str, key: &str) -> Verdict {
    (key.is_empty() || key.len() > MAX_KEY_BYTES).then(|| format!("{field} is {} bytes", key.len()))
}

fn broken(d: &PDuration) -> bool {
    d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000
}

/// A negative or malformed duration, wherever it appears.
pub fn duration(field: &str, d: Option<&PDuration>) -> Verdict {
    d.filter(|d| broken(d)).map(|d| format!("{field} is {d:?}"))
}

fn as_std(d: Option<&PDuration>) -> Option<Duration> {
    d.filter(|d| !broken(d)).map(|d| Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A duration that must lie in `range` when set (zero counts as unset unless `required`).
pub fn bounded(
    field: &str,
    d: Option<&PDuration>,
    range: std::ops::RangeInclusive<Duration>,
    required: bool,
) -> Verdict {
    duration(field, d).or_else(|| match as_std(d).filter(|d| !d.is_zero()) {
        None if required => Some(format!("{field} is required")),
        None => None,
        Some(d) => (!range.contains(&d)).then(|| format!("{field} {d:?} is outside {range:?}")),
    })
}

pub fn value(field: &str, value: &[u8]) -> Verdict {
    (value.len() > MAX_VALUE_BYTES).then(|| format!("{field} is {} bytes", value.len()))
}

pub fn batch<T>(field: &str, items: &[T], limit: usize) -> Verdict {
    (items.len() > limit).then(|| format!("{field} holds {}", items.len()))
}

/// An id no Baton could have issued: Baton's ids are ASCII letters, digits, `-_.`.
pub fn malformed_id(field: &str, id: &str) -> Verdict {
    let foreign = id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    foreign.then(|| format!("{field} {id:?} is malformed"))
}

/// API.md: 32 lowercase hex (128 random bits, as Baton issues them).
pub fn lock_lease_id(id: &str) -> Verdict {
    let ok = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (!ok).then(|| format!("lease_id {id:?} is not a lease id"))
}

/// API.md: 22..=256 characters of `[A-Za-z0-9_-]`.
pub fn session_id(id: &str) -> Verdict {
    let ok = (22..=256).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    (!ok).then(|| format!("session_id of {} bytes is malformed", id.len()))
}

pub fn limit(field: &str, limit: &Limit) -> Verdict {
    first([
        (!(1..=3).contains(&limit.algorithm)).then(|| format!("{field}.algorithm is {}", limit.algorithm)),
        bounded(&format!("{field}.period"), limit.period.as_ref(), Duration::ZERO..=Duration::MAX, true),
    ])
}

fn policy(field: &str, name: &str) -> Verdict {
    (!POLICIES.contains(&name)).then(|| format!("{field} {name:?} is unknown"))
}

pub fn check(r: &CheckRequest) -> Verdict {
    if r.limits.is_empty() || r.limits.len() > 16 {
        return Some(format!("limits holds {}", r.limits.len()));
    }
    first(r.limits.iter().enumerate().map(|(i, l)| {
        let field = format!("limits[{i}]");
        first([
            key(&format!("{field}.key"), &l.key),
            match &l.source {
                None => Some(format!("{field} has neither limit nor policy")),
                Some(limit_request::Source::Limit(limit)) => self::limit(&format!("{field}.limit"), limit),
                Some(limit_request::Source::Policy(name)) => policy(&format!("{field}.policy"), name),
            },
        ])
    }))
}

pub fn reset(r: &ResetRequest) -> Verdict {
    first([
        key("key", &r.key),
        match &r.source {
            None => Some("neither limit nor policy".to_owned()),
            Some(reset_request::Source::Limit(l)) => limit("limit", l),
            Some(reset_request::Source::Policy(name)) => policy("policy", name),
        },
    ])
}

/// API.md: a lock ttl is 100 ms ..= 1 h.
pub fn lock_ttl(d: Option<&PDuration>, required: bool) -> Verdict {
    bounded("ttl", d, Duration::from_millis(100)..=Duration::from_secs(3600), required)
}

pub fn set(key_: &str, value_: &[u8], ttl: Option<&PDuration>, stale_ttl: Option<&PDuration>, at: &str) -> Verdict {
    first([
        key(&format!("{at}key"), key_),
        value(&format!("{at}value"), value_),
        // API.md: ttl required, bounded by the server max (30 days by default).
        bounded(&format!("{at}ttl"), ttl, Duration::ZERO..=Duration::from_secs(30 * 86_400), true),
        duration(&format!("{at}stale_ttl"), stale_ttl),
    ])
}

pub fn enqueue(r: &EnqueueRequest, at: &str) -> Verdict {
    first([
        key(&format!("{at}queue"), &r.queue),
        value(&format!("{at}payload"), &r.payload),
        match &r.schedule {
            Some(enqueue_request::Schedule::Delay(d)) => duration(&format!("{at}delay"), Some(d)),
            Some(enqueue_request::Schedule::RunAt(t)) => {
                (t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos)).then(|| format!("{at}run_at is {t:?}"))
            }
            None => None,
        },
        r.backoff.as_ref().and_then(|b| {
            first([
                duration(&format!("{at}backoff.initial"), b.initial.as_ref()),
                duration(&format!("{at}backoff.max"), b.max.as_ref()),
            ])
        }),
        if r.dedup_key.is_empty() {
            None
        } else {
            first([
                key(&format!("{at}dedup_key"), &r.dedup_key),
                duration(&format!("{at}dedup_ttl"), r.dedup_ttl.as_ref()),
            ])
        },
        if r.group.is_empty() { None } else { key(&format!("{at}group"), &r.group) },
    ])
}
