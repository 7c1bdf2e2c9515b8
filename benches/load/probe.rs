//! What the benchmark reads from outside the processes it measures: /proc
//! for CPU and memory, nats-server's monitoring port for NATS traffic.
use std::collections::BTreeMap;

use serde::Deserialize;

use testkit::http;
use testkit::prometheus::Scrape;

/// CPU time and memory of one process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_secs: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

/// Reads utime + stime from /proc/<pid>/stat and VmRSS / VmHWM from status.
pub fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Usage {
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
        cpu_secs: (ticks(11) + ticks(12)) / testkit::process::clock_ticks(),
        rss_bytes: kib("VmRSS:"),
        peak_rss_bytes: kib("VmHWM:"),
    }
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// One client connection as nats-server counts it.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct ConnStats {
    /// Messages the client published: its requests.
    pub in_msgs: u64,
    /// Bytes the server wrote to the client: what the client read from NATS.
    pub out_bytes: u64,
}

#[derive(Deserialize)]
struct Connz {
    connections: Vec<ConnEntry>,
}

#[derive(Deserialize)]
struct ConnEntry {
    #[serde(default)]
    name: String,
    #[serde(flatten)]
    stats: ConnStats,
}

/// The counters of the connection whose client name starts with `prefix`
/// (the scaler names its connections `eds-scaler/<connection>`).
pub fn connection(monitor_port: u16, prefix: &str) -> ConnStats {
    let connz = http::get(monitor_port, "/connz?limit=10000").expect("nats-server's /connz");
    assert_eq!(connz.code, 200, "/connz: {}", connz.body);
    let connz: Connz = serde_json::from_str(&connz.body).expect("/connz is JSON");
    let found: Vec<&ConnEntry> = connz
        .connections
        .iter()
        .filter(|c| c.name.starts_with(prefix))
        .collect();
    assert_eq!(found.len(), 1, "one connection named {prefix}*");
    found[0].stats
}

/// The scaler's Prometheus exposition at one instant.
pub struct Exposition(Scrape);

impl Exposition {
    pub fn scrape(http_port: u16) -> Self {
        let metrics = http::get(http_port, "/metrics").expect("the scaler's /metrics");
        assert_eq!(metrics.code, 200, "/metrics: {}", metrics.body);
        Exposition(Scrape::parse(&metrics.body))
    }

    /// The sum of every series of `metric`.
    pub fn sum(&self, metric: &str) -> f64 {
        self.0.sum(metric, &[]).unwrap_or(0.0)
    }

    /// Cumulative bucket counts of histogram `metric` over the series whose
    /// labels include every pair of `select`, summed across the rest.
    fn buckets(&self, metric: &str, select: &[(&str, &str)]) -> BTreeMap<u64, (f64, u64)> {
        let mut buckets = BTreeMap::new();
        for sample in self.0.select(&format!("{metric}_bucket"), select) {
            let bound = sample.labels.get("le").map_or(f64::INFINITY, |le| {
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                }
            });
            let entry = buckets.entry(bound.to_bits()).or_insert((bound, 0));
            entry.1 += sample.value as u64;
        }
        buckets
    }

    /// The bucket bound (seconds) under which a fraction `q` of the
    /// observations of `metric` (series matching `select`) since `before` fall.
    pub fn quantile_since(&self, before: &Exposition, metric: &str, select: &[(&str, &str)], q: f64) -> Option<f64> {
        let then = before.buckets(metric, select);
        let mut deltas: Vec<(f64, u64)> = self
            .buckets(metric, select)
            .into_iter()
            .map(|(key, (bound, count))| (bound, count - then.get(&key).map_or(0, |(_, c)| *c)))
            .collect();
        deltas.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = deltas.last()?.1;
        if total == 0 {
            return None;
        }
        let wanted = (total as f64 * q).ceil() as u64;
        deltas.iter().find(|(_, c)| *c >= wanted).map(|(bound, _)| *bound)
    }
}
