//! CacheService against a real Redis: compare-and-set under contention, stampede-proof
//! Fetch/Fill across two baton processes, fill leases, stale-while-revalidate, stale
//! loaders refused, O(1) tag invalidation, batches and bad input.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::cache_service_client::CacheServiceClient;
use baton::proto::v1::{
    BatchGetRequest, BatchSetEntry, BatchSetRequest, BatchSetStatus, DeleteRequest, ErrorReason, FetchRequest,
    FetchResponse, FillRequest, GetRequest, InvalidateTagRequest, SetRequest,
};
use common::{Clients, PATIENCE, Redis, Server, eventually, reason_of, unique};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

type Cache = CacheServiceClient<Channel>;

fn set_request(key: &str, value: &[u8], ttl: Duration) -> SetRequest {
    SetRequest { key: key.to_owned(), value: value.to_vec(), ttl: Some(duration_to_proto(ttl)), ..Default::default() }
}

async fn get(cache: &mut Cache, key: &str) -> Option<Vec<u8>> {
    let response = cache.get(GetRequest { key: key.to_owned() }).await.unwrap().into_inner();
    response.found.then(|| response.entry.unwrap().value)
}

fn fetch_request(key: &str, lease_ttl: Duration, wait: Duration) -> FetchRequest {
    FetchRequest {
        key: key.to_owned(),
        lease_ttl: Some(duration_to_proto(lease_ttl)),
        wait_timeout: Some(duration_to_proto(wait)),
    }
}

async fn fetch(cache: &mut Cache, key: &str, lease_ttl: Duration, wait: Duration) -> FetchResponse {
    cache.fetch(fetch_request(key, lease_ttl, wait)).await.unwrap().into_inner()
}

