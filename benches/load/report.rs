//! The run's tables, in Markdown, as docs/benchmarks.md shows them.
use std::fmt::Write as _;

use crate::stats::quantile;
use crate::{Report, Stage};

pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let w = &mut md;
    line(
        w,
        &format!(
            "KEDA schedule: pollingInterval {} s, HPA sync {} s, window {} s; cache TTL {} s; {} messages waiting per consumer.\n",
            r.polling_interval_secs, r.hpa_sync_secs, r.window_secs, r.cache_ttl_secs, r.backlog_per_consumer
        ),
    );

    table(
        w,
        "### eds scaler under KEDA's schedule (real gRPC, separate process)\n",
        "| consumers = ScaledObjects | RPC/s offered | RPC/s served | RPC p50 | RPC p99 | RPC max | GetMetrics p99 | errors | NATS req/s (bound N/TTL) | of which consumer reads | NATS read | scaler CPU | scaler RSS (peak) | nats-server CPU |",
    );
    for s in &r.stages {
        let o = &s.ours;
        let all = &o.rpc.last().expect("an 'all' row").1;
        let get_metrics = &o.rpc.iter().find(|(n, _)| n == "GetMetrics").expect("GetMetrics").1;
        let bound = s.consumers as f64 / r.cache_ttl_secs;
        line(
            w,
            &format!(
                "| {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {:.1} ({bound:.0}) | {:.1} | {} | {} | {} ({}) | {} |",
                s.consumers,
                o.offered_rpc_per_sec,
                all.per_sec,
                micros(all.p50_us),
                micros(all.p99_us),
                micros(all.max_us),
                micros(get_metrics.p99_us),
                all.errors,
                o.usage.nats_requests_per_sec,
                o.consumer_reads_per_sec,
                rate(o.usage.nats_bytes_per_sec),
                cores(o.usage.scaler_cpu_cores),
                mib(o.usage.scaler_rss_bytes),
                mib(o.usage.scaler_peak_rss_bytes),
                cores(o.usage.nats_cpu_cores),
            ),
        );
    }

    table(
        w,
        "\n### Against the floor: a bare gRPC echo server under the same schedule, same run\n",
        "| consumers | eds GetMetrics p50 | p99 | echo GetMetrics p50 | p99 | p99 ratio eds ÷ echo | eds all-RPC p99 | echo all-RPC p99 | ratio | echo server CPU | NATS req/s ÷ consumers per TTL |",
    );
    for s in &r.stages {
        let o = &s.ours;
        let find = |rpc: &[(String, crate::stats::Summary)], name: &str| {
            rpc.iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.clone())
                .expect("a summary")
        };
        let (ours, floor) = (find(&o.rpc, "GetMetrics"), find(&o.floor.rpc, "GetMetrics"));
        let (ours_all, floor_all) = (find(&o.rpc, "all"), find(&o.floor.rpc, "all"));
        line(
            w,
            &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                s.consumers,
                micros(ours.p50_us),
                micros(ours.p99_us),
                micros(floor.p50_us),
                micros(floor.p99_us),
                ratio(ours.p99_us as f64, floor.p99_us as f64),
                micros(ours_all.p99_us),
                micros(floor_all.p99_us),
                ratio(ours_all.p99_us as f64, floor_all.p99_us as f64),
                cores(o.floor.server_cpu_cores),
                o.usage.nats_requests_per_sec * r.cache_ttl_secs / s.consumers as f64,
            ),
        );
    }

    table(
        w,
        "\n### Per RPC (eds scaler, KEDA's schedule)\n",
        "| consumers | RPC | calls | p50 | p99 | max | errors |",
    );
    for s in &r.stages {
        for (name, summary) in &s.ours.rpc {
            line(
                w,
                &format!(
                    "| {} | {name} | {} | {} | {} | {} | {} |",
                    s.consumers,
                    summary.calls,
                    micros(summary.p50_us),
                    micros(summary.p99_us),
                    micros(summary.max_us),
                    summary.errors
                ),
            );
        }
    }

    table(
        w,
        "\n### Inside the scaler: handler time from its own histogram, and memory\n",
        "| consumers | GetMetricSpec p50 / p99 | GetMetrics p50 / p99 | IsActive p50 / p99 | NATS request p50 / p99 | RSS at start | RSS, cache warm | RSS, all streams open | RSS after the window |",
    );
    for s in &r.stages {
        let o = &s.ours;
        let cell = |method: &str| {
            let side = o.server_side.iter().find(|x| x.method == method);
            let bound = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("≤ {}", micros((s * 1e6) as u64)));
            side.map_or("-".to_string(), |x| {
                format!("{} / {}", bound(x.p50_at_most_secs), bound(x.p99_at_most_secs))
            })
        };
        line(
            w,
            &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.consumers,
                cell("GetMetricSpec"),
                cell("GetMetrics"),
                cell("IsActive"),
                cell("NATS request"),
                mib(o.rss_started_bytes),
                mib(o.rss_cache_warm_bytes),
                mib(o.rss_streams_open_bytes),
                mib(o.usage.scaler_rss_bytes),
            ),
        );
    }

    table(
        w,
        "\n### KEDA built-in nats-jetstream scaler under the same schedule\n",
        "| consumers | ScaledObjects driven | calls/s | p50 | p99 | max | errors | /jsz req/s | bytes per call | monitoring read (driven) | harness CPU | nats-server CPU (driven) |",
    );
    for s in &r.stages {
        let k = &s.keda_poll;
        line(
            w,
            &format!(
                "| {} | {} | {:.1} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} |",
                s.consumers,
                k.scaled_objects,
                k.calls_per_sec,
                micros(k.p50_us),
                micros(k.p99_us),
                micros(k.max_us),
                k.errors,
                k.http_requests as f64 / k.window_secs,
                bytes(k.bytes_per_call),
                rate(k.bytes_per_sec),
                cores(k.harness_cpu_secs / k.window_secs),
                cores(k.nats_cpu_secs / k.window_secs),
            ),
        );
    }

    table(
        w,
        "\n### Side by side: KEDA built-in ÷ eds, same N, same run\n\n\
         KEDA's figures are scaled from the ScaledObjects driven to all N where it drove a sample \
         (traffic and server CPU grow linearly in ScaledObjects at a fixed N).\n",
        "| consumers | NATS bytes read/s: KEDA | eds | ratio | requests/s: KEDA | eds | nats-server CPU: KEDA | eds | ratio | latency p50: KEDA call | eds GetMetrics | latency p99: KEDA | eds |",
    );
    for s in &r.stages {
        let k = &s.keda_poll;
        let o = &s.ours;
        let scale = scale_to_all(s);
        let keda_bytes = k.bytes_per_sec * scale;
        let keda_cpu = k.nats_cpu_secs / k.window_secs * scale;
        let get_metrics = &o.rpc.iter().find(|(n, _)| n == "GetMetrics").expect("GetMetrics").1;
        line(
            w,
            &format!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
                s.consumers,
                rate(keda_bytes),
                rate(o.usage.nats_bytes_per_sec),
                ratio(keda_bytes, o.usage.nats_bytes_per_sec),
                k.http_requests as f64 / k.window_secs * scale,
                o.usage.nats_requests_per_sec,
                cores(keda_cpu),
                cores(o.usage.nats_cpu_cores),
                ratio(keda_cpu, o.usage.nats_cpu_cores),
                micros(k.p50_us),
                micros(get_metrics.p50_us),
                micros(k.p99_us),
                micros(get_metrics.p99_us),
            ),
        );
    }

    table(
        w,
        "\n### Highest sustained rate (closed loop, everything on the same 2 cores)\n",
        "| consumers | eds GetMetrics/s | p50 | p99 | max | errors | scaler CPU | driver CPU | nats-server CPU | NATS req/s | KEDA calls/s | p50 | p99 | KEDA harness CPU | nats-server CPU | ratio eds ÷ KEDA |",
    );
    for s in &r.stages {
        let m = &s.ours.max_rate;
        let k = &s.keda_max;
        line(
            w,
            &format!(
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} |",
                s.consumers,
                m.rpc.per_sec,
                micros(m.rpc.p50_us),
                micros(m.rpc.p99_us),
                micros(m.rpc.max_us),
                m.rpc.errors,
                cores(m.usage.scaler_cpu_cores),
                cores(m.usage.driver_cpu_cores),
                cores(m.usage.nats_cpu_cores),
                m.usage.nats_requests_per_sec,
                k.calls_per_sec,
                micros(k.p50_us),
                micros(k.p99_us),
                cores(k.harness_cpu_secs / k.window_secs),
                cores(k.nats_cpu_secs / k.window_secs),
                ratio(m.rpc.per_sec, k.calls_per_sec),
            ),
        );
    }

    table(
        w,
        "\n### Activation latency: publish on an idle consumer to the first `true`\n",
        "| path | trials | p50 | p99 | max | expected for polling (uniform phase) |",
    );
    let a = &r.activation;
    let busy = r
        .stages
        .iter()
        .rev()
        .find_map(|s| Some((s.consumers, s.ours.push_under_load_ms.as_ref()?)));
    let busy_name = busy.map(|(n, _)| format!("StreamIsActive push, {n} other streams open and busy"));
    let mut rows = vec![("StreamIsActive push (eds), quiet scaler", &a.push_ms, None)];
    if let (Some(name), Some((_, values))) = (&busy_name, busy) {
        rows.push((name.as_str(), values, None));
    }
    for (name, values, period) in rows.into_iter().chain([
        ("IsActive polled every 5 s", &a.polled_5s_ms, Some(5.0)),
        (
            "IsActive polled every 30 s (KEDA default)",
            &a.polled_30s_ms,
            Some(30.0),
        ),
    ]) {
        let mut sorted: Vec<u64> = values.iter().map(|ms| (ms * 1000.0) as u64).collect();
        sorted.sort_unstable();
        let expected = period.map_or("-".to_string(), |p: f64| {
            format!("p50 {:.2} s, p99 {:.2} s", p * 0.5, p * 0.99)
        });
        line(
            w,
            &format!(
                "| {name} | {} | {} | {} | {} | {expected} |",
                sorted.len(),
                micros(quantile(&sorted, 0.5)),
                micros(quantile(&sorted, 0.99)),
                micros(sorted.last().copied().unwrap_or(0)),
            ),
        );
    }
    md
}

/// How much KEDA's measured traffic is multiplied to stand for all N
/// ScaledObjects (1 when it drove every one).
pub fn scale_to_all(s: &Stage) -> f64 {
    s.consumers as f64 / s.keda_poll.scaled_objects.max(1) as f64
}

/// A heading, then a table's header row and its alignment row (the first
/// column text, the rest numbers).
fn table(w: &mut String, title: &str, header: &str) {
    line(w, title);
    line(w, header);
    let columns = header.matches('|').count().saturating_sub(1);
    line(w, &format!("|---|{}", "---:|".repeat(columns.saturating_sub(1))));
}

fn line(w: &mut String, text: &str) {
    let _ = writeln!(w, "{text}");
}

fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn bytes(b: f64) -> String {
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.2} MiB", b / 1024.0 / 1024.0)
    }
}

fn rate(b: f64) -> String {
    format!("{}/s", bytes(b))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1024.0 / 1024.0)
}

fn cores(c: f64) -> String {
    format!("{c:.3}")
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.1}×", a / b)
    } else {
        "∞".into()
    }
}
