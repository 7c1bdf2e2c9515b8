//! The platform kit's monitoring (fast tier: no cluster): the Grafana
//! dashboard and the PrometheusRule query only metrics eds exports, are valid
//! PromQL (the pinned promtool), and every alert fires in a unit test of its
//! own.
use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use testkit::process::tool;
use testkit::promql;
use testkit::repo::{self, read};

#[test]
fn promql_names_skip_strings_and_fold_histogram_series() {
    let names = promql::metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(eds_x_seconds_bucket{code!="eds_fake"}[5m]))) / eds_y_total"#,
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["eds_x_seconds", "eds_y_total"]);
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported = promql::exported_metric_names();
    let used = promql::kit_metric_names();
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the kit queries metrics eds does not export: {unknown:?}"
    );
    // Every alert and every panel target queries at least one eds metric.
    for expr in promql::rule_expressions() {
        assert!(!promql::metric_names(&expr).is_empty(), "{expr}");
    }
    let queries = promql::dashboard_queries();
    assert!(queries.len() > 20, "{} queries", queries.len());
    for query in &queries {
        assert!(!promql::metric_names(query).is_empty(), "{query}");
    }
}

fn promtool(args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool("promtool"))
        .args(args)
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() { Ok(text) } else { Err(text) }
}

/// The items of every `inner` list of every item of the `outer` list.
fn nested<'a>(value: &'a Value, outer: &str, inner: &'a str) -> impl Iterator<Item = &'a Value> {
    value[outer]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(move |item| item[inner].as_array().into_iter().flatten())
}

#[test]
fn alerts_fire_when_they_should_and_only_then() {
    let rules = promql::rules_path();
    promtool(&["check", "rules", rules.to_str().unwrap()]).unwrap_or_else(|e| panic!("promtool check rules:\n{e}"));
    let tests = repo::path("tests/fixtures/prometheus-rules-test.yaml");
    promtool(&["test", "rules", tests.to_str().unwrap()]).unwrap_or_else(|e| panic!("promtool test rules:\n{e}"));

    // Every alert has a case where it fires.
    let rule_file: Value = serde_yaml::from_str(&read(&rules)).unwrap();
    let alerts: BTreeSet<&str> = nested(&rule_file, "groups", "rules")
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    let test_file: Value = serde_yaml::from_str(&read(&tests)).unwrap();
    let firing: BTreeSet<&str> = nested(&test_file, "tests", "alert_rule_test")
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|c| c["alertname"].as_str().unwrap())
        .collect();
    assert_eq!(firing, alerts, "each alert needs a test case in which it fires");
}

#[test]
fn dashboard_queries_are_valid_promql() {
    for query in promql::dashboard_queries() {
        // Grafana's label_values(selector, label) wraps a series selector.
        let promql = match query.strip_prefix("label_values(") {
            Some(rest) => rest
                .rsplit_once(',')
                .map(|(selector, _)| selector)
                .unwrap_or(rest)
                .to_string(),
            None => query.clone(),
        };
        let promql = promql
            .replace("$__rate_interval", "5m")
            .replace("$stream", ".*")
            .replace("$consumer", ".*")
            .replace("$namespace", ".*");
        assert!(
            !promql.contains('$'),
            "a dashboard variable the test does not know: {query}"
        );
        promtool(&["--experimental", "promql", "format", &promql])
            .unwrap_or_else(|e| panic!("not PromQL: {query}\n{e}"));
    }
}

/// Every metric eds defines: each component's one list of what it records
/// through the registry, the per-consumer gauges written from the lag cache,
/// and the per-claim gauges the controller writes from its own state.
fn defined_metric_names() -> BTreeSet<String> {
    eds::runtime::METRICS
        .iter()
        .flat_map(|component| component.iter())
        .chain(&eds::lag::metrics::CONSUMER_GAUGES)
        .chain(&eds::controller::metrics::SCRAPE_TIME)
        .map(|metric| metric.name.to_string())
        .collect()
}

#[test]
fn exported_metric_list_matches_the_source() {
    let defined = defined_metric_names();
    let listed = promql::exported_metric_names();
    let missing: Vec<&String> = listed.difference(&defined).collect();
    assert!(
        missing.is_empty(),
        "listed in tests/fixtures/exported-metrics.txt but not defined (eds::runtime::METRICS, eds::lag::metrics::CONSUMER_GAUGES, eds::controller::metrics::SCRAPE_TIME): {missing:?}"
    );
}
