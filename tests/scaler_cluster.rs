//! A 3-node JetStream cluster on loopback: the consumer leader moves and the
//! lag the scaler reports stays right, with no leader discovery of ours.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use eds::nats::NatsConfig;
use eds::scaler::Tuning;
use testkit::eventually;
use testkit::nats::NatsCluster;
use testkit::scaler::{RunningScaler, lag_of, scaled_object};

/// How long a cluster may take to elect leaders, or to settle after a change.
const SETTLE: Duration = Duration::from_secs(30);

async fn consumer_leader(js: &jetstream::Context) -> Result<String, async_nats::Error> {
    let stream = js.get_stream("REPL").await?;
    let info = stream.consumer_info("workers").await?;
    info.cluster
        .and_then(|c| c.leader)
        .ok_or_else(|| "no consumer leader yet".into())
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_stays_right_while_the_consumer_leader_moves() {
    let mut cluster = NatsCluster::start(3);
    let client = async_nats::ConnectOptions::new()
        .connect(
            cluster
                .urls()
                .split(',')
                .map(|u| u.parse::<async_nats::ServerAddr>().unwrap())
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    eventually("create the R3 stream", SETTLE, || {
        js.create_stream(stream::Config {
            name: "REPL".into(),
            subjects: vec!["repl.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
    })
    .await;
    let s = js.get_stream("REPL").await.unwrap();
    eventually("create the durable", SETTLE, || {
        s.create_consumer(consumer::pull::Config {
            durable_name: Some("workers".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            num_replicas: 3,
            ..Default::default()
        })
    })
    .await;
    for i in 0..25 {
        js.publish("repl.job", format!("{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let tuning = Tuning {
        cache_ttl: Duration::from_millis(100),
        ..Tuning::default()
    };
    let scaler = RunningScaler::start_with(NatsConfig::for_url(cluster.urls()), tuning, None).await;
    let mut grpc = scaler.client().await;
    let so = scaled_object(&[("stream", "REPL"), ("consumer", "workers")]);
    assert_eq!(lag_of(&mut grpc, &so).await.unwrap(), 25);

    // Ask the leader to step down: another server takes the consumer.
    let before = eventually("the consumer leader", SETTLE, || consumer_leader(&js)).await;
    let reply = client
        .request("$JS.API.CONSUMER.LEADER.STEPDOWN.REPL.workers", "".into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&reply.payload).contains("\"success\":true"));
    let after = eventually("a new leader", SETTLE, || async {
        match consumer_leader(&js).await {
            Ok(leader) if leader != before => Ok(leader),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    println!("consumer leader moved {before} -> {after}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(lag_of(&mut grpc, &so).await.unwrap(), 25);

    // Kill the new leader's server outright. The scaler may have been
    // connected to it; either way the lag comes back right.
    let victim = after.trim_start_matches('n').parse::<usize>().unwrap();
    cluster.servers[victim].stop();
    let started = Instant::now();
    let lag = eventually("lag after the leader died", SETTLE, || {
        let mut grpc = grpc.clone();
        let so = so.clone();
        async move { lag_of(&mut grpc, &so).await }
    })
    .await;
    println!(
        "lag readable again {:?} after the leader's server died",
        started.elapsed()
    );
    assert_eq!(lag, 25);
    eventually("publish to the degraded cluster", SETTLE, || async {
        js.publish("repl.job", "more".into()).await?.await.map_err(|e| e.into()) as Result<_, async_nats::Error>
    })
    .await;
    eventually("lag 26 after one more message", SETTLE, async || {
        match lag_of(&mut grpc, &so).await {
            Ok(26) => Ok(()),
            other => Err(other),
        }
    })
    .await;
}
