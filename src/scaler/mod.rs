//! `eds scaler`: KEDA's external scaler API over JetStream consumer lag.
pub mod codec;
pub mod metadata;
pub mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use metadata::Trigger;
pub use service::{LagScaler, describe_metrics};

use crate::lag::{JetStreamLag, LagCache, Watchers, watch::WatchConfig};
use crate::nats::{Connections, NatsArgs, parse_duration};
use crate::proto::external_scaler_server::ExternalScalerServer;
use crate::telemetry;
use crate::{Error, Result};

/// `eds scaler` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Address of the gRPC server KEDA calls.
    #[arg(long, env = "EDS_GRPC_ADDR", default_value = "0.0.0.0:9090")]
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "EDS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub tuning: Tuning,
    #[command(flatten)]
    pub tls: GrpcTls,
}

/// How fresh lag must be and how push watchers pace themselves.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct Tuning {
    /// Longest a lag value is served from cache. NATS sees at most one
    /// request per consumer per TTL, however often KEDA calls.
    #[arg(long, env = "EDS_CACHE_TTL", default_value = "1s", value_parser = parse_duration)]
    pub cache_ttl: Duration,
    /// Re-read interval for an active consumer with an open push stream.
    #[arg(long, env = "EDS_PUSH_ACTIVE_POLL", default_value = "1s", value_parser = parse_duration)]
    pub push_active_poll: Duration,
    /// Safety re-read interval for an idle consumer with an open push stream.
    #[arg(long, env = "EDS_PUSH_IDLE_RECHECK", default_value = "15s", value_parser = parse_duration)]
    pub push_idle_recheck: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        let watch = WatchConfig::default();
        Tuning {
            cache_ttl: Duration::from_secs(1),
            push_active_poll: watch.active_poll,
            push_idle_recheck: watch.idle_recheck,
        }
    }
}

/// TLS for the gRPC server. With a client CA, clients must present a
/// certificate it signed (mutual TLS).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GrpcTls {
    /// Server certificate (PEM).
    #[arg(long, env = "EDS_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// Server key (PEM).
    #[arg(long, env = "EDS_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// CA bundle (PEM) for client certificates; enables mutual TLS.
    #[arg(long, env = "EDS_GRPC_TLS_CLIENT_CA", requires = "grpc_tls_cert")]
    pub grpc_tls_client_ca: Option<PathBuf>,
}

impl GrpcTls {
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.grpc_tls_cert, &self.grpc_tls_key) else {
            return Ok(None);
        };
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| Error::io(p.display().to_string(), e));
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &self.grpc_tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(Some(config))
    }
}

/// The scaler's parts, wired: connections, cache, watchers and the service.
#[derive(Clone)]
pub struct Scaler {
    pub connections: Connections,
    pub cache: Arc<LagCache>,
    pub watchers: Arc<Watchers>,
}

impl Scaler {
    /// Connects to every configured NATS connection and wires the service.
    pub async fn connect(nats: &NatsArgs, tuning: Tuning) -> Result<Self> {
        let connections = Connections::connect(nats, "eds-scaler").await?;
        let cache = LagCache::new(Arc::new(JetStreamLag::new(connections.clone())), tuning.cache_ttl);
        let watchers = Watchers::new(
            cache.clone(),
            connections.clone(),
            WatchConfig {
                active_poll: tuning.push_active_poll,
                idle_recheck: tuning.push_idle_recheck,
                ..WatchConfig::default()
            },
        );
        Ok(Scaler {
            connections,
            cache,
            watchers,
        })
    }

    pub fn service(&self) -> LagScaler {
        LagScaler::new(self.connections.clone(), self.cache.clone(), self.watchers.clone())
    }

    /// Serves gRPC on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: Option<ServerTlsConfig>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let mut builder = Server::builder().http2_keepalive_interval(Some(Duration::from_secs(30)));
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| Error::Server(format!("gRPC TLS: {e}")))?;
        }
        builder
            .add_service(ExternalScalerServer::new(self.service()))
            .serve_with_incoming_shutdown(incoming(listener), shutdown)
            .await
            .map_err(|e| Error::Server(format!("gRPC server: {e}")))
    }
}

/// Connections accepted on `listener`, with Nagle's algorithm off. The
/// builder's own `tcp_nodelay` is ignored for a listener we bind ourselves,
/// and with Nagle on a reply written in two parts can wait for the client's
/// delayed ACK: about 40 ms added to a sub-millisecond answer.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// `eds scaler`: serves until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<()> {
    telemetry::prometheus();
    let tls = args.tls.server_config()?;
    let scaler = Scaler::connect(&args.nats, args.tuning).await?;
    let grpc = TcpListener::bind(args.grpc_addr)
        .await
        .map_err(|e| Error::Server(format!("binding gRPC on {}: {e}", args.grpc_addr)))?;
    let connections = scaler.connections.clone();
    let ready: telemetry::Readiness = Arc::new(move || connections.all_connected());
    let gauges = telemetry::consumer_gauges(scaler.cache.clone());
    let http = tokio::spawn(telemetry::serve_http(args.http_addr, ready, vec![gauges]));
    tracing::info!(grpc = %args.grpc_addr, http = %args.http_addr, tls = tls.is_some(), "scaler serving");
    tokio::select! {
        served = scaler.serve(grpc, tls, shutdown_signal()) => served,
        http = http => http.map_err(|e| Error::Server(e.to_string()))?,
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
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server_side = accepted.next().await.unwrap().unwrap();
        assert!(server_side.nodelay().unwrap());
    }
}
