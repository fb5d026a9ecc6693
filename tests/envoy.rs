//! Envoy's `ShouldRateLimit` against a real Redis, driven by a client generated from our
//! Envoy protos, through the scenarios of envoyproxy/ratelimit's README.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use baton::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use baton::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use baton::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use baton::proto::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as ResponseUnit;
use baton::proto::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use baton::proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use baton::proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use baton::proto::envoy::r#type::v3::RateLimitUnit;
use common::{Baton, Clients, Redis, Server, unique};
use std::time::Duration;
use tonic::transport::Channel;

const CONFIG: &str = r#"
[envoy]
response_headers = true

[[envoy.domains]]
domain = "edge_proxy_per_ip"
[[envoy.domains.descriptors]]
key = "remote_address"
rate_limit = { unit = "minute", requests_per_unit = 3, name = "per-ip" }
[[envoy.domains.descriptors]]
key = "remote_address"
value = "50.0.0.5"
rate_limit = { unlimited = true }
[[envoy.domains.descriptors]]
key = "to_number"
value = "2061111111"
shadow_mode = true
rate_limit = { unit = "hour", requests_per_unit = 2 }

[[envoy.domains.descriptors]]
key = "blocked_path"
value = "/admin"
rate_limit = { unit = "minute", requests_per_unit = 0, name = "block" }
[[envoy.domains.descriptors]]
key = "tenant"
rate_limit = { unit = "week", requests_per_unit = 1000 }

[[envoy.domains]]
domain = "messaging"
[[envoy.domains.descriptors]]
key = "message_type"
value = "marketing"
[[envoy.domains.descriptors.descriptors]]
key = "to_number"
rate_limit = { unit = "day", requests_per_unit = 5, algorithm = "sliding_window" }
"#;

type Envoy = RateLimitServiceClient<Channel>;

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        limit: None,
        hits_addend: None,
    }
}

async fn ask(envoy: &mut Envoy, domain: &str, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitResponse {
    let request = RateLimitRequest { domain: domain.into(), descriptors, hits_addend: hits };
    envoy.should_rate_limit(request).await.expect("ShouldRateLimit").into_inner()
}

/// Envoy rules' fixed windows end on the clock's minute (and hour, day…) boundaries, as
/// envoyproxy/ratelimit's do: a test that counts within one minute first waits until a
/// boundary is at least 15 s away.
fn clear_of_a_minute_boundary() {
    let into_minute = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 60;
    assert!(testkit::wait::until(Duration::from_secs(16), || into_minute() < 45), "the clock stands still");
}

fn start(redis: &Redis) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.toml");
    std::fs::write(&path, CONFIG).unwrap();
    // Every test here counts within a minute at most.
    clear_of_a_minute_boundary();
    let baton = Server::start(&redis.url(), &["--config", path.to_str().unwrap()]);
    (dir, baton)
}

