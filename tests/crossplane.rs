//! The Crossplane path (slow tier), against the real Crossplane CLI and core
//! built from their pinned Go modules (scripts/tools.sh crossplane), with no
//! Docker: `crossplane composition render` runs core from `--crossplane-binary`
//! and reaches a running `eds function --insecure` through the Development
//! runtime. The XRD, the Composition and the Function pass server-side
//! dry-run on a real API server with Crossplane's own CRDs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use eds::api::EventDrivenService;
use eds::api::fixtures::{invalid_cases, valid_claim};
use eds::render::{Platform, render_text};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize as _;
use serde_json::{Value, json};
use testkit::control_plane as cluster;
use testkit::process::{Peer, free_port, tool};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `eds function --insecure` on a loopback port, and the Function manifest
/// that points `crossplane render` at it.
struct Function {
    peer: Peer,
    dir: tempfile::TempDir,
    functions: PathBuf,
}

impl Function {
    fn start() -> Function {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_eds"));
        command.args([
            "function",
            "--insecure",
            "--debug",
            "--address",
            &format!("127.0.0.1:{port}"),
        ]);
        let mut peer = Peer::spawn("eds function", command, &dir.path().join("function.log"));
        peer.wait_until("listening", Duration::from_secs(20), |_| {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        // The Function from apis/crossplane/function.yaml, annotated for the
        // Development runtime: render dials the target instead of running
        // the package's image.
        let installed = documents(&read(&root().join("apis/crossplane/function.yaml")));
        let mut function = installed
            .into_iter()
            .find(|d| d["kind"] == "Function")
            .expect("apis/crossplane/function.yaml has a Function");
        function["metadata"]["annotations"] = json!({
            "render.crossplane.io/runtime": "Development",
            "render.crossplane.io/runtime-development-target": format!("127.0.0.1:{port}"),
        });
        let functions = dir.path().join("functions.yaml");
        std::fs::write(&functions, serde_yaml::to_string(&function).unwrap()).unwrap();
        Function { peer, dir, functions }
    }

    /// `crossplane composition render` of one composite: stdout, or stderr
    /// and stdout on failure.
    fn render(&self, composite: &Value, with_xrd: bool) -> Result<String, String> {
        self.render_observing(composite, with_xrd, &[])
    }

    /// As [`Self::render`], with these composed resources observed.
    fn render_observing(&self, composite: &Value, with_xrd: bool, observed: &[Value]) -> Result<String, String> {
        let xr = self.dir.path().join("xr.yaml");
        std::fs::write(&xr, serde_yaml::to_string(composite).unwrap()).unwrap();
        let mut command = Command::new(tool("crossplane"));
        command
            .args(["composition", "render"])
            .arg(&xr)
            .arg(root().join("apis/crossplane/composition.yaml"))
            .arg(&self.functions)
            .arg("--crossplane-binary")
            .arg(tool("crossplane-core"))
            .args(["--timeout", "60s"]);
        if with_xrd {
            command.arg("--xrd").arg(root().join(eds::function::xrd::XRD_FILE));
        }
        if !observed.is_empty() {
            let file = self.dir.path().join("observed.yaml");
            let text: String = observed
                .iter()
                .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
                .collect();
            std::fs::write(&file, text).unwrap();
            command.arg("--observed-resources").arg(&file);
        }
        let out = command.output().expect("running crossplane");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{}{stdout}", String::from_utf8_lossy(&out.stderr)))
        }
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- eds function log ---\n{}", self.peer.log());
        }
    }
}

/// A composed resource as `eds render` writes it: without what Crossplane adds
/// (its `crossplane.io/` labels and annotations, its owner reference).
fn without_crossplanes_metadata(mut object: Value) -> Value {
    let metadata = object["metadata"].as_object_mut().expect("metadata");
    metadata.remove("ownerReferences");
    for key in ["labels", "annotations"] {
        if let Some(map) = metadata.get_mut(key).and_then(Value::as_object_mut) {
            map.retain(|k, _| !k.starts_with("crossplane.io/"));
            if map.is_empty() {
                metadata.remove(key);
            }
        }
    }
    object
}

/// Every claim in examples/ and the fixture claims of the unit tests.
fn claims() -> Vec<(String, Value)> {
    let mut claims = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let label = file.strip_prefix(root()).unwrap().display().to_string();
        for (i, doc) in documents(&read(&file)).into_iter().enumerate() {
            claims.push((format!("{label}#{}", i + 1), doc));
        }
    }
    let fixture = |eds: EventDrivenService| serde_json::to_value(eds.without_uid()).unwrap();
    claims.push(("fixture: valid_claim".into(), valid_claim()));
    claims.push((
        "fixture: every optional field".into(),
        fixture(
            EventDrivenService::test()
                .with_name("everything")
                .with_replicas(0, 30)
                .with_lag_threshold(IntOrString::String("2.5".into()))
                .with_env("LOG_LEVEL", "debug")
                .with_secret_name("app-env")
                .with_secret_ref("db")
                .with_image_pull_secret("registry")
                .with_connection("orders")
                .with_init_container(eds::api::InitContainer {
                    image: None,
                    command: vec!["migrate".into(), "--up".into()],
                    args: Vec::new(),
                }),
        ),
    ));
    claims
}

