//! Envoy's `ShouldRateLimit` against a real Redis, driven by a client generated from our
//! Envoy protos, through the scenarios of envoyproxy/ratelimit's README.

mod common;

use baton::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use baton::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use baton::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use baton::proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
use baton::proto::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as ResponseUnit;
use baton::proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use baton::proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use baton::proto::envoy::r#type::v3::RateLimitUnit;
use common::{Baton, Redis, unique};
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

fn start(redis: &Redis) -> (tempfile::TempDir, Baton) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let baton = Baton::start(Some(&redis.url()), &["--config", path.to_str().unwrap()]);
    (dir, baton)
}

async fn client(baton: &Baton) -> Envoy {
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
        assert_eq!(header("x-ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(header("x-ratelimit-remaining"), Some(remaining.to_string()));
    }
    let over = ask(&mut envoy, "edge_proxy_per_ip", vec![descriptor(&[("remote_address", &ip)])], 0).await;
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    assert_eq!(over.statuses[0].code, Code::OverLimit as i32);
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
        assert_eq!(response.statuses[1].code, Code::OverLimit as i32);
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
