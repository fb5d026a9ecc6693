//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` on Baton's engine.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::envoy::{Counting, EnvoyRules, EnvoySettings, Matched, Rule, Unit};
use crate::error::Error;
use crate::proto::duration_to_proto;
use crate::proto::envoy::config::core::v3::HeaderValue;
use crate::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use crate::proto::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit, rate_limit::Unit as ResponseUnit,
};
use crate::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use crate::proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use crate::proto::envoy::r#type::v3::RateLimitUnit;
use crate::ratelimit::{Algorithm, LimitCheck, LimitOutcome, LimitSpec, RateLimiter, Verdict};

/// Envoy sends one descriptor per matching action; a request with more is malformed.
const MAX_DESCRIPTORS: usize = 256;

pub struct EnvoyGrpc {
    limiter: RateLimiter,
    /// The current rules; the directory reloader replaces them.
    rules: watch::Receiver<Arc<EnvoyRules>>,
    settings: EnvoySettings,
    limits: crate::validate::Limits,
}

impl EnvoyGrpc {
    pub fn new(
        limiter: RateLimiter,
        rules: watch::Receiver<Arc<EnvoyRules>>,
        settings: EnvoySettings,
        limits: crate::validate::Limits,
    ) -> Self {
        Self { limiter, rules, settings, limits }
    }

    /// The limit for a descriptor: its own override if Envoy sent one (on a domain that
    /// has rules, as in envoyproxy/ratelimit; enforced even over a shadow-mode rule), else
    /// the config's.
    fn resolve(&self, rules: &EnvoyRules, domain: &str, descriptor: &RateLimitDescriptor) -> Option<Matched> {
        let entries: Vec<(String, String)> =
            descriptor.entries.iter().map(|entry| (entry.key.clone(), entry.value.clone())).collect();
        let matched = rules.match_descriptor(domain, &entries);
        let Some(override_limit) = descriptor.limit.as_ref().filter(|_| rules.has_domain(domain)) else {
            return matched;
        };
        let unit = match RateLimitUnit::try_from(override_limit.unit) {
            Ok(RateLimitUnit::Second) => Unit::Second,
            Ok(RateLimitUnit::Minute) => Unit::Minute,
            Ok(RateLimitUnit::Hour) => Unit::Hour,
            Ok(RateLimitUnit::Day) => Unit::Day,
            Ok(RateLimitUnit::Week) => Unit::Week,
            Ok(RateLimitUnit::Month) => Unit::Month,
            Ok(RateLimitUnit::Year) => Unit::Year,
            _ => return matched,
        };
        let requests_per_unit = u64::from(override_limit.requests_per_unit);
        let rule = Rule::limit(unit, requests_per_unit, Algorithm::ClockWindow, String::new(), &self.limits).ok()?;
        let counter_key = entries
            .iter()
            .fold(format!("{domain}|override|"), |key, (k, v)| format!("{key}{}:{}{}:{}|", k.len(), k, v.len(), v));
        Some(Matched {
            rule,
            shadow_mode: false,
            quota_mode: false,
            name: String::new(),
            replaces: Vec::new(),
            counter_key,
        })
    }
}

fn unit_to_proto(unit: Unit) -> i32 {
    (match unit {
        Unit::Second => ResponseUnit::Second,
        Unit::Minute => ResponseUnit::Minute,
        Unit::Hour => ResponseUnit::Hour,
        Unit::Day => ResponseUnit::Day,
        Unit::Week => ResponseUnit::Week,
        Unit::Month => ResponseUnit::Month,
        Unit::Year => ResponseUnit::Year,
    }) as i32
}

/// Envoy's `duration_until_reset` is whole seconds (envoyproxy/ratelimit reports them so).
fn whole_seconds(duration: Duration) -> prost_types::Duration {
    duration_to_proto(Duration::from_secs(duration.as_secs() + u64::from(duration.subsec_nanos() > 0)))
}

