//! The metric names the platform kit's PromQL uses: the Grafana dashboard's
//! queries and the PrometheusRule's expressions. A histogram's `_bucket`,
//! `_sum` and `_count` series count as its base name.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::prometheus::base_name;
use crate::repo::{self, read};

pub fn dashboard_path() -> PathBuf {
    repo::path("deploy/grafana/eds-dashboard.json")
}

pub fn rules_path() -> PathBuf {
    repo::path("deploy/helm/eds/files/prometheus-rules.yaml")
}

/// Every `eds_*` metric name the dashboard and the alerts query.
pub fn kit_metric_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for expr in dashboard_queries().iter().chain(&rule_expressions()) {
        names.extend(metric_names(expr));
    }
    names
}

/// The names listed in `tests/fixtures/exported-metrics.txt`.
pub fn exported_metric_names() -> BTreeSet<String> {
    read(&repo::path("tests/fixtures/exported-metrics.txt"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The PromQL of every panel target, and the `label_values(...)` query of
/// every query variable, of the dashboard.
pub fn dashboard_queries() -> Vec<String> {
    let path = dashboard_path();
    let text = read(&path);
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let strings = |values: Vec<&serde_json::Value>| -> Vec<String> {
        values
            .into_iter()
            .filter_map(|v| v.as_str())
            .map(String::from)
            .collect()
    };
    let panels = json["panels"].as_array().expect("panels");
    let mut queries = strings(
        panels
            .iter()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .map(|t| &t["expr"])
            .collect(),
    );
    let variables = json["templating"]["list"].as_array().expect("templating.list");
    queries.extend(strings(
        variables
            .iter()
            .filter(|v| v["type"] == "query")
            .map(|v| &v["definition"])
            .collect(),
    ));
    queries
}

/// Every alert's `expr` in the chart's rule file.
pub fn rule_expressions() -> Vec<String> {
    let path = rules_path();
    let text = read(&path);
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    let groups = rules["groups"].as_sequence().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .map(|r| r["expr"].as_str().expect("expr").to_string())
        .collect()
}

/// The `eds_*` metric names in one PromQL expression. String literals (label
/// values, regexes) are skipped, so `{result="eds_x"}` names nothing.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    let mut word = String::new();
    let mut flush = |word: &mut String| {
        if word.starts_with("eds_") {
            names.insert(base_name(word).to_string());
        }
        word.clear();
    };
    while let Some((_, c)) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                flush(&mut word);
                let mut escaped = false;
                for (_, s) in chars.by_ref() {
                    match s {
                        '\\' if c != '`' && !escaped => escaped = true,
                        s if s == c && !escaped => break,
                        _ => escaped = false,
                    }
                }
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' => word.push(c),
            _ => flush(&mut word),
        }
    }
    flush(&mut word);
    names
}
