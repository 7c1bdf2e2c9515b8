//! The one Prometheus text-format parser of the tests: what a `/metrics`
//! scrape says, sample by sample.
use std::collections::{BTreeMap, BTreeSet};

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of a scrape, in order.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text format; comments and lines that are not samples are
    /// skipped.
    pub fn parse(text: &str) -> Scrape {
        Scrape {
            samples: text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(sample)
                .collect(),
        }
    }

    /// The samples of `name` whose labels include every pair of `labels`.
    pub fn select<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|value| value == v))
        })
    }

    /// The sum of the samples [`Scrape::select`] picks; `None` when none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut picked = self.select(name, labels).peekable();
        picked.peek()?;
        Some(picked.map(|s| s.value).sum())
    }

    /// The metric names with samples; a histogram's `_bucket`, `_sum` and
    /// `_count` series count as its base name.
    pub fn names(&self) -> BTreeSet<String> {
        self.samples.iter().map(|s| base_name(&s.name).to_string()).collect()
    }
}

/// A histogram series' metric name: `x` for `x_bucket`, `x_sum`, `x_count`.
pub fn base_name(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .unwrap_or(series)
}

fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after;
    }
    // A value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",...}` (after the `{`): the labels and what follows the `}`.
fn label_set(mut text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        text = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP eds_rpc_total RPCs.
# TYPE eds_rpc_total counter
eds_rpc_total{method="GetMetrics",code="OK"} 3
eds_rpc_total{method="GetMetrics",code="NotFound"} 1
eds_rpc_total{method="IsActive",code="OK"} 2
eds_rpc_seconds_bucket{method="GetMetrics",le="0.001"} 2
eds_rpc_seconds_bucket{method="GetMetrics",le="+Inf"} 4
eds_rpc_seconds_sum{method="GetMetrics"} 0.25
eds_odd{text="a \"quoted\", comma} here"} 7 1700000000000
eds_plain 1.5
"#;

    #[test]
    fn samples_and_their_labels() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(scrape.samples.len(), 8);
        assert_eq!(scrape.sum("eds_rpc_total", &[("method", "GetMetrics")]), Some(4.0));
        assert_eq!(scrape.sum("eds_rpc_total", &[("code", "OK")]), Some(5.0));
        assert_eq!(scrape.sum("eds_rpc_total", &[("code", "Unknown")]), None);
        assert_eq!(scrape.sum("eds_plain", &[]), Some(1.5));
        let odd = scrape.select("eds_odd", &[]).next().unwrap();
        assert_eq!(odd.labels["text"], r#"a "quoted", comma} here"#);
        assert_eq!(odd.value, 7.0);
        let inf = scrape
            .select("eds_rpc_seconds_bucket", &[("le", "+Inf")])
            .next()
            .unwrap();
        assert_eq!(inf.value, 4.0);
    }

    #[test]
    fn histogram_series_fold_into_their_name() {
        let names: Vec<String> = Scrape::parse(TEXT).names().into_iter().collect();
        assert_eq!(names, ["eds_odd", "eds_plain", "eds_rpc_seconds", "eds_rpc_total"]);
    }
}
