//! The durable consumer a claim owns (`spec.nats.consumerConfig`): what it
//! should be, whether the live one is ours, and what differs.
//!
//! Pure: the claim goes in, JetStream consumer configs come out, and a live
//! config is compared with the desired one. [`jetstream`] does the NATS I/O.
//!
//! Ownership is the consumer's own JetStream `metadata`: every consumer the
//! controller creates is stamped with its claim's namespace, name and uid,
//! and a consumer without this claim's uid is never updated or deleted. The
//! uid, not the name, decides: a claim deleted and created again under the
//! same name is another claim, and a consumer the first one retained is not
//! silently taken over.
pub mod jetstream;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, pull};
use kube::ResourceExt;

use crate::api::{ConsumerConfig, DeletionPolicy, DeliverPolicy, EventDrivenService};

pub use jetstream::{ConsumerError, delete_owned, ensure, reconcile, release};

/// Metadata keys of the stamp.
pub const CLAIM_NAMESPACE_KEY: &str = "eds.bizmatters.io/claim-namespace";
pub const CLAIM_NAME_KEY: &str = "eds.bizmatters.io/claim-name";
pub const CLAIM_UID_KEY: &str = "eds.bizmatters.io/claim-uid";

/// The claim a consumer belongs to, as its stamp names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Owner {
    /// The claim as an owner; `None` for a claim the API server has not
    /// stored (no namespace or uid), which may own nothing.
    pub fn of(claim: &EventDrivenService) -> Option<Owner> {
        Some(Owner {
            namespace: claim.namespace()?,
            name: claim.name_any(),
            uid: claim.uid()?,
        })
    }

    /// The metadata every consumer we create carries.
    pub fn stamp(&self) -> HashMap<String, String> {
        HashMap::from([
            (CLAIM_NAMESPACE_KEY.to_string(), self.namespace.clone()),
            (CLAIM_NAME_KEY.to_string(), self.name.clone()),
            (CLAIM_UID_KEY.to_string(), self.uid.clone()),
        ])
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} (uid {})", self.namespace, self.name, self.uid)
    }
}

/// Whose a live consumer is, by its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Stamped with this claim's uid.
    Ours,
    /// No stamp: made by hand, by a setup Job, by another tool.
    Unstamped,
    /// Stamped by another claim (or an earlier claim of the same name).
    Claim(Owner),
}

/// Reads the stamp. A stamp is ours only when its uid is this claim's.
pub fn ownership(metadata: &HashMap<String, String>, claim: &Owner) -> Ownership {
    let Some(uid) = metadata.get(CLAIM_UID_KEY) else {
        return Ownership::Unstamped;
    };
    if *uid == claim.uid {
        return Ownership::Ours;
    }
    let get = |key| metadata.get(key).cloned().unwrap_or_default();
    Ownership::Claim(Owner {
        namespace: get(CLAIM_NAMESPACE_KEY),
        name: get(CLAIM_NAME_KEY),
        uid: uid.clone(),
    })
}

