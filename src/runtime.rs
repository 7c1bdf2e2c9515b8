//! Running a server process: the metrics recorder, the HTTP server for
//! `/metrics`, `/healthz` and `/readyz`, the signals, and one shutdown path.
//! The scaler and the controller run under it the same way.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::{Router, extract::State, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::controller::{ClaimController, ControllerConfig};
use crate::function::{self, FunctionConfig};
use crate::lag::LagCache;
use crate::scaler::{Scaler, ScalerConfig};
use crate::telemetry::text::{self, Pieces};
use crate::telemetry::{self, Metric};
use crate::{Error, Result};

/// `eds scaler`: serves gRPC until SIGINT or SIGTERM.
pub async fn run_scaler(config: ScalerConfig) -> Result<()> {
    prometheus();
    let tls = config.tls.server_config()?;
    let scaler = Scaler::connect(&config.nats, config.tuning).await?;
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| Error::Bind {
            server: "gRPC",
            addr: config.grpc_addr,
            source,
        })?;
    let connections = scaler.connections.clone();
    let ready: Readiness = Arc::new(move || connections.all_connected());
    let gauges = consumer_gauges(scaler.cache.clone());
    tracing::info!(grpc = %config.grpc_addr, http = %config.http_addr, tls = tls.is_some(), "scaler serving");
    with_http(
        config.http_addr,
        ready,
        vec![gauges],
        scaler.serve(grpc, tls, shutdown_signal()),
    )
    .await
}

/// `eds function`: serves Crossplane's RunFunction until SIGINT or SIGTERM.
pub async fn run_function(config: FunctionConfig) -> Result<()> {
    let tls = config.tls_certs_dir.as_deref().map(function::tls_config).transpose()?;
    let listener = TcpListener::bind(config.address).await.map_err(|source| Error::Bind {
        server: "function",
        addr: config.address,
        source,
    })?;
    tracing::info!(address = %config.address, tls = tls.is_some(), "composition function serving");
    function::serve(listener, tls, shutdown_signal()).await
}

/// `eds controller`: waits for the Lease, then reconciles until SIGINT or
/// SIGTERM, and hands the Lease over on the way out.
pub async fn run_controller(config: ControllerConfig) -> Result<()> {
    prometheus();
    let http_addr = config.http_addr;
    let controller = ClaimController::connect(config).await?;
    let ready: Readiness = Arc::new(controller.readiness());
    let gauges = consumer_gauges(controller.lag_cache());
    let claims = controller.claim_gauges();
    let claim_gauges: Collector = Arc::new(move || Box::new(claims.table()));
    with_http(
        http_addr,
        ready,
        vec![gauges, claim_gauges],
        controller.run(shutdown_signal()),
    )
    .await
}

/// Runs `component` beside the HTTP server; whichever ends first ends both.
async fn with_http(
    addr: SocketAddr,
    ready: Readiness,
    collectors: Vec<Collector>,
    component: impl Future<Output = Result<()>>,
) -> Result<()> {
    let http = tokio::spawn(serve_http(addr, ready, collectors));
    tokio::select! {
        result = component => result,
        http = http => http?,
    }
}

/// Every metric eds records through the registry, by component.
pub const METRICS: [&[Metric]; 4] = [
    crate::lag::metrics::ALL,
    &[crate::nats::CONNECTED],
    crate::scaler::metrics::ALL,
    crate::controller::metrics::ALL,
];

/// Installs the global Prometheus recorder with every metric's description,
/// once, and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    static DESCRIBED: Once = Once::new();
    let handle = telemetry::install_recorder();
    DESCRIBED.call_once(|| METRICS.iter().flat_map(|m| m.iter()).for_each(Metric::describe));
    handle
}

/// Tells `/readyz` whether the process can do its job.
pub type Readiness = Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// Metrics written at scrape time from a component's own state (Prometheus
/// text format), after the recorder's: called once a scrape, it takes what
/// it shows then, to be written a piece at a time.
pub type Collector = Arc<dyn Fn() -> Box<dyn Pieces> + Send + Sync>;

/// The collector of the `eds_consumer_*` gauges of `cache`.
pub fn consumer_gauges(cache: Arc<LagCache>) -> Collector {
    Arc::new(move || Box::new(crate::lag::exposition::table(cache.samples())))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn serve_http(addr: SocketAddr, ready: Readiness, collectors: Vec<Collector>) -> Result<()> {
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        server: "HTTP",
        addr,
        source,
    })?;
    serve_http_on(listener, ready, collectors).await
}

/// As [`serve_http`], on a listener that is already bound (tests bind port 0).
pub async fn serve_http_on(listener: TcpListener, ready: Readiness, collectors: Vec<Collector>) -> Result<()> {
    let handle = prometheus();
    let _upkeep = Upkeep::start(handle.clone());
    let metrics = move || {
        let recorded = handle.render();
        let collected = collectors.iter().map(|collect| collect()).collect();
        let body = std::iter::once(recorded).chain(pieces(collected));
        std::future::ready((
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            Body::from_stream(futures::stream::iter(body.map(Ok::<_, Infallible>))),
        ))
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| std::future::ready("ok")))
        .route("/readyz", get(readyz))
        .with_state(ready);
    axum::serve(listener, app).await.map_err(Error::Http)
}

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The collectors' text, one piece after another, each in a buffer of its
/// own that is freed once sent: besides the collectors' rows, a scrape
/// holds a piece or two, whatever the number of claims or consumers.
fn pieces(mut parts: Vec<Box<dyn Pieces>>) -> impl Iterator<Item = String> + Send {
    parts.reverse();
    std::iter::from_fn(move || {
        loop {
            let part = parts.last_mut()?;
            let mut piece = String::with_capacity(text::PIECE + text::PIECE / 8);
            if !part.write_piece(&mut piece) {
                parts.pop();
            }
            if !piece.is_empty() {
                return Some(piece);
            }
        }
    })
}

/// How often the recorder folds the histogram samples recorded since into
/// their buckets, whether or not anyone scrapes `/metrics`.
pub const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The recorder keeps every histogram sample (8 bytes each, for every RPC and
/// every NATS request) until it is folded into the buckets, which a scrape
/// does, and so does this task every [`METRICS_UPKEEP`]. Without it a scaler
/// nobody scrapes held every sample it ever recorded: about 35 bytes per
/// request, the slow growth of the 1,000,000-name benchmark. With it, at most
/// the samples of one upkeep period are held. Stops with the HTTP server.
struct Upkeep(tokio::task::JoinHandle<()>);

impl Upkeep {
    fn start(handle: PrometheusHandle) -> Self {
        Upkeep(tokio::spawn(async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        }))
    }
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn readyz(State(ready): State<Readiness>) -> (StatusCode, String) {
    match ready() {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_defined_once_with_help_and_our_prefix() {
        let all: Vec<&Metric> = METRICS
            .iter()
            .flat_map(|m| m.iter())
            .chain(&crate::lag::metrics::SCRAPE_TIME)
            .chain(&crate::controller::metrics::SCRAPE_TIME)
            .collect();
        let mut names: Vec<&str> = all.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "a metric is defined twice");
        for metric in all {
            assert!(metric.name.starts_with("eds_"), "{}", metric.name);
            assert!(!metric.help.is_empty(), "{}", metric.name);
            assert_eq!(
                metric.name.ends_with("_total"),
                metric.kind == telemetry::Kind::Counter,
                "{}",
                metric.name
            );
        }
    }
}
