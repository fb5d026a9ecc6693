//! The tonic server: services, health, reflection, tower layers and graceful shutdown.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use tokio_util::sync::CancellationToken;

use crate::auth::auth_layer;
use crate::cache::CacheManager;
use crate::cache::grpc::CacheGrpc;
use crate::config::Config;
use crate::deadline::default_deadline_layer;
use crate::election::ElectionManager;
use crate::election::grpc::ElectionGrpc;
use crate::envoy::grpc::EnvoyGrpc;
use crate::error::{Reason, refusal};
use crate::listener::{handshaken, http2_preface};
use crate::lock::grpc::LockGrpc;
use crate::lock::{LockManager, LockSettings};
use crate::proto;
use crate::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use crate::proto::v1::cache_service_server::CacheServiceServer;
use crate::proto::v1::election_service_server::ElectionServiceServer;
use crate::proto::v1::job_queue_service_server::JobQueueServiceServer;
use crate::proto::v1::lock_service_server::LockServiceServer;
use crate::proto::v1::rate_limiter_service_server::RateLimiterServiceServer;
use crate::proto::v1::session_store_service_server::SessionStoreServiceServer;
use crate::queue::grpc::{JobQueueGrpc, JobRules};
use crate::queue::schedule::scheduler;
use crate::queue::{QueueManager, QueueSettings};
use crate::ratelimit::RateLimiter;
use crate::ratelimit::grpc::RateLimiterGrpc;
use crate::session::grpc::SessionGrpc;
use crate::session::{SessionManager, SessionSettings};
use crate::store::health::{EvictionConcern, spawn_pinger};
use crate::store::notify::Notifier;
use crate::store::{KeyBuilder, Store, StoreError};
use crate::task::TaskGuard;
use crate::telemetry::grpc_metrics_layer;
use crate::tls::{ReloadingTls, TlsError, TlsFiles};

/// The health name that follows only the process: Kubernetes' liveness probe.
pub const LIVENESS: &str = "liveness";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("redis configuration: {0}")]
    Store(#[from] StoreError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("--admin-listen {address}: {source}")]
    AdminListen { address: std::net::SocketAddr, source: std::io::Error },
}

/// Where the server reaches Redis; the embedded dev Redis resolves to a URL too.
#[derive(Debug, Clone)]
pub struct RedisUrls {
    pub main: String,
    pub cache: Option<String>,
}

