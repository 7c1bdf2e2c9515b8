//! The claim's status, computed from what was observed. Pure: the reconcile
//! loop compares the result with the stored status and writes only a change.
use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use super::{ScaledObjectCondition, ScaledObjectStatus};
use crate::Error;
use crate::api::{
    CONDITION_CONSUMER_HEALTHY, CONDITION_DEPLOYMENT_AVAILABLE, CONDITION_READY, CONDITION_RECONCILED,
    CONDITION_SCALER_READY, EventDrivenService, EventDrivenServiceStatus, REASON_NAMESPACE_NOT_ALLOWED,
};

/// What one reconcile saw.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The first failure to render or apply a child.
    pub applied: Result<(), &'a Error>,
    pub deployment: Option<DeploymentStatus>,
    /// The ScaledObject's conditions (`Ready`, `Active`...), as KEDA wrote them.
    pub scaler: Vec<ScaledObjectCondition>,
    /// The consumer's lag, when it could be read.
    pub lag: Option<u64>,
    /// The consumer's health as the controller assessed it; `None` where
    /// nothing reads NATS (the Crossplane function): then the claim gets no
    /// `ConsumerHealthy` condition.
    pub consumer: Option<ConsumerHealth>,
}

/// What the controller found about a claim's JetStream consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerHealth {
    /// Nothing wrong was found.
    Healthy,
    /// Replicas cannot drain the consumer, for this reason.
    Unhealthy { reason: HealthReason, message: String },
    /// The consumer could not be read (NATS unreachable, a timeout): why.
    Unknown(String),
}

impl ConsumerHealth {
    pub fn unhealthy(reason: HealthReason, message: impl Into<String>) -> Self {
        ConsumerHealth::Unhealthy {
            reason,
            message: message.into(),
        }
    }

    /// A setting that breaks a scaled pool, named by its field
    /// (`consumer.ack_policy`, `spec.nats.consumerConfig.maxDeliver`...).
    pub fn misconfigured(field: &str, detail: impl std::fmt::Display) -> Self {
        Self::unhealthy(HealthReason::Misconfigured, format!("{field}: {detail}"))
    }
}

/// The reason of a False `ConsumerHealthy` condition. Open: new problems get
/// new variants, so code outside this module should not assume this list is
/// complete (`HealthReason::ALL` is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HealthReason {
    /// The stream or the consumer does not exist.
    ConsumerMissing,
    /// Ack-pending reached max-ack-pending and the replica cap is below
    /// `maxReplicas`: more replicas would get no messages.
    Saturated,
    /// Messages keep being redelivered without progress.
    PoisonMessages,
    /// A backlog, ready replicas, and no acknowledgement for `stallAfter`.
    Stalled,
    /// A consumer setting that breaks a scaled pool, or one the claim asks
    /// for that JetStream cannot change on the existing consumer.
    Misconfigured,
    /// The claim's `consumerConfig` names a consumer it did not create (no
    /// stamp, or another claim's): the controller leaves it alone.
    ConsumerNotOwned,
}

impl HealthReason {
    pub const ALL: [HealthReason; 6] = [
        HealthReason::ConsumerMissing,
        HealthReason::Saturated,
        HealthReason::PoisonMessages,
        HealthReason::Stalled,
        HealthReason::Misconfigured,
        HealthReason::ConsumerNotOwned,
    ];

    /// The condition's `reason`, also the metric and alert label.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthReason::ConsumerMissing => "ConsumerMissing",
            HealthReason::Saturated => "Saturated",
            HealthReason::PoisonMessages => "PoisonMessages",
            HealthReason::Stalled => "Stalled",
            HealthReason::Misconfigured => "Misconfigured",
            HealthReason::ConsumerNotOwned => "ConsumerNotOwned",
        }
    }
}

impl std::fmt::Display for HealthReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for Observed<'_> {
    fn default() -> Self {
        Observed {
            applied: Ok(()),
            deployment: None,
            scaler: Vec::new(),
            lag: None,
            consumer: None,
        }
    }
}

