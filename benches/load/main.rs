//! Load benchmark: the release `eds scaler` process, driven over real gRPC the
//! way KEDA drives an external scaler, side by side with KEDA's built-in
//! `nats-jetstream` scaler (its own code, in `benches/keda-baseline`), on one
//! nats-server and the same durable consumers, each with a backlog.
//!
//! `scripts/bench.sh` runs it; docs/benchmarks.md explains every figure.
//! Environment (all optional):
//! - `EDS_BENCH_SIZES`: consumer counts, default `1,100,1000,10000`;
//! - `EDS_BENCH_WINDOW_SECS`: measurement window per phase, default 30
//!   (one KEDA polling interval);
//! - `EDS_BENCH_OUT`: output directory, default `target/bench`;
//! - `EDS_BENCH_OURS_ONLY=1`: measure our scaler only (no KEDA baseline, no
//!   activation trials) and write `ours.json`: a quick loop while tuning;
//! - `EDS_BENCH_SCALER_WRAPPER`: a command to run the scaler under, e.g.
//!   `heaptrack -o target/bench/heap` (its CPU and RSS figures are then the
//!   wrapper's, not the scaler's).
mod activation;
mod baseline;
mod driver;
mod echo;
mod probe;
mod report;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use driver::{Keda, ScaledObject};
use stats::Summary;
use testkit::nats::NatsServer;
use testkit::process::{Peer, free_port};

/// KEDA's defaults: the ScaledObject pollingInterval and the HPA sync period.
const POLLING_INTERVAL: Duration = Duration::from_secs(30);
const HPA_SYNC: Duration = Duration::from_secs(15);
/// The scaler's default cache TTL: the NATS request rate is bounded by
/// unique consumers / TTL.
const CACHE_TTL: Duration = Duration::from_secs(1);
/// Messages waiting on every consumer.
const BACKLOG: usize = 10;
/// Closed-loop phases: our callers in flight, KEDA's callers (one per core).
const MAX_RATE_CONCURRENCY: usize = 64;
const KEDA_MAX_RATE_WORKERS: usize = 2;
const MAX_RATE_WINDOW: Duration = Duration::from_secs(10);
/// Activation trials per mode.
const ACTIVATION_TRIALS: usize = 50;
/// Every KEDA poll fetches every consumer of the account, so its cost per
/// second grows with ScaledObjects × consumers. The baseline drives all N
/// ScaledObjects while that product stays under this, and above it a sample
/// of this ÷ N (100 at 1,000 consumers, 10 at 10,000), which this machine can
/// serve on KEDA's schedule; its traffic is scaled to all N in the report.
const KEDA_SAMPLE_ENTRIES: usize = 100_000;

const STREAM: &str = "LOAD";
const CONSUMER_PREFIX: &str = "c";

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: the
    // load benchmark takes minutes and needs release builds, so it only runs
    // under `cargo bench`.
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == echo::FLAG) {
        echo::serve(args.get(at + 1).expect("--echo-server ADDR"));
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("load: runs under `cargo bench --bench load` (scripts/bench.sh)");
        return;
    }
    let config = Config::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    std::fs::create_dir_all(&config.out).expect("output directory");
    if config.ours_only {
        let ours = runtime.block_on(run_ours_only(&config));
        let json = config.out.join("ours.json");
        std::fs::write(&json, serde_json::to_string_pretty(&ours).expect("JSON")).expect("writing results");
        eprintln!("load: results in {}", json.display());
        return;
    }
    let report = runtime.block_on(run(&config));
    let json = config.out.join("load.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report).expect("JSON")).expect("writing results");
    let markdown = report::markdown(&report);
    std::fs::write(config.out.join("load.md"), &markdown).expect("writing results");
    println!("{markdown}");
    eprintln!("load: results in {}", config.out.display());
}

struct Config {
    sizes: Vec<usize>,
    window: Duration,
    out: PathBuf,
    ours_only: bool,
}

