//! The dashboard's server side over plain HTTP (the browser test, tests/dashboard/, clicks
//! through the same pages): who may act, which tenant a page shows, hostile queue names,
//! dead-job actions and the list of queues. Every effect is read back from Redis.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use baton::proto::v1::{ConsumeRequest, EnqueueRequest, GetJobRequest, JobState, NackRequest, consume_response};
use common::{Clients, PATIENCE, Redis, RedisCluster, Server, free_port, next_event};
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

const ADMIN_A: &str = "admin of a; with = odd characters";
const READER_A: &str = "reader-of-a";
const ADMIN_B: &str = "admin-of-b";

fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

struct Dashboard {
    _dir: tempfile::TempDir,
    server: Server,
    base: String,
    http: reqwest::Client,
}

impl Dashboard {
    fn start(redis: &Redis) -> Self {
        Self::start_on(&redis.url(), &[])
    }

    /// On the Redis at `url`, with `extra` flags.
    fn start_on(url: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.toml");
        let config = format!(
            "[[api_keys]]\nsha256 = \"{}\"\ntenant = \"a\"\nname = \"alice\"\nrole = \"admin\"\n\n\
             [[api_keys]]\nsha256 = \"{}\"\ntenant = \"a\"\nname = \"reader\"\n\n\
             [[api_keys]]\nsha256 = \"{}\"\ntenant = \"b\"\nname = \"bob\"\nrole = \"admin\"\n",
            hash(ADMIN_A),
            hash(READER_A),
            hash(ADMIN_B)
        );
        std::fs::write(&path, config).unwrap();
        let admin = format!("127.0.0.1:{}", free_port());
        let mut flags = vec!["--config", path.to_str().unwrap(), "--admin-listen", &admin];
        flags.extend_from_slice(extra);
        let server = Server::start(url, &flags);
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { _dir: dir, server, base: format!("http://{admin}"), http }
    }

    /// Signs in with `key` through the sign-in form; answers the sign-in's cookie.
    async fn sign_in(&self, key: &str) -> Result<String, u16> {
        let (_, _) = self.get("/queues", None).await;
        let form = self.http.get(format!("{}/login", self.base)).send().await.unwrap();
        let login_cookie =
            form.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
        let token = login_cookie.trim_start_matches("baton_login=").to_owned();
        assert!(form.text().await.unwrap().contains(&format!("name=\"csrf\" value=\"{token}\"")));
        let request = self.http.post(format!("{}/login", self.base)).header("cookie", &login_cookie);
        let response = request.form(&[("key", key), ("csrf", token.as_str())]).send().await.unwrap();
        if response.status().as_u16() != 303 {
            return Err(response.status().as_u16());
        }
        let set_cookie = response.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
        assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
        assert!(!set_cookie.contains(key), "the key never goes into the cookie: {set_cookie}");
        Ok(set_cookie.split(';').next().unwrap().to_owned())
    }

    /// A page's status and body with `cookie` (None: signed out).
    async fn get(&self, path: &str, cookie: Option<&str>) -> (u16, String) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let mut attempts = 0;
        loop {
            match request.try_clone().unwrap().send().await {
                Ok(response) => return (response.status().as_u16(), response.text().await.unwrap()),
                // The listener comes up with the server, a moment after its gRPC port.
                Err(error) if attempts < 50 && error.is_connect() => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => panic!("GET {path}: {error}"),
            }
        }
    }

    /// Posts `form` to `path` with `cookie`; answers the status and the redirect.
    async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> (u16, String) {
        let mut request = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.unwrap();
        let location = response.headers().get("location").map(|value| value.to_str().unwrap().to_owned());
        (response.status().as_u16(), location.unwrap_or_default())
    }

    /// The form token a page gives the holder of `cookie`.
    async fn token(&self, cookie: &str) -> String {
        let (_, page) = self.get("/redis", Some(cookie)).await;
        let start = page.find("name=\"csrf\" value=\"").expect("a signed-in page carries a form token") + 19;
        page[start..start + 64].to_owned()
    }
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

