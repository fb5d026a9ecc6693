//! ElectionService against a real Redis: one leader at a time with rising terms, candidates
//! woken by resignation and expiry, Observe histories that agree across replicas, a killed
//! replica and a frozen leader, bounded observers, bad input.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::election_service_client::ElectionServiceClient;
use baton::proto::v1::observe_response::Kind;
use baton::proto::v1::{
    CampaignRequest, CampaignResponse, ElectionServiceKeepAliveRequest, ErrorReason, LeaderRequest, Lease,
    ObserveRequest, ObserveResponse, ProclaimRequest, ResignRequest,
};
use common::{Baton, Clients, PATIENCE, Redis, Server, eventually, heartbeats, reason_of, unique};
use tonic::Code;
use tonic::transport::Channel;

type Elections = ElectionServiceClient<Channel>;

fn campaign_request(name: &str, value: &str, ttl: Duration, wait: Duration) -> CampaignRequest {
    CampaignRequest {
        name: name.to_owned(),
        ttl: Some(duration_to_proto(ttl)),
        value: value.as_bytes().to_vec(),
        owner: format!("candidate {value}"),
        wait_timeout: Some(duration_to_proto(wait)),
        request_id: String::new(),
    }
}

async fn campaign(
    elections: &mut Elections,
    name: &str,
    value: &str,
    ttl: Duration,
    wait: Duration,
) -> CampaignResponse {
    elections.campaign(campaign_request(name, value, ttl, wait)).await.expect("campaign").into_inner()
}

/// Campaigns where nobody leads: elected at once.
async fn lead(elections: &mut Elections, name: &str, value: &str, ttl: Duration) -> Lease {
    let response = campaign(elections, name, value, ttl, Duration::from_millis(1)).await;
    assert!(response.elected, "{name} already had a leader: {:?}", response.leader);
    response.lease.unwrap()
}

async fn leader_value(elections: &mut Elections, name: &str) -> Option<String> {
    let response = elections.leader(LeaderRequest { name: name.to_owned() }).await.unwrap().into_inner();
    response.leader.map(|leader| String::from_utf8(leader.value).unwrap())
}

async fn resign(elections: &mut Elections, lease: &Lease) -> bool {
    let request = ResignRequest { name: lease.name.clone(), lease_id: lease.lease_id.clone() };
    elections.resign(request).await.unwrap().into_inner().resigned
}

async fn proclaim(elections: &mut Elections, lease: &Lease, value: &str) -> Result<(), tonic::Status> {
    let request = ProclaimRequest {
        name: lease.name.clone(),
        lease_id: lease.lease_id.clone(),
        value: value.as_bytes().to_vec(),
    };
    elections.proclaim(request).await.map(drop)
}

async fn observe(elections: &mut Elections, name: &str) -> tonic::Streaming<ObserveResponse> {
    elections.observe(ObserveRequest { name: name.to_owned() }).await.unwrap().into_inner()
}

/// One entry of an Observe stream, as comparable text: kind, term, value.
fn entry(response: &ObserveResponse) -> (Kind, u64, String) {
    let (term, value) = response
        .leader
        .as_ref()
        .map_or((0, String::new()), |leader| (leader.term, String::from_utf8_lossy(&leader.value).into_owned()));
    (response.kind(), term, value)
}

async fn next_entry(stream: &mut tonic::Streaming<ObserveResponse>) -> (Kind, u64, String) {
    let response = tokio::time::timeout(PATIENCE, stream.message()).await.expect("an Observe message in time");
    entry(&response.unwrap().expect("the stream to stay open"))
}

