//! `drainWithin` against a real nats-server: the counts `CONSUMER.INFO` gives
//! are the ones the estimator expects, and a measured target is streamed
//! over real gRPC.

use std::num::NonZeroU32;
use std::time::Duration;

use eds::drain::{Estimator, EstimatorConfig};
use eds::lag::{ConsumerKey, JetStreamLag};
use eds::nats::NatsConfig;
use eds::scaler::Tuning;
use futures::StreamExt;
use testkit::js::{js, publish, pull_consumer, stream_with};
use testkit::nats::NatsServer;
use testkit::scaler::{RunningScaler, scaled_object};

async fn take_and_ack(consumer: &async_nats::jetstream::consumer::PullConsumer, take: usize, ack: usize) {
    let mut batch = consumer.fetch().max_messages(take).messages().await.unwrap();
    let mut taken = Vec::new();
    while let Some(message) = batch.next().await {
        taken.push(message.unwrap());
    }
    assert_eq!(taken.len(), take);
    for message in taken.iter().take(ack) {
        message.double_ack().await.unwrap();
    }
    // The rest stay un-acknowledged (ack wait 30 s).
}

#[tokio::test(flavor = "multi_thread")]
async fn the_counts_read_are_the_ones_the_estimator_expects() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let stream = stream_with(&js, "JOBS", &["jobs.>", "other.>"]).await;
    let workers = pull_consumer(&stream, "workers", "jobs.>", Duration::from_secs(30)).await;
    // Other subjects' messages move the stream sequence, not the consumer's.
    publish(&js, "other.x", 20).await;
    publish(&js, "jobs.a", 10).await;
    let connections = eds::nats::Connections::connect(&NatsConfig::for_url(nats.url()), "test")
        .await
        .unwrap();
    let reader = JetStreamLag::new(connections);
    let key = ConsumerKey::new("default", None, "JOBS", "workers");
    let read = || async { reader.consumer_state(&key).await.unwrap() };

    let s0 = read().await;
    assert_eq!((s0.delivered_consumer_seq, s0.pending, s0.ack_pending), (0, 10, 0));
    // Four delivered, three acknowledged.
    take_and_ack(&workers, 4, 3).await;
    let s1 = read().await;
    assert_eq!(
        (s1.delivered_consumer_seq, s1.pending, s1.ack_pending),
        (4, 6, 1),
        "delivered is the consumer sequence: the 20 other messages are not in it"
    );
    // Five more arrive.
    publish(&js, "jobs.b", 5).await;
    publish(&js, "other.y", 7).await;
    let s2 = read().await;
    assert_eq!((s2.delivered_consumer_seq, s2.pending, s2.ack_pending), (4, 11, 1));

    // The estimator over these readings, ten seconds apart: 3 acks with
    // work waiting throughout and one replica at work, then 5 arrivals.
    let mut estimator = Estimator::new(EstimatorConfig::default(), NonZeroU32::MIN);
    estimator.observe(s0.sample(0.0));
    estimator.observe(s1.sample(10.0));
    let rates = estimator.rates();
    assert_eq!(rates.capacity, Some(0.3), "3 acks in 10 s: {rates:?}");
    assert_eq!(rates.arrivals, Some(0.0), "nothing new arrived: {rates:?}");
    let mut arrivals = Estimator::new(EstimatorConfig::default(), NonZeroU32::MIN);
    arrivals.observe(s1.sample(10.0));
    arrivals.observe(s2.sample(20.0));
    assert_eq!(arrivals.rates().arrivals, Some(0.5), "5 arrivals in 10 s");
}

/// A worker acking one message at a time from a deep backlog: the stream
/// opens with the fallback target and then sends a measured `μ·D`.
#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_worker_gets_a_measured_target_streamed() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let stream = stream_with(&js, "WORK", &["work.>"]).await;
    let workers = pull_consumer(&stream, "c", "", Duration::from_secs(30)).await;
    publish(&js, "work.x", 3000).await;
    let tuning = Tuning {
        cache_ttl: Duration::from_millis(100),
        drain_sample_every: Duration::from_millis(250),
        drain_min_interval: Duration::from_secs(1),
        ..Tuning::default()
    };
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), tuning, None).await;
    let mut client = scaler.client().await;
    let so = scaled_object(&[
        ("stream", "WORK"),
        ("consumer", "c"),
        ("lagThreshold", "7"),
        ("drainWithin", "10s"),
    ]);
    let mut specs = client.stream_metric_spec(so.clone()).await.unwrap().into_inner();
    let first = specs.message().await.unwrap().unwrap();
    assert_eq!(first.metric_specs[0].target_size_float, 7.0, "the fallback at once");

    // One replica, one message at a time, about 20 a second.
    let worker = tokio::spawn(async move {
        let mut messages = workers.stream().max_messages_per_batch(1).messages().await.unwrap();
        while let Some(Ok(message)) = messages.next().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
            message.double_ack().await.unwrap();
        }
    });
    let measured = tokio::time::timeout(Duration::from_secs(30), specs.message())
        .await
        .expect("a measured target within 30 s")
        .unwrap()
        .unwrap();
    let target = measured.metric_specs[0].target_size_float;
    // μ is at most 20/s (50 ms a message). It is counted low when the
    // client holds more than one message (prefetch; see docs/scaler.md), and
    // a loaded machine is slower: the lower bound only says "measured".
    assert!(target > 5.0 && target <= 220.0, "μ·D = {target}");
    let spec = client.get_metric_spec(so.clone()).await.unwrap().into_inner();
    assert_eq!(
        spec.metric_specs[0].target_size_float, target,
        "GetMetricSpec = last streamed"
    );
    println!(
        "measured target μ·D over 10 s: {target:.1} (μ ≈ {:.1}/s)",
        target / 10.0
    );
    worker.abort();
}

/// `eds lag --drain-within` shows λ, μ and the target from two readings.
#[tokio::test(flavor = "multi_thread")]
async fn lag_command_shows_arrivals_capacity_and_target() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let stream = stream_with(&js, "CLI", &["cli.>"]).await;
    let workers = pull_consumer(&stream, "c", "", Duration::from_secs(30)).await;
    publish(&js, "cli.x", 2000).await;
    // One replica acking one message at a time, about 20 a second.
    let worker = tokio::spawn(async move {
        let mut messages = workers.stream().max_messages_per_batch(1).messages().await.unwrap();
        while let Some(Ok(message)) = messages.next().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
            message.double_ack().await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = nats.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_eds"))
            .args([
                "lag",
                "--stream",
                "CLI",
                "--consumer",
                "c",
                "--json",
                "--nats-url",
                &url,
            ])
            .args(["--drain-within", "60s", "--window", "2s", "--lag-threshold", "3"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    worker.abort();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mu = json["replicaCapacityPerSecond"]
        .as_f64()
        .expect("μ measured: work was waiting");
    assert!(mu > 0.5 && mu <= 21.0, "μ = {mu}");
    assert_eq!(
        json["arrivalsPerSecond"], 0.0,
        "nothing was published during the window"
    );
    let target = json["target"].as_f64().unwrap();
    assert!(
        (target / (mu * 60.0) - 1.0).abs() < 0.06,
        "target {target} = μ·D in 10 % steps"
    );
    assert_eq!(
        json["metric"].as_f64(),
        json["lag"].as_f64(),
        "λ = 0: the metric is the lag"
    );
}
