//! Rate limiting: fixed windows, a sliding log and GCRA, any 1..=16 of them evaluated
//! atomically by one Lua script on Redis's clock.
//!
//! A denial is an answer, not an error. When Redis is unavailable, a check that may fail
//! open answers "allowed, degraded" — at once while the store is known to be down (the
//! breaker), instead of each request waiting out a Redis timeout.

pub mod grpc;
mod keys;

use std::sync::LazyLock;
use std::time::Duration;

use crate::error::Error;
use crate::store::topology::{Slot, slot_of};
use crate::store::{Arg, Command, KeyBuilder, Script, Store, StoreError};
use crate::validate::Limits;

/// The algorithms (limits.lua), shared with the queues' start limits.
pub(crate) const LIMITS_LUA: &str = include_str!("limits.lua");
static CHECK: LazyLock<Script> =
    LazyLock::new(|| Script::new("ratelimit_check", &[LIMITS_LUA, include_str!("check.lua")]));

/// A named rate limit from the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub spec: LimitSpec,
    /// Answer allowed (degraded) rather than UNAVAILABLE when Redis is down.
    pub fail_open: bool,
}

/// Why a Check whose counters span Cluster slots is refused: one script touches one slot.
/// The key builder wraps a key in its own `{…}`, so keys share a slot exactly when they
/// agree up to their first `}`.
pub const HASH_TAG_RULE: &str = "in Redis Cluster mode every key of one Check must share a hash tag: \
    start each key with the same {tag}, e.g. {user:42}:minute and {user:42}:hour";

/// Most limits one Check may carry.
pub const MAX_LIMITS_PER_CHECK: usize = 16;
/// Shortest period: the clock is read in µs, but sub-millisecond windows are noise.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);
/// Largest `limit` or `burst`: keeps every sum in the script exact in a Lua double.
pub const MAX_LIMIT: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// At most `limit` per window; a window starts at the key's first hit.
    FixedWindow,
    /// A log of admitted units: at most `limit` in every span of one period, exactly.
    SlidingWindow,
    /// GCRA: `burst` at once, then one per `period / limit`.
    TokenBucket,
    /// A fixed window on the clock's period boundaries (Envoy rules, as
    /// envoyproxy/ratelimit windows them); not offered to `Check` callers.
    ClockWindow,
    /// A `ClockWindow` counted as envoyproxy/ratelimit counts: every hit, admitted or not,
    /// on its own (`--envoy-counting upstream`). It shares `ClockWindow`'s counters.
    UpstreamWindow,
}

impl Algorithm {
    /// The algorithm of a script code, for those a caller may choose.
    pub(crate) fn from_script_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(Self::FixedWindow),
            2 => Some(Self::SlidingWindow),
            3 => Some(Self::TokenBucket),
            _ => None,
        }
    }

    pub(crate) fn script_code(self) -> u8 {
        match self {
            Self::FixedWindow => 1,
            Self::SlidingWindow => 2,
            Self::TokenBucket => 3,
            Self::ClockWindow => 4,
            Self::UpstreamWindow => 5,
        }
    }

    fn key_tag(self) -> &'static str {
        match self {
            Self::FixedWindow => "fw",
            Self::SlidingWindow => "sw",
            Self::TokenBucket => "tb",
            Self::ClockWindow | Self::UpstreamWindow => "cw",
        }
    }
}

/// A validated limit definition. Its parameters are part of the counter's key, so changing
/// a policy starts fresh counters rather than reinterpreting old ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitSpec {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub period: Duration,
    /// Token bucket only; the request's 0 has already become `limit`.
    pub burst: u64,
}

/// Why a limit definition was refused: the offending field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: &'static str,
    pub description: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

impl LimitSpec {
    pub fn new(
        algorithm: Algorithm,
        limit: u64,
        period: Duration,
        burst: u64,
        bounds: &Limits,
    ) -> Result<Self, SpecError> {
        let fail = |field, description: String| Err(SpecError { field, description });
        if limit == 0 || limit > MAX_LIMIT {
            return fail("limit", format!("must be between 1 and {MAX_LIMIT}"));
        }
        if algorithm == Algorithm::SlidingWindow && limit > bounds.max_sliding_window_limit {
            return fail(
                "limit",
                format!(
                    "a sliding window keeps one entry per unit, so it allows at most {} (server limit)",
                    bounds.max_sliding_window_limit
                ),
            );
        }
        if period < MIN_PERIOD || period > bounds.max_ttl {
            return fail("period", format!("must be between {MIN_PERIOD:?} and {:?}", bounds.max_ttl));
        }
        let burst = match algorithm {
            Algorithm::TokenBucket if burst == 0 => limit,
            Algorithm::TokenBucket if burst > MAX_LIMIT => {
                return fail("burst", format!("must be at most {MAX_LIMIT}"));
            }
            Algorithm::TokenBucket => burst,
            _ if burst != 0 => return fail("burst", "applies only to TOKEN_BUCKET".into()),
            _ => 0,
        };
        Ok(Self { algorithm, limit, period, burst })
    }

