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
/// per-claim gauges): one way to write their header and their labels, and
/// the [`text::Table`] that writes them a piece at a time.
pub mod text {
    use std::fmt::Write as _;

    use super::Metric;

    /// The `# HELP` and `# TYPE` lines of a gauge family.
    pub fn gauge_header(out: &mut String, metric: &Metric) {
        let _ = writeln!(out, "# HELP {} {}", metric.name, metric.help);
        let _ = writeln!(out, "# TYPE {} gauge", metric.name);
    }

    /// About the most bytes one piece of a scrape-time exposition holds: a
    /// piece ends at the first line that takes it past this.
    pub const PIECE: usize = 64 * 1024;

    /// Text written at scrape time a piece at a time, so that a scrape holds
    /// one piece and not the whole exposition.
    pub trait Pieces: Send {
        /// Appends the next lines to `out`: at least one line while any is
        /// left, and none past the first that takes what this call wrote
        /// over [`PIECE`] bytes. False once every line is written.
        fn write_piece(&mut self, out: &mut String) -> bool;

        /// Appends every line left (tests, and small expositions).
        fn write_all(&mut self, out: &mut String) {
            while self.write_piece(out) {}
        }
    }

    /// One gauge family of a [`Table`]: its metric, and the lines (none,
    /// one, or several) a row writes in it.
    pub struct Family<R> {
        metric: Metric,
        lines: Box<dyn Fn(&R, &mut String) + Send + Sync>,
    }

    impl<R> Family<R> {
        pub fn new(metric: Metric, lines: impl Fn(&R, &mut String) + Send + Sync + 'static) -> Self {
            Family {
                metric,
                lines: Box::new(lines),
            }
        }
    }

    /// Gauge families over the same rows (one row per claim or consumer),
    /// taken at scrape time and written a [`PIECE`] at a time.
    ///
    /// At 10,000 claims the whole text is about 25 MiB. Written whole, a
    /// scrape allocated all of it at once, and freed it once sent; the
    /// controller's RSS rose from 237 to 273 MiB over three scrapes
    /// (docs/benchmarks.md). In pieces, a scrape holds the rows (a label set
    /// and a few numbers each) and one piece of about [`PIECE`] bytes.
    pub struct Table<R> {
        rows: Vec<R>,
        families: Vec<Family<R>>,
        /// The family being written, its header written or not, and its
        /// next row.
        family: usize,
        headed: bool,
        row: usize,
    }

    impl<R> Table<R> {
        /// No rows, no families: an empty table writes nothing.
        pub fn new(rows: Vec<R>, families: Vec<Family<R>>) -> Self {
            let families = if rows.is_empty() { Vec::new() } else { families };
            Table {
                rows,
                families,
                family: 0,
                headed: false,
                row: 0,
            }
        }
    }

    impl<R: Send> Pieces for Table<R> {
        fn write_piece(&mut self, out: &mut String) -> bool {
            let start = out.len();
            while let Some(family) = self.families.get(self.family) {
                if !self.headed {
                    if out.len() - start >= PIECE {
                        return true;
                    }
                    gauge_header(out, &family.metric);
                    self.headed = true;
                }
                while let Some(row) = self.rows.get(self.row) {
                    if out.len() - start >= PIECE {
                        return true;
                    }
                    (family.lines)(row, out);
                    self.row += 1;
                }
                out.push('\n');
                self.family += 1;
                self.headed = false;
                self.row = 0;
            }
            false
        }
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

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::telemetry::Kind;

        const ROWS: Metric = Metric {
            name: "eds_test_rows",
            kind: Kind::Gauge,
            labels: &["row"],
            help: "Test rows.",
        };
        const TWICE: Metric = Metric {
            name: "eds_test_twice",
            kind: Kind::Gauge,
            labels: &["row", "side"],
            help: "Two lines a row.",
        };

        fn table(rows: usize) -> Table<usize> {
            Table::new(
                (0..rows).collect(),
                vec![
                    Family::new(ROWS, |row: &usize, out: &mut String| {
                        let _ = writeln!(out, "eds_test_rows{{row=\"{row}\"}} {row}");
                    }),
                    Family::new(TWICE, |row: &usize, out: &mut String| {
                        for side in ["a", "b"] {
                            let _ = writeln!(out, "eds_test_twice{{row=\"{row}\",side=\"{side}\"}} 1");
                        }
                    }),
                ],
            )
        }

        /// Each piece stops at the first line past PIECE bytes, and the
        /// pieces together are the whole exposition: each family's header
        /// once, then every row's lines, then a blank line.
        #[test]
        fn pieces_are_bounded_and_add_up_to_the_whole_text() {
            let rows = 20_000;
            // A row writes at most two lines, and a header is two, each under 64 bytes.
            let longest_line = 64;
            let mut pieces = Vec::new();
            let mut written = table(rows);
            loop {
                let mut piece = String::new();
                let more = written.write_piece(&mut piece);
                assert!(
                    piece.len() < PIECE + 2 * longest_line,
                    "a piece of {} bytes",
                    piece.len()
                );
                pieces.push(piece);
                if !more {
                    break;
                }
            }
            assert!(pieces.len() > 10, "{} pieces", pieces.len());
            let text = pieces.concat();
            assert_eq!(text.matches("# TYPE eds_test_rows gauge\n").count(), 1);
            assert_eq!(text.matches("# TYPE eds_test_twice gauge\n").count(), 1);
            assert_eq!(text.matches("\neds_test_rows{").count(), rows);
            assert_eq!(text.matches("\neds_test_twice{").count(), 2 * rows);
            assert!(text.contains("eds_test_rows{row=\"19999\"} 19999\n\n# HELP eds_test_twice"));
            assert!(text.ends_with("eds_test_twice{row=\"19999\",side=\"b\"} 1\n\n"));
            let mut whole = String::new();
            table(rows).write_all(&mut whole);
            assert_eq!(text, whole);
        }

        /// A piece always moves on, even into a buffer already past PIECE.
        #[test]
        fn every_piece_writes_a_line() {
            let mut three = table(3);
            let mut out = "x".repeat(2 * PIECE);
            let mut calls = 0;
            while three.write_piece(&mut out) {
                calls += 1;
                assert!(calls < 10, "no progress");
            }
            assert_eq!(out.matches("\neds_test_rows{").count(), 3);
        }

        #[test]
        fn no_rows_write_nothing() {
            let mut out = String::new();
            assert!(!table(0).write_piece(&mut out));
            assert_eq!(out, "");
        }
    }
}
