//! Every manifest of `deploy/` and `examples/`, and the chart rendered both
//! ways, accepted by a real API server (slow tier), with the workloads'
//! pods meeting the Restricted Pod Security profile. And a sample of claims,
//! valid and hostile, on which `eds render`'s offline check and the API
//! server with the CRD of `apis/` agree.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use eds::api::fixtures::{invalid_cases, valid_claim};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use testkit::chart;
use testkit::control_plane as cluster;
use testkit::repo::{self, read};

mod strategies;

/// YAML files of `deploy/` and `examples/` that are Kubernetes manifests: all
/// of them but the Helm chart's sources (its CRD copy included) and the
/// values files of `deploy/values/`.
fn manifest_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo::path("deploy"), &mut files);
    files.retain(|f| !f.starts_with(chart::dir()) && !f.starts_with(repo::path("deploy/values")));
    walk(&repo::path("examples"), &mut files);
    files.sort();
    files
}

async fn ensure_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().copied().collect::<BTreeMap<_, _>>()}
    }))
    .unwrap();
    match Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// The pod a workload would create, for the Pod Security admission check.
fn pod_of(doc: &Value) -> Option<Value> {
    let template = match doc["kind"].as_str()? {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => &doc["spec"]["template"],
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
        _ => return None,
    };
    let name = format!(
        "{}-{}",
        doc["kind"].as_str()?.to_lowercase(),
        doc["metadata"]["name"].as_str()?
    );
    Some(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_manifest_passes_server_side_dry_run() {
    let cp = cluster::shared();
    let client = cp.client().await;
    for crds in ["monitoring.coreos.com.yaml", "argoproj.io.yaml"] {
        cluster::apply_file(&client, &repo::path("tests/fixtures/crds").join(crds), None).await;
    }
    // Workloads must meet the Restricted profile: the namespace enforces it
    // and every pod template is submitted as a Pod.
    let ns = format!("kit-{}", std::process::id());
    ensure_namespace(&client, &ns, &[("pod-security.kubernetes.io/enforce", "restricted")]).await;

    let mut manifests: Vec<(String, Value)> = Vec::new();
    for (label, values) in [
        ("chart (defaults)", vec![]),
        ("chart (full values)", vec![chart::full_values()]),
        (
            "chart (longest names)",
            vec![
                chart::full_values(),
                testkit::repo::path("tests/fixtures/chart/longest-names-values.yaml"),
            ],
        ),
    ] {
        manifests.extend(chart::render(&ns, &values).into_iter().map(|d| (label.to_string(), d)));
    }
    let files = manifest_files();
    for file in &files {
        let label = file.strip_prefix(repo::root()).unwrap().display().to_string();
        manifests.extend(chart::documents(&read(file)).into_iter().map(|d| (label.clone(), d)));
    }
    // What each example claim renders to, as the controller applies it.
    let examples = repo::path("examples");
    for file in files.iter().filter(|f| f.starts_with(&examples)) {
        let label = format!("eds render {}", file.strip_prefix(repo::root()).unwrap().display());
        let rendered = eds::render::render_text(&read(file), &eds::render::Platform::default())
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        manifests.extend(chart::documents(&rendered).into_iter().map(|d| (label.clone(), d)));
    }
    let rendered = manifests
        .iter()
        .filter(|(label, _)| label.starts_with("eds render"))
        .count();
    assert!(
        rendered >= 20,
        "five example files render four children per claim: {rendered}"
    );
    let pods: Vec<(String, Value)> = manifests
        .iter()
        .filter_map(|(label, doc)| pod_of(doc).map(|pod| (format!("{label} {}", chart::id(doc)), pod)))
        .collect();
    assert!(pods.len() >= 5, "two charts' two Deployments and the stream setup Job");

    // Pods need their ServiceAccounts to exist; create those for real.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns);
    for (_, pod) in &pods {
        let name = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
        let account = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("creating ServiceAccount {name}: {e}"),
        }
    }

    let mut failures = Vec::new();
    for (label, doc) in manifests.iter().chain(&pods) {
        if let Some(namespace) = doc["metadata"]["namespace"].as_str() {
            ensure_namespace(&client, namespace, &[]).await;
        }
        if let Err(e) = cluster::dry_run(&client, doc, &ns).await {
            failures.push(format!("{label}: {}: {e}", chart::id(doc)));
        }
    }
    eprintln!(
        "dry-run: {} objects (three chart renderings, {} files, and the {rendered} children the example claims render to) and {} pods",
        manifests.len(),
        files.len(),
        pods.len()
    );
    assert!(
        failures.is_empty(),
        "refused by the API server:\n{}",
        failures.join("\n")
    );

    // The check can fail: a pod that may run as root is refused there.
    let mut bad = pods[0].1.clone();
    bad["metadata"]["name"] = json!("may-run-as-root");
    bad["spec"]["securityContext"]["runAsNonRoot"] = json!(false);
    let refused = cluster::dry_run(&client, &bad, &ns)
        .await
        .expect_err("Pod Security refuses it");
    assert!(refused.contains("PodSecurity \"restricted"), "{refused}");
}

/// Claims from the generators with a fixed seed (so every run checks the
/// same ones), then the invalid-claims table, then edge cases at every
/// limit: `eds render`'s offline check (the same function, on the same
/// bytes) and a create on the API server must accept or refuse each alike.
#[tokio::test(flavor = "multi_thread")]
async fn offline_validation_and_the_api_server_agree_on_a_sample_of_claims() {
    let cp = cluster::shared();
    let client = cp.client().await;
    let ns = cp.namespace(&client, "agree").await;

    let mut samples = generated_samples(GENERATED);
    samples.extend(
        invalid_cases()
            .into_iter()
            .map(|case| (format!("table: {}", case.case), case.patch)),
    );
    samples.extend(edge_samples());

    let (mut accepted, mut refused, mut disagree) = (0, 0, Vec::new());
    for (label, patch) in &samples {
        let mut claim = valid_claim();
        json_patch::merge(&mut claim, patch);
        claim["metadata"]["namespace"] = json!(ns);
        let body = serde_json::to_vec(&claim).unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        let Ok(offline) =
            std::panic::catch_unwind(|| eds::render::parse_claims(text).map(|_| ()).map_err(|e| e.to_string()))
        else {
            // Reported with the others, so one run shows every problem.
            disagree.push(format!("{}\n  offline: panicked", clip(label)));
            continue;
        };
        let server = create(&client, &ns, &body).await;
        match (&offline, &server) {
            (Ok(()), Ok(())) => accepted += 1,
            (Err(_), Err(_)) => refused += 1,
            _ => disagree.push(format!(
                "{}\n  offline: {}\n  API server: {}",
                clip(label),
                clip(&format!("{offline:?}")),
                clip(&format!("{server:?}"))
            )),
        }
    }
    eprintln!(
        "{} claims: {accepted} accepted by both, {refused} refused by both, {} disagree",
        samples.len(),
        disagree.len()
    );
    assert!(
        disagree.is_empty(),
        "offline check and API server disagree on {} of {} claims:\n{}",
        disagree.len(),
        samples.len(),
        disagree.join("\n")
    );
    // The sample exercises both answers, or agreement means little.
    assert!(
        accepted >= 50 && refused >= 100,
        "{accepted} accepted, {refused} refused"
    );
}

/// Generated claims in the sample.
const GENERATED: usize = 600;

/// Fields a generated claim changes, as dotted paths; `[]` is a list of one.
const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.labels.team",
    "metadata.annotations.note",
    "spec.image",
    "spec.size",
    "spec.port",
    "spec.terminationGracePeriodSeconds",
    "spec.secretName",
    "spec.secretRefs[].name",
    "spec.imagePullSecrets[].name",
    "spec.env[].name",
    "spec.env[].value",
    "spec.initContainer.image",
    "spec.initContainer.command",
    "spec.probes.livenessPath",
    "spec.resources.requests.cpu",
    "spec.resources.limits.memory",
    "spec.nats.url",
    "spec.nats.stream",
    "spec.nats.consumer",
    "spec.nats.connection",
    "spec.nats.consumerConfig.ackWait",
    "spec.nats.consumerConfig.maxDeliver",
    "spec.scaling.minReplicas",
    "spec.scaling.maxReplicas",
    "spec.scaling.lagThreshold",
    "spec.scaling.activationLagThreshold",
    "spec.scaling.drainWithin",
    "spec.scaling.pollingInterval",
    "spec.scaling.cooldownPeriod",
    "spec.scaling.concurrency",
    "spec.scaling.stallAfter",
    "spec.scaling.scaleDown.maxPercentPerMinute",
    "spec.scaling.fallback.replicas",
];

