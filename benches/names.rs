//! Hostile names benchmark (issue 18): the release `eds scaler` process's
//! memory while 1,000,000 distinct consumer names arrive over gRPC, each a
//! cache miss and a NATS read. The lag cache holds at most
//! `--lag-cache-entries` (default 20,000) of them, so RSS must level off and
//! stay under [`CEILING_MIB`] however many names arrive; the run fails if it
//! does not.
//!
//! Every name is 255 bytes (the longest NATS allows), the worst case for an
//! entry's size. The names come from 1,000 namespaces in turn, so each sends
//! about 2 a second, far below the per-namespace read limit (100 a second):
//! the limiter refuses none, and every name costs an entry and a read.
//!
//! `scripts/bench.sh` runs it; docs/benchmarks.md explains the figures.
//! Environment (all optional): `EDS_BENCH_NAMES` (default 1,000,000),
//! `EDS_BENCH_OUT` (default `target/bench`).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eds::proto::external_scaler_client::ExternalScalerClient;
use eds::proto::{GetMetricsRequest, ScaledObjectRef};
use futures::StreamExt;
use serde::Serialize;
use testkit::nats::NatsServer;
use testkit::process::{Peer, free_port};
use testkit::prometheus::Scrape;

/// RSS the scaler must stay under with the default cache bound: its
/// starting RSS (about 10 MiB) plus 20,000 worst-case entries (255-byte
/// names, about 2 KiB each), plus room for the allocator's fragmentation
/// and the gRPC and NATS buffers of a saturating client.
const CEILING_MIB: f64 = 96.0;
const NAMESPACES: usize = 1000;
/// gRPC calls in flight: enough to keep the scaler busy on two cores.
const CONCURRENCY: usize = 64;
/// How long RSS is watched after the last name.
const AFTER: Duration = Duration::from_secs(30);
const STREAM: &str = "NAMES";

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("names: runs under `cargo bench --bench names` (scripts/bench.sh)");
        return;
    }
    let names: usize = std::env::var("EDS_BENCH_NAMES")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map_or(1_000_000, |v| v.trim().parse().expect("EDS_BENCH_NAMES: a number"));
    let out = std::env::var("EDS_BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"));
    std::fs::create_dir_all(&out).expect("output directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(run(names));
    std::fs::write(
        out.join("names.json"),
        serde_json::to_string_pretty(&report).expect("JSON"),
    )
    .expect("writing results");
    let markdown = markdown(&report);
    std::fs::write(out.join("names.md"), &markdown).expect("writing results");
    println!("{markdown}");
    assert!(
        report.peak_mib < CEILING_MIB,
        "RSS reached {:.1} MiB, over the {CEILING_MIB} MiB ceiling",
        report.peak_mib
    );
}

#[derive(Serialize)]
struct Report {
    names: usize,
    namespaces: usize,
    name_bytes: usize,
    cache_entries: usize,
    ceiling_mib: f64,
    secs: f64,
    names_per_sec: f64,
    /// Replies by gRPC code.
    codes: BTreeMap<String, u64>,
    start_mib: f64,
    peak_mib: f64,
    /// VmHWM: the kernel's own peak, between two samples too.
    hwm_mib: f64,
    end_mib: f64,
    after_mib: f64,
    misses: f64,
    refused: f64,
    evictions: f64,
    /// (seconds since the first name, names sent, RSS MiB), once a second.
    samples: Vec<(f64, u64, f64)>,
}

