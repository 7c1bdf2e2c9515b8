//! Logs and the Prometheus recorder. A leaf: components define their own
//! metrics (each in its `metrics.rs`, as [`Metric`] tables) and `runtime.rs`
//! describes them all.
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// Sets up the global tracing subscriber. `RUST_LOG` picks levels (default
/// `default_level`). Safe to call more than once: later calls are ignored.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour only for a person at a terminal, never into a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Buckets for every `*_seconds` histogram: from 10 µs (a warm cache hit) to
/// 5 s (past the scaler's own deadline).
const SECONDS_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the global Prometheus recorder once and returns its handle.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("static buckets are not empty")
                .install_recorder()
                .expect("the Prometheus recorder is installed once")
        })
        .clone()
}

/// What kind of series a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: its name, labels and help text, defined once and used
/// by the code that records it, by `/metrics` and by the tests.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Metric {
    pub const fn counter(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Self {
        Metric::new(name, Kind::Counter, labels, help)
    }

    pub const fn gauge(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Self {
        Metric::new(name, Kind::Gauge, labels, help)
    }

    pub const fn histogram(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Self {
        Metric::new(name, Kind::Histogram, labels, help)
    }

    const fn new(name: &'static str, kind: Kind, labels: &'static [&'static str], help: &'static str) -> Self {
        Metric {
            name,
            kind,
            labels,
            help,
        }
    }

    /// Registers the help text (and, for `*_seconds`, the unit) with the
    /// installed recorder.
    pub fn describe(&self) {
        let unit = self.name.ends_with("_seconds").then_some(metrics::Unit::Seconds);
        match (self.kind, unit) {
            (Kind::Counter, _) => metrics::describe_counter!(self.name, self.help),
            (Kind::Gauge, _) => metrics::describe_gauge!(self.name, self.help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(self.name, unit, self.help),
            (Kind::Histogram, None) => metrics::describe_histogram!(self.name, self.help),
        }
    }
}

/// The Prometheus text format for families written at scrape time from a
/// component's own state (the scaler's per-consumer and the controller's
/// per-claim gauges): one way to write their header and their labels.
pub mod text {
    use std::fmt::Write as _;

    use super::Metric;

    /// The `# HELP` and `# TYPE` lines of a gauge family.
    pub fn gauge_header(out: &mut String, metric: &Metric) {
        let _ = writeln!(out, "# HELP {} {}", metric.name, metric.help);
        let _ = writeln!(out, "# TYPE {} gauge", metric.name);
    }

    /// Bytes a sample line takes beside its label set, at most: the family's
    /// name, a `reason` label, the value, the braces and the newline.
    const LINE_ROOM: usize = 128;

    /// Reserves room for `lines` sample lines per label set, and the
    /// headers, before they are written: one allocation for the whole
    /// exposition instead of a chain of doublings. At thousands of claims the
    /// text is tens of MiB; reserved at once it is a memory map of its own,
    /// handed back to the system when the response has been sent, where each
    /// step of the chain stayed behind in the heap as RSS. Room reserved but
    /// never written costs no memory.
    pub fn reserve(out: &mut String, labels: &[String], lines: usize) {
        out.reserve(room(labels, lines));
    }

    /// The bytes [`reserve`] makes room for.
    pub fn room(labels: &[String], lines: usize) -> usize {
        labels.iter().map(|l| lines * (l.len() + LINE_ROOM)).sum::<usize>() + 4096
    }

    /// A label set, `a="x",b="y"`, its values escaped.
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
        let mut labels = String::new();
        for (name, value) in pairs {
            if !labels.is_empty() {
                labels.push(',');
            }
            labels.push_str(name);
            labels.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => labels.push_str("\\\\"),
                    '"' => labels.push_str("\\\""),
                    '\n' => labels.push_str("\\n"),
                    c => labels.push(c),
                }
            }
            labels.push('"');
        }
        labels
    }
}
