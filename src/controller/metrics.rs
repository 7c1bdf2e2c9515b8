//! The controller's metrics (the Grafana dashboard uses these names).
use crate::telemetry::Metric;

pub const RECONCILES: Metric =
    Metric::counter("eds_reconcile_total", &["result"], "Reconciles by result: ok or error.");
pub const RECONCILE_DURATION: Metric =
    Metric::histogram("eds_reconcile_duration_seconds", &[], "Time one reconcile took.");
pub const RECONCILE_ERRORS: Metric = Metric::counter(
    "eds_reconcile_errors_total",
    &["error"],
    "Failed reconciles by error kind.",
);
pub const CHILD_APPLIES: Metric = Metric::counter(
    "eds_child_applies_total",
    &["kind"],
    "Children written (created, changed or repaired) by kind.",
);
pub const SERVICE_LAG: Metric = service_gauge("eds_service_lag", "A claim's consumer lag when last read.");
pub const SERVICE_REPLICAS: Metric = service_gauge("eds_service_replicas", "A claim's Deployment replicas.");
pub const SERVICE_DESIRED_REPLICAS: Metric = service_gauge(
    "eds_service_desired_replicas",
    "Replicas the lag asks for: ceil(lag / lagThreshold), within min and max.",
);
pub const SERVICE_MAX_REPLICAS: Metric = service_gauge("eds_service_max_replicas", "A claim's scaling.maxReplicas.");
pub const SERVICE_REPLICA_CAP: Metric = service_gauge(
    "eds_service_replica_cap",
    "Replicas that can hold work at once: ceil(max_ack_pending / scaling.concurrency); +Inf when the consumer sets no max_ack_pending.",
);
pub const SERVICE_SECONDS_SINCE_ACK: Metric = service_gauge(
    "eds_service_seconds_since_ack",
    "Seconds since the claim's consumer last acknowledged a message while it had a backlog and ready replicas (Stalled at scaling.stallAfter).",
);
pub const SERVICE_CONSUMER_UNHEALTHY: Metric = Metric::gauge(
    "eds_service_consumer_unhealthy",
    &["namespace", "name", "reason"],
    "1 while the claim's consumer has the problem `reason` (ConsumerMissing, Saturated, PoisonMessages, Stalled, Misconfigured), else 0.",
);
pub const LEADER: Metric = Metric::gauge("eds_leader", &[], "1 while this replica holds the leader lease.");

/// Per-claim gauges, labelled by the claim's namespace and name.
const fn service_gauge(name: &'static str, help: &'static str) -> Metric {
    Metric::gauge(name, &["namespace", "name"], help)
}

pub const ALL: &[Metric] = &[RECONCILES, RECONCILE_DURATION, RECONCILE_ERRORS, CHILD_APPLIES, LEADER];

/// The per-claim gauges, written at scrape time (see [`super::gauges`]).
pub const SCRAPE_TIME: [Metric; 7] = [
    SERVICE_LAG,
    SERVICE_REPLICAS,
    SERVICE_DESIRED_REPLICAS,
    SERVICE_MAX_REPLICAS,
    SERVICE_REPLICA_CAP,
    SERVICE_SECONDS_SINCE_ACK,
    SERVICE_CONSUMER_UNHEALTHY,
];