impl Config {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let sizes = var("EDS_BENCH_SIZES")
            .map(|v| {
                v.split(',')
                    .map(|n| n.trim().parse().expect("EDS_BENCH_SIZES: numbers, comma separated"))
                    .collect()
            })
            .unwrap_or_else(|| vec![1, 100, 1000, 10_000]);
        let window = var("EDS_BENCH_WINDOW_SECS")
            .map(|v| Duration::from_secs(v.parse().expect("EDS_BENCH_WINDOW_SECS: seconds")))
            .unwrap_or(POLLING_INTERVAL);
        let out = var("EDS_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"));
        let ours_only = var("EDS_BENCH_OURS_ONLY").is_some_and(|v| v != "0");
        Config {
            sizes,
            window,
            out,
            ours_only,
        }
    }
}

/// Everything one run measured.
#[derive(Serialize)]
pub struct Report {
    pub window_secs: f64,
    pub polling_interval_secs: f64,
    pub hpa_sync_secs: f64,
    pub cache_ttl_secs: f64,
    pub backlog_per_consumer: usize,
    pub stages: Vec<Stage>,
    pub activation: Activation,
}

/// One consumer count.
#[derive(Serialize)]
pub struct Stage {
    pub consumers: usize,
    pub setup_secs: f64,
    pub ours: Ours,
    pub keda_poll: baseline::Run,
    pub keda_max: baseline::Run,
}

/// Our scaler under KEDA's schedule, then in a closed loop.
#[derive(Serialize)]
pub struct Ours {
    pub scaled_objects: usize,
    pub streams_active: usize,
    pub offered_rpc_per_sec: f64,
    pub rpc: Vec<(String, Summary)>,
    pub usage: Window,
    /// Of the NATS requests in the window, the consumer reads
    /// (`CONSUMER.INFO`, the scaler's own `eds_nats_requests_total`); the
    /// rest are the push notifiers' consumer creates and deletes.
    pub consumer_reads_per_sec: f64,
    /// The scaler's own handler time (its Prometheus histogram) over the
    /// same window: what the RPC costs inside the scaler.
    pub server_side: Vec<ServerSide>,
    /// RSS right after start, with every consumer read once (cache and
    /// gauges filled), and once every stream is open as well.
    pub rss_started_bytes: u64,
    pub rss_cache_warm_bytes: u64,
    pub rss_streams_open_bytes: u64,
    pub max_rate: MaxRate,
    /// The floor: the same schedule against a bare gRPC echo server, right
    /// after ours.
    pub floor: Floor,
    /// Push activation with all N streams open and their consumers read
    /// (measured at the largest N only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_under_load_ms: Option<Vec<f64>>,
}

/// A bare gRPC unary call on loopback under the same schedule (benches/load/echo.rs).
#[derive(Serialize)]
pub struct Floor {
    pub rpc: Vec<(String, Summary)>,
    pub server_cpu_cores: f64,
    pub driver_cpu_cores: f64,
    pub load_average: f64,
}

/// Bucket bounds (seconds) of the scaler's handler-time histogram.
#[derive(Serialize)]
pub struct ServerSide {
    pub method: String,
    pub p50_at_most_secs: Option<f64>,
    pub p99_at_most_secs: Option<f64>,
}

#[derive(Serialize)]
pub struct MaxRate {
    pub concurrency: usize,
    pub rpc: Summary,
    pub usage: Window,
}

/// What the processes did over one window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Window {
    pub secs: f64,
    pub nats_requests_per_sec: f64,
    pub nats_bytes_per_sec: f64,
    pub scaler_cpu_cores: f64,
    pub scaler_rss_bytes: u64,
    pub scaler_peak_rss_bytes: u64,
    pub nats_cpu_cores: f64,
    pub driver_cpu_cores: f64,
    /// The machine's 1-minute load average at the end: other work on it.
    pub load_average: f64,
}

