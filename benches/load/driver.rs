//! KEDA's side of the wire: the calls its operator and metrics adapter make
//! to an external scaler, over real gRPC on loopback.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use eds::proto::external_scaler_client::ExternalScalerClient;
use eds::proto::{GetMetricsRequest, ScaledObjectRef};
use futures::future::join_all;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tonic::transport::{Channel, Endpoint};

use crate::stats::{Latencies, SplitMix, Summary};

/// One ScaledObject's trigger, as KEDA sends it.
#[derive(Clone)]
pub struct ScaledObject {
    pub reference: ScaledObjectRef,
    /// The name KEDA asks GetMetrics for: the spec's name behind the
    /// trigger index, as KEDA prefixes it.
    pub metric_name: String,
}

impl ScaledObject {
    pub fn new(stream: &str, consumer: &str) -> Self {
        let metadata = [
            ("scalerAddress", "eds-scaler.eds-system:9090"),
            ("stream", stream),
            ("consumer", consumer),
            ("lagThreshold", "5"),
        ];
        ScaledObject {
            reference: ScaledObjectRef {
                name: consumer.to_string(),
                namespace: "bench".into(),
                scaler_metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            },
            metric_name: format!("s0-{}", eds::trigger::metric_name(stream, consumer)),
        }
    }

    fn metrics_request(&self) -> GetMetricsRequest {
        GetMetricsRequest {
            scaled_object_ref: Some(self.reference.clone()),
            metric_name: self.metric_name.clone(),
        }
    }
}

/// KEDA's operator and its metrics adapter are two processes, each with one
/// connection to the scaler's address.
#[derive(Clone)]
pub struct Keda {
    operator: ExternalScalerClient<Channel>,
    adapter: ExternalScalerClient<Channel>,
}

/// What the KEDA-shaped schedule measured, by RPC.
#[derive(Default)]
pub struct Calls {
    pub get_metric_spec: Latencies,
    pub get_metrics: Latencies,
    pub is_active: Latencies,
    /// GetMetrics from the metrics adapter (the HPA path).
    pub hpa_get_metrics: Latencies,
}

impl Calls {
    fn merge(&mut self, other: Calls) {
        self.get_metric_spec.merge(other.get_metric_spec);
        self.get_metrics.merge(other.get_metrics);
        self.is_active.merge(other.is_active);
        self.hpa_get_metrics.merge(other.hpa_get_metrics);
    }

    /// Per RPC, then every RPC together.
    pub fn summaries(self, window: Duration) -> Vec<(&'static str, Summary)> {
        let mut all = Latencies::default();
        let mut rows = Vec::new();
        for (name, latencies) in [
            ("GetMetricSpec", self.get_metric_spec),
            ("GetMetrics", self.get_metrics),
            ("IsActive", self.is_active),
            ("GetMetrics (HPA)", self.hpa_get_metrics),
        ] {
            all.merge(latencies.clone());
            rows.push((name, latencies.summary(window)));
        }
        rows.push(("all", all.summary(window)));
        rows
    }
}

impl Keda {
    pub async fn connect(addr: SocketAddr) -> Self {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .expect("scaler address")
            .tcp_nodelay(true);
        Keda {
            operator: ExternalScalerClient::new(endpoint.connect().await.expect("operator connects")),
            adapter: ExternalScalerClient::new(endpoint.connect().await.expect("adapter connects")),
        }
    }

    /// A client on the operator's connection.
    pub fn client(&self) -> ExternalScalerClient<Channel> {
        self.operator.clone()
    }

    /// GetMetricSpec and GetMetrics for every ScaledObject, as KEDA does
    /// when it builds the HPA.
    pub async fn warm(&self, scaled_objects: &[ScaledObject]) {
        for chunk in scaled_objects.chunks(200) {
            let calls = chunk.iter().map(|so| {
                let mut client = self.operator.clone();
                async move {
                    client.get_metric_spec(so.reference.clone()).await?;
                    client.get_metrics(so.metrics_request()).await
                }
            });
            for reply in join_all(calls).await {
                reply.expect("GetMetricSpec and GetMetrics");
            }
        }
    }

