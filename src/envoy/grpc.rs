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

    /// The limit for a descriptor: its own override if Envoy sent one, else the config's.
    fn resolve(
        &self,
        domain: &str,
        descriptor: &crate::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor,
    ) -> Option<Matched> {
        let entries: Vec<(String, String)> =
            descriptor.entries.iter().map(|entry| (entry.key.clone(), entry.value.clone())).collect();
        let matched = self.rules.match_descriptor(domain, &entries);
        let Some(override_limit) = &descriptor.limit else {
            return matched;
        };
        let unit = match RateLimitUnit::try_from(override_limit.unit) {
            Ok(RateLimitUnit::Second) => Unit::Second,
            Ok(RateLimitUnit::Minute) => Unit::Minute,
            Ok(RateLimitUnit::Hour) => Unit::Hour,
            Ok(RateLimitUnit::Day) => Unit::Day,
            _ => return matched,
        };
        let requests_per_unit = u64::from(override_limit.requests_per_unit);
        let spec = LimitSpec::new(Algorithm::FixedWindow, requests_per_unit, unit.period(), 0, &self.limits).ok()?;
        let counter_key = entries
            .iter()
            .fold(format!("{domain}|override|"), |key, (k, v)| format!("{key}{}:{}{}:{}|", k.len(), k, v.len(), v));
        Some(Matched {
            rule: Rule::Limited { spec, unit, requests_per_unit, name: String::new() },
            shadow_mode: matched.is_some_and(|m| m.shadow_mode),
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
    }) as i32
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
        duration_until_reset: Some(duration_to_proto(outcome.reset_after)),
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
        let (mut enforced, mut shadowed) = (Vec::new(), Vec::new());
        for (index, descriptor) in request.descriptors.iter().enumerate() {
            let Some(matched) = self.resolve(&request.domain, descriptor) else {
                continue; // Unknown descriptors are allowed and not counted, as in Envoy.
            };
            let Rule::Limited { spec, unit, requests_per_unit, name } = matched.rule else {
                continue; // Unlimited.
            };
            let hits = descriptor.hits_addend.unwrap_or(request_hits).max(1);
            let counted = Counted {
                index,
                check: LimitCheck { key: matched.counter_key, spec, cost: hits },
                unit,
                requests_per_unit,
                name,
            };
            if matched.shadow_mode { shadowed.push(counted) } else { enforced.push(counted) }
        }

        // Every enforced descriptor in one atomic check: all consume, or none does (on a
        // Redis Cluster, all of one slot: descriptors cannot be made to share a hash tag).
        let mut overall = Code::Ok;
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
