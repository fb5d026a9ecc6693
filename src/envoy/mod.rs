//! Envoy's global rate limit API (`envoy.service.ratelimit.v3.RateLimitService`) on
//! Baton's rate-limit engine.
//!
//! Rules follow envoyproxy/ratelimit's configuration: per domain, a tree of descriptor
//! keys, each optionally pinned to a value (no value = a key-only match that counts each
//! value separately; a value ending in `*` = any value with that prefix), with a limit at
//! any node. A request descriptor's entries walk the tree (exact value, then the first
//! matching wildcard in file order, then key-only); the limit of the node reached by the
//! last entry applies. Descriptors that match no rule are allowed and not counted, as in
//! Envoy. The rules come from the `[envoy]` section of Baton's TOML file and from a
//! directory of envoyproxy/ratelimit's own YAML files (`upstream_files`), which is
//! reloaded when it changes.

pub mod grpc;
pub mod upstream_files;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::ratelimit::{Algorithm, LimitSpec};
use crate::validate::Limits;

/// The `[envoy]` section of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyFile {
    /// Add the `RateLimit-Limit`, `-Remaining` and `-Reset` headers to responses, as
    /// envoyproxy/ratelimit's `LIMIT_RESPONSE_HEADERS_ENABLED` does.
    #[serde(default)]
    pub response_headers: bool,
    /// The three headers' names (envoyproxy/ratelimit's `LIMIT_*_HEADER`).
    pub limit_header: Option<String>,
    pub remaining_header: Option<String>,
    pub reset_header: Option<String>,
    /// How a request's descriptors are counted.
    pub counting: Option<Counting>,
    /// A directory of envoyproxy/ratelimit YAML config files, reloaded on change.
    pub config_dir: Option<PathBuf>,
    #[serde(default)]
    pub domains: Vec<DomainFile>,
}

/// How the descriptors of one request are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Counting {
    /// All enforced descriptors of a request are one atomic check: a request that is over
    /// any limit consumes nothing from the others.
    #[default]
    Atomic,
    /// As envoyproxy/ratelimit counts by default: every matched descriptor counts every
    /// hit, each on its own, whether the request is admitted or not.
    Upstream,
}

/// Settings that hold for the server's life (the rules may be reloaded).
#[derive(Debug, Clone)]
pub struct EnvoySettings {
    pub response_headers: Option<ResponseHeaders>,
    pub counting: Counting,
    pub config_dir: Option<PathBuf>,
}

/// The names of the rate limit headers added to responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHeaders {
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

/// One domain's rules: a TOML `[[envoy.domains]]` entry or one upstream YAML file, whose
/// format this is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainFile {
    pub domain: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub descriptors: Vec<DescriptorFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorFile {
    pub key: String,
    pub value: Option<String>,
    pub rate_limit: Option<RateLimitFile>,
    /// Counted and reported, never blocks.
    #[serde(default)]
    pub shadow_mode: bool,
    /// Over limit is reported as OK with the limit and what remains (a quota to watch).
    #[serde(default)]
    pub quota_mode: bool,
    /// Upstream names its statistics after each value with these; Baton's metrics are
    /// per rule, so that no caller can grow the series without bound. Accepted, no effect.
    #[serde(default)]
    pub detailed_metric: bool,
    #[serde(default)]
    pub value_to_metric: bool,
    /// On a wildcard value: every value it matches shares one counter.
    #[serde(default)]
    pub share_threshold: bool,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub descriptors: Vec<DescriptorFile>,
}

/// envoyproxy/ratelimit's units, with its lengths: a month is 30 days, a year 365. Read
/// in any case (upstream upper-cases them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl<'de> Deserialize<'de> for Unit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.to_ascii_lowercase().as_str() {
            "second" => Self::Second,
            "minute" => Self::Minute,
            "hour" => Self::Hour,
            "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            "year" => Self::Year,
            _ => return Err(serde::de::Error::custom(format!("invalid rate limit unit {text:?}"))),
        })
    }
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub unit: Option<Unit>,
    /// Missing means 0, a block rule, as upstream reads it.
    #[serde(default)]
    pub requests_per_unit: u64,
    /// fixed_window (default: on the clock's unit boundaries, as envoyproxy/ratelimit),
    /// sliding_window or token_bucket. Baton's own; not in upstream's files.
    pub algorithm: Option<String>,
    #[serde(default)]
    pub unlimited: bool,
    pub name: Option<String>,
    /// Names of rules this one replaces: when both match one request, only this counts.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub replaces: Vec<Replaces>,
}