fn exists(redis: &Redis, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query::<i64>(&mut redis.connection()).unwrap() == 1
}

async fn enqueue(dashboard: &Dashboard, key: &str, queue: &str, payload: &[u8], max_attempts: u32) -> String {
    let mut queues = dashboard.server.queues().await;
    let request = EnqueueRequest { queue: queue.into(), payload: payload.to_vec(), max_attempts, ..Default::default() };
    queues.enqueue(with_key(request, key)).await.unwrap().into_inner().job_id
}

/// Takes `count` jobs of `queue` and dead-letters each.
async fn kill_jobs(dashboard: &Dashboard, key: &str, queue: &str, count: usize) {
    let mut queues = dashboard.server.queues().await;
    let (steer, steering) = tokio::sync::mpsc::channel(4);
    steer
        .send(ConsumeRequest { queue: queue.into(), max_in_flight: count as u32, ..Default::default() })
        .await
        .unwrap();
    let mut stream = queues.consume(with_key(ReceiverStream::new(steering), key)).await.unwrap().into_inner();
    for _ in 0..count {
        let Some(consume_response::Event::Delivery(delivery)) = next_event(&mut stream, PATIENCE).await else {
            panic!("expected a delivery");
        };
        let nack =
            NackRequest { lease_id: delivery.lease_id, error: "boom".into(), dead_letter: true, ..Default::default() };
        queues.nack(with_key(nack, key)).await.unwrap();
    }
    // Ends the stream before returning, so it takes nothing the test retries later.
    steer.send(ConsumeRequest { drain: true, ..Default::default() }).await.unwrap();
    let end = tokio::time::timeout(PATIENCE, stream.next()).await.expect("the drained stream ends");
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_key_with_its_form_token_acts_and_each_tenant_sees_its_own_queues() {
    let redis = Redis::start();
    let dashboard = Dashboard::start(&redis);
    for _ in 0..3 {
        enqueue(&dashboard, ADMIN_A, "shared", b"a", 3).await;
    }
    enqueue(&dashboard, ADMIN_B, "shared", b"b", 3).await;

    let admin_a = dashboard.sign_in(ADMIN_A).await.unwrap();
    let admin_b = dashboard.sign_in(ADMIN_B).await.unwrap();
    let reader_a = dashboard.sign_in(READER_A).await.unwrap();
    // Signed out: the default namespace, which has no queues; no action buttons anywhere.
    let (status, page) = dashboard.get("/queues", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("No queues yet") && !page.contains("data-queue"), "{page}");
    let (_, page) = dashboard.get("/queues/shared", None).await;
    assert!(!page.contains("Pause queue") && page.contains("Sign in"));
    // Each tenant's key shows its own counts.
    let (_, page) = dashboard.get("/queues", Some(reader_a.as_str())).await;
    assert!(page.contains("Signed in as reader (read only)"), "{page}");
    assert!(page.contains("<tr data-queue=\"shared\">") && page.contains("<td>3</td>"), "{page}");
    let (_, page) = dashboard.get("/queues", Some(admin_b.as_str())).await;
    assert!(page.contains("<td>1</td>") && !page.contains("<td>3</td>"), "{page}");

    // Refused: no key, a reader's key, a wrong token, another page's token of another key.
    let paused_a = "baton:a:queue:{shared}:paused";
    let token_a = dashboard.token(&admin_a).await;
    let token_b = dashboard.token(&admin_b).await;
    for (key, token) in [
        (None, token_a.as_str()),
        (Some(reader_a.as_str()), ""),
        (Some(admin_a.as_str()), "0"),
        (Some(admin_a.as_str()), &token_b),
    ] {
        let (status, _) = dashboard.post("/queues/shared/pause", key, &[("csrf", token)]).await;
        assert_eq!(status, 403, "{key:?} with token {token:?}");
    }
    let reader_token = dashboard.token(&reader_a).await;
    let (status, _) = dashboard.post("/queues/shared/pause", Some(reader_a.as_str()), &[("csrf", &reader_token)]).await;
    assert_eq!(status, 403, "a reader's own token does not make it an admin");
    assert!(!exists(&redis, paused_a), "a refused action writes nothing");

    // The admin pauses its own tenant's queue only, and is sent back with a notice.
    let (status, location) =
        dashboard.post("/queues/shared/pause", Some(admin_a.as_str()), &[("csrf", &token_a)]).await;
    assert_eq!((status, location.as_str()), (303, "/queues/shared?notice=Queue%20paused"));
    assert!(exists(&redis, paused_a));
    assert!(!exists(&redis, "baton:b:queue:{shared}:paused"));
    let (_, page) = dashboard.get("/queues/shared", Some(admin_a.as_str())).await;
    assert!(page.contains("Resume queue"));
    let (status, _) = dashboard.post("/queues/shared/resume", Some(admin_a.as_str()), &[("csrf", &token_a)]).await;
    assert_eq!(status, 303);
    assert!(!exists(&redis, paused_a));

    // Signing in takes the sign-in form's own token; a wrong key does not sign in.
    let (status, _) = dashboard.post("/login", None, &[("key", ADMIN_B)]).await;
    assert_eq!(status, 403, "a sign-in without the form's token");
    assert_eq!(dashboard.sign_in("guess").await, Err(401));
    // Signing out ends the sign-in itself: a copy of its cookie no longer reads as the key
    // nor acts.
    let (status, _) = dashboard.post("/logout", Some(admin_a.as_str()), &[("csrf", &token_a)]).await;
    assert_eq!(status, 303);
    let (_, page) = dashboard.get("/queues", Some(admin_a.as_str())).await;
    assert!(page.contains("Read only") && !page.contains("Signed in"), "{page}");
    let (status, _) = dashboard.post("/queues/shared/pause", Some(admin_a.as_str()), &[("csrf", &token_a)]).await;
    assert_eq!(status, 403);
    assert!(!exists(&redis, paused_a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_payloads_render_inert_and_stay_in_their_queue() {
    let redis = Redis::start();
    let dashboard = Dashboard::start(&redis);
    let admin_a = dashboard.sign_in(ADMIN_A).await.unwrap();
    let hostile = "../{x}<b onmouseover=alert(1)>/q?state=dead&page=1";
    let job = enqueue(&dashboard, ADMIN_A, hostile, b"<script>alert(1)</script>", 3).await;

    let (_, page) = dashboard.get("/queues", Some(admin_a.as_str())).await;
    assert!(!page.contains("<b onmouseover"), "names are escaped");
    let link = "/queues/..%2F%7Bx%7D%3Cb%20onmouseover%3Dalert%281%29%3E%2Fq%3Fstate%3Ddead%26page%3D1";
    assert!(page.contains(&format!("href=\"{link}\"")), "{page}");
    let (status, page) = dashboard.get(link, Some(admin_a.as_str())).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<dt>Ready</dt><dd>1</dd>"), "{page}");

    let (status, page) = dashboard.get(&format!("{link}/jobs/{job}"), Some(admin_a.as_str())).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("&#60;script&#62;alert(1)&#60;/script&#62;") && !page.contains("<script>alert"), "{page}");
    // A job is shown only under its own queue.
    let (status, _) = dashboard.get(&format!("/queues/other/jobs/{job}"), Some(admin_a.as_str())).await;
    assert_eq!(status, 404);

    let token = dashboard.token(&admin_a).await;
    let (status, _) = dashboard.post(&format!("{link}/pause"), Some(admin_a.as_str()), &[("csrf", &token)]).await;
    assert_eq!(status, 303);
    assert!(exists(&redis, "baton:a:queue:{../%7Bx%7D<b onmouseover=alert(1)>/q?state=dead&page=1}:paused"));
    // Bad input is refused by name, and writes nothing.
    let long = format!("/queues/{}/pause", "q".repeat(600));
    let (status, _) = dashboard.post(&long, Some(admin_a.as_str()), &[("csrf", &token)]).await;
    assert_eq!(status, 400);
    let (status, page) = dashboard.get("/queues/x?state=nonsense", Some(admin_a.as_str())).await;
    assert!(status == 400 && page.contains("state must be"), "{page}");
    // Every page answers its own Content-Security-Policy.
    let response = dashboard.http.get(format!("{}/queues", dashboard.base)).send().await.unwrap();
    let policy = response.headers().get("content-security-policy").unwrap().to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_jobs_are_retried_or_deleted_by_selection_or_all_and_an_empty_queue_leaves_the_list() {
    let redis = Redis::start();
    let dashboard = Dashboard::start(&redis);
    let mut ids = Vec::new();
    for n in 0..5u8 {
        ids.push(enqueue(&dashboard, ADMIN_A, "mail", &[n], 1).await);
    }
    kill_jobs(&dashboard, ADMIN_A, "mail", 5).await;
    let admin_a = dashboard.sign_in(ADMIN_A).await.unwrap();
    let token = dashboard.token(&admin_a).await;
    let (_, page) = dashboard.get("/queues/mail?state=dead", Some(admin_a.as_str())).await;
    for id in &ids {
        assert!(page.contains(&format!("name=\"job\" value=\"{id}\"")), "{id} offered for selection");
    }

    let state = |id: &str| {
        let id = id.to_owned();
        async {
            let mut queues = dashboard.server.queues().await;
            match queues.get_job(with_key(GetJobRequest { job_id: id }, ADMIN_A)).await {
                Ok(response) => Some(JobState::try_from(response.into_inner().job.unwrap().state).unwrap()),
                Err(status) if status.code() == tonic::Code::NotFound => None,
                Err(status) => panic!("{status:?}"),
            }
        }
    };
    let retry = [("csrf", token.as_str()), ("job", ids[0].as_str())];
    let (status, location) = dashboard.post("/queues/mail/dead/retry", Some(admin_a.as_str()), &retry).await;
    assert_eq!((status, location.as_str()), (303, "/queues/mail?state=dead&notice=Retried%201%20dead%20jobs"));
    assert_eq!(state(&ids[0]).await, Some(JobState::Ready));
    let delete = [("csrf", token.as_str()), ("job", ids[1].as_str()), ("job", ids[2].as_str())];
    let (status, _) = dashboard.post("/queues/mail/dead/delete", Some(admin_a.as_str()), &delete).await;
    assert_eq!(status, 303);
    assert_eq!((state(&ids[1]).await, state(&ids[2]).await), (None, None));
    // A job that is not dead is not deleted by naming it.
    let (_, location) =
        dashboard.post("/queues/mail/dead/delete", Some(admin_a.as_str()), &[("csrf", &token), ("job", &ids[0])]).await;
    assert!(location.ends_with("Deleted%200%20dead%20jobs"), "{location}");
    assert_eq!(state(&ids[0]).await, Some(JobState::Ready));
    // An empty selection is refused; "all" takes the rest.
    let (status, _) = dashboard.post("/queues/mail/dead/delete", Some(admin_a.as_str()), &[("csrf", &token)]).await;
    assert_eq!(status, 400);
    let (_, location) =
        dashboard.post("/queues/mail/dead/delete", Some(admin_a.as_str()), &[("csrf", &token), ("all", "true")]).await;
    assert!(location.ends_with("Deleted%202%20dead%20jobs"), "{location}");
    assert_eq!((state(&ids[3]).await, state(&ids[4]).await), (None, None));

    // Cancelling the last job leaves the queue with nothing kept: it leaves the list (and the
    // namespace's set of queues) the next time the list is read.
    let (status, _) = dashboard
        .post(&format!("/queues/mail/jobs/{}/cancel", ids[0]), Some(admin_a.as_str()), &[("csrf", &token)])
        .await;
    assert_eq!(status, 303);
    assert_eq!(state(&ids[0]).await, Some(JobState::Cancelled));
    let (_, page) = dashboard.get("/queues", Some(admin_a.as_str())).await;
    assert!(!page.contains("data-queue=\"mail\""), "{page}");
    assert!(!exists(&redis, "baton:a:queues"));
    // The next job puts it back.
    enqueue(&dashboard, ADMIN_A, "mail", b"again", 1).await;
    let (_, page) = dashboard.get("/queues", Some(admin_a.as_str())).await;
    assert!(page.contains("data-queue=\"mail\""), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_shows_its_enqueues_per_minute_and_its_successes_of_the_last_minute() {
    let redis = Redis::start();
    let dashboard = Dashboard::start(&redis);
    for n in 0..4u8 {
        enqueue(&dashboard, ADMIN_A, "rated", &[n], 3).await;
    }
    // Counted per minute in a hash that expires: the counts of at most two minutes.
    let counts: std::collections::HashMap<u64, u64> =
        redis::cmd("HGETALL").arg("baton:a:queue:{rated}:enqueued").query(&mut redis.connection()).unwrap();
    assert!(counts.len() <= 2 && counts.values().sum::<u64>() == 4, "{counts:?}");
    let ttl: i64 = redis::cmd("PTTL").arg("baton:a:queue:{rated}:enqueued").query(&mut redis.connection()).unwrap();
    assert!(ttl > 0 && ttl <= 180_000, "{ttl}");

    let mut queues = dashboard.server.queues().await;
    let (steer, steering) = tokio::sync::mpsc::channel(4);
    steer.send(ConsumeRequest { queue: "rated".into(), max_in_flight: 3, ..Default::default() }).await.unwrap();
    let mut stream = queues.consume(with_key(ReceiverStream::new(steering), ADMIN_A)).await.unwrap().into_inner();
    for _ in 0..3 {
        let Some(consume_response::Event::Delivery(delivery)) = next_event(&mut stream, PATIENCE).await else {
            panic!("expected a delivery");
        };
        let ack = baton::proto::v1::AckRequest { lease_id: delivery.lease_id, result: Vec::new() };
        queues.ack(with_key(ack, ADMIN_A)).await.unwrap();
    }
    let admin_a = dashboard.sign_in(ADMIN_A).await.unwrap();
    let (_, page) = dashboard.get("/queues/rated", Some(admin_a.as_str())).await;
    assert!(page.contains("<dt>Succeeded /min</dt><dd>3</dd>"), "3 successes within the minute, not scaled up: {page}");
    assert!(page.contains("<dt>Succeeded</dt><dd>3</dd>"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_every_master_is_shown_and_names_are_looked_up_exactly() {
    let cluster = RedisCluster::start(3);
    let dashboard = Dashboard::start_on(&cluster.url(), &["--redis-mode", "cluster"]);
    // Queues in many slots, listed from the one set of names.
    for queue in ["alpha", "beta", "gamma", "delta"] {
        enqueue(&dashboard, ADMIN_A, queue, b"x", 3).await;
    }
    let mut locks = dashboard.server.locks().await;
    let acquire = baton::proto::v1::AcquireRequest {
        name: "orders/42".into(),
        ttl: Some(baton::proto::duration_to_proto(std::time::Duration::from_secs(60))),
        ..Default::default()
    };
    assert!(locks.acquire(with_key(acquire, ADMIN_A)).await.unwrap().into_inner().acquired);
    let admin_a = dashboard.sign_in(ADMIN_A).await.unwrap();

    let (_, page) = dashboard.get("/queues", Some(admin_a.as_str())).await;
    for queue in ["alpha", "beta", "gamma", "delta"] {
        assert!(page.contains(&format!("<tr data-queue=\"{queue}\">")), "{queue}: {page}");
    }
    let (status, page) = dashboard.get("/redis", Some(admin_a.as_str())).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page.matches("<h2>Master ").count(), 3, "one section per master: {page}");
    assert_eq!(page.matches("<dt>Memory used</dt>").count(), 3);

    // No single SCAN walks a cluster: a prefix finds nothing and says why; the exact name
    // finds the holder.
    let (_, page) = dashboard.get("/locks?prefix=orders%2F", Some(admin_a.as_str())).await;
    assert!(page.contains("looked up exactly") && !page.contains("data-lock"), "{page}");
    let (_, page) = dashboard.get("/locks?prefix=orders%2F42", Some(admin_a.as_str())).await;
    assert!(page.contains("<tr data-lock=\"orders/42\">"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_finds_the_tenants_own_locks_and_leaders_and_glob_characters_match_only_themselves() {
    let redis = Redis::start();
    let dashboard = Dashboard::start(&redis);
    let mut locks = dashboard.server.locks().await;
    for (key, name) in [(ADMIN_A, "orders/1"), (ADMIN_A, "orders/2"), (ADMIN_A, "order*s"), (ADMIN_B, "orders/3")] {
        let acquire = baton::proto::v1::AcquireRequest {
            name: name.into(),
            ttl: Some(baton::proto::duration_to_proto(std::time::Duration::from_secs(60))),
            ..Default::default()
        };
        assert!(locks.acquire(with_key(acquire, key)).await.unwrap().into_inner().acquired);
    }
    let mut elections = dashboard.server.elections().await;
    let campaign = baton::proto::v1::CampaignRequest {
        name: "scheduler".into(),
        value: b"pod-7".to_vec(),
        ttl: Some(baton::proto::duration_to_proto(std::time::Duration::from_secs(60))),
        ..Default::default()
    };
    elections.campaign(with_key(campaign, ADMIN_A)).await.unwrap();
    let admin_a = dashboard.sign_in(ADMIN_A).await.unwrap();

    let (_, page) = dashboard.get("/locks?prefix=orders%2F", Some(admin_a.as_str())).await;
    assert_eq!(page.matches("<tr data-lock=").count(), 2, "{page}");
    assert!(page.contains("data-lock=\"orders/1\"") && page.contains("data-lock=\"orders/2\""), "{page}");
    let (_, page) = dashboard.get("/locks?prefix=order*", Some(admin_a.as_str())).await;
    assert_eq!(page.matches("<tr data-lock=").count(), 1, "`*` is a character, not a glob: {page}");
    let (_, page) = dashboard.get("/elections?prefix=sch", Some(admin_a.as_str())).await;
    assert!(page.contains("<tr data-election=\"scheduler\">") && page.contains("pod-7"), "{page}");
    let (_, page) = dashboard.get("/elections?prefix=sch", None).await;
    assert!(!page.contains("data-election"), "signed out reads the default namespace: {page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_gets_ten_sign_in_attempts_a_minute_so_a_key_cannot_be_guessed_through_the_form() {
    let redis = Redis::start();
    let dashboard = Dashboard::start(&redis);
    for attempt in 0..10 {
        assert_eq!(dashboard.sign_in(&format!("guess-{attempt}")).await, Err(401), "attempt {attempt}");
    }
    assert_eq!(dashboard.sign_in(ADMIN_A).await, Err(429), "the right key too, once the minute's attempts are spent");
    // Counted apart from every tenant's own rate limits.
    let keys = redis.keys();
    assert!(keys.iter().all(|key| !key.starts_with("baton:default:") && !key.starts_with("baton:a:")), "{keys:?}");
    assert!(keys.iter().any(|key| key.starts_with("baton:dashboard:sign-in:rl:{127.0.0.1}")), "{keys:?}");
}
