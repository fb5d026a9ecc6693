//! `baton.v1.RateLimiterService`: validates requests, resolves policies, and maps the
//! domain's verdicts to proto.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::proto::v1::rate_limiter_service_server::RateLimiterService;
use crate::proto::v1::{
    self as pb, CheckRequest, CheckResponse, LimitResult, ResetRequest, ResetResponse, limit_request,
};
use crate::proto::{duration_from_proto, duration_to_proto};
use crate::ratelimit::{Algorithm, LimitCheck, LimitSpec, MAX_LIMITS_PER_CHECK, Policy, RateLimiter};
use crate::validate;
use crate::validate::Limits;

pub struct RateLimiterGrpc {
    limiter: RateLimiter,
    policies: Arc<BTreeMap<String, Policy>>,
    limits: Limits,
}

impl RateLimiterGrpc {
    pub fn new(limiter: RateLimiter, policies: Arc<BTreeMap<String, Policy>>, limits: Limits) -> Self {
        Self { limiter, policies, limits }
    }

    /// Resolves an inline limit or a policy name; returns the spec and whether the policy
    /// asks to fail open.
    /// `prefix` locates the fields in error messages ("limits[2]", or "" at top level).
    fn resolve(&self, prefix: &str, source: Option<&limit_request::Source>) -> Result<(LimitSpec, bool), Error> {
        match source {
            None => Err(Error::invalid(field_name(prefix, "limit"), "one of limit or policy is required")),
            Some(limit_request::Source::Policy(name)) => self
                .policies
                .get(name)
                .map(|policy| (policy.spec, policy.fail_open))
                .ok_or_else(|| Error::invalid(field_name(prefix, "policy"), format!("unknown policy {name:?}"))),
            Some(limit_request::Source::Limit(limit)) => {
                Ok((spec_from_proto(&field_name(prefix, "limit"), limit, &self.limits)?, false))
            }
        }
    }

    fn validate_check(&self, request: &CheckRequest) -> Result<(Vec<LimitCheck>, bool), Error> {
        if request.limits.is_empty() || request.limits.len() > MAX_LIMITS_PER_CHECK {
            return Err(Error::invalid("limits", format!("must hold 1 to {MAX_LIMITS_PER_CHECK} limits")));
        }
        let mut fail_open = request.fail_open;
        let mut checks: Vec<LimitCheck> = Vec::with_capacity(request.limits.len());
        for (index, item) in request.limits.iter().enumerate() {
            let field = format!("limits[{index}]");
            validate::key(&format!("{field}.key"), &item.key, &self.limits)?;
            let (spec, policy_fail_open) = self.resolve(&field, item.source.as_ref())?;
            fail_open |= policy_fail_open;
            let cost = item.cost.max(1);
            if cost > spec.max_cost() {
                return Err(Error::invalid(
                    format!("{field}.cost"),
                    format!("exceeds what the limit can ever admit at once ({})", spec.max_cost()),
                ));
            }
            // The script reads every counter before writing any, so a repeated counter
            // would not see its own earlier cost.
            if let Some(first) = checks.iter().position(|check| check.key == item.key && check.spec == spec) {
                return Err(Error::invalid(field, format!("repeats limits[{first}]; combine their costs")));
            }
            checks.push(LimitCheck { key: item.key.clone(), spec, cost });
        }
        Ok((checks, fail_open))
    }
}

#[tonic::async_trait]
impl RateLimiterService for RateLimiterGrpc {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        let (checks, fail_open) = self.validate_check(&request)?;
        let verdict = self.limiter.scoped(&namespace).check(&checks, request.dry_run, fail_open).await?;
        crate::traces::record_outcome(if verdict.allowed { "allowed" } else { "denied" });
        Ok(Response::new(CheckResponse {
            allowed: verdict.allowed,
            results: verdict
                .outcomes
                .into_iter()
                .map(|outcome| LimitResult {
                    allowed: outcome.allowed,
                    limit: outcome.limit,
                    remaining: outcome.remaining,
                    reset_after: Some(duration_to_proto(outcome.reset_after)),
                    retry_after: Some(duration_to_proto(outcome.retry_after)),
                })
                .collect(),
            retry_after: Some(duration_to_proto(verdict.retry_after)),
            degraded: verdict.degraded,
        }))
    }

    async fn reset(&self, request: Request<ResetRequest>) -> Result<Response<ResetResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        validate::key("key", &request.key, &self.limits)?;
        let source = request.source.map(|source| match source {
            pb::reset_request::Source::Limit(limit) => limit_request::Source::Limit(limit),
            pb::reset_request::Source::Policy(name) => limit_request::Source::Policy(name),
        });
        let (spec, _) = self.resolve("", source.as_ref())?;
        let existed = self.limiter.scoped(&namespace).reset(&request.key, &spec).await?;
        Ok(Response::new(ResetResponse { existed }))
    }
}

pub(crate) fn algorithm_to_proto(algorithm: Algorithm) -> pb::Algorithm {
    match algorithm {
        Algorithm::FixedWindow => pb::Algorithm::FixedWindow,
        Algorithm::SlidingWindow => pb::Algorithm::SlidingWindow,
        Algorithm::TokenBucket => pb::Algorithm::TokenBucket,
        // Envoy's windows are never a caller's choice, so never stored for a queue.
        Algorithm::ClockWindow | Algorithm::UpstreamWindow => pb::Algorithm::FixedWindow,
    }
}

/// An inline limit, validated; `field` names it in errors ("limits[2].limit").
pub(crate) fn spec_from_proto(field: &str, limit: &pb::Limit, limits: &Limits) -> Result<LimitSpec, Error> {
    let algorithm = match pb::Algorithm::try_from(limit.algorithm) {
        Ok(pb::Algorithm::FixedWindow) => Algorithm::FixedWindow,
        Ok(pb::Algorithm::SlidingWindow) => Algorithm::SlidingWindow,
        Ok(pb::Algorithm::TokenBucket) => Algorithm::TokenBucket,
        Ok(pb::Algorithm::Unspecified) | Err(_) => {
            return Err(Error::invalid(format!("{field}.algorithm"), "must name an algorithm"));
        }
    };
    let period = duration_from_proto(&format!("{field}.period"), limit.period.as_ref())?
        .ok_or_else(|| Error::invalid(format!("{field}.period"), "is required"))?;
    LimitSpec::new(algorithm, limit.limit, period, limit.burst, limits)
        .map_err(|err| Error::invalid(format!("{field}.{}", err.field), err.description))
}

fn field_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
}