/// A JSON merge patch setting `path` (see [`FIELDS`]) to `value`.
fn patch_at(path: &str, value: Value) -> Value {
    path.rsplit('.').fold(value, |inner, key| match key.strip_suffix("[]") {
        Some(key) => json!({ key: [inner] }),
        None => json!({ key: inner }),
    })
}

/// Strings from the property tests' generator, numbers at and around the
/// edges of int32, int64 and float64, and other JSON types.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => strategies::value().prop_map(Value::String),
        2 => prop_oneof![-2i64..70_000, Just(i64::from(i32::MAX)), Just(i64::from(i32::MAX) + 1), Just(i64::MAX), Just(i64::MIN)]
            .prop_map(Value::from),
        1 => prop_oneof![Just(1e308), Just(1e-320), Just(-0.0), Just(2.5), Just(1.0), Just(9.223372036854775808e18)]
            .prop_map(Value::from),
        1 => prop_oneof![Just(json!(u64::MAX)), Just(json!(true)), Just(json!([])), Just(json!({})), Just(json!(["a"]))],
    ]
}

fn generated_samples(count: usize) -> Vec<(String, Value)> {
    let strategy = (proptest::sample::select(FIELDS), field_value());
    let mut runner = TestRunner::deterministic();
    (0..count)
        .map(|_| {
            let (field, value) = strategy.new_tree(&mut runner).unwrap().current();
            (format!("generated: {field} = {value}"), patch_at(field, value))
        })
        .collect()
}