/// The rest of the current clock window of `unit`, as envoyproxy/ratelimit's reset.
fn clock_reset(unit: Unit) -> Duration {
    let period = unit.period().as_secs();
    Duration::from_secs(period - crate::proto::now_micros() / 1_000_000 % period)
}

/// The answer for an unlimited descriptor, as envoyproxy/ratelimit reports it.
fn unlimited_status() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        current_limit: None,
        limit_remaining: u32::MAX,
        duration_until_reset: None,
    }
}

/// How a counted descriptor's answer is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enforcement {
    Enforced,
    /// Counted and reported; over limit still answers OK.
    Shadow,
    /// Over limit answers OK with the limit and what remains, and no reset.
    Quota,
}

impl Enforcement {
    fn of(matched: &Matched) -> Self {
        if matched.shadow_mode {
            Self::Shadow
        } else if matched.quota_mode {
            Self::Quota
        } else {
            Self::Enforced
        }
    }
}

/// A descriptor the engine counts, and where its answer goes.
struct Counted {
    index: usize,
    check: LimitCheck,
    unit: Unit,
    requests_per_unit: u64,
    name: String,
    enforcement: Enforcement,
}

/// A descriptor's status from its limit's outcome. Over limit reports 0 remaining, as
/// envoyproxy/ratelimit does.
fn status(
    enforcement: Enforcement,
    allowed: bool,
    remaining: u64,
    reset_after: Option<Duration>,
    limit: RateLimit,
) -> DescriptorStatus {
    let remaining = if allowed { u32::try_from(remaining).unwrap_or(u32::MAX) } else { 0 };
    let code = if allowed || enforcement != Enforcement::Enforced { Code::Ok } else { Code::OverLimit };
    let reset = if enforcement == Enforcement::Quota && !allowed { None } else { reset_after.map(whole_seconds) };
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(limit),
        limit_remaining: remaining,
        duration_until_reset: reset,
    }
}

impl Counted {
    fn limit(&self) -> RateLimit {
        RateLimit {
            name: self.name.clone(),
            requests_per_unit: u32::try_from(self.requests_per_unit).unwrap_or(u32::MAX),
            unit: unit_to_proto(self.unit),
        }
    }

    fn status(&self, outcome: &LimitOutcome) -> DescriptorStatus {
        status(self.enforcement, outcome.allowed, outcome.remaining, Some(outcome.reset_after), self.limit())
    }
}

/// Sums the costs of descriptors that share a counter (the engine reads each counter once).
fn merged(counted: &[&Counted]) -> Vec<LimitCheck> {
    let mut checks: Vec<LimitCheck> = Vec::new();
    let mut position: HashMap<(String, LimitSpec), usize> = HashMap::new();
    for c in counted {
        match position.get(&(c.check.key.clone(), c.check.spec)) {
            Some(&at) => checks[at].cost = checks[at].cost.saturating_add(c.check.cost),
            None => {
                position.insert((c.check.key.clone(), c.check.spec), checks.len());
                checks.push(c.check.clone());
            }
        }
    }
    checks
}

fn position(checks: &[LimitCheck], check: &LimitCheck) -> usize {
    checks.iter().position(|c| c.key == check.key && c.spec == check.spec).unwrap_or(0)
}

impl EnvoyGrpc {
    /// Checks (and counts) `checks` atomically. Envoy's hits are not bounded like Check's
    /// cost: a check costing more than its limit can ever admit is over limit outright,
    /// so the whole request only looks (dry run, costs capped) and counts nothing.
    async fn checked(
        &self,
        namespace: &Arc<str>,
        mut checks: Vec<LimitCheck>,
        dry_run: bool,
    ) -> Result<Verdict, Error> {
        let impossible: Vec<bool> = checks.iter().map(|check| check.cost > check.spec.max_cost()).collect();
        let dry_run = dry_run || impossible.contains(&true);
        for check in &mut checks {
            check.cost = check.cost.min(check.spec.max_cost());
        }
        let mut verdict = self.limiter.scoped(namespace).check_per_slot(&checks, dry_run).await?;
        for (outcome, impossible) in verdict.outcomes.iter_mut().zip(impossible) {
            if impossible {
                outcome.allowed = false;
                verdict.allowed = false;
            }
        }
        Ok(verdict)
    }

