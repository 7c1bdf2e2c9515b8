//! The Helm chart (`deploy/helm/eds`) rendered by the pinned Helm.
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize as _;
use serde_json::Value;

use crate::process::tool;
use crate::repo;

/// The Kubernetes version the chart is rendered for: the control plane's.
pub const KUBE_VERSION: &str = "v1.35.4";

/// The chart's directory.
pub fn dir() -> PathBuf {
    repo::path("deploy/helm/eds")
}

/// The values file that turns every option on.
pub fn full_values() -> PathBuf {
    repo::path("tests/fixtures/chart/full-values.yaml")
}

/// The image every install must name: the chart has no default.
pub fn image_values() -> PathBuf {
    repo::path("tests/fixtures/chart/image-values.yaml")
}

/// `helm template <release>` of the chart into `namespace` with the extra
/// `args` (`--values FILE`, `--set K=V`, `--show-only T`): the manifests, or
/// Helm's error output.
pub fn template(release: &str, namespace: &str, args: &[String]) -> Result<String, String> {
    let out = Command::new(tool("helm"))
        .args(["template", release])
        .arg(dir())
        .args(["--namespace", namespace, "--kube-version", KUBE_VERSION])
        .args(args)
        .output()
        .expect("running helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("UTF-8 manifests"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The objects of release `eds` in `namespace` with an image and then the
/// `values` files; fails the test with Helm's error.
pub fn render(namespace: &str, values: &[PathBuf]) -> Vec<Value> {
    let args: Vec<String> = std::iter::once(&image_values())
        .chain(values)
        .flat_map(|file| ["--values".to_string(), file.display().to_string()])
        .collect();
    let text = template("eds", namespace, &args).unwrap_or_else(|e| panic!("helm template failed:\n{e}"));
    documents(&text)
}

/// The non-empty documents of multi-document YAML, as JSON values.
pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `Kind/name` of a manifest, for messages.
pub fn id(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The object of `kind` named `name` among `docs`; fails the test listing
/// what there is.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", docs.iter().map(id).collect::<Vec<_>>()))
}
