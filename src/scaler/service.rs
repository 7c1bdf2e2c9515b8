//! The gRPC service KEDA calls.
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::metrics::{PUSH_ACTIVATIONS, PUSH_STREAMS, RPC_DURATION, RPCS};
use crate::lag::{LagCache, LagError, Watchers, cache::Reading, watch::Subscription};
use crate::nats::Connections;
use crate::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef, external_scaler_server::ExternalScaler,
};
use crate::trigger::{Trigger, is_active};

/// Serves lag from the shared cache and push activation from the watchers.
#[derive(Clone)]
pub struct LagScaler {
    connections: Connections,
    cache: Arc<LagCache>,
    watchers: Arc<Watchers>,
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;
type SpecStream = Pin<Box<dyn Stream<Item = Result<GetMetricSpecResponse, Status>> + Send>>;

impl LagScaler {
    pub fn new(connections: Connections, cache: Arc<LagCache>, watchers: Arc<Watchers>) -> Self {
        LagScaler {
            connections,
            cache,
            watchers,
        }
    }

    fn trigger(&self, scaled_object: Option<&ScaledObjectRef>) -> Result<Trigger, Status> {
        let so = scaled_object.ok_or_else(|| Status::invalid_argument("scaledObjectRef is required"))?;
        Trigger::parse(&so.scaler_metadata, &self.connections).map_err(|e| Status::invalid_argument(e.to_string()))
    }

    async fn lag(&self, trigger: &Trigger) -> Result<u64, Status> {
        let Reading { result, .. } = self.cache.get(&trigger.key).await;
        result.map(|s| s.lag()).map_err(|e| lag_status(&e))
    }
}

/// Maps a lag error to the gRPC code KEDA should see. Nothing here is ever
/// turned into a number.
pub fn lag_status(error: &LagError) -> Status {
    let message = error.to_string();
    match error {
        LagError::UnknownConnection(_) => Status::invalid_argument(message),
        LagError::StreamNotFound { .. } | LagError::ConsumerNotFound { .. } => Status::not_found(message),
        LagError::Timeout { .. } => Status::deadline_exceeded(message),
        LagError::Disconnected { .. } | LagError::Unavailable { .. } => Status::unavailable(message),
        LagError::Api { .. } | LagError::Internal(_) => Status::internal(message),
    }
}

/// Counts and times one RPC by method and status code.
fn observe<T>(method: &'static str, started: Instant, result: &Result<T, Status>) {
    let code = match result {
        Ok(_) => "OK".to_string(),
        Err(status) => format!("{:?}", status.code()),
    };
    metrics::counter!(RPCS.name, "method" => method, "code" => code.clone()).increment(1);
    metrics::histogram!(RPC_DURATION.name, "method" => method, "code" => code).record(started.elapsed().as_secs_f64());
    if let Err(status) = result {
        tracing::debug!(method, code = ?status.code(), message = status.message(), "scaler RPC failed");
    }
}

#[tonic::async_trait]
impl ExternalScaler for LagScaler {
    async fn is_active(&self, request: Request<ScaledObjectRef>) -> Result<Response<IsActiveResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let trigger = self.trigger(Some(request.get_ref()))?;
            let lag = self.lag(&trigger).await?;
            Ok(Response::new(IsActiveResponse {
                result: trigger.is_active(lag),
            }))
        }
        .await;
        observe("IsActive", started, &result);
        result
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let started = Instant::now();
        let opened = self.open_activity_stream(request.get_ref()).await;
        observe("StreamIsActive", started, &opened);
        opened.map(Response::new)
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let started = Instant::now();
        // The spec needs no NATS round trip: it is fixed by the metadata.
        let result = self.trigger(Some(request.get_ref())).map(|trigger| {
            Response::new(GetMetricSpecResponse {
                metric_specs: vec![MetricSpec {
                    metric_name: trigger.metric_name(),
                    target_size: trigger.lag_threshold.get().ceil() as i64,
                    target_size_float: trigger.lag_threshold.get(),
                }],
            })
        });
        observe("GetMetricSpec", started, &result);
        result
    }

    async fn get_metrics(&self, request: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let request = request.get_ref();
            let trigger = self.trigger(request.scaled_object_ref.as_ref())?;
            let lag = self.lag(&trigger).await?;
            // KEDA asks by the name it got from GetMetricSpec; answer with it.
            let metric_name = if request.metric_name.is_empty() {
                trigger.metric_name()
            } else {
                request.metric_name.clone()
            };
            Ok(Response::new(GetMetricsResponse {
                metric_values: vec![MetricValue {
                    metric_name,
                    metric_value: i64::try_from(lag).unwrap_or(i64::MAX),
                    metric_value_float: lag as f64,
                }],
            }))
        }
        .await;
        observe("GetMetrics", started, &result);
        result
    }

    type StreamMetricSpecStream = SpecStream;

    async fn stream_metric_spec(
        &self,
        _request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        // Our spec only changes with the trigger metadata, and KEDA rebuilds
        // the scaler when that changes: polling GetMetricSpec is exact.
        let result = Err(Status::unimplemented("StreamMetricSpec: use GetMetricSpec"));
        observe("StreamMetricSpec", Instant::now(), &result);
        result
    }
}

