//! The controller at scale, on a real control plane (etcd, kube-apiserver,
//! kube-controller-manager from `testkit`, with kube-scheduler and KWOK so
//! that the Deployments' pods are bound and turn Ready): N claims created at once, spread
//! over team namespaces as the namespace standard names them, reconciled by
//! the release `eds controller` as a separate process running as its own
//! ServiceAccount with the chart's RBAC.
//!
//! Per N, two runs, each on a fresh control plane (a process of its own, so
//! one run's objects, ReplicaSets and Pods do not slow the next):
//! - the floor: a plain kube-rs client creating the same four children per
//!   claim (as the controller renders them, without owner references), all
//!   each claim's children in order, as many claims at once as the
//!   controller reconciles at once ([`RECONCILE_CONCURRENCY`]);
//! - the controller: the claims created at once, then until every claim's
//!   four children exist and its status describes its generation (seen by
//!   watches of the driver's own); then until every claim's Deployment is
//!   available and the controller stops writing; an idle
//!   window of more than two resync periods (`--lag-interval`);
//!   and changes to single claims, timed until their Deployment shows them.
//!
//! Before either clock starts, the driver sends the API server the same dry
//! runs in both (one claim, its children created and applied), so neither
//! pays for the API server's first use of a kind ([`warm_up`]); the floor's
//! client also dry-run creates the children, to open its connection as the
//! controller's already are.
//!
//! Requests by verb come from the API server's audit log (it records every
//! request of the ServiceAccounts of `eds-system`); RSS and CPU from
//! `/proc/<pid>`; reconciles from the controller's /metrics. Over each
//! clock, the whole machine too ([`machine`]): every process's CPU, and the
//! API server's requests from all its clients, by its own metrics.
//!
//! Environment (optional): `EDS_BENCH_CTL_SIZES` (default 100,1000,10000),
//! `EDS_BENCH_OUT` (default target/bench), `EDS_BENCH_CONTROLLER_WRAPPER`
//! (a profiler to run the controller under), `EDS_BENCH_FLOOR_APPLY` (the
//! floor applies instead of creating), `EDS_BENCH_CTL_LAG_INTERVAL` (seconds:
//! the controller's `--lag-interval`, 15 unless set). Writes `controller-scale.md` and
//! `controller-scale.json` (every figure, and the curves `benches/convergence-plot`
//! draws). `scripts/bench.sh` runs it; docs/benchmarks.md explains it.
mod audit;
mod cluster;
mod heap;
mod machine;
mod observe;
mod report;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use eds::api::EventDrivenService;
use eds::controller::drift::stamp;
use eds::controller::live::LiveChild;
use eds::controller::{ChildKind, RECONCILE_CONCURRENCY};
use eds::render::{MANAGED_BY, Platform, desired_children};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use testkit::control_plane as cp;
use testkit::kwok::Kwok;
use testkit::nats::NatsServer;
use testkit::process::{Peer, free_port};
use testkit::prometheus::Scrape;

use cluster::Slot;
use machine::Machine;

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;
use observe::{Convergence, ProcSampler};