#[derive(Serialize)]
pub struct Activation {
    pub push_ms: Vec<f64>,
    pub polled_5s_ms: Vec<f64>,
    pub polled_30s_ms: Vec<f64>,
}

/// The nats-server every phase uses, with its monitoring port, and the load
/// stream on it.
async fn start_nats() -> (NatsServer, u16, jetstream::Context, stream::Stream) {
    let monitor_port = free_port();
    let nats = NatsServer::start_with(&format!("http: 127.0.0.1:{monitor_port}\nmax_payload: 8MB"));
    let js = testkit::js::js(&nats.url()).await;
    let load = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["load.>".into()],
            // nats-server allows 1,000 consumers per stream unless told.
            max_consumers: 20_000,
            ..Default::default()
        })
        .await
        .expect("stream");
    (nats, monitor_port, js, load)
}

/// Our scaler alone at each size, as in the full run.
async fn run_ours_only(config: &Config) -> Vec<Ours> {
    let (nats, monitor_port, js, load) = start_nats().await;
    let mut stages = Vec::new();
    let mut have = 0;
    for &n in &config.sizes {
        grow(&js, &load, have, n).await;
        have = have.max(n);
        let busy = (Some(&n) == config.sizes.iter().max()).then_some(&js);
        let ours = measure_ours(&nats, monitor_port, n, config.window, busy).await;
        eprintln!(
            "load: ours at {n}: RSS {:.1} MiB started, {:.1} warm, {:.1} streams open; GetMetrics p99 {:?} us (floor {:?} us); NATS {:.1} req/s",
            ours.rss_started_bytes as f64 / 1048576.0,
            ours.rss_cache_warm_bytes as f64 / 1048576.0,
            ours.rss_streams_open_bytes as f64 / 1048576.0,
            get_metrics_p99(&ours.rpc),
            get_metrics_p99(&ours.floor.rpc),
            ours.usage.nats_requests_per_sec,
        );
        stages.push(ours);
    }
    stages
}

async fn run(config: &Config) -> Report {
    let (nats, monitor_port, js, load) = start_nats().await;
    let harness = baseline::Harness {
        monitor_port,
        nats_pid: nats.peer.pid().expect("nats-server runs"),
        stream: STREAM.into(),
        consumer_prefix: CONSUMER_PREFIX.into(),
    };

    let mut stages = Vec::new();
    let mut have = 0;
    for &n in &config.sizes {
        let started = Instant::now();
        grow(&js, &load, have, n).await;
        have = have.max(n);
        let setup_secs = started.elapsed().as_secs_f64();
        eprintln!("load: {n} consumers ready in {setup_secs:.1} s");

        let busy = (Some(&n) == config.sizes.iter().max()).then_some(&js);
        let ours = measure_ours(&nats, monitor_port, n, config.window, busy).await;
        eprintln!(
            "load: ours at {n}: {:.0} RPC/s, {:.0} NATS req/s; max {:.0} RPC/s",
            ours.rpc.last().map_or(0.0, |(_, s)| s.per_sec),
            ours.usage.nats_requests_per_sec,
            ours.max_rate.rpc.per_sec
        );
        let keda_poll = harness.poll(n, keda_scaled_objects(n), POLLING_INTERVAL, HPA_SYNC, config.window);
        let keda_max = harness.closed_loop(n, KEDA_MAX_RATE_WORKERS, MAX_RATE_WINDOW);
        eprintln!(
            "load: KEDA at {n}: {:.1} calls/s, {:.0} B/call; max {:.1} calls/s",
            keda_poll.calls_per_sec, keda_poll.bytes_per_call, keda_max.calls_per_sec
        );
        stages.push(Stage {
            consumers: n,
            setup_secs,
            ours,
            keda_poll,
            keda_max,
        });
    }

    let scaler = ScalerProcess::start(&nats, "activation");
    let keda = Keda::connect(scaler.grpc).await;
    let push_ms = millis(activation::push(&keda, &js, "WAKE", ACTIVATION_TRIALS).await);
    let polled_5s_ms = millis(activation::polled(&keda, &js, ACTIVATION_TRIALS, Duration::from_secs(5)).await);
    let polled_30s_ms = millis(activation::polled(&keda, &js, ACTIVATION_TRIALS, POLLING_INTERVAL).await);
    drop(scaler);

    Report {
        window_secs: config.window.as_secs_f64(),
        polling_interval_secs: POLLING_INTERVAL.as_secs_f64(),
        hpa_sync_secs: HPA_SYNC.as_secs_f64(),
        cache_ttl_secs: CACHE_TTL.as_secs_f64(),
        backlog_per_consumer: BACKLOG,
        stages,
        activation: Activation {
            push_ms,
            polled_5s_ms,
            polled_30s_ms,
        },
    }
}

