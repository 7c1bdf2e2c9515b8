//! The lag side's metrics: NATS requests, the cache and push watchers
//! (`eds_nats_connected` is [`crate::nats::CONNECTED`]). The per-consumer `eds_consumer_*` gauges are written at scrape
//! time from the cache (see [`super::exposition`]).
use crate::telemetry::{Kind, Metric};

pub const NATS_REQUESTS: Metric = Metric {
    name: "eds_nats_requests_total",
    kind: Kind::Counter,
    labels: &["connection", "result"],
    help: "JetStream API requests by connection and result.",
};
pub const NATS_REQUEST_DURATION: Metric = Metric {
    name: "eds_nats_request_duration_seconds",
    kind: Kind::Histogram,
    labels: &["connection"],
    help: "JetStream API request latency by connection.",
};
pub const CACHE_REQUESTS: Metric = Metric {
    name: "eds_lag_cache_requests_total",
    kind: Kind::Counter,
    labels: &["result"],
    help: "Lag lookups by result: hit, miss or coalesced.",
};
pub const PUSH_WATCHERS: Metric = Metric {
    name: "eds_push_watchers",
    kind: Kind::Gauge,
    labels: &[],
    help: "Consumers watched for push activation.",
};
pub const PUSH_NOTIFIERS: Metric = Metric {
    name: "eds_push_notifiers",
    kind: Kind::Gauge,
    labels: &[],
    help: "Streams with a shared new-message notifier task (one notifier consumer each).",
};

/// The labels of every `eds_consumer_*` gauge (`domain` only when set).
const CONSUMER_LABELS: &[&str] = &["connection", "domain", "stream", "consumer"];

/// The per-consumer gauges, in the order of [`super::exposition::Sample::values`].
pub const CONSUMER_GAUGES: [Metric; 5] = [
    consumer_gauge("eds_consumer_lag", "Consumer lag: num_pending + num_ack_pending."),
    consumer_gauge("eds_consumer_pending", "Messages not yet delivered to the consumer."),
    consumer_gauge(
        "eds_consumer_ack_pending",
        "Messages delivered and not yet acknowledged.",
    ),
    consumer_gauge(
        "eds_consumer_redelivered",
        "Messages redelivered and not yet acknowledged.",
    ),
    consumer_gauge("eds_consumer_waiting", "Pull requests waiting on the consumer."),
];

const fn consumer_gauge(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        labels: CONSUMER_LABELS,
        help,
    }
}

/// Every metric recorded through the registry.
pub const ALL: &[Metric] = &[
    NATS_REQUESTS,
    NATS_REQUEST_DURATION,
    CACHE_REQUESTS,
    PUSH_WATCHERS,
    PUSH_NOTIFIERS,
];
