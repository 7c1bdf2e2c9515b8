//! Counting the server's per-consumer advisories that mean a message was
//! given up on: `MAX_DELIVERIES` (it reached `max_deliver`) and
//! `MSG_TERMINATED` (a worker answered `+TERM`).
//!
//! Advisories are core NATS messages: the server keeps none, so only what a
//! subscriber hears is counted. The controller's leader subscribes, on every
//! connection, while it leads; after a failover the new leader counts from
//! zero, so the poison window starts again. Only consumers a claim names are
//! counted (they are registered with [`AdvisoryCounts::count_for`]): an
//! account full of other consumers costs nothing.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::health::Advisories;
use crate::lag::ConsumerKey;
use crate::nats::Connections;

/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`.
pub const MAX_DELIVERIES: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES";
/// `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.<stream>.<consumer>`.
pub const MSG_TERMINATED: &str = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED";

/// Stream and consumer on one connection (advisories carry no domain).
type Key = (Arc<str>, Arc<str>, Arc<str>);

/// Advisory counts per registered consumer.
#[derive(Debug, Default)]
pub struct AdvisoryCounts {
    counts: Mutex<HashMap<Key, Advisories>>,
}

impl AdvisoryCounts {
    /// The counts for `consumer` so far; from now on its advisories count.
    pub fn count_for(&self, consumer: &ConsumerKey) -> Advisories {
        let key = (
            consumer.connection.clone(),
            consumer.stream.clone(),
            consumer.consumer.clone(),
        );
        let mut counts = self.counts.lock().expect("advisory counts");
        if !counts.contains_key(&key) {
            // Both series exist from the start at 0, so an alert's rate()
            // sees the first advisory as an increase, not a new series.
            for kind in ["max_deliveries", "terminated"] {
                advisory_counter(&key, kind).increment(0);
            }
        }
        *counts.entry(key).or_default()
    }

    /// Stops counting for `consumer` (its claim is gone).
    pub fn forget(&self, consumer: &ConsumerKey) {
        let key = (
            consumer.connection.clone(),
            consumer.stream.clone(),
            consumer.consumer.clone(),
        );
        self.counts.lock().expect("advisory counts").remove(&key);
    }

    /// Counts one advisory heard on `connection`; an unregistered consumer's
    /// or an unknown subject is ignored.
    pub fn record(&self, connection: &str, subject: &str) {
        let Some((kind, rest)) = [MAX_DELIVERIES, MSG_TERMINATED]
            .into_iter()
            .find_map(|prefix| Some((prefix, subject.strip_prefix(prefix)?.strip_prefix('.')?)))
        else {
            return;
        };
        // Stream and consumer names contain no '.'.
        let Some((stream, consumer)) = rest.split_once('.') else {
            return;
        };
        let key: Key = (connection.into(), stream.into(), consumer.into());
        let mut counts = self.counts.lock().expect("advisory counts");
        if let Some(advisories) = counts.get_mut(&key) {
            let count = if kind == MAX_DELIVERIES {
                &mut advisories.max_deliveries
            } else {
                &mut advisories.terminated
            };
            *count = count.saturating_add(1);
            let kind = if kind == MAX_DELIVERIES {
                "max_deliveries"
            } else {
                "terminated"
            };
            advisory_counter(&key, kind).increment(1);
        }
    }
}

/// The `eds_consumer_advisories_total` series of one consumer and kind.
fn advisory_counter((connection, stream, consumer): &Key, kind: &'static str) -> metrics::Counter {
    metrics::counter!(
        crate::lag::metrics::CONSUMER_ADVISORIES.name,
        "connection" => connection.to_string(),
        "stream" => stream.to_string(),
        "consumer" => consumer.to_string(),
        "kind" => kind,
    )
}

/// Subscribes to both advisories on every connection and counts them until
/// the future is dropped. A subscription the server refuses (no permission)
/// is logged, and the rest go on.
pub async fn listen(connections: Connections, counts: Arc<AdvisoryCounts>) {
    let mut streams = Vec::new();
    for name in connections.names() {
        let Some(conn) = connections.get(Some(name)) else {
            continue;
        };
        for prefix in [MAX_DELIVERIES, MSG_TERMINATED] {
            match conn.client.subscribe(format!("{prefix}.>")).await {
                Ok(subscriber) => {
                    let connection: Arc<str> = name.into();
                    streams.push(subscriber.map(move |message| (connection.clone(), message)).boxed());
                }
                Err(e) => tracing::warn!(connection = name, error = %e, "subscribing to {prefix}.>"),
            }
        }
    }
    let mut all = futures::stream::select_all(streams);
    while let Some((connection, message)) = all.next().await {
        counts.record(&connection, message.subject.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_registered_consumers_by_kind() {
        let counts = AdvisoryCounts::default();
        let orders = ConsumerKey::new("default", None, "ORDERS", "workers");
        assert_eq!(counts.count_for(&orders), Advisories::default());
        counts.record("default", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.workers");
        counts.record("default", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.workers");
        counts.record("default", "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.ORDERS.workers");
        counts.record("default", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.others");
        counts.record("eu", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.workers");
        counts.record("default", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS");
        counts.record("default", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIESX.ORDERS.workers");
        assert_eq!(
            counts.count_for(&orders),
            Advisories {
                max_deliveries: 2,
                terminated: 1
            }
        );
        assert_eq!(counts.counts.lock().unwrap().len(), 1, "strangers are not kept");
        counts.forget(&orders);
        assert!(counts.counts.lock().unwrap().is_empty());
    }
}