/// The controller's resync: every claim is reconciled again this often.
/// The product's default.
const LAG_INTERVAL: Duration = Duration::from_secs(15);
/// Seconds: another `--lag-interval` for the controller, to tell the
/// resync's share of convergence (the idle window stays 35 s, so with a
/// longer interval it no longer sees every claim resync twice).
const LAG_INTERVAL_ENV: &str = "EDS_BENCH_CTL_LAG_INTERVAL";
/// Longer than two resyncs: every claim is reconciled at least twice.
const IDLE_WINDOW: Duration = Duration::from_secs(35);
/// The controller has stopped writing once it wrote nothing for this long.
const QUIET: Duration = Duration::from_secs(20);
/// Single-claim changes timed at the end.
const CHANGES: usize = 50;
/// Claims the driver creates at once (the user's side: `kubectl apply` of
/// many files, or Argo CD syncing them).
const CREATE_CONCURRENCY: usize = 64;
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest wait, after convergence, for every claim's Deployment to be
/// available and the controller to stop writing.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1800);
const CONTROLLER_USER: &str = "system:serviceaccount:eds-system:eds-controller";
const FLOOR_USER: &str = "system:serviceaccount:eds-system:eds-floor";
const RUN: &str = "EDS_BENCH_CTL_RUN";
/// Set: the floor server-side applies its children (as the controller
/// does) instead of creating them, to tell the cost of applies from the
/// cost of the controller's other requests.
const FLOOR_APPLY: &str = "EDS_BENCH_FLOOR_APPLY";
/// A command to run the controller under, e.g. `heaptrack -o target/bench/ctl`
/// (RSS and CPU, the whole-machine table's row of the controller included,
/// are then the profiler's).
const WRAPPER: &str = "EDS_BENCH_CONTROLLER_WRAPPER";

/// The controller's `--lag-interval`: [`LAG_INTERVAL`] unless
/// [`LAG_INTERVAL_ENV`] says otherwise.
fn lag_interval() -> Duration {
    std::env::var(LAG_INTERVAL_ENV).map_or(LAG_INTERVAL, |s| {
        Duration::from_secs(s.trim().parse().expect("EDS_BENCH_CTL_LAG_INTERVAL: seconds"))
    })
}

