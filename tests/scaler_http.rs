//! The scaler's HTTP side: Prometheus metrics, liveness and readiness.

use std::sync::Arc;
use std::time::Duration;

use eds::nats::NatsConfig;
use testkit::eventually;
use testkit::http::get_async;
use testkit::nats::NatsServer;
use testkit::scaler::{RunningScaler, lag_of, scaled_object};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_readiness() {
    // The recorder must exist before the scaler creates its counters.
    eds::runtime::prometheus();
    let mut nats = NatsServer::start();
    let js = testkit::js::js(&nats.url()).await;
    let s = testkit::js::stream_with(&js, "OBS", &["obs.>"]).await;
    testkit::js::pull_consumer(&s, "c", "", Duration::from_secs(30)).await;
    testkit::js::publish(&js, "obs.x", 1).await;

    let scaler = RunningScaler::start(NatsConfig::for_url(nats.url())).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = scaler.scaler.connections.clone();
    tokio::spawn(eds::runtime::serve_http_on(
        listener,
        Arc::new(move || connections.all_connected()),
        vec![eds::runtime::consumer_gauges(scaler.scaler.cache.clone())],
    ));

    let mut client = scaler.client().await;
    let so = scaled_object(&[("stream", "OBS"), ("consumer", "c")]);
    assert_eq!(lag_of(&mut client, &so).await.unwrap(), 1);
    assert_eq!(lag_of(&mut client, &so).await.unwrap(), 1);
    let missing = scaled_object(&[("stream", "OBS"), ("consumer", "gone")]);
    assert!(lag_of(&mut client, &missing).await.is_err());
    // A push stream that sees its consumer wake: an activation. (A stream
    // opened on a consumer already active is not one.)
    let w = testkit::js::stream_with(&js, "WAKE", &["wake.>"]).await;
    testkit::js::pull_consumer(&w, "w", "", Duration::from_secs(30)).await;
    let sleeper = scaled_object(&[("stream", "WAKE"), ("consumer", "w")]);
    let mut pushed = client.stream_is_active(sleeper).await.unwrap().into_inner();
    assert!(!pushed.message().await.unwrap().unwrap().result);
    testkit::js::publish(&js, "wake.x", 1).await;
    assert!(pushed.message().await.unwrap().unwrap().result);

    let metrics = get_async(port, "/metrics").await.unwrap();
    assert_eq!(metrics.code, 200);
    let body = metrics.body;
    for needle in [
        r#"eds_consumer_lag{connection="default",stream="OBS",consumer="c"} 1"#,
        r#"eds_consumer_pending{connection="default",stream="OBS",consumer="c"} 1"#,
        r#"eds_consumer_ack_pending{connection="default",stream="OBS",consumer="c"} 0"#,
        r#"eds_scaler_rpc_total{method="GetMetrics",code="OK"}"#,
        r#"eds_scaler_rpc_total{method="GetMetrics",code="NotFound"}"#,
        r#"eds_scaler_rpc_duration_seconds_bucket{method="GetMetrics",code="OK",le="0.001"}"#,
        r#"eds_lag_cache_requests_total{result="hit"}"#,
        r#"eds_lag_cache_requests_total{result="miss"}"#,
        r#"eds_nats_requests_total{connection="default",result="not_found"}"#,
        r#"eds_nats_request_duration_seconds_bucket{connection="default""#,
        r#"eds_nats_connected{connection="default"} 1"#,
        "eds_push_streams 1",
        "eds_push_watchers 1",
        "eds_push_activations_total 1",
    ] {
        assert!(body.contains(needle), "/metrics lacks {needle}\n{body}");
    }
    // Written from the cache: one family header each, and no series for a
    // consumer whose read failed.
    assert_eq!(body.matches("# TYPE eds_consumer_lag gauge").count(), 1, "{body}");
    assert!(!body.contains(r#"consumer="gone""#), "{body}");
    let healthz = get_async(port, "/healthz").await.unwrap();
    assert_eq!((healthz.code, healthz.body.as_str()), (200, "ok"));
    assert_eq!(get_async(port, "/readyz").await.unwrap().code, 200);

    nats.stop();
    let not_ready = eventually("/readyz 503 without NATS", Duration::from_secs(5), async || {
        let readyz = get_async(port, "/readyz").await.unwrap();
        (readyz.code == 503).then_some(readyz.body.clone()).ok_or(readyz)
    })
    .await;
    assert!(not_ready.contains("default"), "{not_ready}");
    let healthz = get_async(port, "/healthz").await.unwrap();
    assert_eq!(healthz.code, 200, "alive, just not ready");
}
