//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` on Baton's engine.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::envoy::{EnvoyRules, Matched, Rule, Unit};
use crate::error::Error;
use crate::proto::duration_to_proto;
use crate::proto::envoy::config::core::v3::HeaderValue;
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
    rules: Arc<EnvoyRules>,
    limits: crate::config::Limits,
}

impl EnvoyGrpc {
    pub fn new(limiter: RateLimiter, rules: Arc<EnvoyRules>, limits: crate::config::Limits) -> Self {
        Self { limiter, rules, limits }
    }

    /// The limit for a descriptor: its own override if Envoy sent one (on a domain that
    /// has rules, as in envoyproxy/ratelimit; enforced even over a shadow-mode rule), else
    /// the config's.
    fn resolve(
        &self,
        domain: &str,
        descriptor: &crate::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor,
    ) -> Option<Matched> {
        let entries: Vec<(String, String)> =
            descriptor.entries.iter().map(|entry| (entry.key.clone(), entry.value.clone())).collect();
        let matched = self.rules.match_descriptor(domain, &entries);
        let Some(override_limit) = descriptor.limit.as_ref().filter(|_| self.rules.has_domain(domain)) else {
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
        let rule = Rule::limit(unit, requests_per_unit, Algorithm::FixedWindow, String::new(), &self.limits).ok()?;
        let counter_key = entries
            .iter()
            .fold(format!("{domain}|override|"), |key, (k, v)| format!("{key}{}:{}{}:{}|", k.len(), k, v.len(), v));
        Some(Matched { rule, shadow_mode: false, counter_key })
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
fn whole_seconds(duration: std::time::Duration) -> prost_types::Duration {
    duration_to_proto(std::time::Duration::from_secs(duration.as_secs() + u64::from(duration.subsec_nanos() > 0)))
}

/// The answer for a descriptor no rule counts: unlimited, as envoyproxy/ratelimit reports it.
fn unlimited_status() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        current_limit: None,
        limit_remaining: u32::MAX,
        duration_until_reset: None,
    }
}

/// The answer for a `requests_per_unit: 0` rule: over limit, counting nothing, until the
/// end of the current unit.
fn blocked_status(unit: Unit, name: String) -> DescriptorStatus {
    let period = unit.period().as_secs();
    let into_period = crate::proto::now_micros() / 1_000_000 % period;
    DescriptorStatus {
        code: Code::OverLimit as i32,
        current_limit: Some(RateLimit { name, requests_per_unit: 0, unit: unit_to_proto(unit) }),
        limit_remaining: 0,
        duration_until_reset: Some(duration_to_proto(std::time::Duration::from_secs(period - into_period))),
    }
}

/// A descriptor the engine counts, and where its answer goes.
struct Counted {
    index: usize,
    check: LimitCheck,
    unit: Unit,
    requests_per_unit: u64,
    name: String,
}

fn status_for(counted: &Counted, outcome: &LimitOutcome, enforce: bool) -> DescriptorStatus {
    DescriptorStatus {
        // Shadow-mode descriptors are counted but never reported over limit.
        code: if outcome.allowed || !enforce { Code::Ok } else { Code::OverLimit } as i32,
        current_limit: Some(RateLimit {
            name: counted.name.clone(),
            requests_per_unit: u32::try_from(counted.requests_per_unit).unwrap_or(u32::MAX),
            unit: unit_to_proto(counted.unit),
        }),
        limit_remaining: u32::try_from(outcome.remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(whole_seconds(outcome.reset_after)),
    }
}

/// Sums the costs of descriptors that share a counter (the engine reads each counter once).
fn merged(counted: &[Counted]) -> Vec<LimitCheck> {
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

impl EnvoyGrpc {
    /// Checks (and counts) `checks` atomically. Envoy's hits are not bounded like Check's
    /// cost: a check costing more than its limit can ever admit is over limit outright,
    /// so the whole request only looks (dry run, costs capped) and counts nothing.
    async fn checked(&self, namespace: &str, mut checks: Vec<LimitCheck>) -> Result<Verdict, Error> {
        let impossible: Vec<bool> = checks.iter().map(|check| check.cost > check.spec.max_cost()).collect();
        let dry_run = impossible.contains(&true);
        for check in &mut checks {
            check.cost = check.cost.min(check.spec.max_cost());
        }
        let mut verdict = self.limiter.scoped(namespace).check_per_slot(&checks, dry_run).await?;
        if dry_run {
            verdict.allowed = false;
            for (outcome, impossible) in verdict.outcomes.iter_mut().zip(impossible) {
                outcome.allowed &= !impossible;
            }
        }
        Ok(verdict)
    }
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
        let (mut enforced, mut shadowed, mut peeked) = (Vec::new(), Vec::new(), Vec::new());
        let mut overall = Code::Ok;
        for (index, descriptor) in request.descriptors.iter().enumerate() {
            let Some(matched) = self.resolve(&request.domain, descriptor) else {
                continue; // Unknown descriptors are allowed and not counted, as in Envoy.
            };
            let (spec, unit, requests_per_unit, name) = match matched.rule {
                Rule::Limited { spec, unit, requests_per_unit, name } => (spec, unit, requests_per_unit, name),
                Rule::Unlimited => {
                    statuses[index] = unlimited_status();
                    continue;
                }
                Rule::Blocked { unit, name } => {
                    statuses[index] = blocked_status(unit, name);
                    if !matched.shadow_mode {
                        overall = Code::OverLimit;
                    } else {
                        statuses[index].code = Code::Ok as i32;
                    }
                    continue;
                }
            };
            // A descriptor's own hits_addend of 0 asks only whether it is over limit.
            let hits = descriptor.hits_addend.unwrap_or(request_hits);
            let counted = Counted {
                index,
                check: LimitCheck { key: matched.counter_key, spec, cost: hits },
                unit,
                requests_per_unit,
                name,
            };
            if hits == 0 {
                peeked.push((counted, !matched.shadow_mode));
            } else if matched.shadow_mode {
                shadowed.push(counted)
            } else {
                enforced.push(counted)
            }
        }

        // Every enforced descriptor in one atomic check: all consume, or none does (on a
        // Redis Cluster, all of one slot: descriptors cannot be made to share a hash tag).
        let mut headers_from: Option<(u64, u64, std::time::Duration)> = None;
        if !enforced.is_empty() {
            let checks = merged(&enforced);
            let verdict = self.checked(&namespace, checks.clone()).await?;
            if !verdict.allowed {
                overall = Code::OverLimit;
            }
            for counted in &enforced {
                let at =
                    checks.iter().position(|c| c.key == counted.check.key && c.spec == counted.check.spec).unwrap_or(0);
                let outcome = &verdict.outcomes[at];
                statuses[counted.index] = status_for(counted, outcome, true);
                if headers_from.is_none_or(|(_, remaining, _)| outcome.remaining < remaining) {
                    headers_from = Some((counted.requests_per_unit, outcome.remaining, outcome.reset_after));
                }
            }
        }
        // Shadow-mode descriptors count on their own and never block.
        for counted in &shadowed {
            let verdict = self.checked(&namespace, vec![counted.check.clone()]).await?;
            statuses[counted.index] = status_for(counted, &verdict.outcomes[0], false);
        }
        // Zero hits: the counter is read, never written.
        for (counted, enforce) in &peeked {
            let verdict =
                self.limiter.scoped(&namespace).check_per_slot(std::slice::from_ref(&counted.check), true).await?;
            statuses[counted.index] = status_for(counted, &verdict.outcomes[0], *enforce);
            if *enforce && !verdict.allowed {
                overall = Code::OverLimit;
            }
        }

        let response_headers_to_add = match headers_from {
            Some((limit, remaining, reset)) if self.rules.response_headers => vec![
                header("x-ratelimit-limit", limit.to_string()),
                header("x-ratelimit-remaining", remaining.to_string()),
                header("x-ratelimit-reset", reset.as_secs_f64().ceil().to_string()),
            ],
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

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue { key: key.to_owned(), value, raw_value: Vec::new() }
}
