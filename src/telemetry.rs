//! Logs, Prometheus metrics, and the small HTTP server that serves them with
//! the health endpoints.
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::{Error, Result};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// Sets up the global tracing subscriber. `RUST_LOG` picks levels (default
/// `default_level`). Safe to call more than once: later calls are ignored.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Buckets for every `*_seconds` histogram: from 10 µs (a warm cache hit) to
/// 5 s (past the scaler's own deadline).
const SECONDS_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the global Prometheus recorder once and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("static buckets are not empty")
                .install_recorder()
                .expect("the Prometheus recorder is installed once");
            crate::lag::describe_metrics();
            crate::scaler::describe_metrics();
            crate::controller::describe_metrics();
            handle
        })
        .clone()
}

/// Tells `/readyz` whether the process can do its job.
pub type Readiness = Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// Appends metrics written at scrape time from a component's own state
/// (Prometheus text format) after the recorder's.
pub type Collector = Arc<dyn Fn(&mut String) + Send + Sync>;

/// The collector of the `eds_consumer_*` gauges of `cache`.
pub fn consumer_gauges(cache: Arc<crate::lag::LagCache>) -> Collector {
    Arc::new(move |out: &mut String| crate::lag::exposition::render(cache.samples(), out))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn serve_http(addr: SocketAddr, ready: Readiness, collectors: Vec<Collector>) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Server(format!("binding the HTTP listener on {addr}: {e}")))?;
    serve_http_on(listener, ready, collectors).await
}

/// As [`serve_http`], on a listener that is already bound (tests bind port 0).
pub async fn serve_http_on(listener: TcpListener, ready: Readiness, collectors: Vec<Collector>) -> Result<()> {
    let handle = prometheus();
    let metrics = move || {
        let mut body = handle.render();
        for collect in &collectors {
            collect(&mut body);
        }
        std::future::ready(body)
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| std::future::ready("ok")))
        .route("/readyz", get(readyz))
        .with_state(ready);
    axum::serve(listener, app)
        .await
        .map_err(|e| Error::Server(format!("HTTP server: {e}")))
}

async fn readyz(State(ready): State<Readiness>) -> (StatusCode, String) {
    match ready() {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}
