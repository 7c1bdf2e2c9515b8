//! The scaler in process, served over real TCP, and a real tonic client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use eds::nats::NatsConfig;
use eds::proto::external_scaler_client::ExternalScalerClient;
use eds::proto::{GetMetricsRequest, ScaledObjectRef};
use eds::scaler::{Scaler, Tuning};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Channel, ServerTlsConfig};

use crate::eventually;

pub struct RunningScaler {
    pub addr: SocketAddr,
    pub scaler: Scaler,
    stop: Option<oneshot::Sender<()>>,
}

impl RunningScaler {
    pub async fn start(nats: NatsConfig) -> Self {
        Self::start_with(nats, Tuning::default(), None).await
    }

    pub async fn start_with(nats: NatsConfig, tuning: Tuning, tls: Option<ServerTlsConfig>) -> Self {
        let scaler = Scaler::connect(&nats, tuning).await.expect("scaler connects");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = scaler.clone();
        tokio::spawn(async move {
            serving
                .serve(listener, tls, async {
                    let _ = stopped.await;
                })
                .await
                .expect("gRPC server");
        });
        // Connections start in the background; wait until they are up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while scaler.connections.all_connected().is_err() {
            assert!(tokio::time::Instant::now() < deadline, "scaler never connected to NATS");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        RunningScaler {
            addr,
            scaler,
            stop: Some(stop),
        }
    }

    pub async fn client(&self) -> ExternalScalerClient<Channel> {
        ExternalScalerClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }
}

impl Drop for RunningScaler {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A ScaledObjectRef with trigger metadata `pairs`.
pub fn scaled_object(pairs: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "worker".into(),
        namespace: "team".into(),
        scaler_metadata: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("scalerAddress".to_string(), "eds-scaler.eds-system:9090".to_string())])
            .collect::<HashMap<_, _>>(),
    }
}

pub fn metrics_request(so: ScaledObjectRef) -> GetMetricsRequest {
    GetMetricsRequest {
        metric_name: String::new(),
        scaled_object_ref: Some(so),
    }
}

/// GetMetrics' integer value, asserting the float field agrees.
pub async fn lag_of(client: &mut ExternalScalerClient<Channel>, so: &ScaledObjectRef) -> Result<i64, tonic::Status> {
    let reply = client.get_metrics(metrics_request(so.clone())).await?.into_inner();
    assert_eq!(reply.metric_values.len(), 1);
    let value = &reply.metric_values[0];
    assert_eq!(value.metric_value as f64, value.metric_value_float);
    Ok(value.metric_value)
}

/// Waits until `lag_of` is `want` (the cache TTL makes new values visible
/// within a second).
pub async fn wait_lag(client: &mut ExternalScalerClient<Channel>, so: &ScaledObjectRef, want: i64) {
    eventually(&format!("lag {want}"), Duration::from_secs(10), async || {
        lag_of(client, so).await.ok().filter(|lag| *lag == want)
    })
    .await;
}
