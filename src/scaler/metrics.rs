//! The scaler's own metrics: RPCs and push streams.
use crate::telemetry::Metric;

pub const RPCS: Metric = Metric::counter(
    "eds_scaler_rpc_total",
    &["method", "code"],
    "Scaler RPCs by method and gRPC status code.",
);
pub const RPC_DURATION: Metric = Metric::histogram(
    "eds_scaler_rpc_duration_seconds",
    &["method", "code"],
    "Scaler RPC latency by method and gRPC status code.",
);
pub const PUSH_STREAMS: Metric = Metric::gauge("eds_push_streams", &[], "Open StreamIsActive streams.");
pub const PUSH_ACTIVATIONS: Metric = Metric::counter(
    "eds_push_activations_total",
    &[],
    "Wake-ups pushed: a push stream that had told KEDA its consumer was idle told it the consumer became active. A stream opened on a consumer already active does not count.",
);

/// Labelled by connection (a configured name), not by namespace: anyone who
/// reaches the port can make up namespaces, and series must stay bounded.
pub const DENIED: Metric = Metric::counter(
    "eds_scaler_denied_total",
    &["method", "connection"],
    "Scaler RPCs refused by the connection's tenancy rules (PERMISSION_DENIED), before any NATS read.",
);

pub const ALL: &[Metric] = &[RPCS, RPC_DURATION, PUSH_STREAMS, PUSH_ACTIVATIONS, DENIED];
