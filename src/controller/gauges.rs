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
use crate::telemetry::{Metric, text};

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

    /// Appends the gauge families in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let mut claims = self.claims.lock().expect("claim gauges lock");
        if let Some(store) = self.cached.get() {
            claims.retain(|(namespace, name), _| store.get(&ObjectRef::new(name).within(namespace)).is_some());
        }
        if claims.is_empty() {
            return;
        }
        let labels: Vec<String> = claims
            .keys()
            .map(|(namespace, name)| text::labels([("namespace", namespace.as_str()), ("name", name.as_str())]))
            .collect();
        text::reserve(out, &labels, 6 + HealthReason::ALL.len());
        let families: [(Metric, fn(&ClaimFigures) -> Option<f64>); 6] = [
            (SERVICE_LAG, |f| f.lag),
            (SERVICE_REPLICAS, |f| f.replicas),
            (SERVICE_DESIRED_REPLICAS, |f| f.desired_replicas),
            (SERVICE_MAX_REPLICAS, |f| f.max_replicas),
            (SERVICE_REPLICA_CAP, |f| f.replica_cap),
            (SERVICE_SECONDS_SINCE_ACK, |f| f.seconds_since_ack),
        ];
        for (metric, value) in families {
            text::gauge_header(out, &metric);
            for (figures, labels) in claims.values().zip(&labels) {
                if let Some(v) = value(figures) {
                    let _ = writeln!(out, "{}{{{labels}}} {}", metric.name, number(v));
                }
            }
            out.push('\n');
        }
        text::gauge_header(out, &SERVICE_CONSUMER_UNHEALTHY);
        for (figures, labels) in claims.values().zip(&labels) {
            let Some(problems) = figures.unhealthy else { continue };
            for (reason, found) in HealthReason::ALL.iter().zip(problems) {
                let _ = writeln!(
                    out,
                    "{}{{{labels},reason=\"{}\"}} {}",
                    SERVICE_CONSUMER_UNHEALTHY.name,
                    reason.as_str(),
                    u8::from(found)
                );
            }
        }
        out.push('\n');
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
        gauges.render(&mut out);
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

    /// The room reserved before rendering holds every line, at the longest
    /// values, so the text is allocated once.
    #[test]
    fn the_room_reserved_holds_the_whole_text() {
        let gauges = ClaimGauges::default();
        for i in 0..50 {
            gauges.update(&format!("payments-team-{i:05}"), &format!("svc-{i}"), |f| {
                f.lag = Some(f64::MAX);
                f.replicas = Some(-1.234_567_890_123_4e-300);
                f.desired_replicas = Some(f64::MIN_POSITIVE);
                f.max_replicas = Some(1e21);
                f.replica_cap = Some(f64::INFINITY);
                f.seconds_since_ack = Some(123_456_789.123_456_79);
                f.unhealthy = Some([true; 6]);
            });
        }
        let mut out = String::new();
        gauges.render(&mut out);
        let labels: Vec<String> = (0..50)
            .map(|i| {
                text::labels([
                    ("namespace", format!("payments-team-{i:05}").as_str()),
                    ("name", format!("svc-{i}").as_str()),
                ])
            })
            .collect();
        let room = text::room(&labels, 6 + HealthReason::ALL.len());
        assert!(out.len() <= room, "{} bytes rendered, {room} reserved", out.len());
        assert!(out.capacity() < 2 * room, "grown past the room: {}", out.capacity());
    }

    #[test]
    fn nothing_to_show_renders_nothing() {
        let mut out = String::new();
        ClaimGauges::default().render(&mut out);
        assert_eq!(out, "");
    }
}