/// Reads a live ScaledObject's conditions; anything unreadable is none.
pub fn keda_conditions(scaled_object: &serde_json::Value) -> Vec<ScaledObjectCondition> {
    scaled_object
        .get("status")
        .and_then(|s| ScaledObjectStatus::deserialize(s).ok())
        .map(|s| s.conditions)
        .unwrap_or_default()
}

/// The status the claim should have. A condition keeps its
/// `lastTransitionTime` while its status stays the same.
pub fn desired_status(claim: &EventDrivenService, observed: &Observed<'_>, now: Timestamp) -> EventDrivenServiceStatus {
    let generation = claim.metadata.generation;
    let previous = claim
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, state: State| {
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == state.status.as_str())
            .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_string(),
            status: state.status.as_str().to_string(),
            reason: state.reason.to_string(),
            message: state.message,
            observed_generation: generation,
            last_transition_time: since,
        }
    };

    let reconciled = match observed.applied {
        Ok(()) => State::new(True, "Applied", "Every child is applied."),
        Err(e @ Error::NotAllowed(_)) => State::new(False, REASON_NAMESPACE_NOT_ALLOWED, e.to_string()),
        Err(e) => State::new(False, "ApplyFailed", e.to_string()),
    };
    let available = deployment_available(observed.deployment.as_ref());
    let scaler = scaler_ready(&observed.scaler);
    let ready = [
        (&reconciled, "NotReconciled"),
        (&available, "DeploymentUnavailable"),
        (&scaler, "ScalerNotReady"),
    ]
    .into_iter()
    .find(|(state, _)| state.status != True)
    .map_or_else(
        || State::new(True, "Ready", "The worker is deployed and autoscaled."),
        |(state, reason)| {
            // A refusal by the tenancy rules is the answer a team needs, not
            // a generic "not reconciled".
            let reason = match state.reason {
                REASON_NAMESPACE_NOT_ALLOWED => REASON_NAMESPACE_NOT_ALLOWED,
                _ => reason,
            };
            State::new(False, reason, state.message.clone())
        },
    );

    let mut conditions = vec![
        condition(CONDITION_READY, ready),
        condition(CONDITION_RECONCILED, reconciled),
        condition(CONDITION_SCALER_READY, scaler),
        condition(CONDITION_DEPLOYMENT_AVAILABLE, available),
    ];
    if let Some(health) = &observed.consumer {
        conditions.push(condition(CONDITION_CONSUMER_HEALTHY, consumer_healthy(health)));
    }

    EventDrivenServiceStatus {
        observed_generation: generation,
        conditions,
        replicas: observed.deployment.as_ref().map(|d| d.replicas.unwrap_or(0)),
        ready_replicas: observed.deployment.as_ref().map(|d| d.ready_replicas.unwrap_or(0)),
        lag: observed.lag.map(|lag| i64::try_from(lag).unwrap_or(i64::MAX)),
        // The controller adds its drainWithin estimate (controller::reconcile).
        drain: None,
    }
}

/// The condition of `type_` in `after` when its status or reason differs
/// from `before`'s: what deserves an Event. A move to `Unknown` (NATS
/// briefly unreachable) is not one, and neither is a first verdict of
/// `True`: a new claim that is fine is what everyone expects (and 10,000
/// claims created at once would otherwise write 10,000 Events, each kept
/// six minutes in the event recorder's cache).
pub fn changed_condition<'a>(
    before: Option<&EventDrivenServiceStatus>,
    after: &'a EventDrivenServiceStatus,
    type_: &str,
) -> Option<&'a Condition> {
    let find = |s: &'a EventDrivenServiceStatus| s.conditions.iter().find(|c| c.type_ == type_);
    let new = find(after).filter(|c| ConditionStatus::parse(&c.status) != Unknown)?;
    let old = before.and_then(|b| b.conditions.iter().find(|c| c.type_ == type_));
    match old {
        Some(old) if old.status == new.status && old.reason == new.reason => None,
        None if ConditionStatus::parse(&new.status) == True => None,
        _ => Some(new),
    }
}

/// A condition's `status`, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

use ConditionStatus::{False, True, Unknown};

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            True => "True",
            False => "False",
            Unknown => "Unknown",
        }
    }

    /// Another object's condition status; anything but `True` or `False` is
    /// unknown.
    pub fn parse(status: &str) -> Self {
        match status {
            "True" => True,
            "False" => False,
            _ => Unknown,
        }
    }
}