fn main() {
    let out = std::env::var_os("EDS_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| testkit::repo::path("target/bench"));
    std::fs::create_dir_all(&out).expect("the output directory");
    if let Ok(run) = std::env::var(RUN) {
        let (mode, n) = run.split_once(':').expect("mode:N");
        let n: usize = n.parse().expect("N");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let result = runtime.block_on(async {
            match mode {
                "floor" => floor(n).await,
                "controller" => controller(n).await,
                other => panic!("unknown mode {other}"),
            }
        });
        let file = out.join(format!("controller-scale-{mode}-{n}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(&result).unwrap()).expect("writing the result");
        println!("{mode} at {n}: written to {}", file.display());
        // The control plane's peers die with this process.
        std::process::exit(0);
    }
    let sizes: Vec<usize> = std::env::var("EDS_BENCH_CTL_SIZES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("EDS_BENCH_CTL_SIZES: numbers"))
        .collect();
    let me = std::env::current_exe().expect("this benchmark's path");
    if std::env::var_os("EDS_BENCH_CTL_REPORT_ONLY").is_none() {
        for &n in &sizes {
            for mode in ["floor", "controller"] {
                let status = Command::new(&me)
                    .env(RUN, format!("{mode}:{n}"))
                    .status()
                    .expect("running one size");
                if !status.success() {
                    eprintln!("{mode} at {n} failed: {status}");
                }
            }
        }
    }
    report::write(&out, &sizes);
}

/// The floor: the same children, created by a plain client.
async fn floor(n: usize) -> Value {
    let cp = cp::shared();
    let admin = cp.client().await;
    let peers = tempfile::tempdir().expect("a directory for the scheduler and KWOK");
    let mut kwok = Kwok::start(&cp, &admin, peers.path()).await;
    let slots = cluster::slots(n);
    let client = cluster::floor_identity(&cp, &admin).await;
    cluster::create_namespaces(&admin, &slots).await;
    let objects: Vec<(Slot, Vec<(ChildKind, DynamicObject)>)> =
        slots.iter().map(|slot| (slot.clone(), rendered(slot))).collect();
    warm_up(&admin, &slots[0]).await;
    warm_up_children(&client, &slots[0], false).await;
    let mut tail = audit::Tail::new(&cp.audit_path(), FLOOR_USER);
    tail.read();
    let machine = machine(&cp, &kwok, &[]);
    let machine_from = machine.read(&admin).await;

    println!("floor at {n}: creating {} objects", 4 * n);
    let wall = Timestamp::now();
    let started = Instant::now();
    let seen = Convergence::new(started, n);
    let watches = seen.watch(&admin, false);
    let retries = std::sync::atomic::AtomicU64::new(0);
    let apply = std::env::var_os(FLOOR_APPLY).is_some();
    let returned = std::sync::Mutex::new(Vec::with_capacity(n));
    futures::stream::iter(&objects)
        .for_each_concurrent(usize::from(RECONCILE_CONCURRENCY), |(slot, children)| {
            let (client, retries, returned) = (&client, &retries, &returned);
            async move {
                for (kind, object) in children {
                    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &slot.namespace(), kind.resource());
                    loop {
                        let written = if apply {
                            let name = object.metadata.name.as_deref().expect("a named child");
                            api.patch(name, &PatchParams::apply("eds-floor"), &Patch::Apply(object))
                                .await
                        } else {
                            api.create(&PostParams::default(), object).await
                        };
                        match written {
                            Ok(_) => break,
                            Err(e) if retryable(&e) => {
                                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(e) => panic!("creating {} {}: {e}", kind.resource().kind, slot.service),
                        }
                    }
                }
                returned.lock().unwrap().push(started.elapsed().as_secs_f64());
            }
        })
        .await;
    let created = started.elapsed().as_secs_f64();
    assert!(
        seen.wait(Duration::from_secs(600)).await,
        "the floor's objects never all appeared"
    );
    let seen_all = started.elapsed().as_secs_f64();
    let machine_to = machine.read(&admin).await;
    for task in watches {
        task.abort();
    }
    println!("floor at {n}: created in {created:.1} s, all seen in {seen_all:.1} s");
    // Then, off the floor's clock, until every Deployment is available: the
    // counterpart of the controller's claims saying DeploymentAvailable.
    let available = Convergence::new(started, n);
    let available_watch = available.watch_available(&admin);
    let all_available = available.wait(SETTLE_TIMEOUT).await;
    available_watch.abort();
    let available_s = all_available.then(|| available.times().last().copied()).flatten();
    match available_s {
        Some(at) => println!("floor at {n}: every Deployment available at {at:.1} s"),
        None => println!("floor at {n}: not every Deployment available in {SETTLE_TIMEOUT:?}"),
    }
    kwok.assert_running();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = tail.read().to_vec();
    let mut returned = returned.into_inner().unwrap();
    returned.sort_by(f64::total_cmp);
    json!({
        "mode": "floor",
        "n": n,
        "applies": apply,
        "namespaces": cluster::namespaces(&slots).len(),
        "created_s": created,
        "seen_s": seen_all,
        "available_s": available_s,
        "curve": seen.times(),
        "returned": returned,
        "retries": retries.into_inner(),
        "requests": audit::count(&requests, wall, Timestamp::now()),
        "write_latency_s": audit::write_latency(&requests, wall, Timestamp::now()),
        "failures": audit::failures(&requests, wall, Timestamp::now()),
        "machine": machine::spent(&machine_from, &machine_to),
    })
}

/// Reads the CPU of every process on the machine that takes part in a run:
/// the control plane's, the scheduler's, KWOK's, `more`, and this driver's.
fn machine(cp: &cp::ControlPlane, kwok: &Kwok, more: &[(&str, Option<u32>)]) -> Machine {
    let mut processes = cp.pids();
    for (name, pid) in [
        ("kube-scheduler", kwok.scheduler.pid()),
        ("kwok", kwok.kwok.pid()),
        ("driver", Some(std::process::id())),
    ]
    .into_iter()
    .chain(more.iter().copied())
    {
        processes.push((name.to_string(), pid.expect("a running process")));
    }
    Machine::new(processes)
}

/// The controller's four children of `slot`'s claim as it would apply them
/// (stamped), without owner references: no claim owns them here.
fn rendered(slot: &Slot) -> Vec<(ChildKind, DynamicObject)> {
    let mut claim = slot.claim();
    claim.metadata.uid = Some("00000000-0000-4000-8000-000000000000".into());
    let children = desired_children(&claim, &Platform::default()).expect("a claim that renders");
    let values = [
        serde_json::to_value(&children.service_account),
        serde_json::to_value(&children.deployment),
        serde_json::to_value(&children.service),
        serde_json::to_value(&children.scaled_object),
    ];
    ChildKind::APPLY_ORDER
        .into_iter()
        .zip(values)
        .map(|(kind, value)| {
            let mut value = value.expect("a child as JSON");
            value["metadata"].as_object_mut().unwrap().remove("ownerReferences");
            stamp(&mut value);
            (kind, serde_json::from_value(value).expect("a Kubernetes object"))
        })
        .collect()
}

/// Before either run's clock starts, the same for both: `slot`'s claim
/// created, and its four children created and server-side applied, all as
/// dry runs (nothing is stored, no cluster IP is kept). The API server builds
/// some of what it needs for a kind (its schema, validation and field
/// managers) on the kind's first use, and the first claims of a run paid for
/// it: the driver's 100 claims once took 2.1 s to create, against 0.1 s in
/// the run before.
async fn warm_up(admin: &Client, slot: &Slot) {
    Api::<EventDrivenService>::namespaced(admin.clone(), &slot.namespace())
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &slot.claim(),
        )
        .await
        .expect("a dry-run claim");
    warm_up_children(admin, slot, true).await;
}

/// `slot`'s four children created as a dry run by `client`, and also applied
/// as one when `apply`.
async fn warm_up_children(client: &Client, slot: &Slot, apply: bool) {
    let dry_create = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let dry_apply = PatchParams::apply("eds-bench-warm-up").dry_run();
    for (kind, object) in rendered(slot) {
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), &slot.namespace(), kind.resource());
        api.create(&dry_create, &object)
            .await
            .unwrap_or_else(|e| panic!("a dry-run create of {}: {e}", kind.resource().kind));
        if apply {
            let name = object.metadata.name.as_deref().expect("a named child");
            api.patch(name, &dry_apply, &Patch::Apply(&object))
                .await
                .unwrap_or_else(|e| panic!("a dry-run apply of {}: {e}", kind.resource().kind));
        }
    }
}

/// Throttling or a moment's unavailability: the controller would retry too.
fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        _ => true,
    }
}

