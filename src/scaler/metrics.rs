//! The scaler's own metrics: RPCs and push streams.
use crate::telemetry::{Kind, Metric};

pub const RPCS: Metric = Metric {
    name: "eds_scaler_rpc_total",
    kind: Kind::Counter,
    labels: &["method", "code"],
    help: "Scaler RPCs by method and gRPC status code.",
};
pub const RPC_DURATION: Metric = Metric {
    name: "eds_scaler_rpc_duration_seconds",
    kind: Kind::Histogram,
    labels: &["method", "code"],
    help: "Scaler RPC latency by method and gRPC status code.",
};
pub const PUSH_STREAMS: Metric = Metric {
    name: "eds_push_streams",
    kind: Kind::Gauge,
    labels: &[],
    help: "Open StreamIsActive streams.",
};
pub const PUSH_ACTIVATIONS: Metric = Metric {
    name: "eds_push_activations_total",
    kind: Kind::Counter,
    labels: &[],
    help: "Times a push stream told KEDA a consumer became active.",
};

pub const ALL: &[Metric] = &[RPCS, RPC_DURATION, PUSH_STREAMS, PUSH_ACTIVATIONS];