impl LagScaler {
    /// Opens a push stream: the current activity at once, then every change.
    async fn open_activity_stream(&self, so: &ScaledObjectRef) -> Result<ActiveStream, Status> {
        let trigger = self.trigger(Some(so))?;
        // A consumer that does not exist is an error now, not a silent stream.
        if let Err(e @ (LagError::StreamNotFound { .. } | LagError::ConsumerNotFound { .. })) =
            self.cache.get(&trigger.key).await.result
        {
            return Err(lag_status(&e));
        }
        let readings = self.watchers.subscribe(&trigger.key, trigger.activation_lag_threshold);
        // The stream is built on the watch receiver itself: no task or
        // channel per open stream, which KEDA keeps open per ScaledObject.
        // Dropping it (KEDA closed the stream) drops the receiver, and the
        // watcher stops with its last subscriber.
        let state = PushState {
            readings,
            activation_lag_threshold: trigger.activation_lag_threshold,
            scaled_object: format!("{}/{}", so.namespace, so.name),
            sent: None,
            _open: OpenStream::new(),
        };
        Ok(Box::pin(futures::stream::unfold(state, PushState::next)))
    }
}

/// One open StreamIsActive stream.
struct PushState {
    readings: Subscription,
    /// All a stream keeps of its trigger: KEDA holds one per ScaledObject.
    activation_lag_threshold: f64,
    scaled_object: String,
    sent: Option<bool>,
    _open: OpenStream,
}

impl PushState {
    /// The next change of activity: the current one first, then each flip.
    async fn next(mut self) -> Option<(Result<IsActiveResponse, Status>, Self)> {
        loop {
            // Errors send nothing: KEDA keeps its last state and its IsActive
            // polls surface the error. Never push a guess.
            let Some(lag) = self.readings.next().await else {
                continue;
            };
            let active = is_active(lag, self.activation_lag_threshold);
            if self.sent == Some(active) {
                continue;
            }
            if active {
                metrics::counter!(PUSH_ACTIVATIONS.name).increment(1);
            }
            tracing::debug!(scaled_object = %self.scaled_object, active, "pushed activity");
            self.sent = Some(active);
            return Some((Ok(IsActiveResponse { result: active }), self));
        }
    }
}

/// Counts an open push stream in `eds_push_streams` for as long as it lives.
struct OpenStream(metrics::Gauge);

impl OpenStream {
    fn new() -> Self {
        let gauge = metrics::gauge!(PUSH_STREAMS.name);
        gauge.increment(1.0);
        OpenStream(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
