//! SessionStoreService against a real Redis: id strength, no ids at rest, idle and
//! absolute timeouts, rotation, revoke-all, optimistic concurrency, no resurrection.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton::proto::duration_to_proto;
use baton::proto::v1::session_store_service_client::SessionStoreServiceClient;
use baton::proto::v1::{
    ClearSessionsRequest, CountSessionsRequest, CreateSessionRequest, DeleteSessionRequest, GetSessionRequest,
    ListSessionsRequest, RevokeSessionsRequest, RotateSessionRequest, Session, UpdateSessionRequest,
};
use common::{Clients, Redis, Server, unique};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

type Sessions = SessionStoreServiceClient<Channel>;

fn create_request(subject: &str) -> CreateSessionRequest {
    CreateSessionRequest {
        subject: subject.to_owned(),
        data: HashMap::from([("cart".to_owned(), b"3 items".to_vec())]),
        attributes: HashMap::from([("ip".to_owned(), "127.0.0.1".to_owned())]),
        ..Default::default()
    }
}

async fn create(sessions: &mut Sessions, request: CreateSessionRequest) -> (String, Session) {
    let response = sessions.create_session(request).await.expect("create").into_inner();
    (response.session_id, response.session.unwrap())
}

async fn get(sessions: &mut Sessions, id: &str, no_touch: bool) -> Result<Session, tonic::Status> {
    sessions
        .get_session(GetSessionRequest { session_id: id.to_owned(), no_touch })
        .await
        .map(|r| r.into_inner().session.unwrap())
}

fn short_lived(subject: &str, idle_ms: u64, absolute_ms: u64) -> CreateSessionRequest {
    CreateSessionRequest {
        idle_timeout: Some(duration_to_proto(Duration::from_millis(idle_ms))),
        absolute_timeout: Some(duration_to_proto(Duration::from_millis(absolute_ms))),
        ..create_request(subject)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_ids_are_distinct_256_bit_values_and_never_stored() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let sessions = baton.sessions().await;
    let mut ids = HashSet::new();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let mut sessions = sessions.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..6250 {
                // Half with a subject (indexed), half anonymous.
                let subject = if i % 2 == 0 { format!("user-{worker}") } else { String::new() };
                ids.push(create(&mut sessions, create_request(&subject)).await.0);
            }
            ids
        }));
    }
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    assert_eq!(ids.len(), 100_000);
    assert!(ids.iter().all(|id| URL_SAFE_NO_PAD.decode(id).map(|b| b.len()) == Ok(32)));

    // No key and no stored value contains any id: every 43-byte window of every key name and
    // every DUMP is looked up among the ids.
    let mut conn = redis.connection();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.len() > 100_000, "only {} keys", keys.len());
    // Index by the first 8 bytes, so each window costs one u64 lookup.
    let prefix = |bytes: &[u8]| u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let by_prefix: HashMap<u64, &[u8]> = ids.iter().map(|id| (prefix(id.as_bytes()), id.as_bytes())).collect();
    let mut leaked = 0;
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("DUMP").arg(key);
        }
        let dumps: Vec<Vec<u8>> = pipe.query(&mut conn).unwrap();
        for blob in chunk.iter().chain(dumps.iter()) {
            leaked += blob
                .windows(43)
                .filter(|window| by_prefix.get(&prefix(window)).is_some_and(|id| *id == *window))
                .count();
        }
    }
    assert_eq!(leaked, 0, "session ids found in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_slides_with_touches_and_the_absolute_timeout_does_not() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut sessions = baton.sessions().await;

    // Untouched: gone after the idle timeout.
    let (idle, _) = create(&mut sessions, short_lived("u", 400, 60_000)).await;
    common::eventually(common::PATIENCE, "the untouched session to end", || {
        let (mut sessions, idle) = (sessions.clone(), idle.clone());
        async move { get(&mut sessions, &idle, true).await.is_err_and(|e| e.code() == Code::NotFound) }
    })
    .await;

    // Touched every 150 ms: alive well past the 400 ms idle timeout...
    let (touched, created) = create(&mut sessions, short_lived("u", 400, 1500)).await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1000) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let session = get(&mut sessions, &touched, false).await.expect("kept alive by touches");
        assert!(
            session.idle_expires_at.unwrap().seconds * 1000
                + i64::from(session.idle_expires_at.unwrap().nanos / 1_000_000)
                <= created.absolute_expires_at.unwrap().seconds * 1000
                    + i64::from(created.absolute_expires_at.unwrap().nanos / 1_000_000)
        );
    }
    // ...but never past the absolute timeout, however often it is touched.
    let mut ended = false;
    while started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if get(&mut sessions, &touched, false).await.is_err() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the session outlived its absolute timeout");
    assert!(started.elapsed() >= Duration::from_millis(1300), "ended early: {:?}", started.elapsed());

    // no_touch reads do not slide: read within the idle window, then check right after it
    // (a poll would also pass if they slid, once the reads stopped).
    let (peeked, _) = create(&mut sessions, short_lived("u", 500, 60_000)).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let _ = get(&mut sessions, &peeked, true).await;
    }
    assert_eq!(get(&mut sessions, &peeked, true).await.unwrap_err().code(), Code::NotFound);
}

