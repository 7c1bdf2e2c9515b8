//! End-to-end activation through real KEDA on a real control plane (the
//! rig of `testkit`): from a publish on an idle consumer to the worker's
//! Deployment at `spec.replicas: 1`, for
//! - eds: a claim; KEDA holds `StreamIsActive` open on our scaler, which
//!   pushes the activation;
//! - KEDA's built-in `nats-jetstream` trigger, which polls nats-server's
//!   HTTP monitoring every pollingInterval.
//!
//! Both at pollingInterval 30 (KEDA's default), each trial a worker of its
//! own (namespace, stream, consumer), both paths side by side. The publishes
//! are spread over one polling interval, so the built-in trigger's figures
//! cover its phases. `scripts/bench.sh` runs it; docs/benchmarks.md explains
//! the figures. Environment (optional): `EDS_BENCH_E2E_TRIALS` (workers per
//! path, default 3), `EDS_BENCH_OUT` (default `target/bench`).
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::join_all;
use testkit::control_plane::apply_yaml;
use testkit::rig::{self, SharedRig};
use testkit::scenario::{LAG_THRESHOLD, Scenario, WORKER, bare_deployment};
use tokio::time::{Instant, sleep};

/// KEDA's default pollingInterval, used by both paths.
const POLLING_INTERVAL: Duration = Duration::from_secs(30);
/// Longer than any activation can take: a poll, plus KEDA's own scale-up.
const BOUND: Duration = Duration::from_secs(60);

fn main() {
    let trials: usize = std::env::var("EDS_BENCH_E2E_TRIALS")
        .ok()
        .map(|v| v.parse().expect("EDS_BENCH_E2E_TRIALS: a number"))
        .unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(run(trials));
    print!("{report}");
    let out = std::env::var_os("EDS_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| testkit::repo::path("target/bench"));
    std::fs::create_dir_all(&out).expect("the output directory");
    let file = out.join("e2e-activation.md");
    std::fs::write(&file, &report).expect("writing the report");
    println!("written to {}", file.display());
}

fn rig() -> SharedRig {
    rig::shared(Path::new(env!("CARGO_BIN_EXE_eds")))
}

/// Both paths' trials at once; the report as a Markdown table.
async fn run(trials: usize) -> String {
    let started = Instant::now();
    let (push, polled) = tokio::join!(
        join_all((0..trials).map(|i| push_worker(i))),
        join_all((0..trials).map(|i| polled_worker(i))),
    );
    println!("{} idle workers at zero in {:?}", 2 * trials, started.elapsed());
    let (push, polled) = tokio::join!(measure(&push), measure(&polled));
    format!(
        "| path (pollingInterval 30 s) | trials | publish -> replicas 1: min | median | max |\n\
         |---|---:|---:|---:|---:|\n{}\n{}\n",
        row("eds, external-push (StreamIsActive)", push),
        row("KEDA built-in nats-jetstream (polls /jsz)", polled),
    )
}

/// A claim scaled by eds, idle at zero.
async fn push_worker(i: usize) -> Scenario {
    let s = Scenario::new(rig(), &format!("bench-push-{i}")).await;
    s.apply_claim(&format!(
        "minReplicas: 0\n    pollingInterval: {}",
        POLLING_INTERVAL.as_secs()
    ))
    .await;
    s.wait_scaled_object_ready().await;
    s.wait_replicas(0, BOUND).await;
    s
}

/// A Deployment scaled by KEDA's built-in trigger, idle at zero.
async fn polled_worker(i: usize) -> Scenario {
    let s = Scenario::new(rig(), &format!("bench-polled-{i}")).await;
    apply_yaml(&s.client, &bare_deployment(WORKER), Some(&s.ns)).await;
    let scaled_object = format!(
        r#"apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {WORKER}
spec:
  scaleTargetRef:
    name: {WORKER}
  minReplicaCount: 0
  maxReplicaCount: 10
  pollingInterval: {polling}
  triggers:
  - type: nats-jetstream
    metadata:
      natsServerMonitoringEndpoint: "{monitoring}"
      account: "$G"
      stream: "{stream}"
      consumer: {WORKER}
      lagThreshold: "{LAG_THRESHOLD}"
"#,
        polling = POLLING_INTERVAL.as_secs(),
        monitoring = s.rig.nats_monitoring,
        stream = s.stream,
    );
    apply_yaml(&s.client, &scaled_object, Some(&s.ns)).await;
    s.wait_scaled_object_ready().await;
    s.wait_replicas(0, BOUND).await;
    s
}

/// Publishes one message to each worker, the publishes spread evenly over
/// one polling interval; each worker's time to one replica, sorted.
async fn measure(workers: &[Scenario]) -> Vec<Duration> {
    let spacing = POLLING_INTERVAL / u32::try_from(workers.len().max(1)).expect("a trial count");
    let mut took = join_all(workers.iter().enumerate().map(|(i, s)| async move {
        sleep(spacing * u32::try_from(i).expect("a trial count")).await;
        let published = std::time::Instant::now();
        s.publish(1).await;
        s.time_to_replicas(1, published, BOUND).await
    }))
    .await;
    took.sort();
    took
}

fn row(path: &str, took: Vec<Duration>) -> String {
    let shown = |d: Option<&Duration>| d.map_or_else(|| "-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
    format!(
        "| {path} | {} | {} | {} | {} |",
        took.len(),
        shown(took.first()),
        shown(took.get(took.len() / 2)),
        shown(took.last()),
    )
}
