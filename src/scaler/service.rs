//! The gRPC service KEDA calls, over any [`LagProvider`]: NATS in production
//! ([`NatsLag`]), a fake in the unit tests below.
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::drain::{Drain, DrainConfig, Drains, Sent};
use super::metrics::{DENIED, PUSH_ACTIVATIONS, PUSH_STREAMS, RPC_DURATION, RPCS};
use crate::lag::{ConsumerKey, ConsumerState, LagCache, LagError, Watchers, watch::Subscription};
use crate::nats::Connections;
use crate::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef, external_scaler_server::ExternalScaler,
};
use crate::trigger::{ScaleMetric, Trigger, is_active};

/// What the scaler needs from the lag side: a reading fresh enough to
/// serve, and the readings of a consumer as they come (push activation).
pub trait LagProvider: Clone + Send + Sync + 'static {
    type Readings: Readings;

    /// The consumer's counts and limits, or why they could not be read,
    /// for a request from `namespace` (whose share of reads it may use).
    fn consumer_state(
        &self,
        namespace: &str,
        key: &ConsumerKey,
    ) -> impl Future<Output = Result<ConsumerState, LagError>> + Send;

    /// Readings of the consumer from now on; `activation_threshold` tells
    /// the source which changes matter.
    fn subscribe(&self, key: &ConsumerKey, activation_threshold: f64) -> Self::Readings;
}

/// A subscription to one consumer's readings.
pub trait Readings: Send + 'static {
    /// The next reading not yet seen: the lag, or `None` when a read failed.
    fn next(&mut self) -> impl Future<Output = Option<u64>> + Send;
}

/// Lag from NATS: the shared cache, and the push watchers.
#[derive(Clone)]
pub struct NatsLag {
    pub cache: Arc<LagCache>,
    pub watchers: Arc<Watchers>,
}

impl LagProvider for NatsLag {
    type Readings = Subscription;

    async fn consumer_state(&self, namespace: &str, key: &ConsumerKey) -> Result<ConsumerState, LagError> {
        self.cache.get_for(namespace, key).await.result
    }

    fn subscribe(&self, key: &ConsumerKey, activation_threshold: f64) -> Subscription {
        self.watchers.subscribe(key, activation_threshold)
    }
}

impl Readings for Subscription {
    fn next(&mut self) -> impl Future<Output = Option<u64>> + Send {
        Subscription::next(self)
    }
}

/// Serves lag and push activation from `L`.
#[derive(Clone)]
pub struct LagScaler<L = NatsLag> {
    connections: Connections,
    source: L,
    /// The `drainWithin` triggers with an open `StreamMetricSpec`.
    drains: Arc<Drains>,
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;
type SpecStream = Pin<Box<dyn Stream<Item = Result<GetMetricSpecResponse, Status>> + Send>>;

impl<L: LagProvider> LagScaler<L> {
    /// `connections` are the names trigger metadata may pick.
    pub fn new(connections: Connections, source: L) -> Self {
        Self::with_drain_config(connections, source, DrainConfig::default())
    }

    /// As [`LagScaler::new`], with how `drainWithin` samples and sends.
    pub fn with_drain_config(connections: Connections, source: L, drain: DrainConfig) -> Self {
        LagScaler {
            connections,
            source,
            drains: Arc::new(Drains::new(drain)),
        }
    }

    /// The live `drainWithin` estimates (one per distinct trigger with an
    /// open stream).
    pub fn drains(&self) -> &Drains {
        &self.drains
    }

