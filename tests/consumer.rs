//! The claim's own consumer (`spec.nats.consumerConfig`) against a real
//! nats-server (fast tier): created stamped, drift put back, what JetStream
//! cannot change and what is not the claim's left alone, and deleted only
//! under `deletionPolicy: Delete`.
use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use eds::api::{ConsumerConfig, DeletionPolicy, DeliverPolicy, EventDrivenService, check_claim};
use eds::consumer::{self as owned, CLAIM_UID_KEY, Deletion, Outcome, Owner, Ownership};
use eds::nats::{Connection, Connections, NatsConfig};
use serde_json::json;
use testkit::js::stream_with;
use testkit::nats::NatsServer;

struct Rig {
    nats: NatsServer,
    js: jetstream::Context,
    connections: Connections,
}

impl Rig {
    async fn start() -> Rig {
        let nats = NatsServer::start();
        let js = testkit::js::js(&nats.url()).await;
        stream_with(&js, "ORDERS", &["orders.>"]).await;
        let connections = Connections::connect(&NatsConfig::for_url(nats.url()), "eds-controller-test")
            .await
            .unwrap();
        Rig { nats, js, connections }
    }

    fn conn(&self) -> &Connection {
        self.connections.get(None).unwrap()
    }

    async fn live(&self, name: &str) -> Option<consumer::Config> {
        let stream = self.js.get_stream("ORDERS").await.unwrap();
        match stream.consumer_info(name).await {
            Ok(info) => Some(info.config),
            Err(e) if e.to_string().contains("not found") => None,
            Err(e) => panic!("{e}\nnats-server log:\n{}", self.nats.peer.log()),
        }
    }