    /// The most one request may cost: anything more could never be admitted.
    pub fn max_cost(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => self.burst,
            _ => self.limit,
        }
    }

    /// What `LimitResult.limit` reports: the most that can pass at once.
    pub fn capacity(&self) -> u64 {
        self.max_cost()
    }

    pub(crate) fn period_micros(&self) -> u64 {
        u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX)
    }

    pub(crate) fn key_part(&self) -> String {
        let tag = self.algorithm.key_tag();
        match self.algorithm {
            Algorithm::TokenBucket => format!("{tag}:{}:{}:{}", self.limit, self.period_micros(), self.burst),
            _ => format!("{tag}:{}:{}", self.limit, self.period_micros()),
        }
    }
}

/// One limit to evaluate: a counter key, its definition and what this request costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCheck {
    pub key: String,
    pub spec: LimitSpec,
    pub cost: u64,
}

/// The outcome of one limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitOutcome {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after: Duration,
    pub retry_after: Duration,
}

/// The verdict of a whole check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Empty when degraded.
    pub outcomes: Vec<LimitOutcome>,
    /// When the whole check could next pass: the latest of the denying limits' retry times.
    pub retry_after: Duration,
    /// Answered without Redis, under fail-open.
    pub degraded: bool,
}

impl Verdict {
    fn degraded() -> Self {
        Self { allowed: true, outcomes: Vec::new(), retry_after: Duration::ZERO, degraded: true }
    }
}

/// Evaluates limits against Redis.
#[derive(Clone)]
pub struct RateLimiter {
    store: Store,
    keys: KeyBuilder,
}

impl RateLimiter {
    pub fn new(store: Store, keys: KeyBuilder) -> Self {
        Self { store, keys }
    }

    /// The same manager acting for another tenant namespace.
    pub fn scoped(&self, namespace: &std::sync::Arc<str>) -> Self {
        Self { keys: KeyBuilder::new(namespace.clone()), ..self.clone() }
    }

    /// The store whose health this service's health name follows.
    /// Evaluates `checks` atomically: all consume their cost, or none does.
    /// The checks must already be validated (cost within `max_cost`, no duplicates).
    pub async fn check(&self, checks: &[LimitCheck], dry_run: bool, fail_open: bool) -> Result<Verdict, Error> {
        if self.store.is_cluster()
            && let Some(index) = self.first_in_another_slot(checks)
        {
            return Err(Error::invalid(format!("limits[{index}].key"), HASH_TAG_RULE));
        }
        if fail_open && !self.store.is_reachable() {
            metrics::counter!("baton_ratelimit_degraded_total").increment(1);
            return Ok(Verdict::degraded());
        }
        let keys: Vec<String> = checks.iter().map(|check| self.counter_key(&check.key, &check.spec)).collect();
        let mut args: Vec<Arg> = Vec::with_capacity(1 + checks.len() * 5);
        args.push(dry_run.into());
        for check in checks {
            let spec = &check.spec;
            for value in
                [u64::from(spec.algorithm.script_code()), spec.limit, spec.period_micros(), spec.burst, check.cost]
            {
                args.push(value.into());
            }
        }
        let reply = async {
            let fields = self.store.eval(&CHECK, &keys, &args).await?.done()?;
            (0..fields.len()).map(|index| fields.int(index)).collect::<Result<Vec<i64>, StoreError>>()
        };
        let reply = match reply.await {
            Ok(reply) => reply,
            Err(err) if fail_open && err.is_transient() => {
                metrics::counter!("baton_ratelimit_degraded_total").increment(1);
                return Ok(Verdict::degraded());
            }
            Err(err) => return Err(err.into()),
        };
        let verdict = decode_reply(checks, &reply)?;
        metrics::counter!(
            "baton_ratelimit_checks_total",
            "allowed" => if verdict.allowed { "true" } else { "false" }
        )
        .increment(1);
        Ok(verdict)
    }

    /// The index of the first check whose counter is not in the first one's Cluster slot.
    fn first_in_another_slot(&self, checks: &[LimitCheck]) -> Option<usize> {
        let mut slots = checks.iter().map(|check| slot_of(&self.counter_key(&check.key, &check.spec)));
        let first = slots.next()?;
        slots.position(|slot| slot != first).map(|at| at + 1)
    }

