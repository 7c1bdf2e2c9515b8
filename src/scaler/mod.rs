//! `eds scaler`: KEDA's external scaler API over JetStream consumer lag.
//! The trigger metadata it reads is [`crate::trigger`]'s; the process around
//! it (metrics, HTTP, signals) is `runtime.rs`'s.
pub mod codec;
pub mod drain;
pub mod metrics;
pub mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use drain::DrainConfig;
pub use service::{LagProvider, LagScaler, NatsLag, Readings};

use crate::lag::cache::CacheLimits;
use crate::lag::{JetStreamLag, LagCache, Watchers, watch::WatchConfig};
use crate::nats::{Connections, NatsConfig};
use crate::proto::external_scaler_server::ExternalScalerServer;
use crate::{Error, Result};

/// What `eds scaler` runs with.
#[derive(Clone, Debug)]
pub struct ScalerConfig {
    pub nats: NatsConfig,
    /// Address of the gRPC server KEDA calls.
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    pub http_addr: SocketAddr,
    pub tuning: Tuning,
    pub tls: GrpcTls,
}

/// How fresh lag must be and how push watchers pace themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Longest a lag value is served from cache. NATS sees at most one
    /// request per consumer per TTL, however often KEDA calls.
    pub cache_ttl: Duration,
    /// Re-read interval for an idle consumer with an open push stream that
    /// no live notifier covers.
    pub push_active_poll: Duration,
    /// Safety re-read interval for a consumer with an open push stream.
    pub push_idle_recheck: Duration,
    /// How often a `drainWithin` trigger with an open metric spec stream
    /// reads its consumer.
    pub drain_sample_every: Duration,
    /// The least time between two streamed targets.
    pub drain_min_interval: Duration,
    /// Entries the lag cache holds, and NATS reads each namespace may cause.
    pub cache_limits: CacheLimits,
}

impl Default for Tuning {
    fn default() -> Self {
        let watch = WatchConfig::default();
        let drain = DrainConfig::default();
        Tuning {
            cache_ttl: Duration::from_secs(1),
            push_active_poll: watch.active_poll,
            push_idle_recheck: watch.idle_recheck,
            drain_sample_every: drain.sample_every,
            drain_min_interval: drain.hysteresis.min_interval,
            cache_limits: CacheLimits::default(),
        }
    }
}

/// TLS for the gRPC server (PEM files). With a client CA, clients must
/// present a certificate it signed (mutual TLS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

impl GrpcTls {
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| Error::io(p.display().to_string(), e));
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &self.client_ca {
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
    pub drain: DrainConfig,
}

impl Scaler {
    /// Connects to every configured NATS connection and wires the service.
    pub async fn connect(nats: &NatsConfig, tuning: Tuning) -> Result<Self> {
        let connections = Connections::connect(nats, "eds-scaler").await?;
        let cache = LagCache::with_limits(
            Arc::new(JetStreamLag::new(connections.clone())),
            tuning.cache_ttl,
            tuning.cache_limits,
        );
        let watchers = Watchers::new(
            cache.clone(),
            connections.clone(),
            WatchConfig {
                active_poll: tuning.push_active_poll,
                idle_recheck: tuning.push_idle_recheck,
            },
        );
        let drain = DrainConfig {
            sample_every: tuning.drain_sample_every,
            hysteresis: crate::drain::Hysteresis {
                min_interval: tuning.drain_min_interval,
            },
            ..DrainConfig::default()
        };
        Ok(Scaler {
            connections,
            cache,
            watchers,
            drain,
        })
    }

    pub fn service(&self) -> LagScaler {
        let source = NatsLag {
            cache: self.cache.clone(),
            watchers: self.watchers.clone(),
        };
        LagScaler::with_drain_config(self.connections.clone(), source, self.drain)
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
            builder = builder.tls_config(tls).map_err(Error::Tls)?;
        }
        builder
            .add_service(ExternalScalerServer::new(self.service()))
            .serve_with_incoming_shutdown(incoming(listener), shutdown)
            .await
            .map_err(Error::Grpc)
    }
}

/// Connections accepted on `listener`, with Nagle's algorithm off. The
/// builder's own `tcp_nodelay` is ignored for a listener we bind ourselves,
/// and with Nagle on a reply written in two parts can wait for the client's
/// delayed ACK: about 40 ms added to a sub-millisecond answer.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
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