/// Keeps `lease` alive from `elections` with a heartbeat every ttl/3, as the clients do.
async fn keep_alive(
    elections: &mut Elections,
    lease: &Lease,
    ttl: Duration,
) -> (tonic::Streaming<baton::proto::v1::ElectionServiceKeepAliveResponse>, tokio::task::JoinHandle<()>) {
    let first = ElectionServiceKeepAliveRequest {
        name: lease.name.clone(),
        lease_id: lease.lease_id.clone(),
        ttl: Some(duration_to_proto(ttl)),
    };
    let (requests, sender) = heartbeats(first, ttl / 3);
    let mut stream = elections.keep_alive(requests).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().unwrap().renewed);
    (stream, sender)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_every_new_leadership_has_a_higher_term() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut elections = baton.elections().await;
    let name = unique("terms");
    assert_eq!(leader_value(&mut elections, &name).await, None);

    let first = lead(&mut elections, &name, "a", Duration::from_secs(10)).await;
    let busy = campaign(&mut elections, &name, "b", Duration::from_secs(10), Duration::from_millis(200)).await;
    assert!(!busy.elected);
    let shown = busy.leader.unwrap();
    assert_eq!((shown.value.as_slice(), shown.term), (b"a".as_slice(), first.fencing_token));
    assert_eq!(leader_value(&mut elections, &name).await.as_deref(), Some("a"));

    proclaim(&mut elections, &first, "a2").await.unwrap();
    assert_eq!(leader_value(&mut elections, &name).await.as_deref(), Some("a2"));

    assert!(resign(&mut elections, &first).await);
    assert!(!resign(&mut elections, &first).await, "a second resignation found a leadership to end");
    assert_eq!(leader_value(&mut elections, &name).await, None);
    let second = lead(&mut elections, &name, "b", Duration::from_secs(10)).await;
    assert!(second.fencing_token > first.fencing_token);

    // The deposed leader can neither proclaim nor renew.
    let refused = proclaim(&mut elections, &first, "stale").await.unwrap_err();
    assert_eq!((refused.code(), reason_of(&refused)), (Code::FailedPrecondition, ErrorReason::LeaseNotHeld));
    assert_eq!(leader_value(&mut elections, &name).await.as_deref(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_candidate_is_woken_by_the_resignation() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut elections = baton.elections().await;
    let name = unique("woken");
    // A long ttl: only the resignation can end this leadership within the test.
    let leader = lead(&mut elections, &name, "a", Duration::from_secs(60)).await;
    let mut waiting = baton.elections().await;
    let waiter_name = name.clone();
    let candidate = tokio::spawn(async move {
        campaign(&mut waiting, &waiter_name, "b", Duration::from_secs(10), Duration::ZERO).await
    });
    // The scenario: let the campaign try and block behind the leader.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!candidate.is_finished(), "the candidate was elected while a leader led");
    let resigned_at = Instant::now();
    assert!(resign(&mut elections, &leader).await);
    let elected = tokio::time::timeout(PATIENCE, candidate).await.unwrap().unwrap();
    assert!(elected.elected);
    // A polling candidate would take up to its safety re-check (1 s) to notice.
    assert!(resigned_at.elapsed() < Duration::from_millis(700), "elected {:?} after", resigned_at.elapsed());
    assert!(elected.lease.unwrap().fencing_token > leader.fencing_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_sends_the_current_state_then_every_change_in_order_including_expiry() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut elections = baton.elections().await;
    let name = unique("history");
    let mut stream = observe(&mut elections, &name).await;
    assert_eq!(next_entry(&mut stream).await, (Kind::Current, 0, String::new()));

    let first = lead(&mut elections, &name, "a", Duration::from_secs(10)).await;
    proclaim(&mut elections, &first, "a2").await.unwrap();
    assert!(resign(&mut elections, &first).await);
    // Nobody renews this one: the observer's own follower must record its expiry.
    let second = lead(&mut elections, &name, "b", Duration::from_millis(300)).await;

    let (a, b) = (first.fencing_token, second.fencing_token);
    assert_eq!(next_entry(&mut stream).await, (Kind::Elected, a, "a".into()));
    assert_eq!(next_entry(&mut stream).await, (Kind::Proclaimed, a, "a2".into()));
    assert_eq!(next_entry(&mut stream).await, (Kind::Resigned, a, "a2".into()));
    assert_eq!(next_entry(&mut stream).await, (Kind::Elected, b, "b".into()));
    let expired_after = Instant::now();
    assert_eq!(next_entry(&mut stream).await, (Kind::Expired, b, "b".into()));
    assert!(expired_after.elapsed() < Duration::from_secs(2), "expiry seen {:?} late", expired_after.elapsed());

    // A second observer starts from the current state: nobody leads.
    let mut late = observe(&mut elections, &name).await;
    assert_eq!(next_entry(&mut late).await, (Kind::Current, 0, String::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_that_stops_reading_is_bounded_and_resumes_from_the_current_state() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut elections = baton.elections().await;
    let name = unique("slow-observer");
    let leader = lead(&mut elections, &name, "v0", Duration::from_secs(30)).await;
    let mut stream = observe(&mut elections, &name).await;
    assert_eq!(next_entry(&mut stream).await.0, Kind::Current);
    // 8 MB of changes, more than HTTP/2's flow-control windows hold in flight.
    let changes = 2000;
    let padding = "x".repeat(4000);
    for i in 1..=changes {
        proclaim(&mut elections, &leader, &format!("v{i} {padding}")).await.unwrap();
    }
    // Reading now: far fewer messages than changes (the rest were never buffered), and
    // the stream catches up with a CURRENT carrying the latest value.
    let latest = format!("v{changes} {padding}");
    let (mut received, mut resynced) = (0, false);
    loop {
        let (kind, _, value) = next_entry(&mut stream).await;
        received += 1;
        resynced |= kind == Kind::Current;
        if value == latest {
            break;
        }
    }
    assert!(received < changes / 2, "{received} of {changes} changes were buffered for one observer");
    assert!(resynced, "the observer fell behind but was never sent the current state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_campaign_with_its_request_id_gets_the_same_leadership() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut elections = baton.elections().await;
    let name = unique("retried");
    let mut request = campaign_request(&name, "a", Duration::from_secs(10), Duration::from_millis(1));
    request.request_id = "attempt-1".into();
    let first = elections.campaign(request.clone()).await.unwrap().into_inner();
    let again = elections.campaign(request.clone()).await.unwrap().into_inner();
    assert!(first.elected && again.elected);
    assert_eq!(first.lease, again.lease);
    request.request_id = "attempt-2".into();
    assert!(!elections.campaign(request).await.unwrap().into_inner().elected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_holds_leadership_past_its_ttl_and_cancelling_it_resigns_at_once() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut elections = baton.elections().await;
    let name = unique("kept");
    let ttl = Duration::from_millis(600);
    let leader = lead(&mut elections, &name, "a", ttl).await;
    let (stream, heartbeat) = keep_alive(&mut elections, &leader, ttl).await;
    // Several ttls pass (the scenario): the heartbeats alone keep it.
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(leader_value(&mut elections, &name).await.as_deref(), Some("a"));

    heartbeat.abort();
    drop(stream);
    let mut next = baton.elections().await;
    let started = Instant::now();
    let elected = campaign(&mut next, &name, "b", Duration::from_secs(10), PATIENCE).await;
    assert!(elected.elected);
    assert!(started.elapsed() < ttl, "elected {:?} after the leader left", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_writes_nothing() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut elections = baton.elections().await;
    let ok = campaign_request("bad-input", "a", Duration::from_secs(1), Duration::from_millis(1));
    let cases = [
        ("name", CampaignRequest { name: String::new(), ..ok.clone() }),
        ("ttl", CampaignRequest { ttl: None, ..ok.clone() }),
        ("ttl", CampaignRequest { ttl: Some(duration_to_proto(Duration::from_secs(7200))), ..ok.clone() }),
        ("value", CampaignRequest { value: vec![b'x'; 4097], ..ok.clone() }),
        ("owner", CampaignRequest { owner: "o".repeat(257), ..ok.clone() }),
        ("request_id", CampaignRequest { request_id: "r".repeat(129), ..ok.clone() }),
        (
            "wait_timeout",
            CampaignRequest { wait_timeout: Some(duration_to_proto(Duration::from_secs(7200))), ..ok.clone() },
        ),
    ];
    for (field, request) in cases {
        let status = elections.campaign(request).await.unwrap_err();
        assert_eq!((status.code(), reason_of(&status)), (Code::InvalidArgument, ErrorReason::InvalidField), "{field}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
    let forged = ProclaimRequest { name: "bad-input".into(), lease_id: "forged".into(), value: vec![] };
    assert_eq!(elections.proclaim(forged).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(redis.dbsize(), 0, "bad input wrote {:?}", redis.keys());
}

/// The leading lease id and term of `name`, read from Redis (the test knows no other way
/// to learn a child's secret lease id).
fn leading_lease(redis: &Redis, name: &str) -> (String, u64) {
    let key = format!("baton:default:elect:{{{name}}}:state");
    let (lease, term): (String, u64) =
        redis::cmd("HMGET").arg(&key).arg("lease").arg("term").query(&mut redis.connection()).unwrap();
    (lease, term)
}

/// Run as a child process by the next test: leads an election and keeps it until frozen
/// or killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_child_process() {
    let (Ok(addr), Ok(name)) = (std::env::var("BATON_CHILD_ADDR"), std::env::var("BATON_CHILD_ELECTION")) else {
        return; // Not running as the child: nothing to do.
    };
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut elections = ElectionServiceClient::new(channel);
    let ttl = Duration::from_secs(2);
    let lease = lead(&mut elections, &name, "frozen", ttl).await;
    let (mut stream, _heartbeat) = keep_alive(&mut elections, &lease, ttl).await;
    println!("HOLDING {} {}", lease.lease_id, lease.fencing_token);
    while stream.message().await.is_ok_and(|message| message.is_some()) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_loses_leadership_within_its_ttl_and_its_term_is_refused_after() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut elections = baton.elections().await;
    let name = unique("frozen");
    let addr = baton.addr.to_string();
    let env = [("BATON_CHILD_ADDR", addr.as_str()), ("BATON_CHILD_ELECTION", name.as_str())];
    let mut child = common::spawn_holding_child("leader_child_process", &env, "the child never led").await;
    let frozen = leading_lease(&redis, &name);
    testkit::signal(child.id(), libc::SIGSTOP);
    let frozen_at = Instant::now();
    let elected = campaign(&mut elections, &name, "next", Duration::from_secs(10), PATIENCE).await;
    let took = frozen_at.elapsed();
    testkit::signal(child.id(), libc::SIGCONT);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(elected.elected);
    // ttl 2 s, renewed every ttl/3: lost at most ttl after the freeze (with a wide margin
    // for this machine), and not long before ttl/3 had passed without a heartbeat.
    assert!(took <= Duration::from_secs(2) + Duration::from_millis(1500), "a new leader {took:?} after the freeze");
    let new_term = elected.lease.unwrap().fencing_token;
    assert!(new_term > frozen.1, "term {new_term} is not above the frozen leader's {}", frozen.1);
    let stale = Lease { name: name.clone(), lease_id: frozen.0, fencing_token: frozen.1, ..Lease::default() };
    let refused = proclaim(&mut elections, &stale, "I am back").await.unwrap_err();
    assert_eq!(reason_of(&refused), ErrorReason::LeaseNotHeld);
    assert_eq!(leader_value(&mut elections, &name).await.as_deref(), Some("next"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_three_replicas_a_killed_leaders_replica_is_replaced_and_observers_agree() {
    let redis = Redis::start();
    let mut replicas: Vec<Baton> = (0..3).map(|_| Baton::start(Some(&redis.url()), &[])).collect();
    let name = unique("replicas");
    let ttl = Duration::from_secs(2);

    // Two observers on every replica.
    let mut observers = Vec::new();
    for replica in &replicas {
        for _ in 0..2 {
            let mut stream = observe(&mut replica.elections().await, &name).await;
            assert_eq!(next_entry(&mut stream).await.0, Kind::Current);
            observers.push(stream);
        }
    }

    // A candidate per replica, each keeping its leadership alive through its own replica.
    let mut candidates = Vec::new();
    for (index, replica) in replicas.iter().enumerate() {
        let mut elections = replica.elections().await;
        let name = name.clone();
        candidates.push(tokio::spawn(async move {
            let response = campaign(&mut elections, &name, &format!("c{index}"), ttl, Duration::ZERO).await;
            assert!(response.elected);
            let lease = response.lease.unwrap();
            for round in 0..3 {
                proclaim(&mut elections, &lease, &format!("c{index}.{round}")).await.unwrap();
            }
            let (mut stream, _heartbeat) = keep_alive(&mut elections, &lease, ttl).await;
            // Holds until its replica dies (the stream breaks) or the test ends.
            while stream.message().await.is_ok_and(|message| message.is_some()) {}
            index
        }));
    }

    let elections = replicas[0].elections().await;
    eventually(PATIENCE, "a first leader", || async { leader_value(&mut elections.clone(), &name).await.is_some() })
        .await;
    let mut elections = elections;
    let first = leader_value(&mut elections, &name).await.unwrap();
    let leading: usize = first[1..2].parse().unwrap();
    replicas[leading].sigkill();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|index| *index != leading).collect();
    let watch = replicas[survivors[0]].elections().await;
    eventually(ttl + Duration::from_secs(3), "a new leader", || async {
        leader_value(&mut watch.clone(), &name).await.is_some_and(|value| !value.starts_with(&format!("c{leading}")))
    })
    .await;
    let took = killed_at.elapsed();
    assert!(took <= ttl + Duration::from_secs(2), "a new leader {took:?} after the kill");

    // Let the new leader proclaim its rounds, then end it so the history is finite.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(replicas.remove(leading));
    let survivor_observers: Vec<_> =
        observers.into_iter().enumerate().filter(|(index, _)| index / 2 != leading).map(|(_, stream)| stream).collect();
    let mut histories = Vec::new();
    for mut stream in survivor_observers {
        let mut history = Vec::new();
        // Everything up to the second leader's third proclamation.
        loop {
            let change = next_entry(&mut stream).await;
            let done = change.0 == Kind::Proclaimed && change.2.ends_with(".2") && !change.2.starts_with(&first[..2]);
            history.push(change);
            if done {
                break;
            }
        }
        histories.push(history);
    }
    for history in &histories[1..] {
        assert_eq!(history, &histories[0], "observers on different replicas saw different histories");
    }
    let elected_terms: Vec<u64> =
        histories[0].iter().filter(|(kind, _, _)| *kind == Kind::Elected).map(|(_, term, _)| *term).collect();
    assert_eq!(elected_terms.len(), 2, "{:?}", histories[0]);
    assert!(elected_terms[1] > elected_terms[0]);
    assert!(histories[0].iter().any(|(kind, _, _)| *kind == Kind::Expired), "{:?}", histories[0]);
    for candidate in candidates {
        candidate.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_observers_share_one_subscription_and_all_hear_each_change() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut elections = baton.elections().await;
    let names: Vec<String> = (0..5).map(|i| unique(&format!("fan-out-{i}"))).collect();
    let mut observers = Vec::new();
    for connection in 0..5 {
        let mut client = baton.elections().await;
        for i in 0..100 {
            let name = &names[(connection + i) % names.len()];
            let mut stream = observe(&mut client, name).await;
            assert_eq!(next_entry(&mut stream).await.0, Kind::Current);
            observers.push((name.clone(), stream));
        }
    }
    let subscribers: usize = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut redis.connection()).unwrap();
    assert_eq!(subscribers, 1, "one pattern subscription per baton process, whatever the observers");

    let mut terms = std::collections::HashMap::new();
    for name in &names {
        terms.insert(name.clone(), lead(&mut elections, name, "leader", Duration::from_secs(30)).await.fencing_token);
    }
    for (name, stream) in &mut observers {
        assert_eq!(next_entry(stream).await, (Kind::Elected, terms[name.as_str()], "leader".into()));
    }
}