    /// Every descriptor of `group` in one atomic check: all consume, or none does (on a
    /// Redis Cluster, all of one slot: descriptors cannot be made to share a hash tag).
    /// A denied request's admissible descriptors report what they still have.
    async fn atomically(
        &self,
        namespace: &Arc<str>,
        group: &[&Counted],
        statuses: &mut [DescriptorStatus],
    ) -> Result<(), Error> {
        if group.is_empty() {
            return Ok(());
        }
        let checks = merged(group);
        let verdict = self.checked(namespace, checks.clone(), false).await?;
        for counted in group {
            let at = position(&checks, &counted.check);
            let mut outcome = verdict.outcomes[at].clone();
            if !verdict.allowed && outcome.allowed {
                outcome.remaining = outcome.remaining.saturating_add(checks[at].cost);
            }
            statuses[counted.index] = counted.status(&outcome);
        }
        Ok(())
    }

    /// envoyproxy/ratelimit's counting: each descriptor on its own, every hit counted,
    /// admitted or not (fixed windows); other algorithms count what they admit.
    async fn as_upstream(
        &self,
        namespace: &Arc<str>,
        group: &[&Counted],
        statuses: &mut [DescriptorStatus],
    ) -> Result<(), Error> {
        let (windows, others): (Vec<&Counted>, Vec<&Counted>) =
            group.iter().partition(|counted| counted.check.spec.algorithm == Algorithm::ClockWindow);
        if !windows.is_empty() {
            let by_counter = merged(&windows);
            let checks: Vec<LimitCheck> = by_counter
                .iter()
                .map(|check| LimitCheck {
                    spec: LimitSpec { algorithm: Algorithm::UpstreamWindow, ..check.spec },
                    ..check.clone()
                })
                .collect();
            let verdict = self.limiter.scoped(namespace).check_per_slot(&checks, false).await?;
            for counted in &windows {
                statuses[counted.index] = counted.status(&verdict.outcomes[position(&by_counter, &counted.check)]);
            }
        }
        for counted in others {
            self.atomically(namespace, &[counted], statuses).await?;
        }
        Ok(())
    }
}

/// The descriptor whose limit the response headers describe, as envoyproxy/ratelimit
/// picks it: the fewest remaining, and any descriptor that denies the request over that.
fn headers_source(statuses: &[DescriptorStatus]) -> Option<&DescriptorStatus> {
    let mut chosen: Option<&DescriptorStatus> = None;
    let mut least = u32::MAX;
    for status in statuses {
        if status.current_limit.is_some() && status.limit_remaining < least {
            chosen = Some(status);
            least = status.limit_remaining;
        }
        if status.code == Code::OverLimit as i32 {
            chosen = Some(status);
            least = 0;
        }
    }
    chosen
}

#[tonic::async_trait]
impl RateLimitService for EnvoyGrpc {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        if request.domain.is_empty() {
            return Err(Error::invalid("domain", "is required").into());
        }
        if request.descriptors.is_empty() || request.descriptors.len() > MAX_DESCRIPTORS {
            return Err(Error::invalid("descriptors", format!("must hold 1 to {MAX_DESCRIPTORS} descriptors")).into());
        }
        let rules = self.rules.borrow().clone();
        let mut matched: Vec<Option<Matched>> =
            request.descriptors.iter().map(|descriptor| self.resolve(&rules, &request.domain, descriptor)).collect();
        // A rule named in another matched rule's `replaces` neither counts nor answers.
        let replaced: HashSet<String> = matched.iter().flatten().flat_map(|m| m.replaces.iter().cloned()).collect();
        for slot in &mut matched {
            if slot.as_ref().is_some_and(|m| !m.name.is_empty() && replaced.contains(&m.name)) {
                *slot = None;
            }
        }