    fn trigger(&self, scaled_object: Option<&ScaledObjectRef>) -> Result<Trigger, Status> {
        let so = scaled_object.ok_or_else(|| Status::invalid_argument("scaledObjectRef is required"))?;
        Trigger::parse(&so.scaler_metadata, &self.connections).map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// The trigger of `scaled_object`, if its namespace may read it under
    /// the connection's rules: every RPC starts here, before any NATS read.
    fn allowed_trigger(
        &self,
        method: &'static str,
        scaled_object: Option<&ScaledObjectRef>,
    ) -> Result<Trigger, Status> {
        let trigger = self.trigger(scaled_object)?;
        let namespace = scaled_object.map_or("", |so| so.namespace.as_str());
        let key = &trigger.key;
        if let Err(denied) =
            self.connections
                .access()
                .authorize(namespace, &key.connection, key.domain.as_deref(), &key.stream)
        {
            metrics::counter!(DENIED.name, "method" => method, "connection" => key.connection.to_string()).increment(1);
            return Err(Status::permission_denied(denied.to_string()));
        }
        Ok(trigger)
    }

    async fn consumer_state(&self, namespace: &str, trigger: &Trigger) -> Result<ConsumerState, Status> {
        self.source
            .consumer_state(namespace, &trigger.key)
            .await
            .map_err(|e| lag_status(&e))
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
        LagError::MissLimited { .. } => Status::resource_exhausted(message),
    }
}

/// The integer form older KEDA reads: the exact lag, or the capped value
/// rounded up (so `ceil(metric / target)` still reaches the cap).
fn metric_integer(metric: &ScaleMetric) -> i64 {
    if metric.value == metric.lag as f64 {
        i64::try_from(metric.lag).unwrap_or(i64::MAX)
    } else {
        metric.value.ceil() as i64
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
impl<L: LagProvider> ExternalScaler for LagScaler<L> {
    async fn is_active(&self, request: Request<ScaledObjectRef>) -> Result<Response<IsActiveResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let so = request.get_ref();
            let trigger = self.allowed_trigger("IsActive", Some(so))?;
            // Activity follows the true lag, never the capped metric.
            let state = self.consumer_state(&so.namespace, &trigger).await?;
            Ok(Response::new(IsActiveResponse {
                result: trigger.is_active(state.lag()),
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
        // The spec needs no NATS round trip: it is fixed by the metadata,
        // or, for `drainWithin`, what the open stream last sent.
        let result = self
            .allowed_trigger("GetMetricSpec", Some(request.get_ref()))
            .map(|trigger| {
                let target = match self.drains.get(&trigger) {
                    Some(drain) => drain.sent().target,
                    None => trigger.lag_threshold.get(),
                };
                Response::new(metric_spec(&trigger, target))
            });
        observe("GetMetricSpec", started, &result);
        result
    }

    async fn get_metrics(&self, request: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let request = request.get_ref();
            let trigger = self.allowed_trigger("GetMetrics", request.scaled_object_ref.as_ref())?;
            let namespace = request
                .scaled_object_ref
                .as_ref()
                .map_or("", |so| so.namespace.as_str());
            let state = self.consumer_state(namespace, &trigger).await?;
            // The metric goes with the target KEDA was sent.
            let metric = match self.drains.get(&trigger) {
                Some(drain) => drain.scale_metric(&trigger, &state),
                None => trigger.scale_metric(&state),
            };
            // KEDA asks by the name it got from GetMetricSpec; answer with it.
            let metric_name = if request.metric_name.is_empty() {
                trigger.metric_name()
            } else {
                request.metric_name.clone()
            };
            Ok(Response::new(GetMetricsResponse {
                metric_values: vec![MetricValue {
                    metric_name,
                    metric_value: metric_integer(&metric),
                    metric_value_float: metric.value,
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
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        let started = Instant::now();
        let opened = self.open_spec_stream(request.get_ref()).await;
        observe("StreamMetricSpec", started, &opened);
        opened.map(Response::new)
    }
}

impl<L: LagProvider> LagScaler<L> {
    /// Opens a push stream: the current activity at once, then every change.
    async fn open_activity_stream(&self, so: &ScaledObjectRef) -> Result<ActiveStream, Status> {
        let trigger = self.allowed_trigger("StreamIsActive", Some(so))?;
        // A consumer that does not exist is an error now, not a silent stream.
        if let Err(e @ (LagError::StreamNotFound { .. } | LagError::ConsumerNotFound { .. })) =
            self.source.consumer_state(&so.namespace, &trigger.key).await
        {
            return Err(lag_status(&e));
        }
        let readings = self.source.subscribe(&trigger.key, trigger.activation_lag_threshold);
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

impl<L: LagProvider> LagScaler<L> {
    /// Opens a metric spec stream for a `drainWithin` trigger: the current
    /// target at once, then each one the drain decides to send.
    async fn open_spec_stream(&self, so: &ScaledObjectRef) -> Result<SpecStream, Status> {
        let trigger = self.allowed_trigger("StreamMetricSpec", Some(so))?;
        if trigger.drain_within.is_none() {
            // The spec only changes with the metadata, and KEDA rebuilds the
            // scaler when that changes: polling GetMetricSpec is exact, and
            // no stream is held open per ScaledObject.
            return Err(Status::unimplemented(
                "StreamMetricSpec: only triggers with drainWithin stream their target; use GetMetricSpec",
            ));
        }
        if let Err(e @ (LagError::StreamNotFound { .. } | LagError::ConsumerNotFound { .. })) =
            self.source.consumer_state(&so.namespace, &trigger.key).await
        {
            return Err(lag_status(&e));
        }
        let drain = self
            .drains
            .open(&trigger, &self.source, &so.namespace)
            .expect("a drainWithin trigger has a drain");
        let sent = drain.subscribe();
        let state = SpecState {
            trigger,
            sent,
            _drain: drain,
        };
        Ok(Box::pin(futures::stream::unfold(state, SpecState::next)))
    }
}

/// The one-metric spec KEDA gets, with `target` per replica.
fn metric_spec(trigger: &Trigger, target: f64) -> GetMetricSpecResponse {
    GetMetricSpecResponse {
        metric_specs: vec![MetricSpec {
            metric_name: trigger.metric_name(),
            target_size: target.ceil() as i64,
            target_size_float: target,
        }],
    }
}

/// One open StreamMetricSpec stream. Holding the drain keeps its sampler
/// running; dropping the stream (KEDA went away) lets it stop.
struct SpecState {
    trigger: Trigger,
    sent: tokio::sync::watch::Receiver<Sent>,
    _drain: Arc<Drain>,
}

impl SpecState {
    async fn next(mut self) -> Option<(Result<GetMetricSpecResponse, Status>, Self)> {
        // The sender lives in the drain this stream holds: never closed.
        self.sent.changed().await.ok()?;
        let target = self.sent.borrow_and_update().target;
        Some((Ok(metric_spec(&self.trigger, target)), self))
    }
}

/// One open StreamIsActive stream.
struct PushState<R> {
    readings: R,
    /// All a stream keeps of its trigger: KEDA holds one per ScaledObject.
    activation_lag_threshold: f64,
    scaled_object: String,
    sent: Option<bool>,
    _open: OpenStream,
}

impl<R: Readings> PushState<R> {
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
            // A wake-up: this stream saw the consumer idle, and now active.
            // The first answer of a stream opened on a busy consumer (KEDA
            // reconnecting, say) is not one.
            if active && self.sent == Some(false) {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use futures::StreamExt;
    use tokio::sync::mpsc;

    use super::*;
    use crate::proto::GetMetricsRequest;
    use crate::scaler::DrainConfig;
    use crate::tenancy::{Access, ConnectionRules, Patterns, ReadRule};

    /// Lag from a table, and push readings from a channel the test feeds.
    #[derive(Default)]
    struct FakeLag {
        lag: Mutex<HashMap<String, Result<ConsumerState, LagError>>>,
        pushes: Mutex<Option<mpsc::UnboundedReceiver<Option<u64>>>>,
    }

    impl FakeLag {
        fn with(consumer: &str, lag: Result<u64, LagError>) -> Self {
            Self::with_state(
                consumer,
                lag.map(|pending| ConsumerState {
                    pending,
                    ..ConsumerState::default()
                }),
            )
        }

        fn with_state(consumer: &str, state: Result<ConsumerState, LagError>) -> Self {
            let fake = FakeLag::default();
            fake.lag.lock().unwrap().insert(consumer.into(), state);
            fake
        }
    }

    struct FakeReadings(mpsc::UnboundedReceiver<Option<u64>>);

    impl Readings for FakeReadings {
        async fn next(&mut self) -> Option<u64> {
            match self.0.recv().await {
                Some(reading) => reading,
                // Like a watcher: no more readings is silence, not an end.
                None => std::future::pending().await,
            }
        }
    }

    impl LagProvider for Arc<FakeLag> {
        type Readings = FakeReadings;

        async fn consumer_state(&self, _namespace: &str, key: &ConsumerKey) -> Result<ConsumerState, LagError> {
            let table = self.lag.lock().unwrap();
            table.get(&*key.consumer).cloned().unwrap_or_else(|| {
                Err(LagError::ConsumerNotFound {
                    connection: key.connection.to_string(),
                    stream: key.stream.to_string(),
                    consumer: key.consumer.to_string(),
                })
            })
        }

        fn subscribe(&self, _key: &ConsumerKey, _activation_threshold: f64) -> FakeReadings {
            FakeReadings(self.pushes.lock().unwrap().take().expect("one subscription per test"))
        }
    }

    fn scaler(fake: FakeLag) -> (LagScaler<Arc<FakeLag>>, Arc<FakeLag>) {
        let fake = Arc::new(fake);
        let open = Access::new([("default".to_string(), ConnectionRules::every_namespace())].into());
        (
            LagScaler::new(Connections::default().with_access(open), fake.clone()),
            fake,
        )
    }

    fn so(pairs: &[(&str, &str)]) -> ScaledObjectRef {
        ScaledObjectRef {
            name: "w".into(),
            namespace: "n".into(),
            scaler_metadata: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn metrics(so: ScaledObjectRef, metric_name: &str) -> Request<GetMetricsRequest> {
        Request::new(GetMetricsRequest {
            scaled_object_ref: Some(so),
            metric_name: metric_name.into(),
        })
    }

    #[tokio::test]
    async fn get_metrics_serves_the_lag_under_the_name_keda_asked_for() {
        let (scaler, _) = scaler(FakeLag::with("c", Ok(42)));
        let trigger = so(&[("stream", "S"), ("consumer", "c")]);
        let reply = scaler
            .get_metrics(metrics(trigger.clone(), "s0-nats"))
            .await
            .unwrap()
            .into_inner();
        let value = &reply.metric_values[0];
        assert_eq!((value.metric_name.as_str(), value.metric_value), ("s0-nats", 42));
        assert_eq!(value.metric_value_float, 42.0);
        let reply = scaler.get_metrics(metrics(trigger, "")).await.unwrap().into_inner();
        assert_eq!(
            reply.metric_values[0].metric_name,
            crate::trigger::metric_name("S", "c")
        );
    }

    #[tokio::test]
    async fn get_metrics_stops_at_the_replica_cap_and_is_active_does_not() {
        let saturated = ConsumerState {
            pending: 96,
            ack_pending: 4,
            max_ack_pending: Some(4),
            ..ConsumerState::default()
        };
        let (scaler, _) = scaler(FakeLag::with_state("c", Ok(saturated)));
        for (concurrency, lag_threshold, metric) in [("1", "5", 20.0), ("2", "5", 10.0), ("3", "2.5", 5.0)] {
            let trigger = so(&[
                ("stream", "S"),
                ("consumer", "c"),
                ("concurrency", concurrency),
                ("lagThreshold", lag_threshold),
            ]);
            let reply = scaler
                .get_metrics(metrics(trigger.clone(), "m"))
                .await
                .unwrap()
                .into_inner();
            let value = &reply.metric_values[0];
            assert_eq!(value.metric_value_float, metric, "concurrency {concurrency}");
            assert_eq!(value.metric_value, metric.ceil() as i64);
            let active = scaler.is_active(Request::new(trigger)).await.unwrap().into_inner();
            assert!(active.result, "activity follows the true lag");
        }
    }

    #[tokio::test]
    async fn is_active_is_lag_above_the_activation_threshold() {
        for (lag, active) in [(0, false), (2, false), (3, true)] {
            let (scaler, _) = scaler(FakeLag::with("c", Ok(lag)));
            let trigger = so(&[("stream", "S"), ("consumer", "c"), ("activationLagThreshold", "2")]);
            let reply = scaler.is_active(Request::new(trigger)).await.unwrap().into_inner();
            assert_eq!(reply.result, active, "lag {lag}");
        }
    }

    #[tokio::test]
    async fn bad_metadata_is_invalid_argument_naming_the_key() {
        let (scaler, _) = scaler(FakeLag::with("c", Ok(1)));
        for (pairs, key) in [
            (&[("consumer", "c")][..], "stream"),
            (
                &[("stream", "S"), ("consumer", "c"), ("lagThreshold", "0")][..],
                "lagThreshold",
            ),
            (
                &[("stream", "S"), ("consumer", "c"), ("natsConnection", "elsewhere")][..],
                "natsConnection",
            ),
        ] {
            let status = scaler.get_metrics(metrics(so(pairs), "m")).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{pairs:?}");
            assert!(status.message().contains(key), "{key}: {}", status.message());
            let status = scaler.is_active(Request::new(so(pairs))).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{pairs:?}");
        }
        let status = scaler
            .get_metrics(Request::new(GetMetricsRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_huge_bad_value_is_quoted_by_a_short_prefix() {
        let (scaler, _) = scaler(FakeLag::with("c", Ok(1)));
        let huge = "é.".repeat(350_000);
        for key in [
            "stream",
            "consumer",
            "jsDomain",
            "lagThreshold",
            "concurrency",
            "natsConnection",
        ] {
            let mut pairs = vec![("stream", "S"), ("consumer", "c")];
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, &huge));
            let status = scaler.get_metrics(metrics(so(&pairs), "m")).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{key}");
            assert!(status.message().len() < 512, "{key}: {} bytes", status.message().len());
            assert!(status.message().contains(key), "{key}: {}", status.message());
            assert!(
                status.message().contains("(1050000 bytes)"),
                "{key}: {}",
                status.message()
            );
        }
    }

    #[tokio::test]
    async fn a_missing_consumer_is_not_found_for_every_rpc() {
        let (scaler, _) = scaler(FakeLag::default());
        let trigger = so(&[("stream", "S"), ("consumer", "gone")]);
        let status = scaler.get_metrics(metrics(trigger.clone(), "m")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains("gone"), "{}", status.message());
        let status = scaler.is_active(Request::new(trigger.clone())).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        let status = scaler.stream_is_active(Request::new(trigger)).await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn an_unreadable_lag_is_an_error_never_a_number() {
        let failures = [
            (
                LagError::Timeout {
                    connection: "default".into(),
                    millis: 1500,
                },
                tonic::Code::DeadlineExceeded,
            ),
            (
                LagError::Disconnected {
                    connection: "default".into(),
                    servers: "nats://x:4222".into(),
                },
                tonic::Code::Unavailable,
            ),
            (LagError::Internal("bad reply".into()), tonic::Code::Internal),
            (
                LagError::MissLimited {
                    namespace: "\"n\"".into(),
                    per_second: 100,
                    burst: 1000,
                },
                tonic::Code::ResourceExhausted,
            ),
        ];
        for (error, code) in failures {
            let (scaler, _) = scaler(FakeLag::with("c", Err(error.clone())));
            let trigger = so(&[("stream", "S"), ("consumer", "c")]);
            let status = scaler.get_metrics(metrics(trigger.clone(), "m")).await.unwrap_err();
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(status.message(), error.to_string());
            let status = scaler.is_active(Request::new(trigger)).await.unwrap_err();
            assert_eq!(status.code(), code, "{error}");
        }
    }

    #[tokio::test]
    async fn get_metric_spec_needs_no_lag() {
        let (scaler, _) = scaler(FakeLag::default());
        let trigger = so(&[("stream", "S"), ("consumer", "c"), ("lagThreshold", "2.5")]);
        let spec = scaler
            .get_metric_spec(Request::new(trigger))
            .await
            .unwrap()
            .into_inner();
        let spec = &spec.metric_specs[0];
        assert_eq!((spec.target_size, spec.target_size_float), (3, 2.5));
    }

    #[tokio::test]
    async fn stream_is_active_pushes_the_state_then_each_flip_and_no_failure() {
        let (scaler, fake) = scaler(FakeLag::with("c", Ok(0)));
        let (push, readings) = mpsc::unbounded_channel();
        *fake.pushes.lock().unwrap() = Some(readings);
        let trigger = so(&[("stream", "S"), ("consumer", "c"), ("activationLagThreshold", "1")]);
        let mut stream = scaler
            .stream_is_active(Request::new(trigger))
            .await
            .unwrap()
            .into_inner();
        for reading in [Some(0), Some(1), None, Some(5), Some(9), None, Some(0)] {
            push.send(reading).unwrap();
        }
        let mut pushed = Vec::new();
        for _ in 0..3 {
            pushed.push(stream.next().await.unwrap().unwrap().result);
        }
        assert_eq!(pushed, [false, true, false], "the first state, then only flips");
        push.send(Some(0)).unwrap();
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(50), stream.next()).await;
        assert!(quiet.is_err(), "no repeat of an unchanged state");
    }

    fn drain_trigger() -> ScaledObjectRef {
        so(&[
            ("stream", "S"),
            ("consumer", "c"),
            ("lagThreshold", "5"),
            ("drainWithin", "60s"),
        ])
    }

    fn drain_scaler(fake: FakeLag) -> (LagScaler<Arc<FakeLag>>, Arc<FakeLag>) {
        let fake = Arc::new(fake);
        let config = DrainConfig {
            sample_every: std::time::Duration::from_secs(1),
            hysteresis: crate::drain::Hysteresis {
                min_interval: std::time::Duration::from_secs(10),
            },
            ..DrainConfig::default()
        };
        let open = Access::new([("default".to_string(), ConnectionRules::every_namespace())].into());
        (
            LagScaler::with_drain_config(Connections::default().with_access(open), fake.clone(), config),
            fake,
        )
    }

    /// `busy` replicas each acking one message a second, `pending` waiting,
    /// at second `t`.
    fn pool(t: u64, busy: u64, pending: u64) -> ConsumerState {
        ConsumerState {
            pending,
            ack_pending: busy,
            delivered_consumer_seq: busy + t * busy,
            ..ConsumerState::default()
        }
    }

    async fn spec_target(scaler: &LagScaler<Arc<FakeLag>>, trigger: ScaledObjectRef) -> f64 {
        let spec = scaler
            .get_metric_spec(Request::new(trigger))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(spec.metric_specs.len(), 1);
        spec.metric_specs[0].target_size_float
    }

    #[tokio::test]
    async fn stream_metric_spec_is_unimplemented_without_drain_within() {
        let (scaler, _) = scaler(FakeLag::with("c", Ok(1)));
        let trigger = so(&[("stream", "S"), ("consumer", "c"), ("lagThreshold", "5")]);
        let status = scaler.stream_metric_spec(Request::new(trigger)).await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(scaler.drains().is_empty(), "no state for a polled trigger");
        let bad = so(&[("stream", "S"), ("consumer", "c"), ("drainWithin", "25h")]);
        let status = scaler
            .stream_metric_spec(Request::new(bad.clone()))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("drainWithin"), "{}", status.message());
        let status = scaler.get_metric_spec(Request::new(bad)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let (missing, _) = self::scaler(FakeLag::default());
        let status = missing
            .stream_metric_spec(Request::new(drain_trigger()))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(missing.drains().is_empty());
    }

    /// Older KEDA never opens the stream: drainWithin changes nothing.
    #[tokio::test]
    async fn without_a_stream_drain_within_answers_as_lag_threshold() {
        let (scaler, _) = drain_scaler(FakeLag::with_state("c", Ok(pool(100, 2, 40))));
        assert_eq!(spec_target(&scaler, drain_trigger()).await, 5.0);
        let reply = scaler
            .get_metrics(metrics(drain_trigger(), "m"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.metric_values[0].metric_value, 42, "the plain lag");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_stream_sends_at_once_then_measured_steps_and_get_metric_spec_agrees() {
        let (scaler, fake) = drain_scaler(FakeLag::with_state("c", Ok(pool(0, 2, 100))));
        let set = |state: Result<ConsumerState, LagError>| {
            fake.lag.lock().unwrap().insert("c".into(), state);
        };
        let mut stream = scaler
            .stream_metric_spec(Request::new(drain_trigger()))
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.metric_specs.len(), 1, "never an empty list");
        assert_eq!(
            first.metric_specs[0].target_size_float, 5.0,
            "the fallback until μ is known"
        );
        assert_eq!(first.metric_specs[0].metric_name, crate::trigger::metric_name("S", "c"));
        assert_eq!(spec_target(&scaler, drain_trigger()).await, 5.0);
        assert_eq!(scaler.drains().len(), 1);

        // A saturated pool of 2, one message a second each: μ = 1, target μ·D = 60.
        for t in 1..=12 {
            set(Ok(pool(t, 2, 100)));
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let measured = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("a measured target is streamed")
            .unwrap()
            .unwrap();
        let target = measured.metric_specs[0].target_size_float;
        assert!((target / 60.0 - 1.0).abs() < 0.05, "target {target}");
        assert_eq!(measured.metric_specs[0].target_size, target.ceil() as i64);
        assert_eq!(
            spec_target(&scaler, drain_trigger()).await,
            target,
            "GetMetricSpec = last sent"
        );
        // metric = lag + λ·D = 102 + 2·60; ceil(metric / target) = 4 replicas.
        let reply = scaler
            .get_metrics(metrics(drain_trigger(), "m"))
            .await
            .unwrap()
            .into_inner();
        let metric = reply.metric_values[0].metric_value_float;
        assert!((metric - 222.0).abs() < 1.0, "metric {metric}");
        assert_eq!((metric / target).ceil(), 4.0);

        // NATS goes away for a while: nothing is sent, the stream stays open.
        set(Err(LagError::Disconnected {
            connection: "default".into(),
            servers: "nats://x:4222".into(),
        }));
        let quiet = tokio::time::timeout(std::time::Duration::from_secs(30), stream.next()).await;
        assert!(quiet.is_err(), "no target from a failed read");
        // Back, and the pool is now twice as fast: one new step after the
        // minimum interval, not one per reading.
        let mut seq = pool(12, 2, 100).delivered_consumer_seq;
        let mut sent = Vec::new();
        for _ in 0..120 {
            seq += 4;
            set(Ok(ConsumerState {
                pending: 100,
                ack_pending: 2,
                delivered_consumer_seq: seq,
                ..ConsumerState::default()
            }));
            tokio::select! {
                next = stream.next() => sent.push(next.unwrap().unwrap().metric_specs[0].target_size_float),
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
        assert!(!sent.is_empty() && sent.len() <= 12, "{sent:?}");
        let last = *sent.last().unwrap();
        assert!(last > 1.5 * target, "μ doubled: {target} -> {last} ({sent:?})");
        assert_eq!(spec_target(&scaler, drain_trigger()).await, last);

        // The client goes away: its drain and sampler go with it.
        drop(stream);
        tokio::task::yield_now().await;
        assert!(scaler.drains().is_empty());
        assert_eq!(spec_target(&scaler, drain_trigger()).await, 5.0);
    }

    #[tokio::test(start_paused = true)]
    async fn streams_on_one_trigger_share_one_drain() {
        let (scaler, _) = drain_scaler(FakeLag::with_state("c", Ok(pool(0, 1, 1))));
        let a = scaler.stream_metric_spec(Request::new(drain_trigger())).await.unwrap();
        let b = scaler.stream_metric_spec(Request::new(drain_trigger())).await.unwrap();
        assert_eq!(scaler.drains().len(), 1);
        drop(a);
        assert_eq!(scaler.drains().len(), 1);
        drop(b);
        assert!(scaler.drains().is_empty());
    }

    #[tokio::test]
    async fn every_rpc_refuses_a_namespace_the_rules_do_not_allow_before_reading_lag() {
        let fake = Arc::new(FakeLag::with("c", Ok(5)));
        let rules = ConnectionRules {
            namespaces: Some(Patterns::new(&["team-*"]).unwrap()),
            reads: vec![ReadRule {
                namespaces: Patterns::new(&["team-a"]).unwrap(),
                domains: None,
                streams: Some(Patterns::new(&["A-*"]).unwrap()),
            }],
        };
        let access = Access::new([("default".to_string(), rules)].into());
        let scaler = LagScaler::new(Connections::default().with_access(access), fake.clone());
        let at = |namespace: &str, stream: &str| ScaledObjectRef {
            namespace: namespace.into(),
            ..so(&[("stream", stream), ("consumer", "c")])
        };
        for (refused, rule) in [
            (at("ops", "A-1"), "connections.default.namespaces is [team-*]"),
            (at("team-a", "B"), "connections.default.reads[0]"),
        ] {
            let statuses = [
                scaler.is_active(Request::new(refused.clone())).await.unwrap_err(),
                scaler.get_metric_spec(Request::new(refused.clone())).await.unwrap_err(),
                scaler.get_metrics(metrics(refused.clone(), "m")).await.unwrap_err(),
                scaler
                    .stream_is_active(Request::new(refused.clone()))
                    .await
                    .err()
                    .unwrap(),
                scaler
                    .stream_metric_spec(Request::new(ScaledObjectRef {
                        scaler_metadata: drain_trigger().scaler_metadata,
                        ..refused.clone()
                    }))
                    .await
                    .err()
                    .unwrap(),
            ];
            for status in statuses {
                assert_eq!(status.code(), tonic::Code::PermissionDenied, "{}", status.message());
                let message = status.message();
                assert!(
                    message.contains(&format!("namespace {:?}", refused.namespace)),
                    "{message}"
                );
                assert!(message.contains("connection \"default\""), "{message}");
                assert!(message.contains(rule), "{message}");
            }
        }
        // (A refused push stream never subscribed: this fake has no readings
        // to give and would have panicked.) The rules let these through:
        for allowed in [at("team-a", "A-1"), at("team-b", "B")] {
            assert!(
                scaler
                    .is_active(Request::new(allowed.clone()))
                    .await
                    .unwrap()
                    .into_inner()
                    .result
            );
            let reply = scaler.get_metrics(metrics(allowed, "m")).await.unwrap().into_inner();
            assert_eq!(reply.metric_values[0].metric_value, 5);
        }
    }

    #[tokio::test]
    async fn no_rule_written_refuses_every_namespace() {
        let (_, fake) = scaler(FakeLag::with("c", Ok(5)));
        let scaler = LagScaler::new(Connections::default(), fake);
        let status = scaler
            .is_active(Request::new(so(&[("stream", "S"), ("consumer", "c")])))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("namespace \"n\""), "{}", status.message());
    }
}
