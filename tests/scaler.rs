//! The scaler against a real nats-server, over real gRPC.

use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, consumer};
use eds::nats::NatsConfig;
use eds::proto::ScaledObjectRef;
use eds::scaler::Tuning;
use futures::StreamExt;
use testkit::eventually;
use testkit::js::{js, publish, pull_consumer, stream_of_consumers, stream_with};
use testkit::nats::NatsServer;
use testkit::scaler::{RunningScaler, lag_of, scaled_object, wait_lag};
use tonic::Code;

fn fast() -> Tuning {
    Tuning {
        cache_ttl: Duration::from_millis(200),
        ..Tuning::default()
    }
}

/// A short TTL, and a safety re-check so slow that only the push path can
/// explain a fast activation (or a watcher's going back to idle: only KEDA's
/// own calls, through the cache, tell it).
fn push_only() -> Tuning {
    Tuning {
        cache_ttl: Duration::from_millis(200),
        push_active_poll: Duration::from_millis(200),
        push_idle_recheck: Duration::from_secs(60),
        ..Tuning::default()
    }
}

fn so(stream: &str, consumer: &str) -> ScaledObjectRef {
    scaled_object(&[("stream", stream), ("consumer", consumer)])
}

#[tokio::test(flavor = "multi_thread")]
async fn filtered_consumer_counts_only_its_subjects() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let orders = stream_with(&js, "ORDERS", &["orders.eu.>", "orders.us.>"]).await;
    pull_consumer(&orders, "eu-workers", "orders.eu.>", Duration::from_secs(30)).await;
    pull_consumer(&orders, "all-workers", "", Duration::from_secs(30)).await;
    publish(&js, "orders.eu.new", 5).await;
    publish(&js, "orders.us.new", 7).await;

    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), fast(), None).await;
    let mut client = scaler.client().await;
    assert_eq!(lag_of(&mut client, &so("ORDERS", "eu-workers")).await.unwrap(), 5);
    assert_eq!(lag_of(&mut client, &so("ORDERS", "all-workers")).await.unwrap(), 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_and_redelivered_work_counts_as_lag() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let jobs = stream_with(&js, "JOBS", &["jobs.>"]).await;
    let workers = pull_consumer(&jobs, "workers", "", Duration::from_secs(1)).await;
    publish(&js, "jobs.a", 10).await;

    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), fast(), None).await;
    let mut client = scaler.client().await;
    let so = so("JOBS", "workers");
    assert_eq!(lag_of(&mut client, &so).await.unwrap(), 10);

    // Four delivered, none acknowledged: still ten messages of work.
    let mut batch = workers.fetch().max_messages(4).messages().await.unwrap();
    let mut taken = Vec::new();
    while let Some(message) = batch.next().await {
        taken.push(message.unwrap());
    }
    assert_eq!(taken.len(), 4);
    wait_lag(&mut client, &so, 10).await;
    let key = eds::lag::ConsumerKey::new("default", None, "JOBS", "workers");
    let reader = eds::lag::JetStreamLag::new(scaler.scaler.connections.clone());
    let state = reader.consumer_state(&key).await.unwrap();
    assert_eq!((state.pending, state.ack_pending), (6, 4));

    // Two acknowledged: eight left. A NAK keeps the message in the lag.
    taken[0].ack().await.unwrap();
    taken[1].ack_with(AckKind::Ack).await.unwrap();
    taken[2].ack_with(AckKind::Nak(None)).await.unwrap();
    wait_lag(&mut client, &so, 8).await;

    // The last one's ack wait expires: redelivered, and still counted once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut again = workers.fetch().max_messages(10).messages().await.unwrap();
    let mut redelivered = 0;
    while let Some(message) = again.next().await {
        let message = message.unwrap();
        if message.info().unwrap().delivered > 1 {
            redelivered += 1;
        }
    }
    assert!(
        redelivered >= 2,
        "NAK'd and expired messages come again ({redelivered})"
    );
    wait_lag(&mut client, &so, 8).await;
    let state = reader.consumer_state(&key).await.unwrap();
    assert!(state.redelivered >= 1, "{state:?}");
    assert_eq!(state.lag(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn push_consumers_have_lag_too() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let events = stream_with(&js, "EVENTS", &["events.>"]).await;
    events
        .create_consumer(consumer::push::Config {
            durable_name: Some("pushed".into()),
            deliver_subject: "deliver.pushed".into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    publish(&js, "events.x", 3).await;
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), fast(), None).await;
    let mut client = scaler.client().await;
    // Nobody listens on the deliver subject: all three are still pending
    // or awaiting an ack.
    assert_eq!(lag_of(&mut client, &so("EVENTS", "pushed")).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_larger_than_the_codec_buffer_pass_both_ways() {
    // Calls start with a small buffer (src/scaler/codec.rs): a request and a
    // reply far above it must still arrive whole.
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    testkit::js::work_with_lag(&js, 4).await;
    let scaler = RunningScaler::start(NatsConfig::for_url(nats.url())).await;
    let mut client = scaler.client().await;
    let note = "x".repeat(64 * 1024);
    let so = scaled_object(&[("stream", "WORK"), ("consumer", "c"), ("note", &note)]);
    let metric_name = "m".repeat(16 * 1024);
    let reply = client
        .get_metrics(eds::proto::GetMetricsRequest {
            metric_name: metric_name.clone(),
            scaled_object_ref: Some(so),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.metric_values[0].metric_name, metric_name);
    assert_eq!(reply.metric_values[0].metric_value, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_stream_or_consumer_is_not_found_never_a_number() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    stream_with(&js, "REAL", &["real.>"]).await;
    let scaler = RunningScaler::start(NatsConfig::for_url(nats.url())).await;
    let mut client = scaler.client().await;
    for (so, what) in [
        (so("NOPE", "c"), "stream \"NOPE\""),
        (so("REAL", "nope"), "consumer \"nope\""),
    ] {
        let err = lag_of(&mut client, &so).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert!(err.message().contains(what), "{}", err.message());
        let err = client.is_active(so.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = client.stream_is_active(so.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_metadata_is_invalid_argument_naming_the_key() {
    let nats = NatsServer::start();
    let scaler = RunningScaler::start(NatsConfig::for_url(nats.url())).await;
    let mut client = scaler.client().await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("consumer", "c")], "stream"),
        (&[("stream", "S")], "consumer"),
        (&[("stream", "S.x"), ("consumer", "c")], "stream"),
        (
            &[("stream", "S"), ("consumer", "c"), ("lagThreshold", "lots")],
            "lagThreshold",
        ),
        (
            &[("stream", "S"), ("consumer", "c"), ("activationLagThreshold", "-2")],
            "activationLagThreshold",
        ),
        (
            &[("stream", "S"), ("consumer", "c"), ("natsConnection", "elsewhere")],
            "natsConnection",
        ),
        (&[("stream", "S"), ("consumer", "c"), ("jsDomain", "a b")], "jsDomain"),
    ];
    for (pairs, key) in cases {
        let so = scaled_object(pairs);
        for err in [
            client.get_metric_spec(so.clone()).await.unwrap_err(),
            client.is_active(so.clone()).await.unwrap_err(),
            lag_of(&mut client, &so).await.unwrap_err(),
            client.stream_is_active(so.clone()).await.unwrap_err(),
        ] {
            assert_eq!(err.code(), Code::InvalidArgument, "{pairs:?}: {err:?}");
            assert!(err.message().contains(key), "{pairs:?}: {}", err.message());
        }
    }
    // A server address in metadata is not a way to reach another server:
    // `natsConnection` only names configured connections.
    let err = client
        .get_metric_spec(scaled_object(&[
            ("stream", "S"),
            ("consumer", "c"),
            ("natsConnection", "nats://evil.example:4222"),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let unimplemented = client.stream_metric_spec(so("S", "c")).await.unwrap_err();
    assert_eq!(unimplemented.code(), Code::Unimplemented);
}

#[tokio::test(flavor = "multi_thread")]
async fn metric_spec_and_activity() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let s = stream_with(&js, "MY_SERVICE_STREAM", &["svc.>"]).await;
    pull_consumer(&s, "my-service-workers", "", Duration::from_secs(30)).await;
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), fast(), None).await;
    let mut client = scaler.client().await;
    let so = scaled_object(&[
        ("stream", "MY_SERVICE_STREAM"),
        ("consumer", "my-service-workers"),
        ("lagThreshold", "2.5"),
        ("activationLagThreshold", "3"),
    ]);
    let spec = client.get_metric_spec(so.clone()).await.unwrap().into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    let spec = &spec.metric_specs[0];
    assert_eq!(spec.target_size_float, 2.5);
    assert_eq!(spec.target_size, 3);
    assert!(
        spec.metric_name
            .starts_with("nats-lag-my-service-stream-my-service-workers")
    );

    assert!(!client.is_active(so.clone()).await.unwrap().into_inner().result);
    publish(&js, "svc.a", 3).await;
    wait_lag(&mut client, &so, 3).await;
    assert!(
        !client.is_active(so.clone()).await.unwrap().into_inner().result,
        "3 is not above 3"
    );
    publish(&js, "svc.a", 1).await;
    wait_lag(&mut client, &so, 4).await;
    assert!(client.is_active(so.clone()).await.unwrap().into_inner().result);
    let reply = client
        .get_metrics(testkit::scaler::metrics_request(so.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.metric_values[0].metric_value_float, 4.0);
}

/// Counts the CONSUMER.INFO requests the scaler sends, by listening on the
/// API subject like any other subscriber. A task reads every message as it
/// comes: a subscription left unread fills its buffer and drops the rest,
/// which would undercount.
async fn count_info_requests(url: &str, stream: &str, consumer: &str) -> Requests {
    let watcher = async_nats::connect(url).await.unwrap();
    let mut sub = watcher
        .subscribe(format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"))
        .await
        .unwrap();
    watcher.flush().await.unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        // The client lives as long as the subscription.
        let _watcher = watcher;
        while sub.next().await.is_some() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    Requests { seen, taken: 0 }
}

struct Requests {
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    taken: usize,
}

impl Requests {
    /// Requests seen since the last call, once those in flight arrived.
    async fn since_last(&mut self) -> usize {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = self.seen.load(std::sync::atomic::Ordering::SeqCst);
        let new = seen - self.taken;
        self.taken = seen;
        new
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_share_reads_and_fresh_values_skip_nats() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let s = stream_with(&js, "HOT", &["hot.>"]).await;
    pull_consumer(&s, "c", "", Duration::from_secs(30)).await;
    publish(&js, "hot.x", 42).await;
    let mut requests = count_info_requests(&nats.url(), "HOT", "c").await;
    let tuning = Tuning {
        cache_ttl: Duration::from_secs(1),
        ..Tuning::default()
    };
    // 300 concurrent KEDA calls on a cold cache: one NATS request. On a
    // loaded machine 300 calls can take longer than a second to land, so
    // this part runs with a TTL none of them outlives: what it shows is that
    // calls in flight together share one read, not how long a reading lasts.
    let long_ttl = Tuning {
        cache_ttl: Duration::from_secs(120),
        ..Tuning::default()
    };
    let cold = RunningScaler::start_with(NatsConfig::for_url(nats.url()), long_ttl, None).await;
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(cold.client().await);
    }
    let calls: Vec<_> = clients
        .into_iter()
        .map(|mut client| tokio::spawn(async move { lag_of(&mut client, &so("HOT", "c")).await.unwrap() }))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 42);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(requests.since_last().await, 1, "concurrent calls share one request");
    drop(cold);

    // A steady stream of calls for 3 s: NATS sees about one request per TTL.
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), tuning, None).await;
    let mut client = scaler.client().await;
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(lag_of(&mut client, &so("HOT", "c")).await.unwrap(), 42);
        calls += 1;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = requests.since_last().await;
    println!("{calls} GetMetrics calls in 3 s cost {sent} NATS requests (TTL 1 s)");
    assert!((2..=4).contains(&sent), "{sent} requests for {calls} calls");
    assert!(calls > 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_down_is_an_error_within_the_bound_and_recovery_is_automatic() {
    let mut nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let s = stream_with(&js, "DUR", &["dur.>"]).await;
    // File storage (the default) survives the restart below.
    pull_consumer(&s, "c", "", Duration::from_secs(30)).await;
    publish(&js, "dur.x", 6).await;
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), fast(), None).await;
    let mut client = scaler.client().await;
    let so = so("DUR", "c");
    assert_eq!(lag_of(&mut client, &so).await.unwrap(), 6);

    nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let err = lag_of(&mut client, &so).await.unwrap_err();
    let took = started.elapsed();
    println!("NATS down: {:?} after {took:?}", err.code());
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    let err = client.is_active(so.clone()).await.unwrap_err();
    assert!(matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded));

    nats.start_again();
    let lag = eventually(
        "the lag again after NATS is back",
        Duration::from_secs(15),
        async || lag_of(&mut client, &so).await,
    )
    .await;
    assert_eq!(lag, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_nats_times_out_within_the_bound() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let s = stream_with(&js, "FROZEN", &["frozen.>"]).await;
    pull_consumer(&s, "c", "", Duration::from_secs(30)).await;
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), fast(), None).await;
    let mut client = scaler.client().await;
    let so = so("FROZEN", "c");
    assert_eq!(lag_of(&mut client, &so).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The server process is stopped: the TCP connection stays open and
    // nothing answers.
    nats.peer.signal("STOP");
    let started = Instant::now();
    let result = lag_of(&mut client, &so).await;
    let took = started.elapsed();
    nats.peer.signal("CONT");
    let err = result.unwrap_err();
    println!("frozen NATS: {:?} after {took:?}", err.code());
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// Reads pushed activity until `want` arrives; returns how long it took.
async fn wait_push(
    stream: &mut tonic::Streaming<eds::proto::IsActiveResponse>,
    want: bool,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let next = tokio::time::timeout(limit.saturating_sub(started.elapsed()), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no push of {want} within {limit:?}"))
            .unwrap()
            .expect("stream stays open");
        if next.result == want {
            return started.elapsed();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn push_activation_is_fast() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let s = stream_with(&js, "WAKE", &["wake.>"]).await;
    let workers = pull_consumer(&s, "c", "", Duration::from_secs(30)).await;
    let tuning = push_only();
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), tuning, None).await;
    let mut client = scaler.client().await;
    let mut pushed = client.stream_is_active(so("WAKE", "c")).await.unwrap().into_inner();
    wait_push(&mut pushed, false, Duration::from_secs(2)).await;

    let mut latencies = Vec::new();
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let published = Instant::now();
        js.publish("wake.up", format!("round {round}").into())
            .await
            .unwrap()
            .await
            .unwrap();
        let took = wait_push(&mut pushed, true, Duration::from_secs(1)).await;
        latencies.push(published.elapsed().max(took));
        // Drain. An active consumer's watcher does not read: it learns the
        // consumer went idle from KEDA's own calls, as here.
        let mut batch = workers.fetch().max_messages(10).messages().await.unwrap();
        while let Some(m) = batch.next().await {
            m.unwrap().double_ack().await.unwrap();
        }
        tokio::time::sleep(tuning.cache_ttl).await;
        let active = client.is_active(so("WAKE", "c")).await.unwrap().into_inner().result;
        assert!(!active, "drained");
        wait_push(&mut pushed, false, Duration::from_secs(1)).await;
    }
    latencies.sort();
    println!("push activation latency (publish -> true): {latencies:?}");
    assert!(latencies.iter().all(|l| *l < Duration::from_secs(1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn push_stream_survives_a_nats_restart() {
    let mut nats = NatsServer::start();
    let js_client = js(&nats.url()).await;
    let s = stream_with(&js_client, "SURVIVE", &["survive.>"]).await;
    pull_consumer(&s, "c", "", Duration::from_secs(30)).await;
    let tuning = push_only();
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), tuning, None).await;
    let mut client = scaler.client().await;
    let mut pushed = client.stream_is_active(so("SURVIVE", "c")).await.unwrap().into_inner();
    wait_push(&mut pushed, false, Duration::from_secs(2)).await;

    nats.restart();
    eventually("the scaler reconnected", Duration::from_secs(10), async || {
        scaler.scaler.connections.all_connected()
    })
    .await;
    let js_client = js(&nats.url()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = Instant::now();
    js_client
        .publish("survive.x", "after restart".into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_push(&mut pushed, true, Duration::from_secs(3)).await;
    println!("push after a NATS restart: {:?}", published.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_push_streams_are_cleaned_up() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let s = stream_with(&js, "GONE", &["gone.>"]).await;
    pull_consumer(&s, "a", "", Duration::from_secs(30)).await;
    pull_consumer(&s, "b", "", Duration::from_secs(30)).await;
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), fast(), None).await;
    let mut client = scaler.client().await;
    let mut a1 = client.stream_is_active(so("GONE", "a")).await.unwrap().into_inner();
    let mut a2 = client.stream_is_active(so("GONE", "a")).await.unwrap().into_inner();
    let mut b = client.stream_is_active(so("GONE", "b")).await.unwrap().into_inner();
    for s in [&mut a1, &mut a2, &mut b] {
        wait_push(s, false, Duration::from_secs(2)).await;
    }
    assert_eq!(scaler.scaler.watchers.len(), 2, "one watcher per consumer");
    drop(a1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(scaler.scaler.watchers.len(), 2, "a2 still watches a");
    drop(a2);
    drop(b);
    eventually("no watchers left", Duration::from_secs(5), async || {
        let left = scaler.scaler.watchers.len();
        (left == 0).then_some(()).ok_or(left)
    })
    .await;
    // Their notifier goes too, so the stream carries no leftovers.
    no_notifiers_left(&scaler).await;
    let mut stream = js.get_stream("GONE").await.unwrap();
    wait_consumer_count(&mut stream, 2).await;
}

/// Waits until the scaler runs no notifier task.
async fn no_notifiers_left(scaler: &RunningScaler) {
    eventually("no notifier tasks left", Duration::from_secs(5), async || {
        let left = scaler.scaler.watchers.notifiers();
        (left == 0).then_some(()).ok_or(left)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watching_many_idle_consumers_keeps_nats_load_bounded() {
    const CONSUMERS: usize = 1000;
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    // Room for the one shared notifier.
    stream_of_consumers(&js, "MANY", "many", CONSUMERS, 1).await;
    let mut requests = count_info_requests(&nats.url(), "MANY", "*").await;
    let scaler = RunningScaler::start(NatsConfig::for_url(nats.url())).await;
    let mut client = scaler.client().await;
    let mut streams = Vec::new();
    for i in 0..CONSUMERS {
        streams.push(
            client
                .stream_is_active(so("MANY", &format!("c{i}")))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    for s in &mut streams {
        wait_push(s, false, Duration::from_secs(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warmup = requests.since_last().await;
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let steady = requests.since_last().await;
    let per_second = steady as f64 / window.as_secs_f64();
    println!("{CONSUMERS} idle watched consumers: {warmup} requests to set up, then {per_second:.1} requests/s");
    assert!(per_second < 150.0, "{per_second} requests/s");

    // And one of them still wakes up at once.
    let published = Instant::now();
    js.publish("many.7", "work".into()).await.unwrap().await.unwrap();
    wait_push(&mut streams[7], true, Duration::from_secs(1)).await;
    println!("wake-up with {CONSUMERS} watched: {:?}", published.elapsed());
}

/// Polling so slow that only a notice explains a wake-up within seconds.
fn notices_only() -> Tuning {
    Tuning {
        cache_ttl: Duration::from_millis(200),
        push_active_poll: Duration::from_secs(60),
        push_idle_recheck: Duration::from_secs(60),
        ..Tuning::default()
    }
}

/// Waits until the stream holds `want` consumers, then checks it stays so.
async fn wait_consumer_count(stream: &mut async_nats::jetstream::stream::Stream, want: usize) {
    let what = format!("{want} consumers on the stream");
    eventually(&what, Duration::from_secs(10), async || {
        let count = stream.info().await.unwrap().state.consumer_count;
        (count == want).then_some(()).ok_or(count)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stream.info().await.unwrap().state.consumer_count, want);
}

/// Idle watched consumers share one notifier per stream, so the scaler does
/// not fill the stream's `max_consumers`, and every one of them still wakes
/// on its own subject's first message.
#[tokio::test(flavor = "multi_thread")]
async fn idle_consumers_share_one_notifier_per_stream() {
    const CONSUMERS: usize = 20;
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    // Room for one notifier and one more durable.
    let mut s = stream_of_consumers(&js, "SHARED", "shared", CONSUMERS, 2).await;
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), notices_only(), None).await;
    let mut client = scaler.client().await;
    let mut streams = Vec::new();
    for i in 0..CONSUMERS {
        let mut pushed = client
            .stream_is_active(so("SHARED", &format!("c{i}")))
            .await
            .unwrap()
            .into_inner();
        wait_push(&mut pushed, false, Duration::from_secs(2)).await;
        streams.push(pushed);
    }
    wait_consumer_count(&mut s, CONSUMERS + 1).await;
    assert_eq!(scaler.scaler.watchers.notifiers(), 1);
    // A team's new durable still fits beside the notifier.
    pull_consumer(&s, "late", "shared.late", Duration::from_secs(30)).await;

    let mut latencies = Vec::new();
    for (i, pushed) in streams.iter_mut().enumerate() {
        let published = Instant::now();
        js.publish(format!("shared.{i}"), "work".into())
            .await
            .unwrap()
            .await
            .unwrap();
        wait_push(pushed, true, Duration::from_secs(2)).await;
        latencies.push(published.elapsed());
    }
    latencies.sort();
    println!("{CONSUMERS} consumers, one notifier: wake-ups {latencies:?}");

    // Once every consumer is active, the notifier goes: the teams' own
    // durables are left, `late` included.
    wait_consumer_count(&mut s, CONSUMERS + 1).await;
    no_notifiers_left(&scaler).await;
}

/// Consumers whose filters overlap (or that read the whole stream) share a
/// notifier on the whole stream (nats-server refuses overlapping filters on
/// one consumer); a notice wakes the consumers whose filter matches it.
#[tokio::test(flavor = "multi_thread")]
async fn overlapping_filters_share_a_whole_stream_notifier() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let mut s = stream_with(&js, "MIXED", &["orders.>"]).await;
    let consumers = [
        ("eu", "orders.*.eu"),
        ("us", "orders.us.*"),
        ("created", "orders.created"),
    ];
    for (name, filter) in consumers {
        pull_consumer(&s, name, filter, Duration::from_secs(30)).await;
    }
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), notices_only(), None).await;
    let mut client = scaler.client().await;
    let mut pushed = Vec::new();
    for (name, _) in consumers {
        let mut stream = client.stream_is_active(so("MIXED", name)).await.unwrap().into_inner();
        wait_push(&mut stream, false, Duration::from_secs(2)).await;
        pushed.push(stream);
    }
    wait_consumer_count(&mut s, consumers.len() + 1).await;

    // `orders.us.eu` is counted by both `eu` and `us`, not by `created`.
    js.publish("orders.us.eu", "work".into()).await.unwrap().await.unwrap();
    wait_push(&mut pushed[0], true, Duration::from_secs(2)).await;
    wait_push(&mut pushed[1], true, Duration::from_secs(2)).await;
    js.publish("orders.created", "work".into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_push(&mut pushed[2], true, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_command_prints_the_breakdown() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let s = stream_with(&js, "CLI", &["cli.>"]).await;
    pull_consumer(&s, "c", "", Duration::from_secs(30)).await;
    publish(&js, "cli.x", 9).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eds"))
        .args([
            "lag",
            "--stream",
            "CLI",
            "--consumer",
            "c",
            "--json",
            "--nats-url",
            &nats.url(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["lag"], 9);
    assert_eq!(json["pending"], 9);
    assert_eq!(json["ackPending"], 0);

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_eds"))
        .args([
            "lag",
            "--stream",
            "CLI",
            "--consumer",
            "nope",
            "--nats-url",
            &nats.url(),
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

/// A consumer's max_ack_pending caps the replicas that can hold work: the
/// metric stops at `ceil(max_ack_pending / concurrency) × lagThreshold`,
/// while activity and the true lag are untouched.
#[tokio::test(flavor = "multi_thread")]
async fn the_metric_stops_at_the_replica_cap() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let s = stream_with(&js, "CAPPED", &["capped.>"]).await;
    for (name, max_ack_pending) in [("limited", 4), ("unlimited", -1)] {
        s.create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    publish(&js, "capped.job", 100).await;

    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), fast(), None).await;
    let mut client = scaler.client().await;
    let with = |consumer: &str, concurrency: &str| {
        scaled_object(&[
            ("stream", "CAPPED"),
            ("consumer", consumer),
            ("lagThreshold", "5"),
            ("concurrency", concurrency),
        ])
    };
    // 4 un-acknowledged at most: 4 replicas of 1, or 2 replicas of 2.
    assert_eq!(lag_of(&mut client, &with("limited", "1")).await.unwrap(), 20);
    assert_eq!(lag_of(&mut client, &with("limited", "2")).await.unwrap(), 10);
    // No limit: the lag itself.
    assert_eq!(lag_of(&mut client, &with("unlimited", "1")).await.unwrap(), 100);
    // Activity follows the true lag.
    let active = client.is_active(with("limited", "2")).await.unwrap().into_inner();
    assert!(active.result);
    // What the HPA would ask for stays at the cap, not at maxReplicas.
    let value = lag_of(&mut client, &with("limited", "1")).await.unwrap();
    assert_eq!(eds::lag::desired_replicas(value as u64, 5.0, 0, 10), 4);
    println!("lag 100, max_ack_pending 4: metric {value} -> 4 replicas (10 without the cap)");

    for bad in ["0", "-1", "1.5", "lots"] {
        let err = lag_of(&mut client, &with("limited", bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(err.message().contains("concurrency"), "{bad}: {}", err.message());
    }
}

/// Once a watcher has pushed `true` it stops reading: KEDA's own calls read
/// the consumer through the cache, and the watcher learns from those that it
/// went idle. Then a new message wakes it as fast as ever.
#[tokio::test(flavor = "multi_thread")]
async fn an_active_consumer_costs_no_watcher_reads() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let s = stream_with(&js, "QUIET", &["quiet.>"]).await;
    let workers = pull_consumer(&s, "c", "", Duration::from_secs(30)).await;
    let tuning = push_only();
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), tuning, None).await;
    let mut client = scaler.client().await;
    let mut pushed = client.stream_is_active(so("QUIET", "c")).await.unwrap().into_inner();
    wait_push(&mut pushed, false, Duration::from_secs(2)).await;
    for i in 0..3 {
        js.publish("quiet.x", format!("{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    wait_push(&mut pushed, true, Duration::from_secs(1)).await;

    // Active, and nobody asks: 2 s is ten TTLs, and the watcher used to read
    // once per TTL here.
    let mut requests = count_info_requests(&nats.url(), "QUIET", "c").await;
    requests.since_last().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_reads = requests.since_last().await;
    println!("CONSUMER.INFO in 2 s while active and unpolled: {idle_reads}");
    assert_eq!(idle_reads, 0, "an active consumer's watcher does not read");

    // KEDA polls: one read per call past the TTL, and no more.
    for _ in 0..3 {
        tokio::time::sleep(tuning.cache_ttl).await;
        client
            .get_metrics(testkit::scaler::metrics_request(so("QUIET", "c")))
            .await
            .unwrap();
    }
    let polled = requests.since_last().await;
    assert!(polled <= 3, "{polled} reads for 3 KEDA calls");

    // Drained: KEDA's next call reads it idle, and the stream says so at
    // once, without a read of the watcher's own.
    let mut batch = workers.fetch().max_messages(10).messages().await.unwrap();
    while let Some(m) = batch.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    tokio::time::sleep(tuning.cache_ttl).await;
    requests.since_last().await;
    let called = Instant::now();
    assert!(!client.is_active(so("QUIET", "c")).await.unwrap().into_inner().result);
    wait_push(&mut pushed, false, Duration::from_secs(1)).await;
    println!("idle pushed {:?} after KEDA's call", called.elapsed());
    let reads = requests.since_last().await;
    assert!(
        reads <= 2,
        "{reads} reads: KEDA's one, and at most one notifier re-read"
    );

    // And it has gone back to listening: a message right after wakes it fast.
    let published = Instant::now();
    js.publish("quiet.y", "again".into()).await.unwrap().await.unwrap();
    wait_push(&mut pushed, true, Duration::from_millis(500)).await;
    println!("push after going idle: {:?}", published.elapsed());
}

/// A consumer kept below its activation threshold while messages keep
/// arriving costs at most one read per TTL, whatever the message rate.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_consumer_below_its_threshold_is_read_once_per_ttl() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let s = stream_with(&js, "BELOW", &["below.>"]).await;
    pull_consumer(&s, "c", "", Duration::from_secs(30)).await;
    let tuning = push_only();
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), tuning, None).await;
    let mut client = scaler.client().await;
    let below = scaled_object(&[
        ("stream", "BELOW"),
        ("consumer", "c"),
        ("activationLagThreshold", "100000"),
    ]);
    let mut pushed = client.stream_is_active(below).await.unwrap().into_inner();
    wait_push(&mut pushed, false, Duration::from_secs(2)).await;
    let mut requests = count_info_requests(&nats.url(), "BELOW", "c").await;
    requests.since_last().await;
    // About 200 messages a second for 2 s.
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(2) {
        js.publish("below.x", "m".into()).await.unwrap().await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reads = requests.since_last().await;
    let window = started.elapsed();
    let bound = (window.as_secs_f64() / tuning.cache_ttl.as_secs_f64()).ceil() as usize + 1;
    println!("{reads} CONSUMER.INFO for {sent} messages in {window:?} (bound {bound})");
    assert!(
        reads <= bound,
        "{reads} reads for {sent} messages; at most one per TTL ({bound})"
    );
    assert!(reads >= 2, "the notices are still heard ({reads} reads)");
}

/// The slow re-check of an active consumer reads NATS only when nobody else
/// did for a whole period: under KEDA's polling it never reads, and without
/// it, once per period.
#[tokio::test(flavor = "multi_thread")]
async fn the_recheck_reads_only_what_nobody_else_read() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let s = stream_with(&js, "RECHECK", &["recheck.>"]).await;
    pull_consumer(&s, "c", "", Duration::from_secs(30)).await;
    publish(&js, "recheck.x", 3).await;
    let tuning = Tuning {
        cache_ttl: Duration::from_millis(100),
        push_active_poll: Duration::from_millis(100),
        push_idle_recheck: Duration::from_millis(500),
        ..Tuning::default()
    };
    let scaler = RunningScaler::start_with(NatsConfig::for_url(nats.url()), tuning, None).await;
    let mut client = scaler.client().await;
    let mut pushed = client.stream_is_active(so("RECHECK", "c")).await.unwrap().into_inner();
    wait_push(&mut pushed, true, Duration::from_secs(2)).await;
    let mut requests = count_info_requests(&nats.url(), "RECHECK", "c").await;
    requests.since_last().await;

    // KEDA polls every 250 ms, more often than the re-check period.
    let mut calls = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        client
            .get_metrics(testkit::scaler::metrics_request(so("RECHECK", "c")))
            .await
            .unwrap();
        calls += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let polled = requests.since_last().await;
    println!("{polled} CONSUMER.INFO for {calls} KEDA calls in 3 s");
    assert!(
        polled <= calls,
        "{polled} reads for {calls} calls: the watcher read too"
    );

    // Nobody polls: the re-check reads about once per 500 ms.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unpolled = requests.since_last().await;
    println!("{unpolled} CONSUMER.INFO in 3 s unpolled (re-check 500 ms)");
    assert!((4..=8).contains(&unpolled), "{unpolled} re-check reads in 3 s");
}