        let request_hits = u64::from(request.hits_addend.max(1));
        let mut statuses = vec![
            DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: None,
                limit_remaining: 0,
                duration_until_reset: None
            };
            request.descriptors.len()
        ];
        let mut counted = Vec::new();
        for (index, (descriptor, matched)) in request.descriptors.iter().zip(matched).enumerate() {
            let Some(matched) = matched else {
                continue; // Unknown descriptors are allowed and not counted, as in Envoy.
            };
            let enforcement = Enforcement::of(&matched);
            match matched.rule {
                Rule::Unlimited => statuses[index] = unlimited_status(),
                // `requests_per_unit: 0`: over limit, counting nothing.
                Rule::Blocked { unit, name } => {
                    let limit = RateLimit { name, requests_per_unit: 0, unit: unit_to_proto(unit) };
                    statuses[index] = status(enforcement, false, 0, Some(clock_reset(unit)), limit);
                }
                Rule::Limited { spec, unit, requests_per_unit, name } => counted.push(Counted {
                    index,
                    // A descriptor's own hits_addend of 0 asks only whether it is over limit.
                    check: LimitCheck {
                        key: matched.counter_key,
                        spec,
                        cost: descriptor.hits_addend.unwrap_or(request_hits),
                    },
                    unit,
                    requests_per_unit,
                    name,
                    enforcement,
                }),
            }
        }

        match self.settings.counting {
            Counting::Upstream => {
                let group: Vec<&Counted> = counted.iter().collect();
                self.as_upstream(&namespace, &group, &mut statuses).await?;
            }
            Counting::Atomic => {
                // Enforced descriptors together; shadow and quota ones count on their own,
                // since they never deny; zero hits only read.
                let (enforced, alone): (Vec<&Counted>, Vec<&Counted>) =
                    counted.iter().filter(|c| c.check.cost > 0).partition(|c| c.enforcement == Enforcement::Enforced);
                self.atomically(&namespace, &enforced, &mut statuses).await?;
                for counted in alone {
                    self.atomically(&namespace, &[counted], &mut statuses).await?;
                }
                for counted in counted.iter().filter(|c| c.check.cost == 0) {
                    let verdict = self.checked(&namespace, vec![counted.check.clone()], true).await?;
                    statuses[counted.index] = counted.status(&verdict.outcomes[0]);
                }
            }
        }

        let overall =
            if statuses.iter().any(|s| s.code == Code::OverLimit as i32) { Code::OverLimit } else { Code::Ok };
        crate::traces::record_outcome(if overall == Code::OverLimit { "denied" } else { "allowed" });
        let response_headers_to_add = match (&self.settings.response_headers, headers_source(&statuses)) {
            (Some(names), Some(source)) => {
                let limit = source.current_limit.as_ref().map_or(0, |limit| limit.requests_per_unit);
                let reset = source.duration_until_reset.as_ref().map_or_else(
                    || {
                        let unit = source.current_limit.as_ref().map(|l| l.unit).unwrap_or_default();
                        clock_reset(unit_from_proto(unit)).as_secs()
                    },
                    |d| d.seconds.max(0) as u64,
                );
                vec![
                    header(&names.limit, limit.to_string()),
                    header(&names.remaining, source.limit_remaining.to_string()),
                    header(&names.reset, reset.to_string()),
                ]
            }
            _ => Vec::new(),
        };
        Ok(Response::new(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            response_headers_to_add,
            request_headers_to_add: Vec::new(),
        }))
    }
}

fn unit_from_proto(unit: i32) -> Unit {
    match ResponseUnit::try_from(unit) {
        Ok(ResponseUnit::Minute) => Unit::Minute,
        Ok(ResponseUnit::Hour) => Unit::Hour,
        Ok(ResponseUnit::Day) => Unit::Day,
        Ok(ResponseUnit::Week) => Unit::Week,
        Ok(ResponseUnit::Month) => Unit::Month,
        Ok(ResponseUnit::Year) => Unit::Year,
        _ => Unit::Second,
    }
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue { key: key.to_owned(), value, raw_value: Vec::new() }
}
