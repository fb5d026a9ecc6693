//! `baton`: parses configuration, initialises telemetry, binds, and runs the server.

use std::process::ExitCode;

use baton::config::{Config, Flags};
use baton::embedded::EmbeddedRedis;
use baton::server::{self, RedisUrls};
use baton::{signal, telemetry, traces};
use clap::Parser;

// Every RPC allocates many small, short-lived buffers across threads; glibc's malloc spent
// ~16% of baton's CPU on them under load (perf), mimalloc a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // rediss:// connections use the process-wide rustls provider; the listener names its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let flags = Flags::parse();
    let config = match Config::load(flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("baton: {err}");
            return ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.flags.worker_threads {
        runtime.worker_threads(threads.into());
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(err) => {
            eprintln!("baton: cannot start the runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let traces = match traces::start(&config.flags) {
        Ok(traces) => traces,
        Err(err) => {
            eprintln!("baton: cannot export traces: {err:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing(config.flags.log_format, traces.as_ref());
    let exit = match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "baton failed");
            ExitCode::FAILURE
        }
    };
    // Sends the spans still buffered.
    if let Some(traces) = traces
        && let Err(err) = traces.shutdown()
    {
        eprintln!("baton: exporting the last traces failed: {err}");
    }
    exit
}

async fn run(config: Config) -> anyhow::Result<()> {
    let terminated = signal::terminated();
    tracing::info!(config = %config.redacted_summary(), "starting");
    // Started here, on the main thread, so the child's death signal follows the process.
    let embedded = match &config.flags.redis_url {
        Some(_) => None,
        None => {
            let embedded = EmbeddedRedis::start(&config.flags.redis_server_bin).await?;
            tracing::warn!(
                redis.pid = embedded.pid(),
                "DEVELOPMENT MODE: no --redis-url given, using a private embedded redis-server; \
                 all data is lost on exit"
            );
            Some(embedded)
        }
    };
    let main_url = match (&config.flags.redis_url, &embedded) {
        (Some(url), _) => url.clone(),
        (None, Some(embedded)) => embedded.url(),
        (None, None) => unreachable!("embedded redis starts when no url is given"),
    };
    let redis = RedisUrls { main: main_url, cache: config.flags.cache_redis_url.clone() };

    let metrics = telemetry::install_metrics()?;
    let metrics_listener = tokio::net::TcpListener::bind(config.flags.metrics_listen).await?;
    let grpc_listener = tokio::net::TcpListener::bind(config.flags.listen).await?;
    tracing::info!(
        grpc_addr = %grpc_listener.local_addr()?,
        metrics_addr = %metrics_listener.local_addr()?,
        "serving"
    );
    let _metrics_server = telemetry::serve_metrics(metrics_listener, metrics);
    server::run(config, redis, grpc_listener, terminated).await?;
    drop(embedded);
    Ok(())
}