async fn client(baton: &impl Clients) -> Envoy {
    RateLimitServiceClient::new(baton.channel().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_remote_address_limits_count_each_address_with_exact_statuses_and_headers() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let mut envoy = client(&baton).await;
    let ip = unique("10.0.0");
    for remaining in [2, 1, 0] {
        let response = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", &ip)])], 0).await;
        assert_eq!(response.overall_code, Code::Ok as i32);
        let status = &response.statuses[0];
        assert_eq!(status.limit_remaining, remaining);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!((limit.requests_per_unit, limit.name.as_str()), (3, "per-ip"));
        let reset = status.duration_until_reset.unwrap();
        assert!(reset.seconds <= 60 && (reset.seconds > 0 || reset.nanos > 0));
        let header =
            |name: &str| response.response_headers_to_add.iter().find(|h| h.key == name).map(|h| h.value.clone());
        assert_eq!(header("RateLimit-Limit").as_deref(), Some("3"));
        assert_eq!(header("RateLimit-Remaining"), Some(remaining.to_string()));
        assert_eq!(header("RateLimit-Reset"), Some(reset.seconds.to_string()));
        assert_eq!(response.response_headers_to_add.len(), 3, "each header once");
    }
    let over = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", &ip)])], 0).await;
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    assert_eq!(over.statuses[0].code, Code::OverLimit as i32);
    // Counters end with their minute, though only a window's first hit sets that.
    redis.assert_every_key_expires_within(Duration::from_secs(60));
    // Another address has its own counter.
    let other = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", &unique("10.9"))])], 0).await;
    assert_eq!(other.overall_code, Code::Ok as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_unlimited_value_beats_the_key_only_match_and_unknown_descriptors_pass() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let mut envoy = client(&baton).await;
    for _ in 0..10 {
        let response =
            ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", "50.0.0.5")])], 0).await;
        assert_eq!(response.overall_code, Code::Ok as i32);
        assert!(response.statuses[0].current_limit.is_none());
    }
    for _ in 0..10 {
        let response = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("user_agent", "curl")])], 0).await;
        assert_eq!(response.overall_code, Code::Ok as i32);
        assert!(response.statuses[0].current_limit.is_none());
    }
    let response = ask(&mut envoy, "no_such_domain", vec![descriptor(&[("remote_address", "1.1.1.1")])], 0).await;
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert_eq!(redis.dbsize(), 0, "unlimited and unknown descriptors must not be counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_descriptors_limit_per_value_of_the_inner_key() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let mut envoy = client(&baton).await;
    let number = unique("206");
    let marketing = || descriptor(&[("message_type", "marketing"), ("to_number", number.as_str())]);
    for _ in 0..5 {
        assert_eq!(ask(&mut envoy, "messaging", vec![marketing()], 0).await.overall_code, Code::Ok as i32);
    }
    let over = ask(&mut envoy, "messaging", vec![marketing()], 0).await;
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    assert_eq!(over.statuses[0].current_limit.as_ref().unwrap().requests_per_unit, 5);
    // The outer key alone has no limit of its own.
    let outer = ask(&mut envoy, "messaging", vec![descriptor(&[("message_type", "marketing")])], 0).await;
    assert_eq!(outer.overall_code, Code::Ok as i32);
    assert!(outer.statuses[0].current_limit.is_none());
    let other = descriptor(&[("message_type", "marketing"), ("to_number", "other")]);
    assert_eq!(ask(&mut envoy, "messaging", vec![other], 0).await.overall_code, Code::Ok as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_counts_but_never_blocks() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let mut envoy = client(&baton).await;
    let shadowed = || descriptor(&[("to_number", "2061111111")]);
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let response = ask(&mut envoy, "edge_proxy_per_ip", vec![shadowed()], 0).await;
        assert_eq!(response.overall_code, Code::Ok as i32);
        assert_eq!(response.statuses[0].code, Code::Ok as i32);
        remaining.push(response.statuses[0].limit_remaining);
    }
    assert_eq!(remaining, vec![1, 0, 0, 0], "counted against its 2-per-hour limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_addend_at_request_and_descriptor_level() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let mut envoy = client(&baton).await;
    let ip = unique("10.1");
    let response = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", &ip)])], 2).await;
    assert_eq!((response.overall_code, response.statuses[0].limit_remaining), (Code::Ok as i32, 1));
    let over = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", &ip)])], 2).await;
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    // A descriptor's own hits_addend overrides the request's.
    let mut one = descriptor(&[("remote_address", &ip)]);
    one.hits_addend = Some(1);
    let response = ask(&mut envoy, "edge_proxy_per_ip", vec![one], 5).await;
    assert_eq!((response.overall_code, response.statuses[0].limit_remaining), (Code::Ok as i32, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_second_descriptor_is_over_limit_consumes_nothing_from_the_first() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let mut envoy = client(&baton).await;
    let ip = unique("10.2");
    // Exhaust the first address.
    let exhausted = unique("10.3");
    ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", &exhausted)])], 3).await;
    for _ in 0..3 {
        let both = vec![descriptor(&[("remote_address", &ip)]), descriptor(&[("remote_address", &exhausted)])];
        let response = ask(&mut envoy, "edge_proxy_per_ip", both, 0).await;
        assert_eq!(response.overall_code, Code::OverLimit as i32);
        assert_eq!(response.statuses[0].code, Code::Ok as i32);
        // What the first address still has: the denied request took nothing from it.
        assert_eq!(response.statuses[0].limit_remaining, 3);
        assert_eq!((response.statuses[1].code, response.statuses[1].limit_remaining), (Code::OverLimit as i32, 0));
    }
    let alone = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", &ip)])], 0).await;
    assert_eq!(alone.statuses[0].limit_remaining, 2, "the denied requests consumed from the first descriptor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_beyond_what_a_limit_can_ever_admit_are_over_limit_and_count_nothing() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let mut envoy = client(&baton).await;
    let (number, other) = (unique("206"), unique("425"));
    let marketing = |to: &str| descriptor(&[("message_type", "marketing"), ("to_number", to)]);
    // 6 hits against 5 a day (sliding window), beside a number with room: over limit, and
    // neither counter moves.
    let mut roomy = marketing(&other);
    roomy.hits_addend = Some(1);
    let response = ask(&mut envoy, "messaging", vec![marketing(&number), roomy], 6).await;
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    assert_eq!(response.statuses[0].code, Code::OverLimit as i32);
    let after = ask(&mut envoy, "messaging", vec![marketing(&other)], 1).await;
    assert_eq!(after.statuses[0].limit_remaining, 4, "the refused request counted against the other number");
    for _ in 0..5 {
        assert_eq!(ask(&mut envoy, "messaging", vec![marketing(&number)], 0).await.overall_code, Code::Ok as i32);
    }
    // Descriptors sharing a counter whose hits add up past u64 do not overflow.
    let mut huge = marketing(&other);
    huge.hits_addend = Some(u64::MAX);
    let response = ask(&mut envoy, "messaging", vec![huge.clone(), huge], 0).await;
    assert_eq!(response.overall_code, Code::OverLimit as i32);
}

fn with_override(mut descriptor: RateLimitDescriptor, requests_per_unit: u32) -> RateLimitDescriptor {
    descriptor.limit = Some(RateLimitOverride { requests_per_unit, unit: RateLimitUnit::Minute as i32 });
    descriptor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_limit_blocks_and_counts_nothing_whether_configured_or_overridden() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let mut envoy = client(&baton).await;
    // requests_per_unit = 0 in the config: a block rule.
    let blocked = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("blocked_path", "/admin")])], 0).await;
    assert_eq!(blocked.overall_code, Code::OverLimit as i32);
    let status = &blocked.statuses[0];
    assert_eq!((status.code, status.limit_remaining), (Code::OverLimit as i32, 0));
    assert_eq!(status.current_limit.as_ref().unwrap().requests_per_unit, 0);
    // A request's override of 0 denies too (it used to let traffic through uncounted).
    let ip = unique("10.9");
    let zero = with_override(descriptor(&[("remote_address", &ip)]), 0);
    let response = ask(&mut envoy, "edge_proxy_per_ip", vec![zero], 0).await;
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    // ...and counted nothing: the address still has its whole configured limit.
    let response = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", &ip)])], 0).await;
    assert_eq!(response.statuses[0].limit_remaining, 2);
    assert_eq!(redis.keys().iter().filter(|key| key.contains(":rl:")).count(), 1, "{:?}", redis.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_apply_only_on_known_domains_and_are_enforced_over_shadow_rules() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let mut envoy = client(&baton).await;
    // A domain without rules ignores the override: allowed, nothing counted.
    let unknown = with_override(descriptor(&[("remote_address", "1.1.1.1")]), 0);
    let response = ask(&mut envoy, "no-such-domain", vec![unknown], 0).await;
    assert_eq!(response.overall_code, Code::Ok as i32);
    // The shadow-mode rule allows 2 per hour without blocking; an override of 1 per minute
    // on it is enforced.
    let shadowed = || with_override(descriptor(&[("to_number", "2061111111")]), 1);
    assert_eq!(ask(&mut envoy, "edge_proxy_per_ip", vec![shadowed()], 0).await.overall_code, Code::Ok as i32);
    let over = ask(&mut envoy, "edge_proxy_per_ip", vec![shadowed()], 0).await;
    assert_eq!((over.overall_code, over.statuses[0].code), (Code::OverLimit as i32, Code::OverLimit as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_hits_only_look_unlimited_reports_the_maximum_and_resets_are_whole_seconds() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let mut envoy = client(&baton).await;
    let ip = unique("10.2");
    let counted = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", &ip)])], 0).await;
    assert_eq!(counted.statuses[0].limit_remaining, 2);
    let reset = counted.statuses[0].duration_until_reset.unwrap();
    assert_eq!(reset.nanos, 0, "duration_until_reset is whole seconds: {reset:?}");
    assert!((1..=60).contains(&reset.seconds), "{reset:?}");
    for _ in 0..3 {
        let mut look = descriptor(&[("remote_address", &ip)]);
        look.hits_addend = Some(0);
        let looked = ask(&mut envoy, "edge_proxy_per_ip", vec![look], 0).await;
        assert_eq!((looked.overall_code, looked.statuses[0].limit_remaining), (Code::Ok as i32, 2));
    }
    let unlimited = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", "50.0.0.5")])], 0).await;
    assert_eq!(unlimited.statuses[0].limit_remaining, u32::MAX);
    // A weekly limit, as envoyproxy/ratelimit's configs may state.
    let weekly = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("tenant", "acme")])], 0).await;
    let limit = weekly.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!((limit.unit, weekly.statuses[0].limit_remaining), (ResponseUnit::Week as i32, 999));
}