/// The controller's run. See the module docs.
async fn controller(n: usize) -> Value {
    let cp = cp::shared();
    let admin = cp.client().await;
    let peers = tempfile::tempdir().expect("a directory for the scheduler and KWOK");
    let mut kwok = Kwok::start(&cp, &admin, peers.path()).await;
    let slots = cluster::slots(n);
    let kubeconfig = cluster::controller_identity(&cp, &admin).await;
    let nats = NatsServer::start();
    let lag = lag_interval();
    let setup = Instant::now();
    cluster::create_namespaces(&admin, &slots).await;
    cluster::create_consumers(&nats.url(), &slots).await;
    println!(
        "controller at {n}: {} namespaces, {n} consumers in {:.1} s",
        cluster::namespaces(&slots).len(),
        setup.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().expect("a directory for the controller");
    let port = free_port();
    let wrapper = std::env::var(WRAPPER).unwrap_or_default();
    let mut command = testkit::process::wrapped(&wrapper, env!("CARGO_BIN_EXE_eds"));
    command
        .arg("controller")
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--identity", "bench"])
        .args(["--lag-interval", &format!("{}s", lag.as_secs())])
        .args(["--nats-url", &nats.url()])
        .args(["--nats-namespaces", "*"])
        .env("KUBECONFIG", &kubeconfig);
    let mut peer = Peer::spawn("eds-controller", command, &dir.path().join("controller.log"));
    peer.wait_http_ok(port, "/readyz", Duration::from_secs(60));
    wait_leader(port).await;
    warm_up(&admin, &slots[0]).await;
    let pid = peer.pid().expect("the controller's pid");
    let mut tail = audit::Tail::new(&cp.audit_path(), CONTROLLER_USER);
    tail.read();
    let machine = machine(
        &cp,
        &kwok,
        &[("eds controller", Some(pid)), ("nats-server", nats.peer.pid())],
    );
    let machine_from = machine.read(&admin).await;

    let wall = Timestamp::now();
    let started = Instant::now();
    let sampler = ProcSampler::start(pid, started, Duration::from_millis(500));
    let at_start = sampler.now();
    let at_start_scrape = scrape(port);
    let reconciles_at_start = sum(&at_start_scrape, "eds_reconcile_total");
    let reconcile_seconds_at_start = sum(&at_start_scrape, "eds_reconcile_duration_seconds_sum");
    let progress = Convergence::new(started, n);
    let watches = progress.watch(&admin, true);
    let ready = Convergence::new(started, n);
    let ready_watch = ready.watch_ready(&admin);
    println!("controller at {n}: creating {n} claims");
    futures::stream::iter(&slots)
        .for_each_concurrent(CREATE_CONCURRENCY, |slot| {
            let admin = &admin;
            async move {
                let claim = slot.claim();
                Api::<EventDrivenService>::namespaced(admin.clone(), &slot.namespace())
                    .create(&PostParams::default(), &claim)
                    .await
                    .unwrap_or_else(|e| panic!("creating claim {}: {e}", slot.service));
            }
        })
        .await;
    let created = started.elapsed().as_secs_f64();
    println!("controller at {n}: claims created in {created:.1} s");
    let ticker = progress_ticker(progress.clone(), n);
    let converged_all = progress.wait(CONVERGE_TIMEOUT).await;
    ticker.abort();
    let converged = started.elapsed().as_secs_f64();
    let at_converged = sampler.now();
    // One scrape: at 10,000 claims each is about 25 MiB of text.
    let at_converged_scrape = scrape(port);
    let reconciles_at_converged = sum(&at_converged_scrape, "eds_reconcile_total");
    let reconcile_seconds_at_converged = sum(&at_converged_scrape, "eds_reconcile_duration_seconds_sum");
    drop(at_converged_scrape);
    let machine_to = machine.read(&admin).await;
    println!(
        "controller at {n}: {} of {n} converged in {converged:.1} s",
        progress.count()
    );
    for task in watches {
        task.abort();
    }

    // Until every claim says DeploymentAvailable (its pods scheduled, made
    // Ready by KWOK, counted by the ReplicaSet and the Deployment) and the
    // controller stops writing (those status updates keep reconciles coming).
    let settle_deadline = Instant::now() + SETTLE_TIMEOUT;
    let last_write = loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let last = audit::last_claim_write(tail.read()).unwrap_or(wall);
        let quiet = Timestamp::now().duration_since(last).unsigned_abs() >= QUIET;
        if (quiet && ready.count() >= n) || Instant::now() > settle_deadline {
            break last;
        }
    };
    let settled = last_write.duration_since(wall).as_secs_f64();
    println!("controller at {n}: last write at {settled:.1} s");
    ready_watch.abort();
    let ready_times = ready.times();
    println!(
        "controller at {n}: {} of {n} claims with their Deployment available, the last at {:.1} s",
        ready_times.len(),
        ready_times.last().copied().unwrap_or(f64::NAN)
    );
    kwok.assert_running();

    let idle_from = Timestamp::now();
    let idle_sample_from = sampler.now();
    let reconciles_idle_from = metric(port, "eds_reconcile_total");
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_to = Timestamp::now();
    let idle_sample_to = sampler.now();
    let reconciles_idle_to = metric(port, "eds_reconcile_total");
    let idle_requests = audit::count(tail.read(), idle_from, idle_to);
    println!("controller at {n}: idle window: {idle_requests:?}");

    let changes_from = Timestamp::now();
    let latencies = change_latencies(&admin, &slots).await;
    let changes_to = Timestamp::now();
    let after_changes = sampler.now();

    let scrape = scrape(port);
    let applies: serde_json::Map<String, Value> = scrape
        .select("eds_child_applies_total", &[])
        .map(|s| (s.labels.get("kind").cloned().unwrap_or_default(), json!(s.value)))
        .collect();
    let series = scrape.samples.len();
    let stores = store_sizes(&admin).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = tail.read().to_vec();
    let end = Timestamp::now();
    // A wrapper (a profiler) may not pass the signal on: stop the controller
    // under it first, so that it exits cleanly and the profile is written.
    if !wrapper.is_empty() {
        let _ = Command::new("pkill").args(["-TERM", "-P", &pid.to_string()]).status();
    }
    peer.terminate(Duration::from_secs(60));
    json!({
        "mode": "controller",
        "n": n,
        "namespaces": cluster::namespaces(&slots).len(),
        "created_s": created,
        "converged_all": converged_all,
        "converged_s": converged,
        "settled_s": settled,
        "curve": progress.times(),
        "ready_curve": ready_times,
        "requests": {
            "converge": audit::count(&requests, wall, last_write.checked_add(jiff::SignedDuration::from_millis(1)).unwrap()),
            "idle": idle_requests,
            "changes": audit::count(&requests, changes_from, changes_to),
            "all": audit::count(&requests, wall, end),
        },
        "write_latency_s": audit::write_latency(&requests, wall, last_write.checked_add(jiff::SignedDuration::from_millis(1)).unwrap()),
        "failures": audit::failures(&requests, wall, end),
        "idle_window_s": IDLE_WINDOW.as_secs_f64(),
        "lag_interval_s": lag.as_secs_f64(),
        "reconciles": {
            "converge": reconciles_at_converged - reconciles_at_start,
            "converge_seconds": reconcile_seconds_at_converged - reconcile_seconds_at_start,
            "idle": reconciles_idle_to - reconciles_idle_from,
            "total": scrape.sum("eds_reconcile_total", &[]).unwrap_or(0.0),
        },
        "applies": applies,
        "metric_series": series,
        "proc": {
            "start": at_start,
            "converged": at_converged,
            "idle_from": idle_sample_from,
            "idle_to": idle_sample_to,
            "after_changes": after_changes,
            "samples": sampler.samples(),
        },
        "change_latency_s": latencies,
        "stores": stores,
        "machine": machine::spent(&machine_from, &machine_to),
    })
}

