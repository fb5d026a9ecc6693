//! The listener and the Redis link under security settings: TLS and mTLS with certificate
//! rotation, the default deadline, reflection switched off, and `rediss://` with an ACL
//! user holding only the rules docs/security.md gives.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::cache_service_client::CacheServiceClient;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::lock_service_client::LockServiceClient;
use baton::proto::v1::rate_limiter_service_client::RateLimiterServiceClient;
use baton::proto::v1::session_store_service_client::SessionStoreServiceClient;
use baton::proto::v1::{
    AckRequest, AcquireRequest, Algorithm, CheckRequest, ConsumeRequest, CreateSessionRequest, EnqueueRequest,
    ErrorReason, FetchRequest, GetRequest, GetSessionRequest, KeepAliveRequest, Limit, LimitRequest, ReleaseRequest,
    SetRequest, consume_response, limit_request,
};
use common::{
    Auth, Baton, Clients, PATIENCE, Redis, RedisCluster, SentinelSet, TlsFiles, eventually, free_port, health_status,
    reason_of, unique,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A certificate authority and the PEM files it issued, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Self { dir: tempfile::tempdir().unwrap(), issuer };
        std::fs::write(pki.path("ca.pem"), pki.issuer.pem()).unwrap();
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a certificate for `localhost` / 127.0.0.1; returns (cert PEM, key PEM).
    fn issue(&self, common_name: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Issues a certificate into `<stem>.pem` and `<stem>-key.pem`.
    fn issue_files(&self, stem: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(stem);
        let (cert_path, key_path) = (self.path(&format!("{stem}.pem")), self.path(&format!("{stem}-key.pem")));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        (cert_path, key_path)
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

async fn tls_channel(baton: &Baton, ca_pem: &str, identity: Option<(String, String)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://{}", baton.addr))
        .unwrap()
        .tls_config(tls)
        .map_err(|err| err.to_string())?
        .connect_timeout(Duration::from_secs(5));
    endpoint.connect().await.map_err(|err| format!("{err:?}"))
}

/// Whether a health check over `channel` answers at all.
async fn answers(channel: Channel) -> Result<(), tonic::Status> {
    let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
    HealthClient::new(channel).check(request).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_test_ca_refuses_plaintext_and_rotates_certificates() {
    let redis = Redis::start();
    let pki = Pki::new("first");
    let (cert, key) = pki.issue_files("server");
    let config = pki.path("baton.toml");
    std::fs::write(&config, "[server]\ntls_reload_interval = \"200ms\"\n").unwrap();
    let baton = Baton::start(
        Some(&redis.url()),
        &["--tls-cert", path_str(&cert), "--tls-key", path_str(&key), "--config", path_str(&config)],
    );

    let channel = tls_channel(&baton, &pki.ca_pem(), None).await.expect("TLS with the test CA");
    answers(channel.clone()).await.expect("a call over TLS");

    let plaintext = Channel::from_shared(format!("http://{}", baton.addr)).unwrap().connect().await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(channel) => tokio::time::timeout(Duration::from_secs(5), answers(channel)).await.is_ok_and(|r| r.is_err()),
    };
    assert!(refused, "a plaintext call was answered while TLS is on");

    let other = Pki::new("other");
    assert!(
        tls_channel(&baton, &other.ca_pem(), None).await.is_err(),
        "a client trusting another CA accepted the server"
    );

    // Rotation: the files are replaced by a certificate from another CA. New connections
    // get it; the established one keeps working.
    let (new_cert, new_key) = other.issue("rotated");
    std::fs::write(&key, new_key).unwrap();
    std::fs::write(&cert, new_cert).unwrap();
    eventually(PATIENCE, "rotated certificate served", || async {
        match tls_channel(&baton, &other.ca_pem(), None).await {
            Ok(channel) => answers(channel).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(tls_channel(&baton, &pki.ca_pem(), None).await.is_err(), "the old certificate is still served");
    answers(channel).await.expect("the connection made before the rotation");

    // A broken replacement is refused and the current certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    eventually(PATIENCE, "the bad rotation to be read and logged", || async {
        baton.logs().iter().any(|line| line.contains("not usable"))
    })
    .await;
    let channel = tls_channel(&baton, &other.ca_pem(), None).await.expect("certificate kept after a bad rotation");
    answers(channel).await.expect("a call after a bad rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_client_ca() {
    let redis = Redis::start();
    let server_pki = Pki::new("server");
    let client_pki = Pki::new("clients");
    let (cert, key) = server_pki.issue_files("server");
    let baton = Baton::start(
        Some(&redis.url()),
        &[
            "--tls-cert",
            path_str(&cert),
            "--tls-key",
            path_str(&key),
            "--tls-client-ca",
            path_str(&client_pki.path("ca.pem")),
        ],
    );
    let ca = server_pki.ca_pem();

    let trusted = tls_channel(&baton, &ca, Some(client_pki.issue("worker"))).await.expect("mTLS handshake");
    answers(trusted).await.expect("a call with a client certificate");

    // Without a certificate, or with one from another CA, no call gets through: the
    // handshake (TLS 1.3 reports the refusal on first use) or the call fails.
    for (what, identity) in [("no certificate", None), ("a stranger's certificate", Some(server_pki.issue("mallory")))]
    {
        let outcome = match tls_channel(&baton, &ca, identity).await {
            Err(_) => None,
            Ok(channel) => Some(tokio::time::timeout(Duration::from_secs(5), answers(channel)).await),
        };
        assert!(!matches!(outcome, Some(Ok(Ok(())))), "a client with {what} was served");
    }
}

fn check_request(key: &str) -> CheckRequest {
    let limit = Limit {
        algorithm: Algorithm::FixedWindow as i32,
        limit: 100,
        period: Some(duration_to_proto(Duration::from_secs(60))),
        burst: 0,
    };
    CheckRequest {
        limits: vec![LimitRequest { key: key.to_owned(), source: Some(limit_request::Source::Limit(limit)), cost: 1 }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_deadline_ends_stuck_calls_but_not_streams_or_asked_for_waits() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    std::fs::write(&config, "[server]\ndefault_deadline = \"1s\"\n").unwrap();
    let baton = Baton::start(Some(&redis.url()), &["--config", path_str(&config), "--redis-timeout", "20s"]);
    let channel = baton.channel().await;
    let mut limiter = RateLimiterServiceClient::new(channel.clone());
    let mut locks = LockServiceClient::new(channel.clone());
    limiter.check(check_request("warm-up")).await.expect("a call while Redis answers");

    // A wait the client asked for outlives the default deadline.
    let name = unique("deadline");
    let acquire = |wait: Duration| AcquireRequest {
        name: name.clone(),
        ttl: Some(duration_to_proto(Duration::from_secs(30))),
        wait_timeout: Some(duration_to_proto(wait)),
        ..Default::default()
    };
    let held = locks.acquire(acquire(Duration::ZERO)).await.unwrap().into_inner();
    assert!(held.acquired);
    let started = Instant::now();
    let waited = locks.acquire(acquire(Duration::from_secs(3))).await.expect("a 3 s wait").into_inner();
    assert!(!waited.acquired);
    assert!(started.elapsed() >= Duration::from_millis(2900), "the wait was cut at {:?}", started.elapsed());

    // A stream lives past the default deadline.
    let lease = held.lease.unwrap();
    let keepalive = KeepAliveRequest {
        name: name.clone(),
        lease_id: lease.lease_id.clone(),
        ttl: Some(duration_to_proto(Duration::from_secs(2))),
        ..Default::default()
    };
    let (heartbeats, _sending) = common::heartbeats(keepalive, Duration::from_millis(600));
    let mut stream = locks.keep_alive(heartbeats).await.expect("keepalive").into_inner();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let renewal = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("a renewal in time");
        renewal.expect("stream open").expect("a renewal, not an error");
    }
    drop(stream);

    // With Redis frozen, a call without a deadline ends at the default one, not at the
    // 20 s Redis timeout.
    redis.freeze();
    let started = Instant::now();
    let status = limiter.check(check_request("stuck")).await.expect_err("Redis is frozen");
    let took = started.elapsed();
    redis.thaw();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(reason_of(&status), ErrorReason::ServerDeadlineExceeded);
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    // Redis answers again. Whether `released` is true races with the release that dropping
    // the KeepAlive stream above queued behind the freeze (the API releases such a lease at
    // once), so only the answer is checked.
    let release = ReleaseRequest { name, lease_id: lease.lease_id };
    locks.release(release).await.expect("a release after the thaw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_can_be_switched_off() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    std::fs::write(&config, "[server]\nreflection = false\n").unwrap();
    let baton = Baton::start(Some(&redis.url()), &["--config", path_str(&config)]);
    use tonic_reflection::pb::v1;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(baton.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let outcome = client.server_reflection_info(tokio_stream::once(request)).await;
    let code = match outcome {
        Err(status) => status.code(),
        Ok(response) => match response.into_inner().next().await {
            Some(Err(status)) => status.code(),
            other => panic!("reflection answered: {other:?}"),
        },
    };
    assert_eq!(code, Code::Unimplemented);
}

/// Holds `name`, lets a waiter queue behind it for `settle`, releases, and returns how long
/// the waiter took to get the lock after the release. A pause, not a poll: the harness
/// cannot read these TLS and ACL-restricted Redises to see the waiter's marker.
async fn hand_off_to_a_waiter(locks: &mut LockServiceClient<Channel>, name: &str, settle: Duration) -> Duration {
    let acquire = |wait: Duration| AcquireRequest {
        name: name.to_owned(),
        ttl: Some(duration_to_proto(Duration::from_secs(10))),
        wait_timeout: Some(duration_to_proto(wait)),
        ..Default::default()
    };
    let lease = locks.acquire(acquire(Duration::ZERO)).await.expect("Acquire").into_inner().lease.unwrap();
    let waiter = {
        let mut locks = locks.clone();
        let request = acquire(Duration::from_secs(8));
        tokio::spawn(async move { locks.acquire(request).await })
    };
    tokio::time::sleep(settle).await;
    let release = ReleaseRequest { name: name.to_owned(), lease_id: lease.lease_id };
    assert!(locks.release(release).await.expect("Release").into_inner().released);
    let released = Instant::now();
    assert!(waiter.await.unwrap().expect("woken waiter").into_inner().acquired);
    released.elapsed()
}

/// The ACL rule set docs/security.md documents; the test below proves it is sufficient.
const DOCUMENTED_ACL_RULES: &str = "on >baton-secret resetkeys ~baton:* resetchannels &baton:* -@all \
     +@read +@write +@scripting +@pubsub +@connection -@dangerous +info +wait +time";

/// A TLS-only redis-server with the ACL user of docs/security.md, the default user disabled.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(pki: &Pki) -> Self {
        let (cert, key) = pki.issue_files("redis");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", path_str(&cert), "--tls-key-file", path_str(&key)])
            .args(["--tls-ca-cert-file", path_str(&pki.path("ca.pem")), "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--dir", path_str(dir.path())])
            .args(["--user", "default", "off", "--user", "baton"])
            .args(DOCUMENTED_ACL_RULES.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let listening = testkit::wait::until(PATIENCE, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(listening, "TLS redis-server did not listen");
        Self { child, port, _dir: dir }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_readme_acl_user_serves_every_pattern() {
    let pki = Pki::new("redis");
    let redis = TlsRedis::start(&pki);
    let url = format!("rediss://baton:baton-secret@localhost:{}", redis.port);
    let baton = Baton::start(Some(&url), &["--redis-tls-ca", path_str(&pki.path("ca.pem")), "--redis-timeout", "2s"]);
    let channel = baton.channel().await;
    let mut health = HealthClient::new(channel.clone());
    eventually(PATIENCE, "every service SERVING over rediss", || {
        let mut health = health.clone();
        async move {
            health_status(&mut health, "baton.v1.LockService").await == Some(ServingStatus::Serving)
                && health_status(&mut health, "baton.v1.CacheService").await == Some(ServingStatus::Serving)
        }
    })
    .await;
    assert_eq!(health_status(&mut health, "").await, Some(ServingStatus::Serving));

    let mut limiter = RateLimiterServiceClient::new(channel.clone());
    assert!(limiter.check(check_request("acl")).await.expect("Check").into_inner().allowed);

    // A waiter woken through pub/sub proves PSUBSCRIBE and PUBLISH are allowed.
    let mut locks = LockServiceClient::new(channel.clone());
    hand_off_to_a_waiter(&mut locks, &unique("acl"), Duration::from_millis(300)).await;

    let mut cache = CacheServiceClient::new(channel.clone());
    let set = SetRequest {
        key: "user:1".into(),
        value: b"v".to_vec(),
        ttl: Some(duration_to_proto(Duration::from_secs(10))),
        ..Default::default()
    };
    cache.set(set).await.expect("Set");
    assert!(cache.get(GetRequest { key: "user:1".into() }).await.expect("Get").into_inner().found);
    let fetch = FetchRequest {
        key: "user:2".into(),
        lease_ttl: Some(duration_to_proto(Duration::from_secs(5))),
        ..Default::default()
    };
    assert!(!cache.fetch(fetch).await.expect("Fetch").into_inner().fill_token.is_empty());

    let mut sessions = SessionStoreServiceClient::new(channel.clone());
    let create = CreateSessionRequest { subject: "alice".into(), ..Default::default() };
    let session_id = sessions.create_session(create).await.expect("CreateSession").into_inner().session_id;
    sessions.get_session(GetSessionRequest { session_id, no_touch: false }).await.expect("GetSession");

    let mut queues = JobQueueServiceClient::new(channel.clone());
    let queue = unique("acl");
    queues.enqueue(EnqueueRequest { queue: queue.clone(), ..Default::default() }).await.expect("Enqueue");
    let consume = ConsumeRequest { queue, max_in_flight: 1, ..Default::default() };
    let mut stream = queues.consume(tokio_stream::once(consume)).await.expect("Consume").into_inner();
    let event = tokio::time::timeout(PATIENCE, stream.next()).await.expect("a delivery in time").unwrap().unwrap();
    let Some(consume_response::Event::Delivery(delivery)) = event.event else { panic!("not a delivery: {event:?}") };
    queues.ack(AckRequest { lease_id: delivery.lease_id, result: vec![] }).await.expect("Ack");

    let denied: Vec<_> = baton.logs().into_iter().filter(|line| line.contains("NOPERM")).collect();
    assert!(denied.is_empty(), "ACL denials: {denied:#?}");
}

// ─── rediss:// in cluster mode (issue #12) ─────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_reaches_every_master_of_a_tls_cluster_with_the_readme_acl_user() {
    let pki = Pki::new("cluster");
    let (cert, key) = pki.issue_files("redis");
    let ca = pki.path("ca.pem");
    // Plaintext ports for the harness and redis-cli; TLS ports, and a TLS cluster bus, for
    // everything else. A TLS client is told the nodes' TLS ports.
    let tls_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let rules = "resetkeys ~baton:* resetchannels &baton:* -@all +@read +@write +@scripting +@pubsub \
                 +@connection -@dangerous +info +wait +time +cluster|slots +cluster|nodes";
    let cluster = RedisCluster::start_with(3, Auth::acl_user_with("baton", "tls-secret", rules), |i| {
        vec![
            "--tls-port".into(),
            tls_ports[i].to_string(),
            "--tls-cert-file".into(),
            path_str(&cert).into(),
            "--tls-key-file".into(),
            path_str(&key).into(),
            "--tls-ca-cert-file".into(),
            path_str(&ca).into(),
            "--tls-auth-clients".into(),
            "no".into(),
            "--tls-cluster".into(),
            "yes".into(),
        ]
    });
    let hosts: Vec<String> = tls_ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
    let url = format!("rediss://baton:tls-secret@{}", hosts.join(","));
    let baton = Baton::start(Some(&url), &["--redis-mode", "cluster", "--redis-tls-ca", path_str(&ca)]);
    let channel = baton.channel().await;
    let health = HealthClient::new(channel.clone());
    eventually(PATIENCE, "LockService SERVING over rediss to the cluster", || {
        let mut health = health.clone();
        async move { health_status(&mut health, "baton.v1.LockService").await == Some(ServingStatus::Serving) }
    })
    .await;

    let mut limiter = RateLimiterServiceClient::new(channel.clone());
    let mut locks = LockServiceClient::new(channel.clone());
    for n in 0..12 {
        let key = unique(&format!("tls-{n}"));
        assert!(limiter.check(check_request(&key)).await.expect("Check").into_inner().allowed);
        // A waiter woken through a subscription on a TLS node.
        let handed_off = hand_off_to_a_waiter(&mut locks, &key, Duration::from_millis(100)).await;
        assert!(handed_off < Duration::from_millis(900), "woken by the re-check, not the release");
    }
    cluster.assert_keys_on_every_master();
    let denied: Vec<_> = baton.logs().into_iter().filter(|line| line.contains("NOPERM")).collect();
    assert!(denied.is_empty(), "ACL denials: {denied:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_to_sentinels_and_masters_follows_a_failover() {
    let pki = Pki::new("sentinel");
    let (cert, key) = pki.issue_files("redis");
    let tls = TlsFiles { cert, key, ca: pki.path("ca.pem") };
    let mut set = SentinelSet::start_with_tls(Auth::requirepass("tls-secret"), Some(&tls));
    let mut args = set.baton_args();
    args.extend(["--redis-tls-ca".to_owned(), path_str(&tls.ca).to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let baton = Baton::start(None, &args);
    let channel = baton.channel().await;
    let health = HealthClient::new(channel.clone());
    eventually(PATIENCE, "LockService SERVING over rediss through the sentinels", || {
        let mut health = health.clone();
        async move { health_status(&mut health, "baton.v1.LockService").await == Some(ServingStatus::Serving) }
    })
    .await;
    let mut locks = LockServiceClient::new(channel.clone());
    let name = unique("tls-failover");
    let acquire = AcquireRequest {
        name: name.clone(),
        ttl: Some(duration_to_proto(Duration::from_secs(1))),
        ..Default::default()
    };
    assert!(locks.acquire(acquire.clone()).await.expect("Acquire").into_inner().acquired);

    let old = set.master_port().expect("a master");
    set.node_on(old).kill();
    eventually(Duration::from_secs(30), "a grant on the promoted replica, over TLS", || {
        let (mut locks, acquire) = (locks.clone(), acquire.clone());
        async move { locks.acquire(acquire).await.is_ok_and(|response| response.into_inner().acquired) }
    })
    .await;
    // baton follows the first sentinel to announce the promotion; the others learn of it
    // from that one's hello messages, so their majority view may lag the grant briefly.
    eventually(PATIENCE, "the sentinels to agree on a new master", || async { set.master_port() != Some(old) }).await;
    assert!(baton.logs().iter().any(|line| line.contains("redis master changed")), "no switch logged");
}