/// One condition as computed: status, reason, message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    status: ConditionStatus,
    reason: &'static str,
    message: String,
}

impl State {
    fn new(status: ConditionStatus, reason: &'static str, message: impl Into<String>) -> Self {
        State {
            status,
            reason,
            message: message.into(),
        }
    }
}

fn deployment_available(status: Option<&DeploymentStatus>) -> State {
    let available = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Available"));
    match available.map(|c| (c, ConditionStatus::parse(&c.status))) {
        Some((c, True)) => State::new(
            True,
            "Available",
            message_or(&c.message, "The Deployment is available."),
        ),
        Some((c, status)) => State::new(
            status,
            "Unavailable",
            message_or(&c.message, "The Deployment is not available."),
        ),
        None => State::new(
            Unknown,
            "DeploymentPending",
            "The Deployment has not reported availability yet.",
        ),
    }
}

fn scaler_ready(conditions: &[ScaledObjectCondition]) -> State {
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t);
    let active = find("Active").map_or("Unknown", |c| c.status.as_str());
    match find("Ready").map(|c| (c, ConditionStatus::parse(&c.status))) {
        Some((c, True)) => State::new(
            True,
            "ScaledObjectReady",
            format!("KEDA: {} (active: {active})", c.message.as_deref().unwrap_or("ready")),
        ),
        Some((c, status)) => State::new(
            status,
            "ScaledObjectNotReady",
            format!(
                "KEDA: {}",
                c.message.as_deref().or(c.reason.as_deref()).unwrap_or("not ready")
            ),
        ),
        None => State::new(
            Unknown,
            "ScaledObjectPending",
            "KEDA has not reported on the ScaledObject yet: is KEDA running?",
        ),
    }
}

fn consumer_healthy(health: &ConsumerHealth) -> State {
    match health {
        ConsumerHealth::Healthy => State::new(
            True,
            "Healthy",
            "More replicas drain the consumer: it exists, is not saturated, and acknowledges.",
        ),
        ConsumerHealth::Unhealthy { reason, message } => State::new(False, reason.as_str(), message.clone()),
        ConsumerHealth::Unknown(why) => State::new(Unknown, "ConsumerUnreadable", why.clone()),
    }
}