    /// Made by hand (no stamp), or with someone's metadata.
    async fn consumer_made_elsewhere(&self, name: &str, metadata: HashMap<String, String>) {
        let stream = self.js.get_stream("ORDERS").await.unwrap();
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(7),
                metadata,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// A claim as the API server hands it to the controller: defaulted, with a uid.
fn stored_claim(namespace: &str, uid: &str) -> EventDrivenService {
    check_claim(&json!({
        "apiVersion": "platform.bizmatters.io/v1alpha1",
        "kind": "EventDrivenService",
        "metadata": {"name": "orders-worker", "namespace": namespace, "uid": uid},
        "spec": {"image": "busybox", "nats": {"stream": "ORDERS", "consumer": "orders-workers"}},
    }))
    .unwrap()
}

fn claim(config: ConsumerConfig) -> EventDrivenService {
    let mut claim = stored_claim("team-a", "6f1c2c52-5a8e-4b8e-9a43-1d2f3e4a5b6c");
    claim.spec.nats.consumer_config = Some(config);
    claim
}

fn another_claim(config: ConsumerConfig) -> EventDrivenService {
    let mut claim = stored_claim("team-b", "0b0b0b0b-0000-4000-8000-000000000000");
    claim.spec.nats.consumer_config = Some(config);
    claim
}

fn with_policy(mut claim: EventDrivenService, policy: DeletionPolicy) -> EventDrivenService {
    claim.spec.nats.deletion_policy = policy;
    claim
}

#[tokio::test(flavor = "multi_thread")]
async fn creates_the_consumer_stamped_with_its_claim() {
    let rig = Rig::start().await;
    let mut claim = claim(ConsumerConfig {
        filter_subjects: vec!["orders.new".into()],
        ack_wait: "45s".into(),
        ..ConsumerConfig::default()
    });
    claim.spec.scaling.max_replicas = 6;

    let outcome = owned::reconcile(rig.conn(), &claim).await.unwrap();
    assert_eq!(outcome, Some(Outcome::Created));
    let live = rig.live("orders-workers").await.expect("the consumer exists");
    assert_eq!(live.ack_policy, consumer::AckPolicy::Explicit);
    assert_eq!(live.ack_wait, Duration::from_secs(45));
    assert_eq!(live.max_deliver, 5);
    assert_eq!(live.max_ack_pending, 6, "maxReplicas × concurrency 1");
    assert!(live.deliver_subject.is_none(), "a pull consumer");
    assert_eq!(
        live.metadata.get(CLAIM_UID_KEY).map(String::as_str),
        claim.metadata.uid.as_deref()
    );
    assert_eq!(
        owned::ownership(&live.metadata, &Owner::of(&claim).unwrap()),
        Ownership::Ours
    );

    // Whatever the server adds to the stored config, a second pass finds it in shape.
    let again = owned::reconcile(rig.conn(), &claim).await.unwrap();
    assert_eq!(again, Some(Outcome::InShape));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_consumer_config_nothing_is_created() {
    let rig = Rig::start().await;
    let claim = with_policy(stored_claim("team-a", "6f1c2c52"), DeletionPolicy::Delete);
    assert_eq!(owned::reconcile(rig.conn(), &claim).await.unwrap(), None);
    assert_eq!(rig.live("orders-workers").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn drifted_fields_are_put_back() {
    let rig = Rig::start().await;
    let claim = claim(ConsumerConfig {
        filter_subjects: vec!["orders.new".into(), "orders.paid".into()],
        max_ack_pending: Some(20),
        ..ConsumerConfig::default()
    });
    owned::reconcile(rig.conn(), &claim).await.unwrap();

    // Someone edits the consumer, keeping its stamp.
    let mut edited = rig.live("orders-workers").await.unwrap();
    edited.ack_wait = Duration::from_secs(3);
    edited.max_ack_pending = 1000;
    edited.max_deliver = -1;
    edited.filter_subjects = vec!["orders.new".into()];
    rig.js.update_consumer_on_stream(edited, "ORDERS").await.unwrap();

    let outcome = owned::reconcile(rig.conn(), &claim).await.unwrap().unwrap();
    let Outcome::Updated(fields) = outcome else {
        panic!("expected an update, got {outcome:?}")
    };
    assert_eq!(
        fields,
        [
            "spec.nats.consumerConfig.filterSubjects",
            "spec.nats.consumerConfig.ackWait",
            "spec.nats.consumerConfig.maxDeliver",
            "spec.nats.consumerConfig.maxAckPending",
        ]
    );
    let live = rig.live("orders-workers").await.unwrap();
    assert_eq!(live.ack_wait, Duration::from_secs(30));
    assert_eq!(live.max_ack_pending, 20);
    assert_eq!(live.max_deliver, 5);
    assert_eq!(live.filter_subjects, ["orders.new", "orders.paid"]);
    assert_eq!(
        owned::reconcile(rig.conn(), &claim).await.unwrap(),
        Some(Outcome::InShape)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_immutable_change_is_reported_and_nothing_changes() {
    let rig = Rig::start().await;
    let first = claim(ConsumerConfig::default());
    owned::reconcile(rig.conn(), &first).await.unwrap();
    let before = rig.live("orders-workers").await.unwrap();

    let changed = claim(ConsumerConfig {
        deliver_policy: DeliverPolicy::New,
        ack_wait: "1m".into(),
        ..ConsumerConfig::default()
    });
    let outcome = owned::reconcile(rig.conn(), &changed).await.unwrap().unwrap();
    assert_eq!(
        outcome,
        Outcome::Misconfigured(vec!["spec.nats.consumerConfig.deliverPolicy"])
    );
    let after = rig.live("orders-workers").await.unwrap();
    assert_eq!(after, before, "not even the updatable ackWait is changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unstamped_consumer_is_never_touched() {
    let rig = Rig::start().await;
    rig.consumer_made_elsewhere("orders-workers", HashMap::new()).await;
    let before = rig.live("orders-workers").await.unwrap();
    let claim = with_policy(claim(ConsumerConfig::default()), DeletionPolicy::Delete);

    let outcome = owned::reconcile(rig.conn(), &claim).await.unwrap().unwrap();
    assert_eq!(outcome, Outcome::NotOwned(Ownership::Unstamped));
    assert_eq!(
        owned::release(rig.conn(), &claim).await.unwrap(),
        Some(Deletion::NotOwned(Ownership::Unstamped))
    );
    assert_eq!(
        rig.live("orders-workers").await,
        Some(before),
        "neither updated nor deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn another_claims_consumer_is_never_touched() {
    let rig = Rig::start().await;
    let owner = another_claim(ConsumerConfig::default());
    assert_eq!(
        owned::reconcile(rig.conn(), &owner).await.unwrap(),
        Some(Outcome::Created)
    );
    let before = rig.live("orders-workers").await.unwrap();

    // Same stream and consumer name, another claim, other settings.
    let intruder = with_policy(
        claim(ConsumerConfig {
            ack_wait: "5m".into(),
            ..ConsumerConfig::default()
        }),
        DeletionPolicy::Delete,
    );
    let outcome = owned::reconcile(rig.conn(), &intruder).await.unwrap().unwrap();
    let Outcome::NotOwned(Ownership::Claim(found)) = &outcome else {
        panic!("expected another claim's consumer, got {outcome:?}")
    };
    assert_eq!(found, &Owner::of(&owner).unwrap());
    assert!(
        outcome
            .message("ORDERS", "orders-workers")
            .contains("team-b/orders-worker"),
        "{}",
        outcome.message("ORDERS", "orders-workers")
    );
    assert!(matches!(
        owned::release(rig.conn(), &intruder).await.unwrap(),
        Some(Deletion::NotOwned(Ownership::Claim(_)))
    ));
    assert_eq!(rig.live("orders-workers").await, Some(before));
}

#[tokio::test(flavor = "multi_thread")]
async fn deletion_policy_delete_deletes_and_retain_keeps() {
    let rig = Rig::start().await;
    let retained = claim(ConsumerConfig::default());
    owned::reconcile(rig.conn(), &retained).await.unwrap();
    assert_eq!(owned::release(rig.conn(), &retained).await.unwrap(), None);
    assert!(rig.live("orders-workers").await.is_some(), "Retain keeps the consumer");

    let deleted = with_policy(retained, DeletionPolicy::Delete);
    assert_eq!(
        owned::release(rig.conn(), &deleted).await.unwrap(),
        Some(Deletion::Deleted)
    );
    assert_eq!(rig.live("orders-workers").await, None);
    // A second pass (a retried finalizer) finds nothing left to do.
    assert_eq!(
        owned::release(rig.conn(), &deleted).await.unwrap(),
        Some(Deletion::Absent)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_stream_is_an_error_naming_it() {
    let rig = Rig::start().await;
    let mut claim = claim(ConsumerConfig::default());
    claim.spec.nats.stream = "NOPE".into();
    let error = owned::reconcile(rig.conn(), &claim).await.unwrap_err().to_string();
    assert!(error.contains("\"NOPE\"") && error.contains("not found"), "{error}");
}