/// The sum of every sample of `name` on the controller's /metrics.
fn scrape(port: u16) -> Scrape {
    let body = testkit::http::get(port, "/metrics")
        .expect("the controller's /metrics")
        .body;
    Scrape::parse(&body)
}

/// The sum of `name`'s series (0 when it has none).
fn sum(scrape: &Scrape, name: &str) -> f64 {
    scrape.sum(name, &[]).unwrap_or(0.0)
}

fn metric(port: u16, name: &str) -> f64 {
    sum(&scrape(port), name)
}

async fn wait_leader(port: u16) {
    testkit::eventually("the controller leads", Duration::from_secs(60), async || {
        if metric(port, "eds_leader") == 1.0 {
            Ok(())
        } else {
            Err("not leading yet")
        }
    })
    .await
}

/// Prints progress every 10 s while claims converge.
fn progress_ticker(progress: std::sync::Arc<Convergence>, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            println!("  {} of {n} converged", progress.count());
        }
    })
}

/// Changes [`CHANGES`] claims one at a time (a new image) and times each
/// until its Deployment, as a watch sees it, holds the new image.
async fn change_latencies(client: &Client, slots: &[Slot]) -> Vec<f64> {
    let mut latencies = Vec::new();
    for i in 0..CHANGES {
        let slot = &slots[i * slots.len() / CHANGES];
        let image = format!("ghcr.io/acme/worker:2.0.{i}");
        let deployments = Api::<Deployment>::namespaced(client.clone(), &slot.namespace());
        let config = watcher::Config::default().fields(&format!("metadata.name={}", slot.service));
        let mut events = watcher::watcher(deployments, config).boxed();
        while !matches!(events.next().await, Some(Ok(Event::InitDone))) {}
        let started = Instant::now();
        Api::<EventDrivenService>::namespaced(client.clone(), &slot.namespace())
            .patch(
                &slot.service,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"image": image}})),
            )
            .await
            .expect("changing a claim");
        let seen = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(event) = events.next().await {
                if let Ok(Event::Apply(d)) = event
                    && image_of(&d) == Some(image.as_str())
                {
                    return;
                }
            }
        })
        .await;
        match seen {
            Ok(()) => latencies.push(started.elapsed().as_secs_f64()),
            Err(_) => eprintln!("change {i} not seen in 60 s"),
        }
        // Changes at arbitrary moments of the resync period.
        tokio::time::sleep(Duration::from_millis(150 + 37 * (i as u64 % 7))).await;
    }
    latencies
}