/// The consumer the claim asks for, or `None` when the claim leaves its
/// consumer to someone else (no `consumerConfig`).
///
/// Safe for a scaled pool whatever the claim leaves out: explicit acks (each
/// replica acknowledges its own messages), a finite `max_deliver`, and a
/// `max_ack_pending` of `maxReplicas × concurrency`, which lets every replica
/// the claim allows hold as many messages as it works on at once, and no
/// more, so one stuck replica cannot take the whole queue.
pub fn desired_consumer(claim: &EventDrivenService, owner: &Owner) -> Option<pull::Config> {
    let config: &ConsumerConfig = claim.spec.nats.consumer_config.as_ref()?;
    let scaling = &claim.spec.scaling;
    let max_ack_pending = config
        .max_ack_pending
        .unwrap_or_else(|| i64::from(scaling.max_replicas.max(1)) * i64::from(scaling.concurrency.unwrap_or(1).max(1)));
    let backoff: Vec<Duration> = config
        .backoff
        .iter()
        .filter_map(|step| crate::api::parse_duration(step))
        .collect();
    Some(pull::Config {
        durable_name: Some(claim.spec.nats.consumer.clone()),
        description: Some(format!(
            "eds worker pool of EventDrivenService {}/{}",
            owner.namespace, owner.name
        )),
        ack_policy: AckPolicy::Explicit,
        // The schema admits only durations `parse_duration` reads; a claim
        // that bypassed it gets NATS's defaults rather than a zero.
        // With a backoff list JetStream takes its first step as the ack
        // wait; asking for anything else would be drift for ever.
        ack_wait: backoff
            .first()
            .copied()
            .or_else(|| crate::api::parse_duration(&config.ack_wait))
            .unwrap_or(Duration::from_secs(30)),
        max_deliver: config.max_deliver,
        backoff,
        max_ack_pending,
        deliver_policy: deliver_policy(config.deliver_policy),
        // Always the list form: the create request's subject then never
        // carries a filter, so the controller's permission stays one subject
        // per consumer.
        filter_subjects: config.filter_subjects.clone(),
        metadata: owner.stamp(),
        ..pull::Config::default()
    })
}

fn deliver_policy(policy: DeliverPolicy) -> consumer::DeliverPolicy {
    match policy {
        DeliverPolicy::All => consumer::DeliverPolicy::All,
        DeliverPolicy::New => consumer::DeliverPolicy::New,
        DeliverPolicy::Last => consumer::DeliverPolicy::Last,
        DeliverPolicy::LastPerSubject => consumer::DeliverPolicy::LastPerSubject,
    }
}

/// Whether deleting the claim deletes its consumer: only a consumer the
/// claim manages (`consumerConfig`) and only under `deletionPolicy: Delete`.
/// While this holds the claim carries the controller's finalizer.
pub fn deletes_consumer(claim: &EventDrivenService) -> bool {
    claim.spec.nats.consumer_config.is_some() && claim.spec.nats.deletion_policy == DeletionPolicy::Delete
}

/// The fields of a live consumer that differ from the desired one, split by
/// whether JetStream lets an existing consumer change them. Each is named as
/// the claim names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    pub updatable: Vec<&'static str>,
    pub immutable: Vec<&'static str>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.updatable.is_empty() && self.immutable.is_empty()
    }
}

/// Compares what the claim asks for with what the server has.
pub fn drift(desired: &pull::Config, live: &consumer::Config) -> Drift {
    let mut drift = Drift::default();
    let mut updatable = |differs: bool, field| {
        if differs {
            drift.updatable.push(field)
        }
    };
    // The server stores a single filter as `filter_subject`.
    let live_filters: Vec<String> = if !live.filter_subjects.is_empty() {
        live.filter_subjects.clone()
    } else if !live.filter_subject.is_empty() {
        vec![live.filter_subject.clone()]
    } else {
        vec![]
    };
    updatable(
        live_filters != desired.filter_subjects,
        "spec.nats.consumerConfig.filterSubjects",
    );
    updatable(live.ack_wait != desired.ack_wait, "spec.nats.consumerConfig.ackWait");
    updatable(
        live.max_deliver != desired.max_deliver,
        "spec.nats.consumerConfig.maxDeliver",
    );
    updatable(live.backoff != desired.backoff, "spec.nats.consumerConfig.backoff");
    updatable(
        live.max_ack_pending != desired.max_ack_pending,
        "spec.nats.consumerConfig.maxAckPending",
    );
    if live.deliver_policy != desired.deliver_policy {
        drift.immutable.push("spec.nats.consumerConfig.deliverPolicy");
    }
    if live.ack_policy != desired.ack_policy {
        drift.immutable.push("ackPolicy (eds needs explicit acks)");
    }
    if live.deliver_subject.is_some() {
        drift.immutable.push("deliverSubject (eds needs a pull consumer)");
    }
    drift
}

