//! The documentation says what the code and the deploy files do: the chart's
//! values table, the install commands, the metric names.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every leaf value the chart's schema defines, as dotted paths. Maps of
/// free-form keys (labels, annotations, connections) count as one value.
fn schema_values(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match schema["properties"].as_object() {
        Some(properties) if schema["additionalProperties"] == false => {
            for (key, child) in properties {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                let child = match child["$ref"].as_str() {
                    Some(_) => &Value::Null,
                    None => child,
                };
                schema_values(child, &path, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// The values the chart README's tables name: backquoted dotted names in the
/// first column. `` `a.b`, `.c` `` names `a.b` and `a.c`; `*.x` names `x` of
/// any component.
fn documented_values(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    for row in readme.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split(" | ").next().unwrap();
        let mut parent = String::new();
        for name in first.split('`').skip(1).step_by(2) {
            let full = match name.strip_prefix('.') {
                Some(rest) => format!("{parent}.{rest}"),
                None => name.to_string(),
            };
            parent = full.rsplit_once('.').map_or(String::new(), |(p, _)| p.to_string());
            out.push(full);
        }
    }
    out
}

fn is_documented(value: &str, documented: &[String]) -> bool {
    documented.iter().any(|d| {
        let matches = |d: &str| value == d || value.starts_with(&format!("{d}."));
        match d.strip_prefix("*.") {
            Some(rest) => value
                .split_once('.')
                .is_some_and(|(_, tail)| matches(rest) || tail == rest),
            None => matches(d),
        }
    })
}

#[test]
fn chart_readme_documents_every_value() {
    let schema: Value = serde_json::from_str(&read("deploy/helm/eds/values.schema.json")).unwrap();
    let mut values = BTreeSet::new();
    schema_values(&schema, "", &mut values);
    assert!(values.len() > 30, "{values:?}");
    let documented = documented_values(&read("deploy/helm/eds/README.md"));
    let missing: Vec<&String> = values.iter().filter(|v| !is_documented(v, &documented)).collect();
    assert!(
        missing.is_empty(),
        "deploy/helm/eds/README.md's values table lacks {missing:?}"
    );
    // The check can fail.
    assert!(!is_documented(
        "scaler.grpcTLS.kedaClientSecretName",
        &["scaler.grpcTLS.enabled".into()]
    ));
    assert!(is_documented("scaler.podLabels", &["*.podLabels".into()]));
}

/// The shell commands of a Markdown file's `sh` blocks, with continuation
/// lines joined and comments dropped.
fn commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_block = line.trim() == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.split(" #").next().unwrap().trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// The labels each Argo CD Application puts on its namespace.
fn argocd_namespace_labels() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for app in ["nats", "keda", "eds"] {
        let text = read(&format!("deploy/argocd/apps/{app}.yaml"));
        let doc = serde_yaml::Value::deserialize(serde_yaml::Deserializer::from_str(&text)).unwrap();
        let spec = &doc["spec"];
        let namespace = spec["destination"]["namespace"].as_str().unwrap().to_string();
        let labels = spec["syncPolicy"]["managedNamespaceMetadata"]["labels"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string()))
            .collect();
        out.insert(namespace, labels);
    }
    out
}

/// Problems with the install commands of one document: a `helm install`
/// that does not wait, a namespace Helm creates, or a namespace labelled
/// otherwise than the Argo CD path labels it (or after something ran in it).
fn install_problems(file: &str, markdown: &str, expected: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for command in commands(markdown) {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["kubectl", "create", "namespace", ns] => {
                labels.insert(ns.to_string(), BTreeMap::new());
            }
            ["kubectl", "label", "namespace", ns, rest @ ..] => {
                let set = labels.entry(ns.to_string()).or_default();
                for pair in rest.iter().filter_map(|w| w.split_once('=')) {
                    set.insert(pair.0.to_string(), pair.1.to_string());
                }
            }
            ["helm", "install", _release, _chart, rest @ ..] => {
                if !rest.contains(&"--wait") {
                    problems.push(format!("{file}: `{command}` does not wait"));
                }
                if rest.contains(&"--create-namespace") {
                    problems.push(format!("{file}: `{command}` creates its namespace unlabelled"));
                }
                let ns = rest
                    .iter()
                    .position(|w| *w == "-n" || *w == "--namespace")
                    .map(|i| rest[i + 1])
                    .unwrap_or("default");
                match (expected.get(ns), labels.get(ns)) {
                    (Some(want), Some(have)) if want == have => {}
                    (Some(want), have) => problems.push(format!(
                        "{file}: namespace {ns} is labelled {have:?} before `{command}`; the Argo CD path labels it {want:?}"
                    )),
                    (None, _) => problems.push(format!("{file}: `{command}` installs into {ns}, which no Application names")),
                }
            }
            _ => {}
        }
    }
    problems
}

#[test]
fn install_commands_wait_and_label_their_namespaces() {
    let expected = argocd_namespace_labels();
    assert_eq!(expected.len(), 3);
    let mut problems = Vec::new();
    let mut installs = 0;
    for file in ["README.md", "docs/install.md"] {
        let text = read(file);
        installs += commands(&text).iter().filter(|c| c.starts_with("helm install")).count();
        problems.extend(install_problems(file, &text, &expected));
    }
    assert_eq!(installs, 6, "three installs in each document");
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The check can fail: the README's install as it was.
    let old = "```sh\nkubectl create namespace eds-system\nkubectl label namespace eds-system pod-security.kubernetes.io/enforce=restricted\nhelm install eds deploy/helm/eds -n eds-system\n```\n";
    let found = install_problems("old", old, &expected);
    assert_eq!(found.len(), 2, "{found:?}");
}

#[test]
fn metric_name_examples_in_the_docs_are_what_the_scaler_computes() {
    let doc = read("docs/scaler.md");
    let hashed = eds::trigger::metric_name("ORDERS", "orders-worker");
    let plain = eds::trigger::metric_name("orders", "orders-worker");
    assert_eq!(plain, "nats-lag-orders-orders-worker");
    assert_ne!(hashed, plain, "an upper-case stream name gets a hash");
    for (stream, name) in [("ORDERS", &hashed), ("orders", &plain)] {
        let sentence = format!("stream `{stream}`, consumer `orders-worker` gives `{name}`");
        let flat = doc.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains(&sentence), "docs/scaler.md should say: {sentence}");
    }
}
