//! Envoy's global rate limit API (`envoy.service.ratelimit.v3.RateLimitService`) on
//! Baton's rate-limit engine.
//!
//! Rules follow envoyproxy/ratelimit's configuration: per domain, a tree of descriptor
//! keys, each optionally pinned to a value (no value = a key-only match that counts each
//! value separately), with a limit at any node. A request descriptor's entries walk the
//! tree; the limit of the node reached by the last entry applies. Descriptors that match no
//! rule are allowed and not counted, as in Envoy.

pub mod grpc;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Limits;
use crate::ratelimit::{Algorithm, LimitSpec};

/// The `[envoy]` section of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyFile {
    /// Add `x-ratelimit-limit`, `-remaining` and `-reset` headers to responses.
    #[serde(default)]
    pub response_headers: bool,
    #[serde(default)]
    pub domains: Vec<DomainFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainFile {
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<DescriptorFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorFile {
    pub key: String,
    pub value: Option<String>,
    pub rate_limit: Option<RateLimitFile>,
    #[serde(default)]
    pub shadow_mode: bool,
    #[serde(default)]
    pub descriptors: Vec<DescriptorFile>,
}

/// envoyproxy/ratelimit's units, with its lengths: a month is 30 days, a year 365.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    pub fn period(self) -> Duration {
        Duration::from_secs(match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3600,
            Self::Day => 86_400,
            Self::Week => 7 * 86_400,
            Self::Month => 30 * 86_400,
            Self::Year => 365 * 86_400,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub unit: Option<Unit>,
    pub requests_per_unit: Option<u64>,
    /// fixed_window (default, as envoyproxy/ratelimit), sliding_window or token_bucket.
    pub algorithm: Option<String>,
    #[serde(default)]
    pub unlimited: bool,
    pub name: Option<String>,
}

/// What a matched rule says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Unlimited,
    /// `requests_per_unit: 0`: every request is over limit, and nothing is counted.
    Blocked {
        unit: Unit,
        name: String,
    },
    Limited {
        spec: LimitSpec,
        unit: Unit,
        requests_per_unit: u64,
        name: String,
    },
}

impl Rule {
    /// A limit of `requests_per_unit` per `unit`, as a config rule or a request's override
    /// states it.
    pub fn limit(
        unit: Unit,
        requests_per_unit: u64,
        algorithm: Algorithm,
        name: String,
        limits: &Limits,
    ) -> Result<Self, String> {
        if requests_per_unit == 0 {
            return Ok(Self::Blocked { unit, name });
        }
        // Operators' units reach a year, past the per-call ttl bound callers are held to.
        let bounds = Limits { max_ttl: limits.max_ttl.max(Unit::Year.period()), ..limits.clone() };
        let spec =
            LimitSpec::new(algorithm, requests_per_unit, unit.period(), 0, &bounds).map_err(|err| err.to_string())?;
        Ok(Self::Limited { spec, unit, requests_per_unit, name })
    }
}

#[derive(Debug, Clone, Default)]
struct Node {
    rule: Option<Rule>,
    shadow_mode: bool,
    /// Children by (key, value); value None is the key-only match.
    children: BTreeMap<(String, Option<String>), Node>,
}

/// A matched descriptor: its rule, shadow flag, and the counter key it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub rule: Rule,
    pub shadow_mode: bool,
    pub counter_key: String,
}

/// Validated rules for every domain.
#[derive(Debug, Clone, Default)]
pub struct EnvoyRules {
    pub response_headers: bool,
    domains: BTreeMap<String, Node>,
}

impl EnvoyRules {
    pub fn from_file(file: EnvoyFile, limits: &Limits) -> Result<Self, String> {
        let mut domains = BTreeMap::new();
        for domain in file.domains {
            if domain.domain.is_empty() {
                return Err("envoy.domains: a domain needs a name".into());
            }
            let mut root = Node::default();
            for descriptor in domain.descriptors {
                insert(&mut root, descriptor, &format!("envoy.domains[{}]", domain.domain), limits)?;
            }
            if domains.insert(domain.domain.clone(), root).is_some() {
                return Err(format!("envoy.domains: domain {:?} appears twice", domain.domain));
            }
        }
        Ok(Self { response_headers: file.response_headers, domains })
    }

    /// Whether `domain` has rules at all (a request's limit override applies only then).
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The rule for one descriptor's entries, if any rule matches them all.
    pub fn match_descriptor(&self, domain: &str, entries: &[(String, String)]) -> Option<Matched> {
        let mut node = self.domains.get(domain)?;
        let mut counter_key = String::new();
        for (key, value) in entries {
            node = node
                .children
                .get(&(key.clone(), Some(value.clone())))
                .or_else(|| node.children.get(&(key.clone(), None)))?;
            // Key and value are length-prefixed so no choice of strings can collide.
            counter_key.push_str(&format!("{}:{}{}:{}|", key.len(), key, value.len(), value));
        }
        let rule = node.rule.clone()?;
        Some(Matched { rule, shadow_mode: node.shadow_mode, counter_key: format!("{domain}|{counter_key}") })
    }
}

