//! Consumer health against a real nats-server: the readings and advisories
//! the controller's assessment is made from.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer};
use eds::controller::advisory::{self, AdvisoryCounts};
use eds::health::{Advisories, History, Sample, Settings};
use eds::lag::{ConsumerKey, ConsumerState, JetStreamLag};
use eds::nats::{Connections, NatsConfig};
use eds::render::status::HealthReason;
use testkit::eventually;
use testkit::js::{self, js, publish, pull_consumer, stream_with};
use testkit::nats::NatsServer;

const SETTINGS: Settings = Settings {
    stall_after: Duration::from_secs(1),
    poison_window: Duration::from_secs(1),
    concurrency: NonZeroU32::MIN,
    max_replicas: 10,
};

async fn reader(url: String) -> (Connections, JetStreamLag) {
    let connections = Connections::connect(&NatsConfig::for_url(url), "eds-test")
        .await
        .unwrap();
    (connections.clone(), JetStreamLag::new(connections))
}

/// Reads the consumer into `history` every 100 ms for `how_long`, with two
/// ready replicas, calling `between` after each reading; returns the last state.
async fn watch(
    lag: &JetStreamLag,
    key: &ConsumerKey,
    history: &mut History,
    how_long: Duration,
    mut between: impl AsyncFnMut(),
) -> ConsumerState {
    let until = Instant::now() + how_long;
    loop {
        let state = lag.consumer_state(key).await.unwrap();
        let sample = Sample {
            at: Instant::now(),
            state: state.clone(),
            ready_replicas: 2,
            advisories: Advisories::default(),
        };
        history.record(sample, &SETTINGS);
        if Instant::now() >= until {
            return state;
        }
        between().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_that_acknowledges_nothing_is_stalled() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let stream = stream_with(&js, "WORK", &["work.>"]).await;
    let workers = pull_consumer(&stream, "workers", "", Duration::from_secs(30)).await;
    publish(&js, "work.x", 20).await;
    let held = js::take_exactly(&workers, 3).await;
    assert_eq!(held.len(), 3);

    let (_connections, lag) = reader(nats.url()).await;
    let key = ConsumerKey::new("default", None, "WORK", "workers");
    let mut history = History::default();
    let state = watch(&lag, &key, &mut history, Duration::from_millis(1500), async || {}).await;
    assert_eq!(
        (state.pending, state.ack_pending, state.delivered_consumer_seq),
        (17, 3, 3)
    );
    let assessment = history.assess(&SETTINGS, Instant::now());
    assert!(assessment.has(HealthReason::Stalled), "{assessment:?}");

    // One acknowledgement is progress.
    held[0].double_ack().await.unwrap();
    watch(&lag, &key, &mut history, Duration::ZERO, async || {}).await;
    let assessment = history.assess(&SETTINGS, Instant::now());
    assert!(!assessment.has(HealthReason::Stalled), "{assessment:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_slow_message_among_many_flowing_is_not_stalled() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let stream = stream_with(&js, "WORK", &["work.>"]).await;
    let workers = pull_consumer(&stream, "workers", "", Duration::from_secs(30)).await;
    publish(&js, "work.x", 200).await;
    // The first message is held for the whole test: the ack floor stays at 0.
    let slow = js::take(&workers, 1).await;
    assert_eq!(slow.len(), 1);

    let (_connections, lag) = reader(nats.url()).await;
    let key = ConsumerKey::new("default", None, "WORK", "workers");
    let mut history = History::default();
    let flow = async || {
        for message in js::take(&workers, 5).await {
            message.double_ack().await.unwrap();
        }
    };
    let state = watch(&lag, &key, &mut history, Duration::from_millis(2500), flow).await;
    assert!(state.delivered_consumer_seq > 20, "messages flowed: {state:?}");
    assert_eq!(state.ack_pending, 1, "only the slow message is held");
    let mut info = workers.clone();
    let floor = info.info().await.unwrap().ack_floor.consumer_sequence;
    assert_eq!(floor, 0, "the ack floor is held by the slow message");
    let assessment = history.assess(&SETTINGS, Instant::now());
    assert!(!assessment.has(HealthReason::Stalled), "{assessment:?}");
    drop(slow);
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliveries_and_advisories_are_counted_with_the_documented_permissions() {
    // The listener runs as a user with exactly deploy/nats/eds-permissions.conf.
    let nats = NatsServer::start_with_eds_permissions();
    let admin = nats.admin().await;
    let js = jetstream::new(admin);
    let stream = stream_with(&js, "WORK", &["work.>"]).await;
    let workers = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("workers".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_deliver: 2,
            ..Default::default()
        })
        .await
        .unwrap();

    let mut config = NatsConfig::for_url(nats.url());
    config.default.user = Some("eds".into());
    config.default.password = Some("eds-pass".into());
    let connections = Connections::connect(&config, "eds-test").await.unwrap();
    let counts = Arc::new(AdvisoryCounts::default());
    let key = ConsumerKey::new("default", None, "WORK", "workers");
    counts.count_for(&key);
    let stranger = ConsumerKey::new("default", None, "WORK", "stranger");
    let listener = tokio::spawn(advisory::listen(connections.clone(), counts.clone()));
    // Let the subscriptions reach the server before anything fires.
    tokio::time::sleep(Duration::from_millis(300)).await;

    publish(&js, "work.x", 2).await;
    // Both delivered and refused once, then delivered again: two redelivered
    // messages in hand.
    for message in js::take(&workers, 2).await {
        message.ack_with(AckKind::Nak(None)).await.unwrap();
    }
    let again = js::take_exactly(&workers, 2).await;
    assert_eq!(again.len(), 2);
    let lag = JetStreamLag::new(connections.clone());
    eventually(
        "num_redelivered 2 and max_deliver 2",
        Duration::from_secs(5),
        async || {
            let state = lag.consumer_state(&key).await.ok()?;
            (state.redelivered == 2 && state.max_deliver == Some(2)).then_some(())
        },
    )
    .await;

    // At max_deliver, one more NAK makes the server give up on it; the other
    // is terminated by its worker.
    again[0].ack_with(AckKind::Nak(None)).await.unwrap();
    again[1].ack_with(AckKind::Term).await.unwrap();
    let _ = js::take(&workers, 2).await;
    let heard = eventually("both advisories heard", Duration::from_secs(5), async || {
        let counted = counts.count_for(&key);
        (counted.max_deliveries >= 1 && counted.terminated >= 1).then_some(counted)
    })
    .await;
    assert_eq!(
        heard,
        Advisories {
            max_deliveries: 1,
            terminated: 1
        }
    );
    assert_eq!(
        counts.count_for(&stranger),
        Advisories::default(),
        "only registered consumers"
    );

    // Fed to the assessment: poison within the window.
    let mut history = History::default();
    let state = lag.consumer_state(&key).await.unwrap();
    let start = Instant::now();
    for (at, advisories) in [
        (start, Advisories::default()),
        (start + Duration::from_millis(10), heard),
    ] {
        let sample = Sample {
            at,
            state: state.clone(),
            ready_replicas: 1,
            advisories,
        };
        history.record(sample, &SETTINGS);
    }
    let assessment = history.assess(&SETTINGS, start + Duration::from_millis(20));
    assert!(assessment.has(HealthReason::PoisonMessages), "{assessment:?}");

    listener.abort();
    let log = nats.peer.log();
    assert!(
        !log.contains("Violation"),
        "the listener needed more than deploy/nats/eds-permissions.conf grants:\n{log}"
    );
}