fn image_of(deployment: &Deployment) -> Option<&str> {
    deployment
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .as_deref()
}

/// What each of the controller's caches holds per object: as JSON (the
/// claims as they come, the children without managedFields), and in memory
/// as the controller holds them (claims without managedFields and
/// last-applied copy; children as [`LiveChild`]), beside the
/// `DynamicObject` trees the child caches held before.
async fn store_sizes(client: &Client) -> Value {
    let mut sizes = serde_json::Map::new();
    let claims = Api::<EventDrivenService>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("listing claims");
    let texts: Vec<String> = claims.items.iter().map(|c| serde_json::to_string(c).unwrap()).collect();
    let (held, heap) = heap::retained(|| {
        texts
            .iter()
            .map(|text| {
                let mut claim: EventDrivenService = serde_json::from_str(text).unwrap();
                claim.metadata.managed_fields = None;
                if let Some(annotations) = claim.metadata.annotations.as_mut() {
                    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
                }
                claim
            })
            .collect::<Vec<_>>()
    });
    drop(held);
    sizes.insert("EventDrivenService".into(), summary(&texts, Some(heap), None));
    let selector = format!("app.kubernetes.io/managed-by={MANAGED_BY}");
    for kind in ChildKind::APPLY_ORDER {
        let list = Api::<DynamicObject>::all_with(client.clone(), kind.resource())
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("listing children");
        let texts: Vec<String> = list
            .items
            .into_iter()
            .map(|mut o| {
                o.metadata.managed_fields = None;
                serde_json::to_string(&o).unwrap()
            })
            .collect();
        let live = heap::weigh::<LiveChild>(&texts);
        let trees = heap::weigh::<DynamicObject>(&texts);
        sizes.insert(kind.resource().kind.clone(), summary(&texts, Some(live), Some(trees)));
    }
    let managed: Vec<String> = claims
        .items
        .iter()
        .map(|c| serde_json::to_string(&c.metadata.managed_fields).unwrap())
        .collect();
    sizes.insert("EventDrivenService managedFields".into(), summary(&managed, None, None));
    Value::Object(sizes)
}

/// Objects' JSON sizes, and their heap sizes as held now (`heap`) and as
/// `DynamicObject` trees (`trees`), per object.
fn summary(texts: &[String], heap: Option<usize>, trees: Option<usize>) -> Value {
    let total: usize = texts.iter().map(String::len).sum();
    let per = |bytes: usize| {
        if texts.is_empty() {
            0.0
        } else {
            bytes as f64 / texts.len() as f64
        }
    };
    json!({
        "objects": texts.len(),
        "bytes_per_object": per(total),
        "total_bytes": total,
        "heap_bytes_per_object": heap.map(per),
        "tree_heap_bytes_per_object": trees.map(per),
    })
}
