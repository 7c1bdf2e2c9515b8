//! Every manifest of `deploy/` and `examples/`, and the chart rendered both
//! ways, accepted by a real API server (slow tier), with the workloads'
//! pods meeting the Restricted Pod Security profile.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use testkit::chart;
use testkit::control_plane as cluster;
use testkit::repo::{self, read};

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