/// Values at every limit the CRD and the offline check state.
fn edge_samples() -> Vec<(String, Value)> {
    let mut edges: Vec<(String, Value)> = Vec::new();
    let mut edge = |path: &str, value: Value| {
        let shown = clip(&value.to_string());
        edges.push((format!("edge: {path} = {shown}"), patch_at(path, value)));
    };
    // Names NATS counts in bytes: one- to four-byte characters either side
    // of 255 bytes.
    for field in ["spec.nats.stream", "spec.nats.consumer"] {
        for (unit, count) in [("a", 255), ("a", 256), ("é", 127), ("é", 128), ("é", 200)] {
            edge(field, json!(unit.repeat(count)));
        }
        for (unit, count) in [("日", 85), ("日", 86), ("😀", 63), ("😀", 64)] {
            edge(field, json!(unit.repeat(count)));
        }
        for name in ["a\u{a0}b", "a\u{2028}b", "a\u{200b}b", "a\u{7f}b", "a\tb", "ORDERS-é"] {
            edge(field, json!(name));
        }
    }
    // Names Kubernetes limits: DNS labels and subdomains.
    for (path, max) in [
        ("metadata.name", 63),
        ("spec.nats.connection", 63),
        ("spec.secretName", 253),
        ("spec.image", 1024),
        ("spec.nats.url", 1024),
    ] {
        let fill = |n: usize| match path {
            "spec.nats.url" => format!("nats://{}", "a".repeat(n - 7)),
            _ => "a".repeat(n),
        };
        edge(path, json!(fill(max)));
        edge(path, json!(fill(max + 1)));
    }
    edge("spec.image", json!("é".repeat(1024)));
    edge("spec.image", json!("é".repeat(1025)));
    for name in ["a.b.c", "a..b", "-a", "a-", "A"] {
        edge("spec.secretName", json!(name));
    }
    // Numbers: each range's ends, one past them, and values no range holds.
    for (path, low, high) in [
        ("spec.port", 1, 65_535),
        ("spec.terminationGracePeriodSeconds", 1, 3600),
        ("spec.scaling.minReplicas", 0, 1000),
        ("spec.scaling.maxReplicas", 1, 1000),
        ("spec.scaling.pollingInterval", 1, 3600),
        ("spec.scaling.cooldownPeriod", 0, 86_400),
        ("spec.scaling.concurrency", 1, 1_000_000),
        ("spec.scaling.scaleDown.maxPercentPerMinute", 1, 100),
        ("spec.nats.consumerConfig.maxDeliver", 1, 10_000),
    ] {
        for value in [low - 1, low, high, high + 1] {
            edge(path, json!(value));
        }
    }
    for value in [
        json!(0),
        json!(i64::MAX),
        json!(9_223_372_036_854_775_808u64),
        json!(1e308),
        json!(1e-320),
        json!(-0.0),
        json!(5.0),
        json!("5"),
    ] {
        edge("spec.scaling.activationLagThreshold", value.clone());
        edge("spec.scaling.maxReplicas", value);
    }
    for value in [
        json!(5),
        json!(0),
        json!(-1),
        json!(999_999_999),
        json!(1_000_000_000),
        json!(i64::MAX),
        json!(1e308),
        json!(2.5),
        json!("2.5"),
        json!("999999999.999999"),
        json!("999999999.9999999"),
        json!("0.000001"),
        json!("0.0"),
        json!("1e308"),
        json!("1e-320"),
        json!("NaN"),
        json!(".nan"),
        json!("Infinity"),
        json!("-0"),
    ] {
        edge("spec.scaling.lagThreshold", value);
    }
    for value in [
        "1s", "24h", "24h0m1s", "86400s", "86401s", "0s", "1h30m", "90m", "1.5h", "1e3s",
    ] {
        edge("spec.scaling.drainWithin", json!(value));
    }
    for value in ["5m", "0m", "00h0m", "99999h", "1ms", "1h1m1s", "1h1m1s1h"] {
        edge("spec.scaling.stallAfter", json!(value));
    }
    for value in [
        "500m",
        "2",
        "0",
        "-1",
        "1e3",
        "0.5",
        "1.5Gi",
        "1Ki",
        "1k",
        "9223372036854775807",
        "1e308",
        "+1",
    ] {
        edge("spec.resources.requests.cpu", json!(value));
    }
    edge("spec.resources.requests.cpu", json!(2));
    edge("spec.resources.requests.cpu", json!(2.5));
    for value in ["1s", "1h", "999ms", "1000ms", "3600s", "3601s", "61m"] {
        edge("spec.nats.consumerConfig.ackWait", json!(value));
    }
    // Labels and annotations: Kubernetes' own rules for keys and values.
    for (key, value) in [
        ("team".to_string(), "a".repeat(63)),
        ("team".into(), "a".repeat(64)),
        ("team".into(), "bad value!".into()),
        ("bad key!".into(), "a".into()),
        ("example.com/team".into(), "a".into()),
        ("k".repeat(64), "a".into()),
    ] {
        edges.push((
            format!("edge: metadata.labels {{{key:.20}: {value:.20}}}"),
            json!({"metadata": {"labels": {key: value}}}),
        ));
    }
    for (key, bytes) in [("note", 10), ("bad key!", 1), ("note", 256 * 1024)] {
        edges.push((
            format!("edge: metadata.annotations {key:?} of {bytes} bytes"),
            json!({"metadata": {"annotations": {key: "a".repeat(bytes)}}}),
        ));
    }
    // The object's size: etcd stores at most 1.5 MiB a request.
    for kib in [64, 1400, 1600, 2048] {
        edges.push((
            format!("edge: an env value of {kib} KiB"),
            json!({"spec": {"env": [{"name": "BIG", "value": "x".repeat(kib * 1024)}]}}),
        ));
    }
    edges
}