#[test]
fn every_example_and_fixture_claim_composes_to_what_eds_render_gives() {
    let function = Function::start();
    for (label, claim) in claims() {
        let yaml = serde_yaml::to_string(&claim).unwrap();
        let expected = documents(&render_text(&yaml, &Platform::default()).unwrap_or_else(|e| panic!("{label}: {e}")));
        let rendered = function
            .render(&claim, true)
            .unwrap_or_else(|e| panic!("{label}: crossplane render failed:\n{e}"));
        let composed: Vec<Value> = documents(&rendered)
            .into_iter()
            .filter(|d| d["kind"] != "EventDrivenService")
            .map(without_crossplanes_metadata)
            .collect();
        assert_eq!(composed.len(), 4, "{label}: four children:\n{rendered}");
        for want in &expected {
            let got = composed
                .iter()
                .find(|d| d["kind"] == want["kind"])
                .unwrap_or_else(|| panic!("{label}: no {} in\n{rendered}", want["kind"]));
            assert_eq!(got, want, "{label}: the {} differs", want["kind"]);
        }
    }
}

#[test]
fn every_invalid_claim_fails_the_render_naming_the_field() {
    let function = Function::start();
    for case in invalid_cases() {
        let err = match function.render(&case.claim(), false) {
            Ok(out) => panic!("{}: rendered:\n{out}", case.case),
            Err(e) => e,
        };
        assert!(err.contains(&case.message), "{}: {err}", case.case);
        if !case.field.is_empty() {
            assert!(err.contains(&format!("{}: ", case.field)), "{}: {err}", case.case);
        }
    }
}

#[test]
fn the_function_package_metadata_builds_into_a_package() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(tool("crossplane"))
        .args(["xpkg", "build", "--package-root"])
        .arg(root().join("apis/crossplane/package"))
        .arg("--package-file")
        .arg(dir.path().join("function-eds.xpkg"))
        // Not the repository's examples/: those are claims, not package examples.
        .arg("--examples-root")
        .arg(dir.path())
        .output()
        .expect("running crossplane xpkg build");
    assert!(
        out.status.success(),
        "crossplane xpkg build: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(dir.path().join("function-eds.xpkg").metadata().unwrap().len() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_xrd_composition_and_function_pass_server_side_dry_run() {
    let cp = cluster::shared();
    let client = cp.client().await;
    // Crossplane's own CRDs, copied from the pinned core module by tools.sh.
    let crds = root().join(".tools/crossplane-crds");
    for name in [
        "apiextensions.crossplane.io_compositeresourcedefinitions.yaml",
        "apiextensions.crossplane.io_compositions.yaml",
        "pkg.crossplane.io_functions.yaml",
        "pkg.crossplane.io_deploymentruntimeconfigs.yaml",
    ] {
        cluster::apply_file(&client, &crds.join(name), None).await;
    }
    for file in ["definition.yaml", "composition.yaml", "function.yaml"] {
        let path = root().join("apis/crossplane").join(file);
        for doc in documents(&read(&path)) {
            cluster::dry_run(&client, &doc, "default")
                .await
                .unwrap_or_else(|e| panic!("{file}: {} refused: {e}", doc["kind"]));
        }
    }
    // The schema is checked, not waved through: a Composition without its
    // composite type is refused.
    let mut broken = documents(&read(&root().join("apis/crossplane/composition.yaml"))).remove(0);
    broken["spec"].as_object_mut().unwrap().remove("compositeTypeRef");
    let err = cluster::dry_run(&client, &broken, "default")
        .await
        .expect_err("a Composition without compositeTypeRef");
    assert!(err.contains("compositeTypeRef"), "{err}");
}

/// Crossplane sets the composite's Ready from the readiness the function
/// gives each composed resource; the function reports replicas and the
/// scaler's state in the composite's status.
#[test]
fn observed_children_make_the_composite_ready_and_fill_its_status() {
    let function = Function::start();
    let claim = valid_claim();
    let yaml = serde_yaml::to_string(&claim).unwrap();
    let children = documents(&render_text(&yaml, &Platform::default()).unwrap());
    let observe = |child: &Value, name: &str, status: Value| {
        let mut observed = child.clone();
        observed["metadata"]["annotations"] = json!({"crossplane.io/composition-resource-name": name});
        observed["status"] = status;
        observed
    };
    let condition = |status: &str, type_: &str| json!({"type": type_, "status": status, "message": "as observed"});
    let ready_of = |out: &str| {
        let composite = documents(out)
            .into_iter()
            .find(|d| d["kind"] == "EventDrivenService")
            .expect("the composite");
        let find = |type_: &str| {
            composite["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == type_)
                .map(|c| c["status"].as_str().unwrap().to_string())
        };
        (composite["status"].clone(), find("Ready"), find("ScalerReady"))
    };

    let not_yet = function.render(&claim, true).unwrap();
    assert_eq!(ready_of(&not_yet).1.as_deref(), Some("False"), "{not_yet}");

    let observed = [
        observe(&children[0], "service-account", json!({})),
        observe(
            &children[1],
            "deployment",
            json!({"replicas": 2, "readyReplicas": 2, "conditions": [condition("True", "Available")]}),
        ),
        observe(&children[2], "service", json!({})),
        observe(
            &children[3],
            "scaled-object",
            json!({"conditions": [condition("True", "Ready"), condition("False", "Active")]}),
        ),
    ];
    let out = function
        .render_observing(&claim, true, &observed)
        .unwrap_or_else(|e| panic!("crossplane render failed:\n{e}"));
    let (status, ready, scaler_ready) = ready_of(&out);
    assert_eq!(ready.as_deref(), Some("True"), "{out}");
    assert_eq!(scaler_ready.as_deref(), Some("True"), "{out}");
    assert_eq!(status["replicas"], 2, "{out}");
    assert_eq!(status["readyReplicas"], 2, "{out}");
}