async fn run(names: usize) -> Report {
    let nats = NatsServer::start();
    let js = testkit::js::js(&nats.url()).await;
    testkit::js::stream_with(&js, STREAM, &["names.>"]).await;

    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_eds"));
    command
        .args(["scaler", "--nats-url", &nats.url()])
        .args(["--nats-namespaces", "*"])
        .args(["--grpc-addr", &grpc.to_string()])
        .args(["--http-addr", &format!("127.0.0.1:{http}")]);
    let mut scaler = Peer::spawn("eds scaler", command, &nats.path("scaler-names.log"));
    scaler.wait_http_ok(http, "/readyz", Duration::from_secs(20));
    let pid = scaler.pid().expect("scaler runs");
    let cache_entries = eds::lag::cache::DEFAULT_MAX_ENTRIES;

    let client = ExternalScalerClient::connect(format!("http://{grpc}"))
        .await
        .expect("gRPC connection");
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let start_mib = rss_mib(pid, "VmRSS:");
    let sampler = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                samples.push((
                    started.elapsed().as_secs_f64(),
                    sent.load(Ordering::Relaxed),
                    rss_mib(pid, "VmRSS:"),
                ));
                if samples.len() % 30 == 0 {
                    let (t, n, mib) = samples[samples.len() - 1];
                    eprintln!("names: {t:.0} s, {n} names, RSS {mib:.1} MiB");
                }
                if Arc::strong_count(&sent) == 1 {
                    return samples;
                }
            }
        })
    };

    let codes: BTreeMap<String, u64> = futures::stream::iter(0..names)
        .map(|i| {
            let mut client = client.clone();
            let sent = sent.clone();
            async move {
                let code = match client.get_metrics(request(i)).await {
                    Ok(_) => "OK".to_string(),
                    Err(status) => format!("{:?}", status.code()),
                };
                sent.fetch_add(1, Ordering::Relaxed);
                code
            }
        })
        .buffer_unordered(CONCURRENCY)
        .fold(BTreeMap::new(), |mut codes, code| async move {
            *codes.entry(code).or_insert(0) += 1;
            codes
        })
        .await;
    let secs = started.elapsed().as_secs_f64();
    let end_mib = rss_mib(pid, "VmRSS:");
    tokio::time::sleep(AFTER).await;
    let after_mib = rss_mib(pid, "VmRSS:");
    let hwm_mib = rss_mib(pid, "VmHWM:");
    drop(sent);
    let samples = sampler.await.expect("sampler");
    let body = testkit::http::get_async(http, "/metrics").await.expect("metrics").body;
    let scrape = Scrape::parse(&body);
    let lookups = |result| {
        scrape
            .sum("eds_lag_cache_requests_total", &[("result", result)])
            .unwrap_or(0.0)
    };
    scaler.terminate(Duration::from_secs(5));

    let peak_mib = samples
        .iter()
        .map(|&(_, _, mib)| mib)
        .chain([start_mib, end_mib, after_mib])
        .fold(0.0, f64::max);
    Report {
        names,
        namespaces: NAMESPACES,
        name_bytes: consumer(0).len(),
        cache_entries,
        ceiling_mib: CEILING_MIB,
        secs,
        names_per_sec: names as f64 / secs,
        codes,
        start_mib,
        peak_mib,
        hwm_mib,
        end_mib,
        after_mib,
        misses: lookups("miss"),
        refused: lookups("refused"),
        evictions: scrape.sum("eds_lag_cache_evictions_total", &[]).unwrap_or(0.0),
        samples,
    }
}

/// The `i`th distinct name: 255 bytes, the most NATS allows.
fn consumer(i: usize) -> String {
    format!("{i:09}-{}", "x".repeat(245))
}

fn request(i: usize) -> GetMetricsRequest {
    let consumer = consumer(i);
    let metadata = [("stream", STREAM), ("consumer", &consumer), ("lagThreshold", "5")];
    GetMetricsRequest {
        metric_name: format!("s0-{}", eds::trigger::metric_name(STREAM, &consumer)),
        scaled_object_ref: Some(ScaledObjectRef {
            name: format!("so-{i}"),
            namespace: format!("team-{}", i % NAMESPACES),
            scaler_metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }),
    }
}

/// A `/proc/<pid>/status` figure (`VmRSS:`, `VmHWM:`) in MiB.
fn rss_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn markdown(r: &Report) -> String {
    let codes: Vec<String> = r.codes.iter().map(|(code, n)| format!("{code} {n}")).collect();
    let mut text = format!(
        "| figure | value |\n|---|---|\n\
         | distinct names sent (GetMetrics) | {} from {} namespaces, {} bytes each |\n\
         | replies | {} |\n\
         | time | {:.0} s ({:.0} names/s) |\n\
         | cache misses / refused / evictions | {:.0} / {:.0} / {:.0} |\n\
         | cache bound (`--lag-cache-entries`) | {} |\n\
         | RSS at start | {:.1} MiB |\n\
         | RSS peak (1 s samples; VmHWM) | {:.1} MiB; {:.1} MiB |\n\
         | RSS after the last name; {} s later | {:.1} MiB; {:.1} MiB |\n\
         | ceiling | {:.0} MiB |\n\n\
         RSS over time:\n\n| s | names | RSS MiB |\n|---|---|---|\n",
        r.names,
        r.namespaces,
        r.name_bytes,
        codes.join(", "),
        r.secs,
        r.names_per_sec,
        r.misses,
        r.refused,
        r.evictions,
        r.cache_entries,
        r.start_mib,
        r.peak_mib,
        r.hwm_mib,
        AFTER.as_secs(),
        r.end_mib,
        r.after_mib,
        r.ceiling_mib,
    );
    // About twenty rows, evenly spaced.
    let step = (r.samples.len() / 20).max(1);
    for &(t, n, mib) in r.samples.iter().step_by(step) {
        text.push_str(&format!("| {t:.0} | {n} | {mib:.1} |\n"));
    }
    text
}
