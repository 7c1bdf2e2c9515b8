//! Reading JetStream consumer lag: the NATS request ([`jetstream`]), the
//! shared cache in front of it ([`cache`]) and push activation ([`watch`]).
//!
//! # Why lag is `num_pending + num_ack_pending`
//! - `num_pending` counts the messages the consumer has not delivered yet. The
//!   server computes it against the consumer's own filter, so a consumer that
//!   reads a few subjects of a multi-subject stream only counts its own work.
//! - `num_ack_pending` counts messages delivered but not yet acknowledged: work
//!   in flight, and messages waiting to be redelivered after a NAK or an
//!   expired ack wait. A worker pool that is busy or failing still has that
//!   work ahead of it, so it must not be scaled down as if the queue were empty.
//! - Redeliveries are not added again: a redelivered message is already in
//!   `num_ack_pending` until it is acknowledged.
//!
//! `CONSUMER.INFO` is answered by the consumer's leader only, so on a cluster
//! the request reaches the one server that knows the numbers: no leader hunt.
pub mod cache;
pub mod exposition;
pub mod jetstream;
pub mod limit;
pub mod metrics;
pub mod notify;
pub mod subject;
pub mod watch;

use std::sync::Arc;

pub use cache::LagCache;
pub use jetstream::JetStreamLag;
pub use watch::Watchers;

/// Which consumer, on which connection and JetStream domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerKey {
    pub connection: Arc<str>,
    pub domain: Option<Arc<str>>,
    pub stream: Arc<str>,
    pub consumer: Arc<str>,
}

impl ConsumerKey {
    pub fn new(connection: &str, domain: Option<&str>, stream: &str, consumer: &str) -> Self {
        ConsumerKey {
            connection: connection.into(),
            domain: domain.map(Into::into),
            stream: stream.into(),
            consumer: consumer.into(),
        }
    }
}

impl std::fmt::Display for ConsumerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.stream, self.consumer)?;
        if let Some(domain) = &self.domain {
            write!(f, " (domain {domain})")?;
        }
        write!(f, " on connection {}", self.connection)
    }
}

/// What `CONSUMER.INFO` told us about one consumer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerState {
    pub pending: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
    pub waiting: u64,
    /// The consumer sequence of the last delivery (`delivered.consumer_seq`):
    /// it counts this consumer's deliveries, redeliveries included, and
    /// nothing else on the stream. With `ack_pending`, its change over time
    /// gives the acknowledgements (the drainWithin estimator and the health
    /// assessment use it).
    pub delivered_consumer_seq: u64,
    /// The consumer's `max_ack_pending`, when it sets a limit (the server
    /// hands out no more messages once this many are un-acknowledged).
    pub max_ack_pending: Option<u64>,
    /// The consumer's subject filter (empty: the whole stream).
    pub filter_subjects: Vec<String>,
    /// The consumer's `ack_policy` as the server spells it (`explicit`,
    /// `all`, `none`); empty when not reported.
    pub ack_policy: String,
    /// The consumer's `max_deliver`, when it sets a limit (-1: a message is
    /// redelivered forever).
    pub max_deliver: Option<u64>,
}

impl ConsumerState {
    /// The backlog KEDA scales on. See the module docs for why.
    pub fn lag(&self) -> u64 {
        self.pending.saturating_add(self.ack_pending)
    }
}

impl ConsumerState {
    /// The counters the acknowledgements between two readings come from.
    pub fn progress(&self) -> crate::drain::Progress {
        crate::drain::Progress {
            delivered: self.delivered_consumer_seq,
            ack_pending: self.ack_pending,
            redelivered: self.redelivered,
        }
    }

    /// This reading as the `drainWithin` estimator takes it, at `at` seconds.
    pub fn sample(&self, at: f64) -> crate::drain::Sample {
        crate::drain::Sample {
            at,
            delivered: self.delivered_consumer_seq,
            pending: self.pending,
            ack_pending: self.ack_pending,
            redelivered: self.redelivered,
        }
    }
}

/// Why a lag could not be read. Never a number in disguise.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LagError {
    #[error("no NATS connection named {} is configured", crate::quote::quote(.0))]
    UnknownConnection(String),
    #[error("stream {stream:?} not found on connection {connection}")]
    StreamNotFound { connection: String, stream: String },
    #[error("consumer {consumer:?} not found on stream {stream:?} (connection {connection})")]
    ConsumerNotFound {
        connection: String,
        stream: String,
        consumer: String,
    },
    #[error("NATS connection {connection} ({servers}) is not connected")]
    Disconnected { connection: String, servers: String },
    #[error("JetStream did not answer within {millis} ms on connection {connection}")]
    Timeout { connection: String, millis: u128 },
    #[error("JetStream is not available on connection {connection}: {reason}")]
    Unavailable { connection: String, reason: String },
    #[error("JetStream API error {code}/{err_code} on connection {connection}: {description}")]
    Api {
        connection: String,
        code: u16,
        err_code: u64,
        description: String,
    },
    #[error("reading the consumer info: {0}")]
    Internal(String),
    /// The namespace has used up its share of NATS reads; nothing was read.
    #[error(
        "namespace {namespace} is over its limit of {per_second} lag reads a second from NATS (burst {burst}); cached lag is still served, new reads resume as its share refills"
    )]
    MissLimited {
        namespace: String,
        per_second: u32,
        burst: u32,
    },
}

impl LagError {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            LagError::UnknownConnection(_) => "unknown_connection",
            LagError::StreamNotFound { .. } | LagError::ConsumerNotFound { .. } => "not_found",
            LagError::Disconnected { .. } => "disconnected",
            LagError::Timeout { .. } => "timeout",
            LagError::Unavailable { .. } => "unavailable",
            LagError::Api { .. } => "api_error",
            LagError::Internal(_) => "internal",
            LagError::MissLimited { .. } => "miss_limited",
        }
    }
}

/// The replica count an HPA picks for `lag` with target `threshold` per
/// replica: `ceil(lag / threshold)`, clamped to `min..=max`.
pub fn desired_replicas(lag: u64, threshold: f64, min: u32, max: u32) -> u32 {
    let wanted = if threshold > 0.0 {
        (lag as f64 / threshold).ceil()
    } else {
        f64::from(max)
    };
    (wanted.min(f64::from(u32::MAX)) as u32).clamp(min, max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_pending_plus_ack_pending() {
        let s = ConsumerState {
            pending: 7,
            ack_pending: 3,
            redelivered: 2,
            waiting: 9,
            ..Default::default()
        };
        assert_eq!(s.lag(), 10);
    }

    #[test]
    fn desired_replicas_is_ceil_clamped() {
        assert_eq!(desired_replicas(0, 5.0, 0, 10), 0);
        assert_eq!(desired_replicas(0, 5.0, 1, 10), 1);
        assert_eq!(desired_replicas(1, 5.0, 0, 10), 1);
        assert_eq!(desired_replicas(11, 5.0, 0, 10), 3);
        assert_eq!(desired_replicas(1000, 5.0, 0, 10), 10);
        assert_eq!(desired_replicas(7, 2.5, 1, 10), 3);
    }
}