/// Creates the claim `body` on the API server: a dry run (everything but
/// storage), or for a body over 1 MiB a real create, deleted at once, since
/// only storage (etcd) refuses a large object. The refusal as text.
async fn create(client: &Client, namespace: &str, body: &[u8]) -> Result<(), String> {
    let path = format!("/apis/platform.bizmatters.io/v1alpha1/namespaces/{namespace}/eventdrivenservices");
    let dry_run = body.len() <= 1024 * 1024;
    let params = PostParams {
        dry_run,
        ..Default::default()
    };
    let mut request = kube::core::Request::new(&path).create(&params, body.to_vec()).unwrap();
    // As kubectl does: an unknown field is an error, not silently dropped.
    let separator = if request.uri().query().is_some() { '&' } else { '?' };
    *request.uri_mut() = format!("{}{separator}fieldValidation=Strict", request.uri())
        .parse()
        .unwrap();
    let created = client.request::<Value>(request).await.map_err(|e| e.to_string())?;
    if !dry_run {
        let name = created["metadata"]["name"].as_str().unwrap();
        Api::<eds::api::EventDrivenService>::namespaced(client.clone(), namespace)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    Ok(())
}

/// A long text cut for a failure report.
fn clip(text: &str) -> String {
    eds::quote::clip(text, 300).into_owned()
}