/// A list written as an empty YAML value (`descriptors:`) is empty, as upstream reads it.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replaces {
    pub name: String,
}

/// Everything `ShouldRateLimit` is configured with.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    pub settings: EnvoySettings,
    /// The TOML file's domains, kept to rebuild the rules when the directory changes.
    pub static_domains: Vec<DomainFile>,
    /// The rules at start.
    pub rules: EnvoyRules,
    /// The fingerprint of the directory's files the rules were read from.
    pub loaded_files: Vec<u8>,
}

/// What the command line sets for Envoy; each wins over the file's.
#[derive(Debug, Clone, Default)]
pub struct EnvoyFlags {
    pub config_dir: Option<PathBuf>,
    pub counting: Option<Counting>,
    pub response_headers: bool,
}

impl EnvoyConfig {
    pub fn new(file: EnvoyFile, flags: EnvoyFlags, limits: &Limits) -> Result<Self, String> {
        let header = |name: Option<String>, default: &str| -> Result<String, String> {
            let name = name.unwrap_or_else(|| default.to_owned());
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(_) => Ok(name),
                Err(_) => Err(format!("envoy: {name:?} is not a valid header name")),
            }
        };
        let response_headers = (file.response_headers || flags.response_headers)
            .then(|| {
                Ok::<_, String>(ResponseHeaders {
                    limit: header(file.limit_header, "RateLimit-Limit")?,
                    remaining: header(file.remaining_header, "RateLimit-Remaining")?,
                    reset: header(file.reset_header, "RateLimit-Reset")?,
                })
            })
            .transpose()?;
        let settings = EnvoySettings {
            response_headers,
            counting: flags.counting.or(file.counting).unwrap_or_default(),
            config_dir: flags.config_dir.or(file.config_dir),
        };
        let (rules, loaded_files) = match &settings.config_dir {
            Some(dir) => upstream_files::load(dir, &file.domains, limits)?,
            None => (
                EnvoyRules::build(file.domains.iter().map(|d| ("config file [envoy]".to_owned(), d)), limits)?,
                Vec::new(),
            ),
        };
        Ok(Self { settings, static_domains: file.domains, rules, loaded_files })
    }
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
    quota_mode: bool,
    /// The rule's name, for `replaces`.
    name: String,
    replaces: Vec<String>,
    share_threshold: bool,
    /// Children by (key, value); value None is the key-only match.
    children: BTreeMap<(String, Option<String>), Node>,
    /// The wildcard children's (key, value), in file order: the first that matches wins.
    wildcards: Vec<(String, String)>,
}

/// A matched descriptor: its rule, how it is enforced, and the counter key it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub rule: Rule,
    pub shadow_mode: bool,
    pub quota_mode: bool,
    pub name: String,
    pub replaces: Vec<String>,
    pub counter_key: String,
}

/// Validated rules for every domain.
#[derive(Debug, Clone, Default)]
pub struct EnvoyRules {
    domains: BTreeMap<String, Node>,
}