    /// Like [`RateLimiter::check`], but on a Redis Cluster the checks are split by slot and
    /// each group is atomic on its own (Envoy's descriptors cannot be made to share a hash
    /// tag); the verdict's outcomes keep the order of `checks`.
    pub async fn check_per_slot(&self, checks: &[LimitCheck], dry_run: bool) -> Result<Verdict, Error> {
        if !self.store.is_cluster() || self.first_in_another_slot(checks).is_none() {
            return self.check(checks, dry_run, false).await;
        }
        let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
        for (index, check) in checks.iter().enumerate() {
            let slot = slot_of(&self.counter_key(&check.key, &check.spec));
            match groups.iter_mut().find(|(group, _)| *group == slot) {
                Some((_, members)) => members.push(index),
                None => groups.push((slot, vec![index])),
            }
        }
        let verdicts = futures::future::try_join_all(groups.iter().map(|(_, members)| {
            let group: Vec<LimitCheck> = members.iter().map(|&index| checks[index].clone()).collect();
            async move { self.check(&group, dry_run, false).await }
        }))
        .await?;
        let mut outcomes: Vec<Option<LimitOutcome>> = vec![None; checks.len()];
        let mut merged = Verdict { allowed: true, outcomes: Vec::new(), retry_after: Duration::ZERO, degraded: false };
        for ((_, members), verdict) in groups.iter().zip(verdicts) {
            merged.allowed &= verdict.allowed;
            merged.retry_after = merged.retry_after.max(verdict.retry_after);
            for (&index, outcome) in members.iter().zip(verdict.outcomes) {
                outcomes[index] = Some(outcome);
            }
        }
        merged.outcomes = outcomes
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Internal("a rate-limit group answered fewer outcomes than it had limits".into()))?;
        Ok(merged)
    }

    /// Forgets the counter of `key` under `spec`; returns whether one existed.
    pub async fn reset(&self, key: &str, spec: &LimitSpec) -> Result<bool, Error> {
        let deleted: i64 =
            self.store.command("ratelimit_reset", &Command::new("DEL").arg(&self.counter_key(key, spec))).await?;
        Ok(deleted > 0)
    }

    fn counter_key(&self, key: &str, spec: &LimitSpec) -> String {
        keys::counter(&self.keys, key, spec)
    }
}

fn decode_reply(checks: &[LimitCheck], reply: &[i64]) -> Result<Verdict, Error> {
    const FIELDS: usize = 4;
    if reply.len() != 1 + checks.len() * FIELDS {
        return Err(Error::Internal(format!("rate-limit script returned {} values", reply.len())));
    }
    let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
    let outcomes: Vec<LimitOutcome> = checks
        .iter()
        .zip(reply[1..].chunks_exact(FIELDS))
        .map(|(check, fields)| LimitOutcome {
            allowed: fields[0] == 1,
            limit: check.spec.capacity(),
            remaining: u64::try_from(fields[1]).unwrap_or(0),
            reset_after: micros(fields[2]),
            retry_after: micros(fields[3]),
        })
        .collect();
    let allowed = reply[0] == 1;
    let retry_after = if allowed {
        Duration::ZERO
    } else {
        outcomes.iter().map(|outcome| outcome.retry_after).max().unwrap_or_default()
    };
    Ok(Verdict { allowed, outcomes, retry_after, degraded: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(algorithm: Algorithm, limit: u64, period_ms: u64, burst: u64) -> Result<LimitSpec, SpecError> {
        LimitSpec::new(algorithm, limit, Duration::from_millis(period_ms), burst, &Limits::default())
    }

    #[test]
    fn token_bucket_burst_defaults_to_limit() {
        assert_eq!(spec(Algorithm::TokenBucket, 10, 1000, 0).unwrap().burst, 10);
        assert_eq!(spec(Algorithm::TokenBucket, 10, 1000, 3).unwrap().max_cost(), 3);
    }

    #[test]
    fn rejects_out_of_range_definitions_naming_the_field() {
        assert_eq!(spec(Algorithm::FixedWindow, 0, 1000, 0).unwrap_err().field, "limit");
        assert_eq!(spec(Algorithm::FixedWindow, 1, 0, 0).unwrap_err().field, "period");
        assert_eq!(spec(Algorithm::FixedWindow, 1, 1000, 5).unwrap_err().field, "burst");
        assert_eq!(spec(Algorithm::SlidingWindow, 1_000_000, 1000, 0).unwrap_err().field, "limit");
        let too_long = Limits::default().max_ttl.as_millis() as u64 + 1;
        assert_eq!(spec(Algorithm::TokenBucket, 1, too_long, 0).unwrap_err().field, "period");
    }

    #[test]
    fn key_part_encodes_the_whole_definition() {
        let a = spec(Algorithm::TokenBucket, 10, 1000, 5).unwrap().key_part();
        let b = spec(Algorithm::TokenBucket, 10, 1000, 6).unwrap().key_part();
        let c = spec(Algorithm::FixedWindow, 10, 1000, 0).unwrap().key_part();
        assert_eq!(a, "tb:10:1000000:5");
        assert_ne!(a, b);
        assert_eq!(c, "fw:10:1000000");
    }

    #[test]
    fn decodes_and_takes_the_latest_retry() {
        let check = LimitCheck { key: "k".into(), spec: spec(Algorithm::FixedWindow, 5, 1000, 0).unwrap(), cost: 1 };
        let checks = vec![check.clone(), check];
        let verdict = decode_reply(&checks, &[0, 1, 3, 900_000, 0, 0, 0, 500_000, 400_000]).unwrap();
        assert!(!verdict.allowed);
        assert!(verdict.outcomes[0].allowed && !verdict.outcomes[1].allowed);
        assert_eq!(verdict.retry_after, Duration::from_millis(400));
        assert!(decode_reply(&checks, &[1]).is_err());
    }
}
