//! The per-consumer gauges (`eds_consumer_*`), written at scrape time from
//! the lag cache's last readings rather than kept in the metrics registry.
//!
//! Five series per consumer held in the registry cost about 3 KiB per
//! consumer (keys, label sets, handles, and a copy of each at every scrape):
//! 30 MiB at 10,000 consumers. Written from the cache, they cost nothing
//! between scrapes, and a consumer nobody asks about any more leaves
//! `/metrics` when its cache entry is evicted. A consumer whose last read
//! failed has no samples: an absent series, never a stale or made-up number.
use std::fmt::Write;

use super::metrics::{CONSUMER_GAUGES, CONSUMER_MAX_ACK_PENDING};
use super::{ConsumerKey, ConsumerState};
use crate::telemetry::text::{self, Family, Table};

/// One consumer's figures, as read.
#[derive(Clone, Debug)]
pub struct Sample {
    pub key: ConsumerKey,
    pub values: [u64; 5],
    pub max_ack_pending: Option<u64>,
}

impl Sample {
    pub fn new(key: ConsumerKey, state: &ConsumerState) -> Self {
        Sample {
            key,
            values: [
                state.lag(),
                state.pending,
                state.ack_pending,
                state.redelivered,
                state.waiting,
            ],
            max_ack_pending: state.max_ack_pending,
        }
    }
}

/// The five gauge families, and `eds_consumer_max_ack_pending` where any
/// consumer sets a limit, in the Prometheus text format, samples sorted by
/// their labels, to be written a piece at a time.
pub fn table(mut samples: Vec<Sample>) -> Table<(String, Sample)> {
    samples.sort_by(|a, b| a.key.cmp(&b.key));
    let limited = samples.iter().any(|s| s.max_ack_pending.is_some());
    let rows = samples.into_iter().map(|s| (label_set(&s.key), s)).collect();
    let mut families: Vec<Family<(String, Sample)>> = (0..CONSUMER_GAUGES.len())
        .map(|i| {
            let name = CONSUMER_GAUGES[i].name;
            Family::new(
                CONSUMER_GAUGES[i],
                move |(labels, sample): &(String, Sample), out: &mut String| {
                    let _ = writeln!(out, "{name}{{{labels}}} {}", sample.values[i]);
                },
            )
        })
        .collect();
    if limited {
        let name = CONSUMER_MAX_ACK_PENDING.name;
        families.push(Family::new(
            CONSUMER_MAX_ACK_PENDING,
            move |(labels, sample): &(String, Sample), out: &mut String| {
                if let Some(limit) = sample.max_ack_pending {
                    let _ = writeln!(out, "{name}{{{labels}}} {limit}");
                }
            },
        ));
    }
    Table::new(rows, families)
}

fn label_set(key: &ConsumerKey) -> String {
    let domain = key.domain.as_deref().map(|d| ("domain", d));
    text::labels(
        [("connection", key.connection.as_ref())]
            .into_iter()
            .chain(domain)
            .chain([("stream", key.stream.as_ref()), ("consumer", key.consumer.as_ref())]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Metric;
    use crate::telemetry::text::Pieces;

    fn state(pending: u64, ack_pending: u64) -> ConsumerState {
        ConsumerState {
            pending,
            ack_pending,
            redelivered: 1,
            waiting: 2,
            max_ack_pending: None,
            ..Default::default()
        }
    }

    #[test]
    fn max_ack_pending_only_where_the_consumer_sets_a_limit() {
        let limited = ConsumerState {
            max_ack_pending: Some(4),
            ..state(1, 1)
        };
        let samples = vec![
            Sample::new(ConsumerKey::new("default", None, "ORDERS", "limited"), &limited),
            Sample::new(ConsumerKey::new("default", None, "ORDERS", "unlimited"), &state(1, 1)),
        ];
        let mut out = String::new();
        table(samples).write_all(&mut out);
        assert!(
            out.contains(
                "\neds_consumer_max_ack_pending{connection=\"default\",stream=\"ORDERS\",consumer=\"limited\"} 4\n"
            ),
            "{out}"
        );
        assert_eq!(out.matches("\neds_consumer_max_ack_pending{").count(), 1, "{out}");
        let mut none = String::new();
        table(vec![Sample::new(
            ConsumerKey::new("default", None, "S", "c"),
            &state(0, 0),
        )])
        .write_all(&mut none);
        assert!(!none.contains("max_ack_pending"), "{none}");
    }

    #[test]
    fn families_are_grouped_and_samples_sorted() {
        let samples = vec![
            Sample::new(ConsumerKey::new("default", None, "ORDERS", "workers"), &state(5, 2)),
            Sample::new(ConsumerKey::new("default", None, "INVOICES", "billing"), &state(0, 0)),
        ];
        let mut out = String::from("# existing\n");
        table(samples).write_all(&mut out);
        let expected = "# existing
# HELP eds_consumer_lag Consumer lag: num_pending + num_ack_pending.
# TYPE eds_consumer_lag gauge
eds_consumer_lag{connection=\"default\",stream=\"INVOICES\",consumer=\"billing\"} 0
eds_consumer_lag{connection=\"default\",stream=\"ORDERS\",consumer=\"workers\"} 7
";
        assert!(out.starts_with(expected), "{out}");
        for Metric { name, .. } in CONSUMER_GAUGES {
            assert_eq!(out.matches(&format!("# TYPE {name} gauge\n")).count(), 1, "{name}");
            assert_eq!(out.matches(&format!("\n{name}{{")).count(), 2, "{name}");
        }
        assert!(
            out.contains("eds_consumer_waiting{connection=\"default\",stream=\"ORDERS\",consumer=\"workers\"} 2\n")
        );
    }

    #[test]
    fn domains_are_labelled_and_values_escaped() {
        let key = ConsumerKey::new("edge", Some("hub"), "S\"1", "c\\2");
        let mut out = String::new();
        table(vec![Sample::new(key, &state(1, 0))]).write_all(&mut out);
        assert!(
            out.contains(
                "eds_consumer_lag{connection=\"edge\",domain=\"hub\",stream=\"S\\\"1\",consumer=\"c\\\\2\"} 1\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn nothing_read_renders_nothing() {
        let mut out = String::new();
        table(vec![]).write_all(&mut out);
        assert!(out.is_empty());
    }
}