/// The operator's GetMetrics p99 (µs) in a list of summaries.
pub fn get_metrics_p99(rpc: &[(String, Summary)]) -> Option<u64> {
    rpc.iter().find(|(m, _)| m == "GetMetrics").map(|(_, s)| s.p99_us)
}

/// The echo floor under KEDA's schedule for `window`, with the same
/// ScaledObjects: what a bare gRPC unary call costs on this machine now.
async fn measure_floor(nats: &NatsServer, scaled_objects: &[ScaledObject], window: Duration) -> Floor {
    let server = echo::EchoProcess::start(&nats.path(&format!("echo-{}.log", scaled_objects.len())));
    let keda = Keda::connect(server.grpc).await;
    keda.warm(scaled_objects).await;
    let (server_before, driver_before, started) = (
        probe::usage(server.pid()),
        probe::usage(std::process::id()),
        Instant::now(),
    );
    let calls = keda
        .poll(scaled_objects, POLLING_INTERVAL, HPA_SYNC, Duration::ZERO, window)
        .await;
    let secs = started.elapsed().as_secs_f64();
    let cores = |after: probe::Usage, before: probe::Usage| (after.cpu_secs - before.cpu_secs) / secs;
    Floor {
        server_cpu_cores: cores(probe::usage(server.pid()), server_before),
        driver_cpu_cores: cores(probe::usage(std::process::id()), driver_before),
        load_average: probe::load_average(),
        rpc: calls
            .summaries(window)
            .into_iter()
            .map(|(name, s)| (name.to_string(), s))
            .collect(),
    }
}