// ─── envoyproxy/ratelimit's own YAML files, replaces, wildcards, quota mode, counting ────

/// A directory of upstream-format YAML files, once the clock is clear of a minute boundary.
fn yaml_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    clear_of_a_minute_boundary();
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// A baton reading upstream-format YAML files from a directory, with `extra` flags.
fn start_with_yaml(redis: &Redis, files: &[(&str, &str)], extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = yaml_dir(files);
    let mut args = vec!["--envoy-config-dir", dir.path().to_str().unwrap()];
    args.extend(extra);
    let baton = Server::start(&redis.url(), &args);
    (dir, baton)
}

const FILES_YAML: &str = r#"
domain: files
descriptors:
  # every path under shared/ counts on one counter
  - key: path
    value: "shared/*"
    share_threshold: true
    detailed_metric: true
    rate_limit:
      unit: HOUR
      requests_per_unit: 3
  # every path under apart/ counts on its own
  - key: path
    value: "apart/*"
    value_to_metric: true
    rate_limit:
      unit: hour
      requests_per_unit: 2
  - key: path
    value: "apart/vip"
    rate_limit:
      unlimited: true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_yaml_files_apply_unchanged_with_wildcards_that_share_or_not() {
    let redis = Redis::start();
    let (_dir, baton) = start_with_yaml(&redis, &[("files.yaml", FILES_YAML)], &[]);
    let mut envoy = client(&baton).await;
    let path = |p: &str| vec![descriptor(&[("path", p)])];
    for (file, remaining) in [("shared/a.pdf", 2), ("shared/b.csv", 1), ("shared/c.txt", 0)] {
        let response = ask(&mut envoy, "files", path(file), 0).await;
        assert_eq!((response.overall_code, response.statuses[0].limit_remaining), (Code::Ok as i32, remaining));
        assert_eq!(response.statuses[0].current_limit.as_ref().unwrap().unit, ResponseUnit::Hour as i32);
    }
    assert_eq!(ask(&mut envoy, "files", path("shared/d"), 0).await.overall_code, Code::OverLimit as i32);
    for file in ["apart/a", "apart/b"] {
        for remaining in [1, 0] {
            let response = ask(&mut envoy, "files", path(file), 0).await;
            assert_eq!(response.statuses[0].limit_remaining, remaining, "{file}");
        }
    }
    // An exact value wins over the wildcard.
    assert_eq!(ask(&mut envoy, "files", path("apart/vip"), 0).await.statuses[0].limit_remaining, u32::MAX);
    // Outside every pattern, no rule.
    assert!(ask(&mut envoy, "files", path("other/x"), 0).await.statuses[0].current_limit.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_is_reloaded_on_change_and_a_bad_edit_keeps_the_last_good_rules() {
    let redis = Redis::start();
    // A child process: the refused reload is seen in its log.
    let dir = yaml_dir(&[("files.yaml", FILES_YAML)]);
    let baton = Baton::start(Some(&redis.url()), &["--envoy-config-dir", dir.path().to_str().unwrap()]);
    let mut envoy = client(&baton).await;
    let limited = |response: &RateLimitResponse| response.statuses[0].current_limit.is_some();
    assert!(!limited(&ask(&mut envoy, "late", vec![descriptor(&[("k", "v")])], 0).await));

    let late = "domain: late\ndescriptors:\n  - key: k\n    rate_limit: {unit: day, requests_per_unit: 1}\n";
    std::fs::write(dir.path().join("late.yaml"), late).unwrap();
    common::eventually(Duration::from_secs(10), "the new file's rules to apply", || {
        let mut envoy = envoy.clone();
        async move { limited(&ask(&mut envoy, "late", vec![descriptor(&[("k", &unique("v"))])], 0).await) }
    })
    .await;

    // A misspelled key, as upstream refuses it: the whole reload is refused, logged, and
    // the rules before it keep serving.
    std::fs::write(dir.path().join("broken.yaml"), "domain: broken\ndescriptors:\n  - key: k\n    ratelimit: {}\n")
        .unwrap();
    common::eventually(Duration::from_secs(10), "the refused reload to be logged", || async {
        baton.logs().iter().any(|line| line.contains("envoy rules not reloaded") && line.contains("broken.yaml"))
    })
    .await;
    assert!(limited(&ask(&mut envoy, "late", vec![descriptor(&[("k", &unique("v"))])], 0).await));
    assert!(limited(&ask(&mut envoy, "files", vec![descriptor(&[("path", "shared/x")])], 0).await));

    // Fixed, then a file removed: its domain goes.
    std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("late.yaml")).unwrap();
    common::eventually(Duration::from_secs(10), "the removed file's rules to go", || {
        let mut envoy = envoy.clone();
        async move { !limited(&ask(&mut envoy, "late", vec![descriptor(&[("k", &unique("v"))])], 0).await) }
    })
    .await;
}

#[test]
fn a_bad_upstream_file_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("typo.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requestsperunit: 5}\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["--envoy-config-dir", dir.path().to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("typo.yaml") && stderr.contains("requestsperunit"), "{stderr}");
}

const PLANS_YAML: &str = r#"
domain: plans
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 5, name: per_user}
  - key: plan
    value: gold
    rate_limit:
      unit: hour
      requests_per_unit: 100
      replaces:
        - name: per_user
  - key: report
    quota_mode: true
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: api
    rate_limit: {unit: hour, requests_per_unit: 10}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacing_rule_drops_the_replaced_one_and_quota_mode_reports_ok() {
    let redis = Redis::start();
    let (_dir, baton) = start_with_yaml(&redis, &[("plans.yaml", PLANS_YAML)], &[]);
    let mut envoy = client(&baton).await;
    let user = unique("u");
    let both = vec![descriptor(&[("user", &user)]), descriptor(&[("plan", "gold")])];
    let response = ask(&mut envoy, "plans", both, 0).await;
    let unmatched = DescriptorStatus { code: Code::Ok as i32, ..DescriptorStatus::default() };
    assert_eq!(response.statuses[0], unmatched, "the replaced rule neither counts nor answers");
    assert_eq!(response.statuses[1].limit_remaining, 99);
    let alone = ask(&mut envoy, "plans", vec![descriptor(&[("user", &user)])], 0).await;
    assert_eq!(alone.statuses[0].limit_remaining, 4, "the replaced rule was not counted");

    // Quota mode: over its quota a descriptor answers OK, with its limit and no reset.
    let (report, api) = (unique("r"), unique("a"));
    for round in 1..=4u32 {
        let request = vec![descriptor(&[("report", &report)]), descriptor(&[("api", &api)])];
        let response = ask(&mut envoy, "plans", request, 0).await;
        assert_eq!(response.overall_code, Code::Ok as i32, "round {round}");
        let quota = &response.statuses[0];
        assert_eq!((quota.code, quota.limit_remaining), (Code::Ok as i32, 2u32.saturating_sub(round)));
        assert_eq!(quota.duration_until_reset.is_none(), round > 2, "round {round}");
        // The other descriptor counts every round: quota mode never denies the request.
        assert_eq!(response.statuses[1].limit_remaining, 10 - round);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_counting_counts_every_hit_and_headers_follow_the_denying_descriptor() {
    let redis = Redis::start();
    let (_dir, baton) = start_with_yaml(
        &redis,
        &[("plans.yaml", PLANS_YAML)],
        &["--envoy-counting", "upstream", "--envoy-response-headers"],
    );
    let mut envoy = client(&baton).await;
    let (user, api) = (unique("u"), unique("a"));
    let request = || vec![descriptor(&[("user", &user)]), descriptor(&[("api", &api)])];
    for round in 1..=7u32 {
        let response = ask(&mut envoy, "plans", request(), 0).await;
        let over = round > 5;
        assert_eq!(response.overall_code, if over { Code::OverLimit } else { Code::Ok } as i32, "round {round}");
        assert_eq!(response.statuses[0].limit_remaining, 5u32.saturating_sub(round));
        // Counted although the request is denied, as upstream counts.
        assert_eq!(response.statuses[1].limit_remaining, 10 - round, "round {round}");
        let header = |name: &str| {
            let values: Vec<&str> =
                response.response_headers_to_add.iter().filter(|h| h.key == name).map(|h| h.value.as_str()).collect();
            assert_eq!(values.len(), 1, "{name} once");
            values[0].to_owned()
        };
        // The descriptor with the fewest remaining, or the one that denies.
        assert_eq!(header("RateLimit-Limit"), "5");
        assert_eq!(header("RateLimit-Remaining"), (5u32.saturating_sub(round)).to_string());
        let reset: u64 = header("RateLimit-Reset").parse().unwrap();
        assert!((1..=3600).contains(&reset), "{reset}");
    }
    // The denied hits counted: a look (hits 0) at the user finds it still over.
    let mut look = descriptor(&[("user", &user)]);
    look.hits_addend = Some(0);
    assert_eq!(ask(&mut envoy, "plans", vec![look], 0).await.overall_code, Code::OverLimit as i32);
    redis.assert_every_key_expires_within(Duration::from_secs(3600));
}
