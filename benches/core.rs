//! Micro-benchmarks of the hot paths: trigger metadata, metric names, the
//! render of a full claim, and GetMetrics served from a warm cache (in
//! process, and over loopback gRPC), with a real nats-server behind it.
//!
//! Short by design (small samples, 2 s measurements): the whole file runs in
//! about a minute on two cores. `scripts/bench.sh` runs it with the rest.
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use eds::nats::NatsConfig;
use eds::proto::external_scaler_server::ExternalScaler;
use eds::proto::{GetMetricsRequest, ScaledObjectRef};
use eds::render::{Platform, desired_children, parse_claims, render_text};
use eds::scaler::Tuning;
use eds::trigger::Trigger;
use eds::trigger::metric_name;
use testkit::nats::NatsServer;
use testkit::scaler::RunningScaler;
use tokio::runtime::Runtime;
use tonic::Request;

/// What KEDA sends for the section-6 claim of the design: the trigger's
/// whole metadata map, `scalerAddress` included.
fn trigger_metadata() -> HashMap<String, String> {
    [
        ("scalerAddress", "eds-scaler.eds-system.svc:9090"),
        ("stream", "MY_SERVICE_STREAM"),
        ("consumer", "my-service-workers"),
        ("lagThreshold", "5"),
        ("activationLagThreshold", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn metadata(c: &mut Criterion) {
    let metadata = trigger_metadata();
    c.bench_function("metadata/parse", |b| {
        b.iter(|| Trigger::parse_with_connection(black_box(&metadata), "default").expect("valid"))
    });
    // Lowercase names map as they are; others get a hash suffix.
    c.bench_function("metric_name/plain", |b| {
        b.iter(|| metric_name(black_box("orders"), black_box("workers")))
    });
    c.bench_function("metric_name/hashed", |b| {
        b.iter(|| metric_name(black_box("MY_SERVICE_STREAM"), black_box("my-service-workers")))
    });
}

fn render(c: &mut Criterion) {
    let text = include_str!("../examples/full.yaml");
    let claim = parse_claims(text).expect("examples/full.yaml is valid").remove(0);
    let platform = Platform::default();
    c.bench_function("render/desired_children (examples/full.yaml)", |b| {
        b.iter(|| desired_children(black_box(&claim), &platform).expect("renders"))
    });
    // What `eds render` does: parse, check against the CRD schema and CEL
    // rules, render, print YAML.
    c.bench_function("render/render_text (check + render + YAML)", |b| {
        b.iter(|| render_text(black_box(text), &platform).expect("renders"))
    });
}

fn get_metrics(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    // The production recorder, so the RPC's own metrics cost what they cost.
    eds::runtime::prometheus();
    let nats = NatsServer::start();
    runtime.block_on(async {
        let js = testkit::js::js(&nats.url()).await;
        testkit::js::work_with_lag(&js, 7).await;
    });
    let request = GetMetricsRequest {
        scaled_object_ref: Some(ScaledObjectRef {
            name: "worker".into(),
            namespace: "team".into(),
            scaler_metadata: [
                ("scalerAddress", "eds-scaler.eds-system.svc:9090"),
                ("stream", "WORK"),
                ("consumer", "c"),
                ("lagThreshold", "5"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        }),
        metric_name: "s0-nats-lag-work-c".into(),
    };
    let lag = |reply: tonic::Response<eds::proto::GetMetricsResponse>| {
        let value = reply.into_inner().metric_values[0].metric_value;
        assert_eq!(value, 7, "the bench measures real answers");
    };

    // A TTL far longer than the run: every call is a cache hit.
    let warm = Tuning {
        cache_ttl: Duration::from_secs(3600),
        ..Tuning::default()
    };
    let scaler = runtime.block_on(RunningScaler::start_with(NatsConfig::for_url(nats.url()), warm, None));
    let service = scaler.scaler.service();
    runtime
        .block_on(service.get_metrics(Request::new(request.clone())))
        .map(lag)
        .expect("warm-up");
    c.bench_function("get_metrics/warm, in process", |b| {
        b.iter_batched(
            || Request::new(request.clone()),
            |r| runtime.block_on(service.get_metrics(r)).map(lag).expect("GetMetrics"),
            BatchSize::SmallInput,
        )
    });
    let mut client = runtime.block_on(scaler.client());
    c.bench_function("get_metrics/warm, loopback gRPC", |b| {
        b.iter(|| {
            runtime
                .block_on(client.get_metrics(request.clone()))
                .map(lag)
                .expect("GetMetrics")
        })
    });

    // A zero TTL: every call is a CONSUMER.INFO round trip to nats-server.
    let no_cache = Tuning {
        cache_ttl: Duration::ZERO,
        ..Tuning::default()
    };
    let cold_scaler = runtime.block_on(RunningScaler::start_with(
        NatsConfig::for_url(nats.url()),
        no_cache,
        None,
    ));
    let cold = cold_scaler.scaler.service();
    c.bench_function("get_metrics/miss (NATS round trip), in process", |b| {
        b.iter_batched(
            || Request::new(request.clone()),
            |r| runtime.block_on(cold.get_metrics(r)).map(lag).expect("GetMetrics"),
            BatchSize::SmallInput,
        )
    });
    drop((scaler, cold_scaler));
}

fn short() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = short();
    targets = metadata, render, get_metrics
}
criterion_main!(benches);