fn millis(latencies: Vec<Duration>) -> Vec<f64> {
    latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

/// How many ScaledObjects the KEDA baseline drives at `n` consumers.
fn keda_scaled_objects(n: usize) -> usize {
    n.min((KEDA_SAMPLE_ENTRIES / n.max(1)).max(1))
}

/// Adds durable consumers `from..to` on the load stream, each filtered to
/// its own subject with `BACKLOG` messages waiting.
async fn grow(js: &jetstream::Context, load: &stream::Stream, from: usize, to: usize) {
    futures::stream::iter(from..to)
        .map(|i| async move {
            let name = format!("{CONSUMER_PREFIX}{i}");
            testkit::js::pull_consumer(load, &name, &format!("load.{i}"), Duration::from_secs(30)).await
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let publishes = (from..to).flat_map(|i| std::iter::repeat_n(i, BACKLOG));
    futures::stream::iter(publishes)
        .map(|i| async move {
            js.publish(format!("load.{i}"), "work".into())
                .await
                .expect("publish")
                .await
                .expect("stored")
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
}

/// The release `eds scaler` binary as its own process, with its defaults.
struct ScalerProcess {
    peer: Peer,
    grpc: SocketAddr,
    http: u16,
}

impl ScalerProcess {
    fn start(nats: &NatsServer, label: &str) -> Self {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http = free_port();
        let wrapper = std::env::var("EDS_BENCH_SCALER_WRAPPER").unwrap_or_default();
        let mut command = testkit::process::wrapped(&wrapper, env!("CARGO_BIN_EXE_eds"));
        command
            .args(["scaler", "--nats-url", &nats.url()])
            // One bench, one team: every namespace, written down.
            .args(["--nats-namespaces", "*"])
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--http-addr", &format!("127.0.0.1:{http}")]);
        let mut peer = Peer::spawn("eds scaler", command, &nats.path(&format!("scaler-{label}.log")));
        peer.wait_http_ok(http, "/readyz", Duration::from_secs(20));
        ScalerProcess { peer, grpc, http }
    }

    fn pid(&self) -> u32 {
        self.peer.pid().expect("scaler runs")
    }
}

impl Drop for ScalerProcess {
    fn drop(&mut self) {
        // A wrapper (a profiler) may not pass the signal on: stop the scaler
        // under it first, so that it exits cleanly and nothing is left behind.
        if std::env::var_os("EDS_BENCH_SCALER_WRAPPER").is_some_and(|w| !w.is_empty())
            && let Some(pid) = self.peer.pid()
        {
            let _ = Command::new("pkill").args(["-TERM", "-P", &pid.to_string()]).status();
        }
        self.peer.terminate(Duration::from_secs(5));
    }
}

/// Counters of every process at one instant.
struct Snapshot {
    at: Instant,
    scaler: probe::Usage,
    scaler_conn: probe::ConnStats,
    nats: probe::Usage,
    driver: probe::Usage,
}

impl Snapshot {
    fn take(scaler_pid: u32, nats_pid: u32, monitor_port: u16) -> Self {
        Snapshot {
            at: Instant::now(),
            scaler: probe::usage(scaler_pid),
            scaler_conn: probe::connection(monitor_port, "eds-scaler/"),
            nats: probe::usage(nats_pid),
            driver: probe::usage(std::process::id()),
        }
    }

    fn since(&self, before: &Snapshot) -> Window {
        let secs = (self.at - before.at).as_secs_f64();
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        Window {
            secs,
            nats_requests_per_sec: rate(self.scaler_conn.in_msgs, before.scaler_conn.in_msgs),
            nats_bytes_per_sec: rate(self.scaler_conn.out_bytes, before.scaler_conn.out_bytes),
            scaler_cpu_cores: (self.scaler.cpu_secs - before.scaler.cpu_secs) / secs,
            scaler_rss_bytes: self.scaler.rss_bytes,
            scaler_peak_rss_bytes: self.scaler.peak_rss_bytes,
            nats_cpu_cores: (self.nats.cpu_secs - before.nats.cpu_secs) / secs,
            driver_cpu_cores: (self.driver.cpu_secs - before.driver.cpu_secs) / secs,
            load_average: probe::load_average(),
        }
    }
}

/// How long KEDA's schedule runs before the window is measured: one
/// re-check period of the scaler's push watchers (`--push-idle-recheck`),
/// and a second.
const SCHEDULE_LEAD_IN: Duration = Duration::from_secs(16);

/// A fresh scaler process; N ScaledObjects with their specs read and their
/// push streams open; then KEDA's schedule for `window`, then (with `busy`)
/// push activation trials while the N streams stay open, then the closed loop.
async fn measure_ours(
    nats: &NatsServer,
    monitor_port: u16,
    n: usize,
    window: Duration,
    busy: Option<&jetstream::Context>,
) -> Ours {
    let scaler = ScalerProcess::start(nats, &n.to_string());
    let rss_started_bytes = probe::usage(scaler.pid()).rss_bytes;
    let nats_pid = nats.peer.pid().expect("nats-server runs");
    let keda = Keda::connect(scaler.grpc).await;
    let scaled_objects: Vec<ScaledObject> = (0..n)
        .map(|i| ScaledObject::new(STREAM, &format!("{CONSUMER_PREFIX}{i}")))
        .collect();
    keda.warm(&scaled_objects).await;
    let rss_cache_warm_bytes = probe::usage(scaler.pid()).rss_bytes;
    let (streams, streams_active) = keda.open_streams(&scaled_objects).await;
    // Let the watchers' first reads and their pacing settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_streams_open_bytes = probe::usage(scaler.pid()).rss_bytes;

    // KEDA's schedule runs for a lead-in before the window, as it runs all
    // the time in a cluster: a watcher that found its consumer active
    // re-checks it one re-check period later (15 s) unless KEDA has read it
    // since, so a window that began with the schedule counted those reads
    // (104.4 requests a second at 1,000 against 95.7 after a lead-in) and not
    // the steady state.
    let measured = async {
        tokio::time::sleep(SCHEDULE_LEAD_IN).await;
        let metrics = (Instant::now(), probe::Exposition::scrape(scaler.http));
        (metrics, Snapshot::take(scaler.pid(), nats_pid, monitor_port))
    };
    let (calls, ((scraped_before, metrics_before), before)) = tokio::join!(
        keda.poll(&scaled_objects, POLLING_INTERVAL, HPA_SYNC, SCHEDULE_LEAD_IN, window),
        measured
    );
    let usage = Snapshot::take(scaler.pid(), nats_pid, monitor_port).since(&before);
    let metrics_after = probe::Exposition::scrape(scaler.http);
    let reads = "eds_nats_requests_total";
    let consumer_reads_per_sec =
        (metrics_after.sum(reads) - metrics_before.sum(reads)) / scraped_before.elapsed().as_secs_f64();
    let quantiles = |metric: &str, select: &[(&str, &str)]| {
        let q = |q| metrics_after.quantile_since(&metrics_before, metric, select, q);
        (q(0.5), q(0.99))
    };
    let rpc = "eds_scaler_rpc_duration_seconds";
    let server_side = ["GetMetricSpec", "GetMetrics", "IsActive"]
        .into_iter()
        .map(|method| (method, quantiles(rpc, &[("method", method), ("code", "OK")])))
        .chain([("NATS request", quantiles("eds_nats_request_duration_seconds", &[]))])
        .map(|(method, (p50, p99))| ServerSide {
            method: method.into(),
            p50_at_most_secs: p50,
            p99_at_most_secs: p99,
        })
        .collect();
    let push_under_load_ms = match busy {
        Some(js) => Some(millis(activation::push(&keda, js, "WAKEBUSY", ACTIVATION_TRIALS).await)),
        None => None,
    };

    let before = Snapshot::take(scaler.pid(), nats_pid, monitor_port);
    let max = keda
        .closed_loop(&scaled_objects, MAX_RATE_CONCURRENCY, MAX_RATE_WINDOW)
        .await;
    let max_usage = Snapshot::take(scaler.pid(), nats_pid, monitor_port).since(&before);
    drop(streams);
    drop(scaler);
    let floor = measure_floor(nats, &scaled_objects, window).await;

    let per_so = 3.0 / POLLING_INTERVAL.as_secs_f64() + 1.0 / HPA_SYNC.as_secs_f64();
    Ours {
        scaled_objects: n,
        streams_active,
        offered_rpc_per_sec: n as f64 * per_so,
        rpc: calls
            .summaries(window)
            .into_iter()
            .map(|(name, s)| (name.to_string(), s))
            .collect(),
        usage,
        consumer_reads_per_sec,
        server_side,
        rss_started_bytes,
        rss_cache_warm_bytes,
        rss_streams_open_bytes,
        push_under_load_ms,
        max_rate: MaxRate {
            concurrency: MAX_RATE_CONCURRENCY,
            rpc: max.summary(Duration::from_secs_f64(max_usage.secs)),
            usage: max_usage,
        },
        floor,
    }
}