fn insert(parent: &mut Node, descriptor: DescriptorFile, path: &str, limits: &Limits) -> Result<(), String> {
    let path =
        format!("{path}.{}{}", descriptor.key, descriptor.value.as_ref().map(|v| format!("={v}")).unwrap_or_default());
    let rule = match descriptor.rate_limit {
        None => None,
        Some(limit) if limit.unlimited => Some(Rule::Unlimited),
        Some(limit) => {
            let unit = limit.unit.ok_or_else(|| format!("{path}: rate_limit needs a unit"))?;
            let requests_per_unit =
                limit.requests_per_unit.ok_or_else(|| format!("{path}: rate_limit needs requests_per_unit"))?;
            let algorithm = match limit.algorithm.as_deref().unwrap_or("fixed_window") {
                "fixed_window" => Algorithm::FixedWindow,
                "sliding_window" => Algorithm::SlidingWindow,
                "token_bucket" => Algorithm::TokenBucket,
                other => return Err(format!("{path}: unknown algorithm {other:?}")),
            };
            let rule = Rule::limit(unit, requests_per_unit, algorithm, limit.name.unwrap_or_default(), limits)
                .map_err(|err| format!("{path}: {err}"))?;
            Some(rule)
        }
    };
    let key = (descriptor.key, descriptor.value);
    if parent.children.contains_key(&key) {
        return Err(format!("{path}: appears twice"));
    }
    let mut node = Node { rule, shadow_mode: descriptor.shadow_mode, children: BTreeMap::new() };
    for child in descriptor.descriptors {
        insert(&mut node, child, &path, limits)?;
    }
    parent.children.insert(key, node);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> EnvoyRules {
        #[derive(Deserialize)]
        struct Wrapper {
            envoy: EnvoyFile,
        }
        let wrapper: Wrapper = toml::from_str(toml_text).unwrap();
        EnvoyRules::from_file(wrapper.envoy, &Limits::default()).unwrap()
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn exact_values_win_over_key_only_matches_and_nesting_descends() {
        let rules = rules(
            r#"
            [[envoy.domains]]
            domain = "edge"
            [[envoy.domains.descriptors]]
            key = "remote_address"
            rate_limit = { unit = "second", requests_per_unit = 10 }
            [[envoy.domains.descriptors]]
            key = "remote_address"
            value = "10.0.0.1"
            rate_limit = { unlimited = true }
            [[envoy.domains.descriptors]]
            key = "path"
            [[envoy.domains.descriptors.descriptors]]
            key = "method"
            value = "POST"
            rate_limit = { unit = "minute", requests_per_unit = 5 }
            "#,
        );
        let any = rules.match_descriptor("edge", &entries(&[("remote_address", "1.2.3.4")])).unwrap();
        assert!(matches!(any.rule, Rule::Limited { requests_per_unit: 10, .. }));
        let other = rules.match_descriptor("edge", &entries(&[("remote_address", "5.6.7.8")])).unwrap();
        assert_ne!(any.counter_key, other.counter_key, "key-only matches count per value");
        let vip = rules.match_descriptor("edge", &entries(&[("remote_address", "10.0.0.1")])).unwrap();
        assert_eq!(vip.rule, Rule::Unlimited);
        // A node without a limit limits nothing; its child does.
        assert!(rules.match_descriptor("edge", &entries(&[("path", "/x")])).is_none());
        let nested = rules.match_descriptor("edge", &entries(&[("path", "/x"), ("method", "POST")])).unwrap();
        assert!(matches!(nested.rule, Rule::Limited { unit: Unit::Minute, .. }));
        assert!(rules.match_descriptor("edge", &entries(&[("path", "/x"), ("method", "GET")])).is_none());
        assert!(rules.match_descriptor("other-domain", &entries(&[("remote_address", "1")])).is_none());
    }

    #[test]
    fn counter_keys_cannot_collide_by_concatenation() {
        let rules = rules(
            r#"
            [[envoy.domains]]
            domain = "d"
            [[envoy.domains.descriptors]]
            key = "a"
            rate_limit = { unit = "second", requests_per_unit = 1 }
            "#,
        );
        let one = rules.match_descriptor("d", &entries(&[("a", "b:c")])).unwrap();
        let two = rules.match_descriptor("d", &entries(&[("a", "b")])).unwrap();
        assert_ne!(one.counter_key, two.counter_key);
    }
}