/// What reconciling the consumer found and did, for the claim's
/// `ConsumerHealthy` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The consumer did not exist and was created.
    Created,
    /// These fields had drifted and were put back.
    Updated(Vec<&'static str>),
    /// Ours and as the claim asks.
    InShape,
    /// Ours, but these fields differ and JetStream cannot change them:
    /// nothing was changed.
    Misconfigured(Vec<&'static str>),
    /// Not ours: nothing was changed.
    NotOwned(Ownership),
}

impl Outcome {
    /// Whether the consumer now is what the claim asks for.
    pub fn in_shape(&self) -> bool {
        matches!(self, Outcome::Created | Outcome::Updated(_) | Outcome::InShape)
    }

    /// A sentence an operator can act on.
    pub fn message(&self, stream: &str, consumer: &str) -> String {
        let which = format!("consumer {consumer:?} on stream {stream:?}");
        match self {
            Outcome::Created => format!("created {which}"),
            Outcome::Updated(fields) => format!("updated {which}: {}", fields.join(", ")),
            Outcome::InShape => format!("{which} has the claim's settings"),
            Outcome::Misconfigured(fields) => format!(
                "{which} differs in {}, which JetStream cannot change on an existing consumer; \
                 nothing was changed: put the field back, or delete the consumer to have it created again",
                fields.join(", ")
            ),
            Outcome::NotOwned(Ownership::Unstamped) => format!(
                "{which} exists and was not created by this claim (no eds stamp in its metadata); \
                 nothing was changed: delete it, or remove spec.nats.consumerConfig to use it as it is"
            ),
            Outcome::NotOwned(Ownership::Claim(owner)) => format!(
                "{which} belongs to EventDrivenService {owner}; nothing was changed: \
                 give this claim another consumer name"
            ),
            Outcome::NotOwned(Ownership::Ours) => format!("{which} is this claim's"),
        }
    }
}

/// What deleting the claim's consumer did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// There was no consumer to delete.
    Absent,
    /// Not ours: kept.
    NotOwned(Ownership),
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::consumer::IntoConsumerConfig;

    fn owner() -> Owner {
        Owner::of(&EventDrivenService::test()).unwrap()
    }

    fn claim(config: ConsumerConfig) -> EventDrivenService {
        EventDrivenService::test().with_consumer_config(config)
    }

    #[test]
    fn without_consumer_config_nothing_is_desired() {
        let claim = EventDrivenService::test().with_deletion_policy(DeletionPolicy::Delete);
        assert_eq!(desired_consumer(&claim, &owner()), None);
    }

    #[test]
    fn only_a_managed_consumer_under_delete_is_deleted() {
        let delete = |config: Option<ConsumerConfig>, policy| {
            deletes_consumer(&EventDrivenService::test().with_spec(|s| {
                s.nats.consumer_config = config;
                s.nats.deletion_policy = policy;
            }))
        };
        assert!(delete(Some(ConsumerConfig::default()), DeletionPolicy::Delete));
        assert!(!delete(Some(ConsumerConfig::default()), DeletionPolicy::Retain));
        assert!(!delete(None, DeletionPolicy::Delete));
    }

    #[test]
    fn the_defaults_suit_a_scaled_pool() {
        let claim = claim(ConsumerConfig::default())
            .with_replicas(0, 8)
            .with_spec(|s| s.scaling.concurrency = Some(4));
        let desired = desired_consumer(&claim, &owner()).unwrap();
        assert_eq!(desired.durable_name.as_deref(), Some("orders-workers"));
        assert_eq!(desired.ack_policy, AckPolicy::Explicit);
        assert_eq!(desired.ack_wait, Duration::from_secs(30));
        assert_eq!(desired.max_deliver, 5);
        assert_eq!(desired.max_ack_pending, 32, "maxReplicas × concurrency");
        assert_eq!(desired.deliver_policy, consumer::DeliverPolicy::All);
        assert_eq!(ownership(&desired.metadata, &owner()), Ownership::Ours);
    }

    #[test]
    fn the_claims_values_win() {
        let config = ConsumerConfig {
            filter_subjects: vec!["orders.new".into()],
            ack_wait: "2m".into(),
            max_deliver: 7,
            backoff: vec!["10s".into(), "1m".into()],
            max_ack_pending: Some(3),
            deliver_policy: DeliverPolicy::New,
        };
        let desired = desired_consumer(&claim(config), &owner()).unwrap();
        assert_eq!(desired.filter_subjects, ["orders.new"]);
        assert_eq!(desired.filter_subject, "", "the list form, never the single one");
        assert_eq!(desired.ack_wait, Duration::from_secs(10), "the first backoff step");
        assert_eq!(desired.max_deliver, 7);
        assert_eq!(desired.backoff, [Duration::from_secs(10), Duration::from_secs(60)]);
        assert_eq!(desired.max_ack_pending, 3);
        assert_eq!(desired.deliver_policy, consumer::DeliverPolicy::New);
    }

    #[test]
    fn the_stamp_decides_by_uid() {
        let me = owner();
        assert_eq!(ownership(&HashMap::new(), &me), Ownership::Unstamped);
        assert_eq!(ownership(&me.stamp(), &me), Ownership::Ours);
        let earlier = Owner {
            uid: "another-uid".into(),
            ..me.clone()
        };
        assert_eq!(
            ownership(&earlier.stamp(), &me),
            Ownership::Claim(earlier.clone()),
            "the same name with another uid is another claim"
        );
        let message = Outcome::NotOwned(Ownership::Claim(earlier)).message("ORDERS", "orders-workers");
        assert!(message.contains("team-a/orders-worker (uid another-uid)"), "{message}");
    }

    #[test]
    fn drift_splits_updatable_from_immutable_fields() {
        let desired = desired_consumer(&claim(ConsumerConfig::default()), &owner()).unwrap();
        let same = desired.clone().into_consumer_config();
        assert!(drift(&desired, &same).is_empty());

        let mut live = same.clone();
        live.ack_wait = Duration::from_secs(5);
        live.max_deliver = -1;
        live.max_ack_pending = 1000;
        live.filter_subjects = vec!["x".into()];
        live.backoff = vec![Duration::from_secs(1)];
        let found = drift(&desired, &live);
        assert_eq!(found.immutable, Vec::<&str>::new());
        assert_eq!(
            found.updatable,
            [
                "spec.nats.consumerConfig.filterSubjects",
                "spec.nats.consumerConfig.ackWait",
                "spec.nats.consumerConfig.maxDeliver",
                "spec.nats.consumerConfig.backoff",
                "spec.nats.consumerConfig.maxAckPending",
            ]
        );

        let mut live = same.clone();
        live.deliver_policy = consumer::DeliverPolicy::New;
        live.ack_policy = AckPolicy::All;
        live.deliver_subject = Some("push.here".into());
        let found = drift(&desired, &live);
        assert!(found.updatable.is_empty());
        assert_eq!(found.immutable.len(), 3, "{found:?}");
        assert_eq!(found.immutable[0], "spec.nats.consumerConfig.deliverPolicy");
    }

    #[test]
    fn a_single_filter_stored_in_the_single_field_is_no_drift() {
        let config = ConsumerConfig {
            filter_subjects: vec!["orders.new".into()],
            ..ConsumerConfig::default()
        };
        let desired = desired_consumer(&claim(config), &owner()).unwrap();
        let mut live = desired.clone().into_consumer_config();
        live.filter_subjects = vec![];
        live.filter_subject = "orders.new".into();
        assert!(drift(&desired, &live).is_empty());
    }

    #[test]
    fn outcomes_name_the_field_and_the_owner() {
        let outcome = Outcome::Misconfigured(vec!["spec.nats.consumerConfig.deliverPolicy"]);
        assert!(
            outcome
                .message("S", "c")
                .contains("spec.nats.consumerConfig.deliverPolicy")
        );
        assert!(!outcome.in_shape());
        let message = Outcome::NotOwned(Ownership::Unstamped).message("S", "c");
        assert!(message.contains("not created by this claim"), "{message}");
        assert!(Outcome::Created.in_shape() && Outcome::InShape.in_shape());
    }
}