impl EnvoyRules {
    /// The configured domains, by name (the dashboard lists them).
    pub fn domain_names(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// Rules from domain files; `origin` names where each came from, for errors.
    pub fn build<'a>(
        files: impl IntoIterator<Item = (String, &'a DomainFile)>,
        limits: &Limits,
    ) -> Result<Self, String> {
        let mut domains = BTreeMap::new();
        for (origin, domain) in files {
            if domain.domain.is_empty() {
                return Err(format!("{origin}: a domain needs a name"));
            }
            let mut root = Node::default();
            for descriptor in &domain.descriptors {
                insert(&mut root, descriptor, &format!("{origin}: domain {}", domain.domain), limits)?;
            }
            if domains.insert(domain.domain.clone(), root).is_some() {
                return Err(format!("{origin}: domain {:?} is defined twice", domain.domain));
            }
        }
        Ok(Self { domains })
    }

    /// Whether `domain` has rules at all (a request's limit override applies only then).
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// How many domains have rules (for the reload log).
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// The rule for one descriptor's entries, if any rule matches them all.
    pub fn match_descriptor(&self, domain: &str, entries: &[(String, String)]) -> Option<Matched> {
        let mut node = self.domains.get(domain)?;
        let mut counter_key = String::new();
        for (key, value) in entries {
            let (next, counted_value) = if let Some(exact) = node.children.get(&(key.clone(), Some(value.clone()))) {
                (exact, value.as_str())
            } else if let Some((_, pattern)) = node
                .wildcards
                .iter()
                .find(|(wild_key, pattern)| wild_key == key && value.starts_with(pattern.trim_end_matches('*')))
            {
                let wild = &node.children[&(key.clone(), Some(pattern.clone()))];
                // Sharing: every value the pattern matches counts on the pattern's counter.
                (wild, if wild.share_threshold { pattern.as_str() } else { value.as_str() })
            } else {
                (node.children.get(&(key.clone(), None))?, value.as_str())
            };
            // Key and value are length-prefixed so no choice of strings can collide.
            counter_key.push_str(&format!("{}:{}{}:{}|", key.len(), key, counted_value.len(), counted_value));
            node = next;
        }
        let rule = node.rule.clone()?;
        Some(Matched {
            rule,
            shadow_mode: node.shadow_mode,
            quota_mode: node.quota_mode,
            name: node.name.clone(),
            replaces: node.replaces.clone(),
            counter_key: format!("{domain}|{counter_key}"),
        })
    }
}

fn insert(parent: &mut Node, descriptor: &DescriptorFile, path: &str, limits: &Limits) -> Result<(), String> {
    let path =
        format!("{path}.{}{}", descriptor.key, descriptor.value.as_ref().map(|v| format!("={v}")).unwrap_or_default());
    if descriptor.key.is_empty() {
        return Err(format!("{path}: a descriptor needs a key"));
    }
    let wildcard = descriptor.value.as_deref().is_some_and(|value| value.ends_with('*'));
    if descriptor.share_threshold && !wildcard {
        return Err(format!("{path}: share_threshold applies only to a wildcard value (one ending in *)"));
    }
    let (mut name, mut replaces) = (String::new(), Vec::new());
    let rule = match &descriptor.rate_limit {
        None => None,
        Some(limit) => {
            name = limit.name.clone().unwrap_or_default();
            for replaced in &limit.replaces {
                if replaced.name.is_empty() {
                    return Err(format!("{path}: a replaces entry needs a name"));
                }
                if replaced.name == name {
                    return Err(format!("{path}: a rule cannot replace itself ({name:?})"));
                }
                replaces.push(replaced.name.clone());
            }
            Some(rule_of(limit, &path, &name, limits)?)
        }
    };
    let key = (descriptor.key.clone(), descriptor.value.clone());
    if parent.children.contains_key(&key) {
        return Err(format!("{path}: appears twice"));
    }
    let mut node = Node {
        rule,
        shadow_mode: descriptor.shadow_mode,
        quota_mode: descriptor.quota_mode,
        name,
        replaces,
        share_threshold: descriptor.share_threshold,
        ..Node::default()
    };
    for child in &descriptor.descriptors {
        insert(&mut node, child, &path, limits)?;
    }
    if wildcard {
        parent.wildcards.push((descriptor.key.clone(), descriptor.value.clone().unwrap_or_default()));
    }
    parent.children.insert(key, node);
    Ok(())
}

fn rule_of(limit: &RateLimitFile, path: &str, name: &str, limits: &Limits) -> Result<Rule, String> {
    if limit.unlimited {
        return match limit.unit {
            Some(_) => Err(format!("{path}: an unlimited rule takes no unit")),
            None => Ok(Rule::Unlimited),
        };
    }
    let unit = limit.unit.ok_or_else(|| format!("{path}: rate_limit needs a unit"))?;
    let algorithm = match limit.algorithm.as_deref().unwrap_or("fixed_window") {
        "fixed_window" => Algorithm::ClockWindow,
        "sliding_window" => Algorithm::SlidingWindow,
        "token_bucket" => Algorithm::TokenBucket,
        other => return Err(format!("{path}: unknown algorithm {other:?}")),
    };
    Rule::limit(unit, limit.requests_per_unit, algorithm, name.to_owned(), limits)
        .map_err(|err| format!("{path}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> EnvoyRules {
        try_rules(toml_text).unwrap()
    }

    fn try_rules(toml_text: &str) -> Result<EnvoyRules, String> {
        #[derive(Deserialize)]
        struct Wrapper {
            envoy: EnvoyFile,
        }
        let wrapper: Wrapper = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        EnvoyRules::build(wrapper.envoy.domains.iter().map(|d| ("test".to_owned(), d)), &Limits::default())
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
            rate_limit = { unit = "MINUTE", requests_per_unit = 5 }
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

    #[test]
    fn wildcards_match_by_prefix_after_exact_values_and_share_a_counter_only_when_asked() {
        let rules = rules(
            r#"
            [[envoy.domains]]
            domain = "files"
            [[envoy.domains.descriptors]]
            key = "path"
            value = "shared/*"
            share_threshold = true
            rate_limit = { unit = "minute", requests_per_unit = 100 }
            [[envoy.domains.descriptors]]
            key = "path"
            value = "apart/*"
            rate_limit = { unit = "minute", requests_per_unit = 20 }
            [[envoy.domains.descriptors]]
            key = "path"
            value = "apart/exact"
            rate_limit = { unit = "minute", requests_per_unit = 7 }
            [[envoy.domains.descriptors]]
            key = "path"
            rate_limit = { unit = "minute", requests_per_unit = 1 }
            "#,
        );
        let key = |path: &str| rules.match_descriptor("files", &entries(&[("path", path)])).unwrap();
        assert_eq!(key("shared/a.pdf").counter_key, key("shared/b.csv").counter_key);
        assert!(matches!(key("shared/a.pdf").rule, Rule::Limited { requests_per_unit: 100, .. }));
        assert_ne!(key("apart/a").counter_key, key("apart/b").counter_key);
        assert!(matches!(key("apart/a").rule, Rule::Limited { requests_per_unit: 20, .. }));
        assert!(matches!(key("apart/exact").rule, Rule::Limited { requests_per_unit: 7, .. }));
        assert!(matches!(key("elsewhere").rule, Rule::Limited { requests_per_unit: 1, .. }));
    }

    #[test]
    fn an_empty_descriptors_list_is_a_domain_without_rules() {
        let domain: DomainFile = serde_saphyr::from_str("domain: quiet\ndescriptors:\n").unwrap();
        let rules = EnvoyRules::build([("test".to_owned(), &domain)], &Limits::default()).unwrap();
        assert!(rules.has_domain("quiet"));
        assert!(rules.match_descriptor("quiet", &entries(&[("k", "v")])).is_none());
    }

    #[test]
    fn rules_upstream_refuses_are_refused() {
        let domain = |descriptor: &str| {
            format!("[[envoy.domains]]\ndomain = \"d\"\n[[envoy.domains.descriptors]]\n{descriptor}\n")
        };
        for (descriptor, why) in [
            ("key = \"a\"\nvalue = \"b\"\nshare_threshold = true", "share_threshold"),
            (
                "key = \"a\"\nrate_limit = { unit = \"minute\", requests_per_unit = 1, name = \"x\", replaces = [{ name = \"x\" }] }",
                "replace itself",
            ),
            (
                "key = \"a\"\nrate_limit = { unit = \"minute\", requests_per_unit = 1, replaces = [{ name = \"\" }] }",
                "replaces entry",
            ),
            ("key = \"a\"\nrate_limit = { unit = \"minute\", unlimited = true }", "unlimited"),
            ("key = \"a\"\nrate_limit = { unit = \"fortnight\", requests_per_unit = 1 }", "unit"),
            ("key = \"\"", "needs a key"),
        ] {
            let error = try_rules(&domain(descriptor)).unwrap_err();
            assert!(error.contains(why), "{descriptor}: {error}");
        }
        // A missing requests_per_unit reads as 0, a block rule, as upstream reads it.
        let blocked = rules(&domain("key = \"a\"\nrate_limit = { unit = \"hour\" }"));
        assert!(matches!(blocked.match_descriptor("d", &entries(&[("a", "x")])).unwrap().rule, Rule::Blocked { .. }));
    }
}
