//! The per-claim gauges (`eds_service_*`), written at scrape time from what
//! each claim's last reconcile found, rather than kept in the metrics
//! registry.
//!
//! Eleven series per claim in the registry (keys, label sets, handles) are
//! 110,000 series at 10,000 claims; the scaler's own per-consumer gauges
//! cost about 600 bytes a series there (docs/benchmarks.md), so about 66 MiB.
//! And a deleted claim's series stayed until the process ended. Here a claim's
//! figures are one small entry, and a claim that is no longer in the
//! controller's cache leaves `/metrics` at the next scrape.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

use kube::runtime::reflector::{ObjectRef, Store};

use super::metrics::{
    SERVICE_CONSUMER_UNHEALTHY, SERVICE_DESIRED_REPLICAS, SERVICE_LAG, SERVICE_MAX_REPLICAS, SERVICE_REPLICA_CAP,
    SERVICE_REPLICAS, SERVICE_SECONDS_SINCE_ACK,
};
use crate::api::EventDrivenService;
use crate::render::status::HealthReason;
use crate::telemetry::Metric;
use crate::telemetry::text::{self, Family, Table};

/// One claim's figures as its reconciles found them. A figure keeps its
/// last value until a reconcile finds a new one; `None`: never found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimFigures {
    pub max_replicas: Option<f64>,
    pub replicas: Option<f64>,
    pub lag: Option<f64>,
    pub desired_replicas: Option<f64>,
    pub replica_cap: Option<f64>,
    pub seconds_since_ack: Option<f64>,
    /// Whether the consumer has each problem of [`HealthReason::ALL`], as
    /// of its last successful reading.
    pub unhealthy: Option<[bool; HealthReason::ALL.len()]>,
}

/// Every claim's figures, by namespace and name.
#[derive(Default)]
pub struct ClaimGauges {
    claims: Mutex<BTreeMap<(String, String), ClaimFigures>>,
    /// The controller's claim cache, once it leads: claims not in it are
    /// dropped at scrape time.
    cached: OnceLock<Store<EventDrivenService>>,
}

impl ClaimGauges {
    /// Changes the figures of claim `namespace/name`.
    pub fn update(&self, namespace: &str, name: &str, change: impl FnOnce(&mut ClaimFigures)) {
        let mut claims = self.claims.lock().expect("claim gauges lock");
        change(claims.entry((namespace.to_string(), name.to_string())).or_default());
    }

    /// The figures of claim `namespace/name`, if any.
    pub fn get(&self, namespace: &str, name: &str) -> Option<ClaimFigures> {
        let claims = self.claims.lock().expect("claim gauges lock");
        claims.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// From now on, claims not in `store` are dropped at scrape time.
    pub fn follow(&self, store: Store<EventDrivenService>) {
        let _ = self.cached.set(store);
    }

    /// The gauge families in the Prometheus text format, over a copy of
    /// every claim's figures taken now, to be written a piece at a time.
    pub fn table(&self) -> Table<(String, ClaimFigures)> {
        let rows = {
            let mut claims = self.claims.lock().expect("claim gauges lock");
            if let Some(store) = self.cached.get() {
                claims.retain(|(namespace, name), _| store.get(&ObjectRef::new(name).within(namespace)).is_some());
            }
            claims
                .iter()
                .map(|((namespace, name), figures)| {
                    let labels = text::labels([("namespace", namespace.as_str()), ("name", name.as_str())]);
                    (labels, figures.clone())
                })
                .collect()
        };
        let figures: [(Metric, fn(&ClaimFigures) -> Option<f64>); 6] = [
            (SERVICE_LAG, |f| f.lag),
            (SERVICE_REPLICAS, |f| f.replicas),
            (SERVICE_DESIRED_REPLICAS, |f| f.desired_replicas),
            (SERVICE_MAX_REPLICAS, |f| f.max_replicas),
            (SERVICE_REPLICA_CAP, |f| f.replica_cap),
            (SERVICE_SECONDS_SINCE_ACK, |f| f.seconds_since_ack),
        ];
        let mut families: Vec<Family<(String, ClaimFigures)>> = figures
            .into_iter()
            .map(|(metric, value)| {
                Family::new(
                    metric,
                    move |(labels, figures): &(String, ClaimFigures), out: &mut String| {
                        if let Some(v) = value(figures) {
                            let _ = writeln!(out, "{}{{{labels}}} {}", metric.name, number(v));
                        }
                    },
                )
            })
            .collect();
        families.push(Family::new(
            SERVICE_CONSUMER_UNHEALTHY,
            |(labels, figures): &(String, ClaimFigures), out: &mut String| {
                let Some(problems) = figures.unhealthy else { return };
                for (reason, found) in HealthReason::ALL.iter().zip(problems) {
                    let _ = writeln!(
                        out,
                        "{}{{{labels},reason=\"{}\"}} {}",
                        SERVICE_CONSUMER_UNHEALTHY.name,
                        reason.as_str(),
                        u8::from(found)
                    );
                }
            },
        ));
        Table::new(rows, families)
    }
}

/// Prometheus' text format for a value: `+Inf` for infinity.
fn number(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::text::Pieces;

    #[test]
    fn figures_render_as_labelled_gauges_and_keep_their_last_value() {
        let gauges = ClaimGauges::default();
        gauges.update("team-a", "w", |f| {
            f.max_replicas = Some(10.0);
            f.lag = Some(12.0);
            f.replica_cap = Some(f64::INFINITY);
            f.unhealthy = Some([true, false, false, false, false, false]);
        });
        gauges.update("team-a", "w", |f| f.max_replicas = Some(7.0));
        let mut out = String::new();
        gauges.table().write_all(&mut out);
        assert!(
            out.contains("eds_service_lag{namespace=\"team-a\",name=\"w\"} 12\n"),
            "{out}"
        );
        assert!(
            out.contains("eds_service_max_replicas{namespace=\"team-a\",name=\"w\"} 7\n"),
            "{out}"
        );
        assert!(
            out.contains("eds_service_replica_cap{namespace=\"team-a\",name=\"w\"} +Inf\n"),
            "{out}"
        );
        let reason = HealthReason::ALL[0].as_str();
        assert!(
            out.contains(&format!(
                "eds_service_consumer_unhealthy{{namespace=\"team-a\",name=\"w\",reason=\"{reason}\"}} 1\n"
            )),
            "{out}"
        );
        assert!(
            !out.contains("eds_service_replicas{"),
            "never found, never shown: {out}"
        );
    }

    #[test]
    fn nothing_to_show_renders_nothing() {
        let mut out = String::new();
        ClaimGauges::default().table().write_all(&mut out);
        assert_eq!(out, "");
    }
}