/// Serves until `shutdown` resolves, then drains: health `""` goes NOT_SERVING at once,
/// new work is still taken for `shutdown_delay` (so load balancers see the replica leave
/// before it refuses connections), then in-flight calls finish, all within `shutdown_grace`.
pub async fn run(
    config: Config,
    redis: RedisUrls,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let tls = match (&config.flags.tls_cert, &config.flags.tls_key) {
        (Some(cert), Some(key)) => {
            let files =
                TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: config.flags.tls_client_ca.clone() };
            Some(ReloadingTls::start(files, config.server.tls_reload_interval)?)
        }
        _ => None,
    };
    let timeout = config.limits.redis_timeout;
    let redis_tls_root = match &config.flags.redis_tls_ca {
        Some(path) => Some(std::fs::read(path).map_err(|source| TlsError::Read { path: path.clone(), source })?),
        None => None,
    };
    let redis_tls_root = redis_tls_root.as_deref();
    let topology = config.redis_topology();
    let main_store = Store::open("main", &redis.main, &topology, timeout, redis_tls_root)?;
    let cache_store = match &redis.cache {
        Some(url) if *url != redis.main => Some(Store::open("cache", url, &topology, timeout, redis_tls_root)?),
        _ => None,
    };

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::Serving).await;
    reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;

    let main_services = [
        RateLimiterServiceServer::<RateLimiterGrpc>::NAME,
        RateLimitServiceServer::<EnvoyGrpc>::NAME,
        LockServiceServer::<LockGrpc>::NAME,
        ElectionServiceServer::<ElectionGrpc>::NAME,
        SessionStoreServiceServer::<SessionGrpc>::NAME,
        JobQueueServiceServer::<JobQueueGrpc>::NAME,
    ];
    let cache_service = CacheServiceServer::<CacheGrpc>::NAME;
    let mut _pingers: Vec<TaskGuard> = Vec::new();
    match &cache_store {
        Some(cache_store) => {
            _pingers
                .push(follow_store(&reporter, main_store.clone(), EvictionConcern::DurableState, &main_services).await);
            _pingers
                .push(follow_store(&reporter, cache_store.clone(), EvictionConcern::CacheOnly, &[cache_service]).await);
        }
        None => {
            let mut all = main_services.to_vec();
            all.push(cache_service);
            _pingers.push(follow_store(&reporter, main_store.clone(), EvictionConcern::DurableState, &all).await);
        }
    }

    let limiter = RateLimiter::new(main_store.clone(), KeyBuilder::default());
    // grpcurl speaks reflection v1; Python's grpcio-reflection only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo, BadRequest and RetryInfo ride in every error's details:
            // without their descriptors grpcurl prints "not recognized" instead of the reason.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let rate_limiter = RateLimiterGrpc::new(limiter.clone(), Arc::new(config.policies.clone()), config.limits.clone());

    // Cancelled when shutdown begins: from then on this replica takes no new work (Acquire,
    // Fetch waits, Consume answer UNAVAILABLE) and its streams end, leases kept, so clients
    // resume on another replica; settlements and renewals still work.
    let draining = CancellationToken::new();
    let notifier = Notifier::start(main_store.clone());
    let lock_settings =
        LockSettings { fence_idle: config.flags.lock_fence_idle, min_replicas: config.flags.lock_min_replicas };
    let locks = LockManager::new(main_store.clone(), KeyBuilder::default(), notifier.clone(), lock_settings);
    let lock_service = LockGrpc::new(locks.clone(), config.limits.clone(), draining.clone());
    let elections =
        ElectionManager::new(main_store.clone(), KeyBuilder::default(), notifier.clone(), config.flags.lock_fence_idle);
    let election_service = ElectionGrpc::new(elections.clone(), config.limits.clone(), draining.clone());

    let defaults = QueueSettings::default();
    let queue_settings = QueueSettings {
        retention: config.flags.queue_retention,
        dead_retention: config.flags.queue_dead_retention,
        keep_succeeded: config.flags.queue_keep_succeeded,
        keep_dead: config.flags.queue_keep_dead,
        default_visibility: config.flags.queue_visibility_timeout,
        max_in_flight: config.flags.queue_max_in_flight,
        default_max_in_flight: defaults.default_max_in_flight.min(config.flags.queue_max_in_flight),
        ..defaults
    };
    let queues = QueueManager::new(main_store.clone(), KeyBuilder::default(), notifier.clone(), queue_settings);
    let job_rules = JobRules::new(config.limits.clone(), queue_settings);
    let _scheduler =
        TaskGuard::spawn(scheduler::run(queues.clone(), notifier.clone(), draining.clone(), move |schedule| {
            job_rules.scheduled_job(schedule)
        }));
    let queue_service = JobQueueGrpc::new(queues.clone(), config.limits.clone(), draining.clone());

    // The cache may live on its own (evicting) Redis, with its own notification listener.
    let cache_notifier = match &cache_store {
        Some(store) => Notifier::start(store.clone()),
        None => notifier.clone(),
    };
    let cache_service = CacheGrpc::new(
        CacheManager::new(
            cache_store.clone().unwrap_or_else(|| main_store.clone()),
            KeyBuilder::default(),
            cache_notifier,
            config.limits.max_ttl,
        ),
        config.limits.clone(),
        draining.clone(),
    );
    let sessions = SessionManager::new(
        main_store.clone(),
        KeyBuilder::default(),
        SessionSettings {
            idle_timeout: config.flags.session_idle_timeout,
            absolute_timeout: config.flags.session_absolute_timeout,
            max_data_bytes: config.flags.session_max_bytes,
            max_per_subject: config.flags.session_max_per_subject,
        },
    );
    let _session_gauge = sessions.spawn_gauge();
    let session_service = SessionGrpc::new(sessions.clone(), config.limits.clone());
    let (envoy_rules, envoy_rules_rx) = tokio::sync::watch::channel(Arc::new(config.envoy.rules.clone()));
    let _envoy_reloader = config.envoy.settings.config_dir.clone().map(|dir| {
        crate::envoy::upstream_files::spawn_reloader(
            dir,
            config.envoy.static_domains.clone(),
            config.limits.clone(),
            envoy_rules,
            config.envoy.loaded_files.clone(),
        )
    });
    let _dashboard = match config.flags.admin_listen {
        Some(address) => {
            let listener =
                TcpListener::bind(address).await.map_err(|source| ServeError::AdminListen { address, source })?;
            tracing::info!(admin_addr = %listener.local_addr().map_err(|source| ServeError::AdminListen { address, source })?, "dashboard serving");
            Some(crate::dashboard::serve(
                listener,
                crate::dashboard::Dashboard {
                    queues: queues.clone(),
                    locks,
                    elections,
                    sessions,
                    limiter,
                    policies: Arc::new(config.policies.clone()),
                    envoy: envoy_rules_rx.clone(),
                    keys: config.api_keys.clone(),
                    store: main_store.clone(),
                    limits: config.limits.clone(),
                },
            ))
        }
        None => None,
    };
    let envoy_service = EnvoyGrpc::new(
        RateLimiter::new(main_store.clone(), KeyBuilder::default()),
        envoy_rules_rx,
        config.envoy.settings.clone(),
        config.limits.clone(),
    );
    let max_message = config.limits.max_message_bytes;

    let (stop_serving, stop_serving_rx) = oneshot::channel::<()>();
    if !config.api_keys.is_enabled() {
        tracing::warn!(
            "AUTHENTICATION IS OFF: no api_keys in the config, so anyone who reaches this port \
             can use every service in the default namespace"
        );
    }
    let transport = &config.server;
    let mut builder = Server::builder();
    if !config.flags.max_connection_age.is_zero() {
        // No max_connection_age_grace: with one, tonic closes the connection outright at
        // age + grace instead of sending GOAWAY at the age (measured in deploy/tests).
        builder = builder.max_connection_age(config.flags.max_connection_age);
    }
    let (reflection_v1, reflection_v1alpha) = match transport.reflection {
        true => (Some(reflection_v1), Some(reflection_v1alpha)),
        false => (None, None),
    };
    let router = builder
        .http2_keepalive_interval(Some(transport.keepalive_interval))
        .http2_keepalive_timeout(Some(transport.keepalive_timeout))
        .http2_max_local_error_reset_streams(Some(transport.max_local_error_reset_streams))
        .max_concurrent_streams(transport.max_concurrent_streams)
        // Absent when tracing is off, rather than present and idle: each layer of this shape
        // costs a boxed future per call.
        .layer(tower::util::option_layer(crate::traces::enabled().then(crate::traces::rpc_span_layer)))
        .layer(grpc_metrics_layer())
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(internal_error_for_panic))
        .layer(auth_layer(config.api_keys.clone()))
        .layer(default_deadline_layer(transport.default_deadline))
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(with_message_limit!(RateLimiterServiceServer::new(rate_limiter), max_message))
        .add_service(with_message_limit!(LockServiceServer::new(lock_service), max_message))
        .add_service(with_message_limit!(ElectionServiceServer::new(election_service), max_message))
        .add_service(with_message_limit!(CacheServiceServer::new(cache_service), max_message))
        .add_service(with_message_limit!(SessionStoreServiceServer::new(session_service), max_message))
        .add_service(with_message_limit!(JobQueueServiceServer::new(queue_service), max_message))
        .add_service(with_message_limit!(RateLimitServiceServer::new(envoy_service), max_message));
    // Server::tcp_nodelay applies only to listeners tonic binds itself; without it,
    // ping-pong RPCs stall ~40 ms on delayed ACKs (measured on lock hand-offs).
    let tcp = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(transport.tcp_keepalive));
    let stop = async {
        let _ = stop_serving_rx.await;
    };
    let mut serving = match tls {
        Some(tls) => {
            let incoming = handshaken(tcp, transport.handshake_timeout, move |stream| tls.handshake(stream));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
        }
        None => {
            let incoming = handshaken(tcp, transport.handshake_timeout, http2_preface);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
        }
    };

    tokio::select! {
        () = shutdown => {}
        result = &mut serving => {
            return match result {
                Ok(outcome) => outcome.map_err(ServeError::from),
                Err(join_error) => panic!("grpc server task failed: {join_error}"),
            };
        }
    }

    let grace = config.flags.shutdown_grace;
    let drain_deadline = tokio::time::Instant::now() + grace;
    tracing::info!(shutdown_grace = ?grace, "shutdown begins");
    reporter.set_service_status("", ServingStatus::NotServing).await;
    draining.cancel();
    tokio::time::sleep(config.flags.shutdown_delay.min(grace)).await;
    let _ = stop_serving.send(());
    match tokio::time::timeout_at(drain_deadline, serving).await {
        Ok(Ok(outcome)) => outcome?,
        Ok(Err(join_error)) => tracing::error!(error = %join_error, "grpc server task failed while draining"),
        Err(_) => tracing::warn!("shutdown grace period over; exiting with calls in flight"),
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Applies the configured message limit both ways (tonic's default is 4 MiB in, unlimited out).
macro_rules! with_message_limit {
    ($service:expr, $limit:expr) => {
        $service.max_decoding_message_size($limit).max_encoding_message_size($limit)
    };
}
use with_message_limit;

/// Makes `names` follow the health of `store`.
async fn follow_store(
    reporter: &HealthReporter,
    store: Store,
    concern: EvictionConcern,
    names: &[&'static str],
) -> TaskGuard {
    for name in names {
        reporter.set_service_status(*name, ServingStatus::NotServing).await;
    }
    let reporter = reporter.clone();
    let names = names.to_vec();
    spawn_pinger(store, concern, move |up| {
        let reporter = reporter.clone();
        let names = names.clone();
        let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
        async move {
            for name in names {
                reporter.set_service_status(name, status).await;
            }
        }
    })
}

/// A panicking handler answers INTERNAL instead of taking the connection (or process) down.
fn internal_error_for_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> http::Response<tonic::body::Body> {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %detail, "handler panicked");
    refusal(tonic::Code::Internal, Reason::Internal, "internal error").into_http()
}