/// A session travels from Redis packed (session_reply's cmsgpack): values at every msgpack
/// string length bound and of every byte value, and non-ASCII keys, arrive as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_values_of_every_size_and_byte_arrive_exactly() {
    let redis = Redis::start();
    // Room for a value past str16's bound (the default limit is 64 KiB a session).
    let baton = Server::start(&redis.url(), &["--session-max-bytes", "262144"]);
    let mut sessions = baton.sessions().await;
    let data: HashMap<String, Vec<u8>> = [0usize, 1, 31, 32, 255, 256, 65_535, 65_536]
        .into_iter()
        .map(|size| (format!("clé-{size}"), (0..size).map(|i| ((i * 13 + size) % 256) as u8).collect()))
        .collect();
    let request = CreateSessionRequest {
        data: data.clone(),
        attributes: HashMap::from([("agent".to_owned(), "ünïcode/1.0".to_owned())]),
        ..create_request(&unique("sizes"))
    };
    let (id, created) = create(&mut sessions, request).await;
    for session in [created, get(&mut sessions, &id, false).await.unwrap()] {
        assert_eq!(session.data.len(), data.len());
        for (key, value) in &data {
            assert!(session.data.get(key) == Some(value), "{key}: {} bytes arrived otherwise", value.len());
        }
        assert_eq!(session.attributes.get("agent").map(String::as_str), Some("ünïcode/1.0"));
        assert_eq!(session.version, 1);
        assert!(session.absolute_expires_at.is_some() && !session.handle.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_moves_the_data_and_kills_the_old_id() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut sessions = baton.sessions().await;
    let subject = unique("rotating");
    let (old_id, original) = create(&mut sessions, create_request(&subject)).await;
    let update = UpdateSessionRequest {
        session_id: old_id.clone(),
        set: HashMap::from([("role".to_owned(), b"user".to_vec())]),
        ..Default::default()
    };
    sessions.update_session(update).await.unwrap();
    let rotated =
        sessions.rotate_session(RotateSessionRequest { session_id: old_id.clone() }).await.unwrap().into_inner();
    let new = rotated.session.unwrap();
    assert_ne!(rotated.session_id, old_id);
    assert_eq!(new.data.get("role").map(Vec::as_slice), Some(&b"user"[..]));
    assert_eq!(new.data.get("cart").map(Vec::as_slice), Some(&b"3 items"[..]));
    assert_eq!(new.version, 2, "rotation keeps the version history");
    assert_eq!(new.absolute_expires_at, original.absolute_expires_at);
    assert_ne!(new.handle, original.handle);
    assert_eq!(get(&mut sessions, &old_id, true).await.unwrap_err().code(), Code::NotFound);
    assert!(get(&mut sessions, &rotated.session_id, true).await.is_ok());
    // Writes through the old id cannot bring it back.
    let update = UpdateSessionRequest { session_id: old_id.clone(), ..Default::default() };
    assert_eq!(sessions.update_session(update).await.unwrap_err().code(), Code::NotFound);
    let listed = sessions.list_sessions(ListSessionsRequest { subject }).await.unwrap().into_inner().sessions;
    assert_eq!(listed.iter().map(|s| s.handle.clone()).collect::<Vec<_>>(), vec![new.handle]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_all_sessions_of_a_subject_leaves_none_but_the_exception() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut sessions = baton.sessions().await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut alice_ids = Vec::new();
    for _ in 0..50 {
        alice_ids.push(create(&mut sessions, create_request(&alice)).await);
    }
    let (bob_id, _) = create(&mut sessions, create_request(&bob)).await;
    let listed =
        sessions.list_sessions(ListSessionsRequest { subject: alice.clone() }).await.unwrap().into_inner().sessions;
    assert_eq!(listed.len(), 50);

    let keep = alice_ids[7].1.handle.clone();
    let revoke = RevokeSessionsRequest { subject: alice.clone(), handles: vec![], except_handle: keep.clone() };
    assert_eq!(sessions.revoke_sessions(revoke).await.unwrap().into_inner().revoked, 49);
    let left =
        sessions.list_sessions(ListSessionsRequest { subject: alice.clone() }).await.unwrap().into_inner().sessions;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].handle, keep);
    for (index, (id, _)) in alice_ids.iter().enumerate() {
        assert_eq!(get(&mut sessions, id, true).await.is_ok(), index == 7);
    }
    assert!(get(&mut sessions, &bob_id, true).await.is_ok(), "another subject was touched");

    let revoke = RevokeSessionsRequest { subject: alice.clone(), ..Default::default() };
    assert_eq!(sessions.revoke_sessions(revoke).await.unwrap().into_inner().revoked, 1);
    assert!(
        sessions.list_sessions(ListSessionsRequest { subject: alice }).await.unwrap().into_inner().sessions.is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_with_one_version_have_one_winner_and_deletes_stay_deleted() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let sessions = baton.sessions().await;
    let (id, session) = create(&mut sessions.clone(), create_request("racer")).await;
    let mut racers = Vec::new();
    for racer in 0..20 {
        let (mut sessions, id) = (sessions.clone(), id.clone());
        racers.push(tokio::spawn(async move {
            let update = UpdateSessionRequest {
                session_id: id,
                set: HashMap::from([("winner".to_owned(), racer.to_string().into_bytes())]),
                if_version: session.version,
                ..Default::default()
            };
            sessions.update_session(update).await.map(drop).map_err(|s| s.code())
        }));
    }
    let mut winners = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(()) => winners += 1,
            Err(code) => assert_eq!(code, Code::Aborted),
        }
    }
    assert_eq!(winners, 1);

    // Updates racing a delete: whatever the order, the session stays deleted.
    for _ in 0..20 {
        let (id, _) = create(&mut sessions.clone(), create_request("racer")).await;
        let updater = {
            let (mut sessions, id) = (sessions.clone(), id.clone());
            tokio::spawn(async move {
                for i in 0..5 {
                    let update = UpdateSessionRequest {
                        session_id: id.clone(),
                        set: HashMap::from([("n".to_owned(), vec![i])]),
                        ..Default::default()
                    };
                    let _ = sessions.update_session(update).await;
                    let _ = get(&mut sessions, &id, false).await;
                }
            })
        };
        sessions.clone().delete_session(DeleteSessionRequest { session_id: id.clone() }).await.unwrap();
        updater.await.unwrap();
        assert_eq!(get(&mut sessions.clone(), &id, true).await.unwrap_err().code(), Code::NotFound, "resurrected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batons_see_the_same_sessions_and_client_chosen_ids_work() {
    let redis = Redis::start();
    let (a, b) = (Server::start(&redis.url(), &[]), Server::start(&redis.url(), &[]));
    let (mut on_a, mut on_b) = (a.sessions().await, b.sessions().await);
    let (id, _) = create(&mut on_a, create_request("shared")).await;
    assert_eq!(get(&mut on_b, &id, false).await.unwrap().data["cart"], b"3 items");

    // express-session style: the framework picks the id.
    let chosen = "s3cr3t-Framework_Chosen-Id_0123456789";
    let request = CreateSessionRequest { session_id: chosen.into(), ..create_request("shared") };
    let (returned, _) = create(&mut on_a, request.clone()).await;
    assert_eq!(returned, chosen);
    assert!(get(&mut on_b, chosen, true).await.is_ok());
    let status = on_b.create_session(request).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_inputs_are_rejected_and_write_nothing() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut sessions = baton.sessions().await;
    for bad in ["", "short", "has spaces in it, twenty-two+", "plus+and/slash/are/not/base64url", &"a".repeat(300)] {
        let status = get(&mut sessions, bad, false).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "session_id");
    }
    // Well formed but unknown: NOT_FOUND, never INTERNAL.
    let unknown = baton::ids::new_session_id();
    assert_eq!(get(&mut sessions, &unknown, false).await.unwrap_err().code(), Code::NotFound);
    let update = UpdateSessionRequest { session_id: unknown.clone(), ..Default::default() };
    assert_eq!(sessions.update_session(update).await.unwrap_err().code(), Code::NotFound);
    let rotate = RotateSessionRequest { session_id: unknown.clone() };
    assert_eq!(sessions.rotate_session(rotate).await.unwrap_err().code(), Code::NotFound);

    let too_short = CreateSessionRequest { session_id: "only-21-characters-xx".into(), ..create_request("x") };
    let status = sessions.create_session(too_short).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let huge =
        CreateSessionRequest { data: HashMap::from([("blob".to_owned(), vec![0; 70 * 1024])]), ..create_request("x") };
    let status = sessions.create_session(huge).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "data");
    let zero = CreateSessionRequest {
        idle_timeout: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
        ..create_request("x")
    };
    let status = sessions.create_session(zero).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "idle_timeout");
    let status = sessions.list_sessions(ListSessionsRequest { subject: String::new() }).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "subject");
    assert_eq!(redis.dbsize(), 0, "rejected requests wrote {:?}", redis.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_over_the_size_limit_is_refused_whole() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &["--session-max-bytes", "1000"]);
    let mut sessions = baton.sessions().await;
    let (id, _) = create(&mut sessions, create_request("sized")).await;
    let update = UpdateSessionRequest {
        session_id: id.clone(),
        set: HashMap::from([("a".to_owned(), vec![1; 600])]),
        ..Default::default()
    };
    sessions.update_session(update.clone()).await.unwrap();
    let second = UpdateSessionRequest { set: HashMap::from([("b".to_owned(), vec![2; 600])]), ..update };
    let status = sessions.update_session(second).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let session = get(&mut sessions, &id, true).await.unwrap();
    assert!(!session.data.contains_key("b"));
    assert_eq!(session.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_sessions_beyond_the_per_subject_maximum_are_evicted() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &["--session-max-per-subject", "3"]);
    let mut sessions = baton.sessions().await;
    let subject = unique("capped");
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create(&mut sessions, create_request(&subject)).await.0);
        // Creation times a few milliseconds apart, so "oldest" is one order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let listed = sessions.list_sessions(ListSessionsRequest { subject }).await.unwrap().into_inner().sessions;
    assert_eq!(listed.len(), 3);
    for (index, id) in ids.iter().enumerate() {
        assert_eq!(get(&mut sessions, id, true).await.is_ok(), index >= 2, "session {index}");
    }
}