    /// Opens one StreamIsActive per ScaledObject and keeps it open until
    /// the returned streams are dropped. Returns once every stream has sent
    /// its first value, with how many of them said active.
    pub async fn open_streams(&self, scaled_objects: &[ScaledObject]) -> (OpenStreams, usize) {
        let mut streams = OpenStreams(JoinSet::new());
        let mut active = 0;
        for chunk in scaled_objects.chunks(200) {
            let opened = chunk.iter().map(|so| {
                let mut client = self.operator.clone();
                async move {
                    let mut stream = client
                        .stream_is_active(so.reference.clone())
                        .await
                        .expect("StreamIsActive opens")
                        .into_inner();
                    let first = stream.message().await.expect("stream").expect("a first value");
                    (stream, first.result)
                }
            });
            for (mut stream, first) in join_all(opened).await {
                active += usize::from(first);
                // Keep reading, as KEDA does, so the stream never backs up.
                streams
                    .0
                    .spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
            }
        }
        (streams, active)
    }

    /// KEDA's schedule for `lead_in` and then `window`: per ScaledObject,
    /// every `interval` GetMetricSpec + GetMetrics + IsActive (the
    /// operator), and every `hpa` GetMetrics (the metrics adapter), each loop
    /// from a random phase. The calls of the window are recorded.
    pub async fn poll(
        &self,
        scaled_objects: &[ScaledObject],
        interval: Duration,
        hpa: Duration,
        lead_in: Duration,
        window: Duration,
    ) -> Calls {
        let start = Instant::now();
        let recorded_from = start + lead_in;
        let end = recorded_from + window;
        let mut rng = SplitMix::from_time();
        let mut tasks = JoinSet::new();
        for so in scaled_objects {
            let (so_op, mut client) = (so.clone(), self.operator.clone());
            tasks.spawn(every(
                start + rng.phase(interval),
                interval,
                recorded_from,
                end,
                async move |calls: &mut Calls| {
                    let reference = &so_op.reference;
                    let _ = calls
                        .get_metric_spec
                        .time(client.get_metric_spec(reference.clone()))
                        .await;
                    let _ = calls
                        .get_metrics
                        .time(client.get_metrics(so_op.metrics_request()))
                        .await;
                    let _ = calls.is_active.time(client.is_active(reference.clone())).await;
                },
            ));
            let (so_hpa, mut client) = (so.clone(), self.adapter.clone());
            tasks.spawn(every(
                start + rng.phase(hpa),
                hpa,
                recorded_from,
                end,
                async move |calls: &mut Calls| {
                    let _ = calls
                        .hpa_get_metrics
                        .time(client.get_metrics(so_hpa.metrics_request()))
                        .await;
                },
            ));
        }
        let mut calls = Calls::default();
        while let Some(done) = tasks.join_next().await {
            calls.merge(done.expect("poll task"));
        }
        // The last call may return before the window ends; usage is
        // measured over the whole window.
        sleep_until(end).await;
        calls
    }

    /// GetMetrics back to back from `concurrency` callers over both
    /// connections for `window`, cycling over the ScaledObjects.
    pub async fn closed_loop(
        &self,
        scaled_objects: &[ScaledObject],
        concurrency: usize,
        window: Duration,
    ) -> Latencies {
        let scaled_objects: Arc<[ScaledObject]> = scaled_objects.into();
        let end = Instant::now() + window;
        let mut tasks = JoinSet::new();
        for worker in 0..concurrency {
            let mut client = if worker % 2 == 0 {
                self.operator.clone()
            } else {
                self.adapter.clone()
            };
            let scaled_objects = scaled_objects.clone();
            tasks.spawn(async move {
                let mut latencies = Latencies::default();
                let mut i = worker;
                while Instant::now() < end {
                    let so = &scaled_objects[i % scaled_objects.len()];
                    let _ = latencies.time(client.get_metrics(so.metrics_request())).await;
                    i += concurrency;
                }
                latencies
            });
        }
        let mut all = Latencies::default();
        while let Some(done) = tasks.join_next().await {
            all.merge(done.expect("closed-loop task"));
        }
        all
    }
}

/// Runs `round` at `first`, then every `period`, until `end`; the rounds
/// from `recorded_from` on are recorded. A round slower than the period
/// delays the next one, as KEDA's loops do.
async fn every(
    first: Instant,
    period: Duration,
    recorded_from: Instant,
    end: Instant,
    mut round: impl AsyncFnMut(&mut Calls),
) -> Calls {
    let mut calls = Calls::default();
    let mut next = first;
    while next < end {
        sleep_until(next).await;
        if next >= recorded_from {
            round(&mut calls).await;
        } else {
            round(&mut Calls::default()).await;
        }
        next = (next + period).max(Instant::now());
    }
    calls
}

/// Open StreamIsActive streams; dropping this closes them.
pub struct OpenStreams(JoinSet<()>);