fn fill_request(key: &str, token: &str, value: &[u8]) -> FillRequest {
    FillRequest {
        key: key.to_owned(),
        fill_token: token.to_owned(),
        value: value.to_vec(),
        ttl: Some(duration_to_proto(Duration::from_secs(60))),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_counts_exactly_under_32_clients() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let cache = baton.cache().await;
    let key = unique("counter");
    cache.clone().set(set_request(&key, b"0", Duration::from_secs(600))).await.unwrap();
    let conflicts = Arc::new(AtomicU32::new(0));
    let mut clients = Vec::new();
    for client in 0..32 {
        let (mut cache, key, conflicts) = (cache.clone(), key.clone(), conflicts.clone());
        // 2000 increments split over 32 clients: 16 make 63, 16 make 62.
        let quota = if client < 16 { 63 } else { 62 };
        clients.push(tokio::spawn(async move {
            let mut done = 0;
            while done < quota {
                let entry = cache.get(GetRequest { key: key.clone() }).await.unwrap().into_inner().entry.unwrap();
                let value: u64 = String::from_utf8(entry.value).unwrap().parse().unwrap();
                let next = SetRequest {
                    if_version: entry.version,
                    ..set_request(&key, (value + 1).to_string().as_bytes(), Duration::from_secs(600))
                };
                match cache.set(next).await {
                    Ok(_) => done += 1,
                    Err(status) => {
                        assert_eq!(status.code(), Code::Aborted);
                        assert_eq!(reason_of(&status), ErrorReason::VersionMismatch);
                        conflicts.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let value = get(&mut cache.clone(), &key).await.unwrap();
    assert_eq!(value, b"2000", "lost or doubled increments");
    // The contention was real: some writes had to retry.
    assert!(conflicts.load(Ordering::SeqCst) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_run_exactly_one_loader_across_two_batons() {
    let redis = Redis::start();
    let batons = [Server::start(&redis.url(), &[]), Server::start(&redis.url(), &[])];
    let clients = [batons[0].cache().await, batons[1].cache().await];
    let key = unique("hot");
    let loaders = Arc::new(AtomicU32::new(0));
    let mut callers = Vec::new();
    for caller in 0..100 {
        let (mut cache, key, loaders) = (clients[caller % 2].clone(), key.clone(), loaders.clone());
        callers.push(tokio::spawn(async move {
            let response = fetch(&mut cache, &key, Duration::from_secs(10), Duration::from_secs(10)).await;
            if response.found {
                return response.entry.unwrap().value;
            }
            assert!(!response.fill_token.is_empty(), "neither a value nor a token");
            loaders.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await; // the expensive load
            let filled = cache.fill(fill_request(&key, &response.fill_token, b"loaded")).await.unwrap();
            filled.into_inner().entry.unwrap().value
        }));
    }
    for caller in callers {
        assert_eq!(caller.await.unwrap(), b"loaded");
    }
    assert_eq!(loaders.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_that_never_fills_blocks_nobody_for_long() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut cache = baton.cache().await;
    let key = unique("crashed-loader");
    let lease = Duration::from_millis(800);
    let first = fetch(&mut cache, &key, lease, Duration::ZERO).await;
    assert!(!first.found && !first.fill_token.is_empty());

    // A waiter gets no value and no token, and not before its wait_timeout.
    let started = Instant::now();
    let waiter = fetch(&mut cache, &key, lease, Duration::from_millis(500)).await;
    let waited = started.elapsed();
    assert!(!waiter.found && waiter.fill_token.is_empty());
    assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(3), "waited {waited:?}");

    // Once the lease has passed, the next Fetch is the new loader.
    let next = eventually(PATIENCE, "a new token after lease_ttl", || {
        let (mut cache, key) = (cache.clone(), key.clone());
        async move { !fetch(&mut cache, &key, lease, Duration::ZERO).await.fill_token.is_empty() }
    })
    .await;
    eprintln!("new token {next:?} after the waiter gave up");

    // The old token cannot fill any more.
    let status = cache.fill(fill_request(&key, &first.fill_token, b"late")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&status), ErrorReason::FillTokenStale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_token_lets_the_next_fetch_load_at_once() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut cache = baton.cache().await;
    let key = unique("abandoned");
    let first = fetch(&mut cache, &key, Duration::from_secs(60), Duration::ZERO).await;
    let abandon = FillRequest { abandon: true, ..fill_request(&key, &first.fill_token, b"") };
    assert!(cache.fill(abandon).await.unwrap().into_inner().entry.is_none());
    let second = fetch(&mut cache, &key, Duration::from_secs(60), Duration::ZERO).await;
    assert!(!second.fill_token.is_empty(), "no token although the first loader gave up");
    assert_ne!(second.fill_token, first.fill_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_hands_one_caller_the_refresh() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let cache = baton.cache().await;
    let key = unique("swr");
    let request = SetRequest {
        stale_ttl: Some(duration_to_proto(Duration::from_secs(30))),
        ..set_request(&key, b"old", Duration::from_millis(300))
    };
    cache.clone().set(request).await.unwrap();
    eventually(PATIENCE, "the value to go stale: Get does not serve stale values", || {
        let (mut cache, key) = (cache.clone(), key.clone());
        async move { get(&mut cache, &key).await.is_none() }
    })
    .await;

    let mut callers = Vec::new();
    for _ in 0..20 {
        let (mut cache, key) = (cache.clone(), key.clone());
        callers.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = fetch(&mut cache, &key, Duration::from_secs(10), Duration::from_secs(5)).await;
            (response, started.elapsed())
        }));
    }
    let mut refreshers = 0;
    for caller in callers {
        let (response, took) = caller.await.unwrap();
        let entry = response.entry.expect("the stale entry");
        assert_eq!(entry.value, b"old");
        assert!(entry.stale);
        assert!(took < Duration::from_millis(500), "a stale read waited {took:?}");
        if !response.fill_token.is_empty() {
            refreshers += 1;
        }
    }
    assert_eq!(refreshers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_after_a_delete_or_a_set_is_refused() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut cache = baton.cache().await;

    let key = unique("deleted");
    let token = fetch(&mut cache, &key, Duration::from_secs(60), Duration::ZERO).await.fill_token;
    cache.delete(DeleteRequest { key: key.clone(), if_version: 0 }).await.unwrap();
    let status = cache.fill(fill_request(&key, &token, b"stale")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(get(&mut cache, &key).await, None);

    let key = unique("overwritten");
    let token = fetch(&mut cache, &key, Duration::from_secs(60), Duration::ZERO).await.fill_token;
    cache.set(set_request(&key, b"newer", Duration::from_secs(60))).await.unwrap();
    assert_eq!(cache.fill(fill_request(&key, &token, b"stale")).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(get(&mut cache, &key).await.as_deref(), Some(&b"newer"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut cache = baton.cache().await;
    let key = unique("cond");
    let absent = SetRequest { if_absent: true, ..set_request(&key, b"first", Duration::from_secs(60)) };
    let first = cache.set(absent.clone()).await.unwrap().into_inner().entry.unwrap();
    let status = cache.set(absent).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let second =
        cache.set(set_request(&key, b"second", Duration::from_secs(60))).await.unwrap().into_inner().entry.unwrap();
    assert!(second.version > first.version);
    let status = cache.delete(DeleteRequest { key: key.clone(), if_version: first.version }).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert!(
        cache
            .delete(DeleteRequest { key: key.clone(), if_version: second.version })
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    // Versions never repeat, even across a delete.
    let third =
        cache.set(set_request(&key, b"third", Duration::from_secs(60))).await.unwrap().into_inner().entry.unwrap();
    assert!(third.version > second.version);
}

fn total_commands(redis: &Redis) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(&mut redis.connection()).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_a_tag_hides_ten_thousand_entries_at_the_cost_of_one() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut cache = baton.cache().await;
    let (big, small, other) = (unique("big"), unique("small"), unique("other"));
    let prefix = unique("entry");
    for chunk in 0..10 {
        let entries = (0..1000)
            .map(|i| BatchSetEntry {
                key: format!("{prefix}:{}", chunk * 1000 + i),
                value: b"v".to_vec(),
                ttl: Some(duration_to_proto(Duration::from_secs(600))),
                tags: vec![big.clone()],
                ..Default::default()
            })
            .collect();
        cache.batch_set(BatchSetRequest { entries }).await.unwrap();
    }
    let lonely = unique("lonely");
    cache
        .set(SetRequest { tags: vec![small.clone()], ..set_request(&lonely, b"v", Duration::from_secs(600)) })
        .await
        .unwrap();
    let other_key = unique("other-entry");
    cache
        .set(SetRequest { tags: vec![other.clone()], ..set_request(&other_key, b"v", Duration::from_secs(600)) })
        .await
        .unwrap();
    let untagged = unique("untagged");
    cache.set(set_request(&untagged, b"v", Duration::from_secs(600))).await.unwrap();

    let before = total_commands(&redis);
    cache.invalidate_tag(InvalidateTagRequest { tag: small.clone() }).await.unwrap();
    let one = total_commands(&redis) - before;
    let before = total_commands(&redis);
    cache.invalidate_tag(InvalidateTagRequest { tag: big.clone() }).await.unwrap();
    let ten_thousand = total_commands(&redis) - before;
    // The counts include this test's own INFO call and baton's background pings, so
    // compare with a small slack rather than exactly.
    assert!(ten_thousand <= one + 3, "hiding 10,000 cost {ten_thousand} commands, hiding one {one}");

    assert_eq!(get(&mut cache, &lonely).await, None);
    for i in [0, 4321, 9999] {
        assert_eq!(get(&mut cache, &format!("{prefix}:{i}")).await, None);
    }
    let keys: Vec<String> = (0..1000).map(|i| format!("{prefix}:{i}")).collect();
    let batch = cache.batch_get(BatchGetRequest { keys }).await.unwrap().into_inner();
    assert!(batch.entries.iter().all(|e| !e.found));
    assert!(get(&mut cache, &other_key).await.is_some());
    assert!(get(&mut cache, &untagged).await.is_some());
    // A write after the invalidation is visible again.
    cache
        .set(SetRequest { tags: vec![big], ..set_request(&lonely, b"fresh", Duration::from_secs(600)) })
        .await
        .unwrap();
    assert_eq!(get(&mut cache, &lonely).await.as_deref(), Some(&b"fresh"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_a_thousand_and_expiry() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut cache = baton.cache().await;
    let prefix = unique("batch");
    let entries = (0..1000)
        .map(|i| BatchSetEntry {
            key: format!("{prefix}:{i}"),
            value: i.to_string().into_bytes(),
            ttl: Some(duration_to_proto(if i % 2 == 0 {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(600)
            })),
            ..Default::default()
        })
        .collect();
    let results = cache.batch_set(BatchSetRequest { entries }).await.unwrap().into_inner().results;
    assert!(results.iter().all(|r| r.status == BatchSetStatus::Stored as i32));
    let keys: Vec<String> = (0..1000).map(|i| format!("{prefix}:{i}")).collect();
    let all = cache.batch_get(BatchGetRequest { keys: keys.clone() }).await.unwrap().into_inner().entries;
    assert_eq!(all.len(), 1000);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.found && e.key == keys[i] && e.entry.as_ref().unwrap().value == i.to_string().as_bytes())
    );
    eventually(PATIENCE, "the short-lived half to expire and only that half", || {
        let (mut cache, keys) = (cache.clone(), keys.clone());
        async move {
            let after = cache.batch_get(BatchGetRequest { keys }).await.unwrap().into_inner().entries;
            after.iter().enumerate().all(|(i, entry)| entry.found == (i % 2 == 1))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_invalid_argument_naming_the_field_and_write_nothing() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut cache = baton.cache().await;
    let minute = Duration::from_secs(60);
    let cases: Vec<(&str, SetRequest, &str)> = vec![
        ("oversize value", set_request("k", &vec![0; 1024 * 1024 + 1], minute), "value"),
        ("empty key", set_request("", b"v", minute), "key"),
        ("missing ttl", SetRequest { ttl: None, ..set_request("k", b"v", minute) }, "ttl"),
        ("ttl above max", set_request("k", b"v", Duration::from_secs(400 * 24 * 3600)), "ttl"),
        ("empty tag", SetRequest { tags: vec![String::new()], ..set_request("k", b"v", minute) }, "tags[0]"),
    ];
    for (what, request, field) in cases {
        let status = cache.set(request).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
        assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, field, "{what}");
    }
    let keys: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    let status = cache.batch_get(BatchGetRequest { keys }).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "keys");
    let entries = (0..1001)
        .map(|i| BatchSetEntry {
            key: format!("k{i}"),
            value: vec![],
            ttl: Some(duration_to_proto(minute)),
            ..Default::default()
        })
        .collect();
    let status = cache.batch_set(BatchSetRequest { entries }).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "entries");
    let entries = vec![
        BatchSetEntry { key: "ok".into(), ttl: Some(duration_to_proto(minute)), ..Default::default() },
        BatchSetEntry { key: "no-ttl".into(), ..Default::default() },
    ];
    let status = cache.batch_set(BatchSetRequest { entries }).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "entries[1].ttl");
    let status = cache.fetch(fetch_request("k", Duration::from_secs(3600), Duration::ZERO)).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "lease_ttl");
    assert_eq!(redis.dbsize(), 0, "rejected requests wrote {:?}", redis.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_response_over_the_message_limit_is_resource_exhausted() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut cache = baton.cache().await;
    let prefix = unique("large");
    for i in 0..5 {
        cache
            .set(set_request(&format!("{prefix}:{i}"), &vec![7u8; 1024 * 1024], Duration::from_secs(60)))
            .await
            .unwrap();
    }
    let keys: Vec<String> = (0..5).map(|i| format!("{prefix}:{i}")).collect();
    let status = cache.batch_get(BatchGetRequest { keys }).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason_of(&status), ErrorReason::ResponseTooLarge);
}