fn micros(timestamp: Option<prost_types::Timestamp>) -> i64 {
    let timestamp = timestamp.expect("timestamp");
    timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos / 1000)
}

fn new_timeouts(id: &str, idle: Option<Duration>, absolute: Option<Duration>) -> UpdateSessionRequest {
    UpdateSessionRequest {
        session_id: id.to_owned(),
        idle_timeout: idle.map(duration_to_proto),
        absolute_timeout: absolute.map(duration_to_proto),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_gives_a_session_new_timeouts_longer_or_shorter() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut sessions = baton.sessions().await;
    let day = Duration::from_secs(24 * 3600);

    // "Remember me": a two-minute session becomes one of a week, idle for a day.
    let (id, created) = create(&mut sessions, short_lived("u", 60_000, 120_000)).await;
    let longer = sessions.update_session(new_timeouts(&id, Some(day), Some(7 * day))).await.unwrap();
    let longer = longer.into_inner().session.unwrap();
    assert_eq!(longer.created_at, created.created_at);
    assert_eq!(micros(longer.absolute_expires_at) - micros(longer.created_at), (7 * day).as_micros() as i64);
    assert_eq!(micros(longer.idle_expires_at) - micros(longer.last_seen_at), day.as_micros() as i64);
    // Redis keeps the session as long as the new idle deadline says.
    let ttl: i64 = redis::cmd("PTTL").arg(session_keys(&redis)).query(&mut redis.connection()).unwrap();
    assert!(ttl > (day - Duration::from_secs(60)).as_millis() as i64, "the key's TTL did not follow: {ttl} ms");
    // A GetSession touch slides by the session's own idle timeout, not the server's default.
    let touched = get(&mut sessions, &id, false).await.unwrap();
    assert!(micros(touched.idle_expires_at) - micros(touched.last_seen_at) > (day / 2).as_micros() as i64);

    // A shorter idle timeout takes effect at once, though the old one was a day.
    let shorter = sessions.update_session(new_timeouts(&id, Some(Duration::from_millis(300)), None)).await.unwrap();
    let shorter = shorter.into_inner().session.unwrap();
    assert_eq!(micros(shorter.idle_expires_at) - micros(shorter.last_seen_at), 300_000);
    assert_eq!(shorter.absolute_expires_at, longer.absolute_expires_at, "the absolute deadline was kept");
    common::eventually(Duration::from_secs(10), "the session to end after its new idle timeout", || {
        let mut sessions = sessions.clone();
        let id = id.clone();
        async move { get(&mut sessions, &id, true).await.is_err_and(|e| e.code() == Code::NotFound) }
    })
    .await;

    // An absolute timeout already past ends the session then and there.
    let subject = unique("ending");
    let (doomed, _) = create(&mut sessions, short_lived(&subject, 60_000, 120_000)).await;
    // The scenario: a session 300 ms old is given an absolute timeout of 100 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ended = sessions.update_session(new_timeouts(&doomed, None, Some(Duration::from_millis(100)))).await;
    assert_eq!(ended.unwrap_err().code(), Code::NotFound);
    assert_eq!(get(&mut sessions, &doomed, true).await.unwrap_err().code(), Code::NotFound);
    let listed = sessions.list_sessions(ListSessionsRequest { subject }).await.unwrap().into_inner().sessions;
    assert!(listed.is_empty(), "an ended session is still listed");
    assert_eq!(sessions.count_sessions(CountSessionsRequest {}).await.unwrap().into_inner().live, 0);

    // Out of range: refused, naming the field, and nothing written.
    let (kept, before) = create(&mut sessions, create_request("u")).await;
    for (field, request) in [
        ("idle_timeout", new_timeouts(&kept, Some(Duration::from_millis(10)), None)),
        ("absolute_timeout", new_timeouts(&kept, None, Some(400 * day))),
    ] {
        let mut request = request;
        request.set = HashMap::from([("cart".to_owned(), b"changed".to_vec())]);
        let status = sessions.update_session(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let violations = status.get_details_bad_request().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, field);
    }
    let after = get(&mut sessions, &kept, true).await.unwrap();
    assert_eq!(
        (after.version, after.data, after.absolute_expires_at),
        (before.version, before.data, before.absolute_expires_at)
    );
}

/// The one session key in Redis (for tests that hold a single session).
fn session_keys(redis: &Redis) -> String {
    let keys: Vec<String> = redis.keys().into_iter().filter(|key| key.ends_with(":s")).collect();
    assert_eq!(keys.len(), 1, "expected one session key: {keys:?}");
    keys.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_and_clear_cover_every_live_session_of_the_tenant_across_pages() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let sessions = baton.sessions().await;
    let subject = unique("many");
    // More than two scan pages, a third of them ending idle soon, some with a subject.
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut sessions = sessions.clone();
        let subject = subject.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..300 {
                let request = match i % 3 {
                    0 => short_lived("", 300, 60_000),
                    1 => create_request(&subject),
                    _ => CreateSessionRequest { subject: format!("{subject}-{worker}"), ..Default::default() },
                };
                ids.push((i % 3 != 0, create(&mut sessions, request).await.0));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    let mut sessions = sessions;
    let (deleted, _) = create(&mut sessions, create_request(&subject)).await;
    assert!(sessions.delete_session(DeleteSessionRequest { session_id: deleted }).await.unwrap().into_inner().deleted);
    let long_lived = ids.iter().filter(|(long, _)| *long).count() as u64;
    assert_eq!(long_lived, 1600);
    common::eventually(Duration::from_secs(20), "the short sessions to end", || {
        let mut sessions = sessions.clone();
        async move { sessions.count_sessions(CountSessionsRequest {}).await.unwrap().into_inner().live == long_lived }
    })
    .await;
    // Counting dropped the ended sessions' entries, so a second count reads only live ones.
    assert_eq!(sessions.count_sessions(CountSessionsRequest {}).await.unwrap().into_inner().live, long_lived);

    let cleared = sessions.clear_sessions(ClearSessionsRequest {}).await.unwrap().into_inner().cleared;
    assert_eq!(cleared, long_lived);
    assert_eq!(sessions.count_sessions(CountSessionsRequest {}).await.unwrap().into_inner().live, 0);
    for (_, id) in ids.iter().step_by(97) {
        assert_eq!(get(&mut sessions, id, true).await.unwrap_err().code(), Code::NotFound);
    }
    let listed = sessions.list_sessions(ListSessionsRequest { subject: subject.clone() }).await.unwrap();
    assert!(listed.into_inner().sessions.is_empty());
    assert!(redis.keys().iter().all(|key| !key.ends_with(":s") && !key.ends_with(":i")), "{:?}", redis.keys());

    // Sessions created afterwards are counted again.
    create(&mut sessions, create_request(&subject)).await;
    assert_eq!(sessions.count_sessions(CountSessionsRequest {}).await.unwrap().into_inner().live, 1);
}
