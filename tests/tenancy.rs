//! Tenancy: the scaler serves a namespace only what its connection's rules
//! allow, and a refused request never reaches NATS. Real nats-server, real
//! gRPC.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eds::nats::NatsConfig;
use eds::proto::ScaledObjectRef;
use futures::StreamExt;
use testkit::http::get_async;
use testkit::js::{js, publish, pull_consumer, stream_with};
use testkit::nats::NatsServer;
use testkit::prometheus::Scrape;
use testkit::scaler::{RunningScaler, lag_of, metrics_request, scaled_object};
use tonic::Code;

/// Counts every JetStream API request on the server, as any subscriber
/// sees them. A task reads each message as it comes, so none is dropped.
async fn count_js_api_requests(url: &str) -> Arc<AtomicUsize> {
    let watcher = async_nats::connect(url).await.unwrap();
    let mut sub = watcher.subscribe("$JS.API.>").await.unwrap();
    watcher.flush().await.unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        let _watcher = watcher;
        while sub.next().await.is_some() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    seen
}

fn at(namespace: &str, pairs: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        namespace: namespace.into(),
        ..scaled_object(pairs)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_namespace_gets_permission_denied_and_nats_sees_no_request() {
    // The recorder must exist before the scaler creates its counters.
    eds::runtime::prometheus();
    let nats = NatsServer::start();
    let setup = js(&nats.url()).await;
    for name in ["ORDERS", "PAYMENTS"] {
        let stream = stream_with(&setup, name, &[&format!("{}.>", name.to_lowercase())]).await;
        pull_consumer(&stream, "c", "", Duration::from_secs(30)).await;
    }
    publish(&setup, "orders.new", 3).await;

    // `orders`: team namespaces only, and team-a only its own stream. The
    // flags' connection has no rule written: nobody may use it.
    let config = nats.path("connections.yaml");
    std::fs::write(
        &config,
        format!(
            "connections:\n  orders:\n    url: {}\n    namespaces: [team-*]\n    reads:\n      - namespaces: [team-a]\n        streams: [ORDERS]\n",
            nats.url()
        ),
    )
    .unwrap();
    let mut args = NatsConfig::for_url(nats.url());
    args.default.namespaces = None;
    args.config_file = Some(config);
    let scaler = RunningScaler::start(args).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = scaler.scaler.connections.clone();
    tokio::spawn(eds::runtime::serve_http_on(
        listener,
        Arc::new(move || connections.all_connected()),
        vec![],
    ));
    let mut client = scaler.client().await;
    let requests = count_js_api_requests(&nats.url()).await;

    let orders = [("stream", "ORDERS"), ("consumer", "c"), ("natsConnection", "orders")];
    let payments = [("stream", "PAYMENTS"), ("consumer", "c"), ("natsConnection", "orders")];
    let default = [("stream", "ORDERS"), ("consumer", "c")];
    let refused = [
        (
            at("ops", &orders),
            "orders",
            "connections.orders.namespaces is [team-*]",
        ),
        (at("team-a", &payments), "orders", "connections.orders.reads[0] allows"),
        (
            at("team-a", &default),
            "default",
            "connections.default.namespaces is not set",
        ),
    ];
    for (so, connection, rule) in &refused {
        let statuses = [
            client.is_active(so.clone()).await.unwrap_err(),
            client.stream_is_active(so.clone()).await.unwrap_err(),
            client.get_metric_spec(so.clone()).await.unwrap_err(),
            client.get_metrics(metrics_request(so.clone())).await.unwrap_err(),
        ];
        for status in statuses {
            assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
            let message = status.message();
            for needle in [
                format!("namespace {:?}", so.namespace),
                format!("connection {connection:?}"),
                rule.to_string(),
            ] {
                assert!(message.contains(&needle), "{needle:?} not in {message:?}");
            }
        }
    }
    // A hostile namespace (1 MB) is refused by a message that quotes a
    // short prefix of it: whole, it would not fit the client's 16 KiB
    // metadata limit, and the client would see RESOURCE_EXHAUSTED instead.
    let huge = at(&"x".repeat(1_000_000), &orders);
    let status = client.is_active(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{:.200}", status.message());
    let message = status.message();
    assert!(message.len() < 1024, "{} bytes: {message:.200}", message.len());
    assert!(message.contains("... (1000000 bytes)"), "{message}");
    assert!(
        message.contains("connections.orders.namespaces is [team-*]"),
        "{message}"
    );
    // Anything in flight has arrived by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(requests.load(Ordering::SeqCst), 0, "a refused request reached NATS");

    // What the rules allow is served, and the counter does see it.
    assert_eq!(lag_of(&mut client, &at("team-a", &orders)).await.unwrap(), 3);
    assert_eq!(lag_of(&mut client, &at("team-b", &payments)).await.unwrap(), 0);
    testkit::eventually("the allowed reads seen", Duration::from_secs(5), async || {
        (requests.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;

    let body = get_async(port, "/metrics").await.unwrap().body;
    let scrape = Scrape::parse(&body);
    for (method, connection, want) in [
        ("GetMetrics", "orders", 2.0),
        ("IsActive", "orders", 3.0),
        ("GetMetricSpec", "orders", 2.0),
        ("StreamIsActive", "orders", 2.0),
        ("GetMetrics", "default", 1.0),
    ] {
        let counted = scrape.sum(
            "eds_scaler_denied_total",
            &[("method", method), ("connection", connection)],
        );
        assert_eq!(counted, Some(want), "{method} on {connection}\n{body}");
    }
}