fn message_or(message: &Option<String>, fallback: &str) -> String {
    message
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| fallback.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentCondition;

    fn claim(status: Option<EventDrivenServiceStatus>) -> EventDrivenService {
        let mut claim: EventDrivenService = serde_json::from_value(serde_json::json!({
            "apiVersion": "platform.bizmatters.io/v1alpha1", "kind": "EventDrivenService",
            "metadata": {"name": "w", "namespace": "n", "generation": 3},
            "spec": {"image": "img:1", "nats": {"stream": "S", "consumer": "c"}}
        }))
        .unwrap();
        claim.status = status;
        claim
    }

    fn available(status: &str) -> DeploymentStatus {
        DeploymentStatus {
            replicas: Some(2),
            ready_replicas: Some(1),
            conditions: Some(vec![DeploymentCondition {
                type_: "Available".into(),
                status: status.into(),
                message: Some("Deployment has minimum availability.".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn keda(ready: &str, active: &str) -> Vec<ScaledObjectCondition> {
        let c = |t: &str, s: &str| ScaledObjectCondition {
            type_: t.into(),
            status: s.into(),
            reason: None,
            message: Some(format!("{t} is {s}")),
        };
        vec![c("Ready", ready), c("Active", active)]
    }

    fn get<'a>(status: &'a EventDrivenServiceStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn all_good_is_ready() {
        let observed = Observed {
            applied: Ok(()),
            deployment: Some(available("True")),
            scaler: keda("True", "False"),
            lag: Some(7),
            consumer: None,
        };
        let status = desired_status(&claim(None), &observed, Timestamp::UNIX_EPOCH);
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(
            (status.replicas, status.ready_replicas, status.lag),
            (Some(2), Some(1), Some(7))
        );
        for type_ in [
            CONDITION_READY,
            CONDITION_RECONCILED,
            CONDITION_SCALER_READY,
            CONDITION_DEPLOYMENT_AVAILABLE,
        ] {
            assert_eq!(get(&status, type_).status, "True", "{type_}");
            assert_eq!(get(&status, type_).observed_generation, Some(3));
        }
        assert!(get(&status, CONDITION_SCALER_READY).message.contains("active: False"));
    }

    #[test]
    fn the_first_failing_condition_explains_not_ready() {
        let forbidden = Error::Timeout {
            what: "applying Deployment n/w".into(),
            after: std::time::Duration::from_secs(10),
        };
        let observed = Observed {
            applied: Err(&forbidden),
            deployment: None,
            scaler: vec![],
            lag: None,
            consumer: None,
        };
        let status = desired_status(&claim(None), &observed, Timestamp::UNIX_EPOCH);
        let ready = get(&status, CONDITION_READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NotReconciled")
        );
        assert!(ready.message.contains("applying Deployment n/w: no answer within 10s"));
        assert_eq!(get(&status, CONDITION_DEPLOYMENT_AVAILABLE).status, "Unknown");
        assert_eq!(get(&status, CONDITION_SCALER_READY).reason, "ScaledObjectPending");
        assert_eq!((status.replicas, status.lag), (None, None));

        let observed = Observed {
            deployment: Some(available("True")),
            scaler: keda("False", "False"),
            ..Default::default()
        };
        let status = desired_status(&claim(None), &observed, Timestamp::UNIX_EPOCH);
        assert_eq!(get(&status, CONDITION_READY).reason, "ScalerNotReady");
    }

    #[test]
    fn a_namespace_the_rules_refuse_is_named_on_reconciled_and_ready() {
        let refused = Error::NotAllowed(crate::tenancy::Denied {
            namespace: "ops".into(),
            connection: "orders".into(),
            what: "use it".into(),
            rule: "connections.orders.namespaces is [team-*]".into(),
        });
        let observed = Observed {
            applied: Err(&refused),
            ..Default::default()
        };
        let status = desired_status(&claim(None), &observed, Timestamp::UNIX_EPOCH);
        for type_ in [CONDITION_READY, CONDITION_RECONCILED] {
            let condition = get(&status, type_);
            assert_eq!(
                (condition.status.as_str(), condition.reason.as_str()),
                ("False", REASON_NAMESPACE_NOT_ALLOWED),
                "{type_}"
            );
            assert_eq!(
                condition.message,
                "namespace \"ops\" may not use it on NATS connection \"orders\": connections.orders.namespaces is [team-*]"
            );
        }
    }

    #[test]
    fn transition_times_move_only_on_a_change() {
        let observed = Observed {
            deployment: Some(available("False")),
            ..Default::default()
        };
        let then = Timestamp::UNIX_EPOCH;
        let later = Timestamp::from_second(1_000).unwrap();
        let first = desired_status(&claim(None), &observed, then);
        let same = desired_status(&claim(Some(first.clone())), &observed, later);
        assert_eq!(first, same, "nothing changed, so nothing to write");

        let observed = Observed {
            deployment: Some(available("True")),
            ..observed
        };
        let changed = desired_status(&claim(Some(first)), &observed, later);
        assert_eq!(
            get(&changed, CONDITION_DEPLOYMENT_AVAILABLE).last_transition_time,
            Time(later)
        );
        assert_eq!(get(&changed, CONDITION_RECONCILED).last_transition_time, Time(then));
    }

    #[test]
    fn consumer_health_is_a_condition_only_when_assessed() {
        let unassessed = desired_status(&claim(None), &Observed::default(), Timestamp::UNIX_EPOCH);
        assert!(
            unassessed
                .conditions
                .iter()
                .all(|c| c.type_ != CONDITION_CONSUMER_HEALTHY)
        );

        let saturated = Observed {
            consumer: Some(ConsumerHealth::unhealthy(
                HealthReason::Saturated,
                "ack-pending 4 reached max-ack-pending 4",
            )),
            ..Default::default()
        };
        let status = desired_status(&claim(None), &saturated, Timestamp::UNIX_EPOCH);
        let healthy = get(&status, CONDITION_CONSUMER_HEALTHY);
        assert_eq!(
            (
                healthy.status.as_str(),
                healthy.reason.as_str(),
                healthy.message.as_str()
            ),
            ("False", "Saturated", "ack-pending 4 reached max-ack-pending 4")
        );
        assert_eq!(
            get(&status, CONDITION_READY).reason,
            "DeploymentUnavailable",
            "health does not feed Ready"
        );

        let misconfigured = ConsumerHealth::misconfigured("consumer.ack_policy", "is none, not explicit");
        let status = desired_status(
            &claim(None),
            &Observed {
                consumer: Some(misconfigured),
                ..Default::default()
            },
            Timestamp::UNIX_EPOCH,
        );
        let condition = get(&status, CONDITION_CONSUMER_HEALTHY);
        assert_eq!(condition.reason, "Misconfigured");
        assert_eq!(condition.message, "consumer.ack_policy: is none, not explicit");
        for (health, status) in [
            (ConsumerHealth::Healthy, "True"),
            (ConsumerHealth::Unknown("timeout".into()), "Unknown"),
        ] {
            let observed = Observed {
                consumer: Some(health),
                ..Default::default()
            };
            let computed = desired_status(&claim(None), &observed, Timestamp::UNIX_EPOCH);
            assert_eq!(get(&computed, CONDITION_CONSUMER_HEALTHY).status, status);
        }
    }

    #[test]
    fn a_condition_change_is_found_once() {
        let at = |health: ConsumerHealth, before: Option<EventDrivenServiceStatus>| {
            let observed = Observed {
                consumer: Some(health),
                ..Default::default()
            };
            desired_status(&claim(before), &observed, Timestamp::UNIX_EPOCH)
        };
        let stalled = || ConsumerHealth::unhealthy(HealthReason::Stalled, "no acknowledgement for 5m");
        let first = at(stalled(), None);
        let changed = changed_condition(None, &first, CONDITION_CONSUMER_HEALTHY).unwrap();
        assert_eq!(changed.reason, "Stalled");
        let again = at(stalled(), Some(first.clone()));
        assert_eq!(
            changed_condition(Some(&first), &again, CONDITION_CONSUMER_HEALTHY),
            None
        );
        let poison = at(
            ConsumerHealth::unhealthy(HealthReason::PoisonMessages, "redelivered"),
            Some(again.clone()),
        );
        let changed = changed_condition(Some(&again), &poison, CONDITION_CONSUMER_HEALTHY).unwrap();
        assert_eq!(changed.reason, "PoisonMessages", "a new reason is a change");
        let unknown = at(ConsumerHealth::Unknown("timeout".into()), Some(poison.clone()));
        assert_eq!(
            changed_condition(Some(&poison), &unknown, CONDITION_CONSUMER_HEALTHY),
            None,
            "a blip to Unknown is no Event"
        );
        let healthy = at(ConsumerHealth::Healthy, Some(unknown.clone()));
        assert_eq!(
            changed_condition(Some(&unknown), &healthy, CONDITION_CONSUMER_HEALTHY)
                .unwrap()
                .status,
            "True"
        );
        let healthy_at_once = at(ConsumerHealth::Healthy, None);
        assert_eq!(
            changed_condition(None, &healthy_at_once, CONDITION_CONSUMER_HEALTHY),
            None,
            "a new claim found healthy is no Event"
        );
    }

    #[test]
    fn reads_keda_conditions_from_a_scaled_object() {
        let so = serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "ScaledObjectReady", "message": "ok"},
            {"type": "Active", "status": "False"}
        ]}});
        let conditions = keda_conditions(&so);
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1].type_, "Active");
        assert!(keda_conditions(&serde_json::json!({"status": {"conditions": "junk"}})).is_empty());
    }

    #[test]
    fn condition_statuses_other_than_true_or_false_are_unknown() {
        for (text, status) in [
            ("True", True),
            ("False", False),
            ("Unknown", Unknown),
            ("", Unknown),
            ("true", Unknown),
        ] {
            assert_eq!(ConditionStatus::parse(text), status, "{text:?}");
        }
        for status in [True, False, Unknown] {
            assert_eq!(ConditionStatus::parse(status.as_str()), status);
        }
    }
}
