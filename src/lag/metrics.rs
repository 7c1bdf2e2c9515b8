//! The lag side's metrics: NATS requests, the cache and push watchers
//! (`eds_nats_connected` is [`crate::nats::CONNECTED`]). The per-consumer `eds_consumer_*` gauges are written at scrape
//! time from the cache (see [`super::exposition`]).
use crate::telemetry::Metric;

pub const NATS_REQUESTS: Metric = Metric::counter(
    "eds_nats_requests_total",
    &["connection", "result"],
    "JetStream API requests by connection and result.",
);
pub const NATS_REQUEST_DURATION: Metric = Metric::histogram(
    "eds_nats_request_duration_seconds",
    &["connection"],
    "JetStream API request latency by connection.",
);
pub const CACHE_REQUESTS: Metric = Metric::counter(
    "eds_lag_cache_requests_total",
    &["result"],
    "Lag lookups by result: hit, miss, coalesced, or refused (the namespace's share of NATS reads was used up).",
);
pub const CACHE_EVICTIONS: Metric = Metric::counter(
    "eds_lag_cache_evictions_total",
    &[],
    "Lag cache entries evicted to stay within --lag-cache-entries.",
);
pub const PUSH_WATCHERS: Metric = Metric::gauge("eds_push_watchers", &[], "Consumers watched for push activation.");
pub const PUSH_NOTIFIERS: Metric = Metric::gauge(
    "eds_push_notifiers",
    &[],
    "Streams with a shared new-message notifier task (one notifier consumer each).",
);

pub const CONSUMER_ADVISORIES: Metric = Metric::counter(
    "eds_consumer_advisories_total",
    &["connection", "stream", "consumer", "kind"],
    "MAX_DELIVERIES (kind max_deliveries) and MSG_TERMINATED (kind terminated) advisories the controller's leader heard for a claim's consumer.",
);

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

/// Written only for consumers that set a limit: an unlimited consumer has no
/// series (there is no number to report).
pub const CONSUMER_MAX_ACK_PENDING: Metric = consumer_gauge(
    "eds_consumer_max_ack_pending",
    "The consumer's max_ack_pending, where it sets a limit: with a trigger's concurrency it caps the replicas that can hold work.",
);

/// Every gauge written at scrape time from the cache.
pub const SCRAPE_TIME: [Metric; 6] = [
    CONSUMER_GAUGES[0],
    CONSUMER_GAUGES[1],
    CONSUMER_GAUGES[2],
    CONSUMER_GAUGES[3],
    CONSUMER_GAUGES[4],
    CONSUMER_MAX_ACK_PENDING,
];

const fn consumer_gauge(name: &'static str, help: &'static str) -> Metric {
    Metric::gauge(name, CONSUMER_LABELS, help)
}

/// Every metric recorded through the registry.
pub const ALL: &[Metric] = &[
    NATS_REQUESTS,
    NATS_REQUEST_DURATION,
    CACHE_REQUESTS,
    CACHE_EVICTIONS,
    PUSH_WATCHERS,
    PUSH_NOTIFIERS,
    CONSUMER_ADVISORIES,
];
