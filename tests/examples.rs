//! Every claim in `examples/` renders, through the library and through the
//! `eds render` binary, to the children it promises.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use eds::render::{Platform, render_text};
use serde::Deserialize;
use serde_json::{Value, json};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The rendered children of one claim, by kind.
struct Rendered {
    service_account: Value,
    deployment: Value,
    service: Value,
    scaled_object: Value,
}

impl Rendered {
    fn worker(&self) -> &Value {
        &self.deployment["spec"]["template"]["spec"]["containers"][0]
    }
    fn pod(&self) -> &Value {
        &self.deployment["spec"]["template"]["spec"]
    }
    fn trigger(&self) -> &Value {
        &self.scaled_object["spec"]["triggers"][0]["metadata"]
    }
    fn scale_down(&self) -> &Value {
        &self.scaled_object["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    }
    fn env(&self) -> Vec<(String, String)> {
        self.worker()["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().into(), e["value"].as_str().unwrap().into()))
            .collect()
    }
    fn env_from(&self) -> Vec<&str> {
        self.worker()["envFrom"]
            .as_array()
            .map(|list| list.iter().map(|e| e["secretRef"]["name"].as_str().unwrap()).collect())
            .unwrap_or_default()
    }
}

fn render(path: &Path) -> (Vec<Value>, Vec<Rendered>) {
    let text = std::fs::read_to_string(path).unwrap();
    let claims = documents(&text);
    let out = render_text(&text, &Platform::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs = documents(&out);
    assert_eq!(docs.len(), 4 * claims.len(), "{}", path.display());
    let rendered = docs
        .chunks(4)
        .map(|c| {
            let kinds: Vec<&str> = c.iter().map(|d| d["kind"].as_str().unwrap()).collect();
            assert_eq!(kinds, ["ServiceAccount", "Deployment", "Service", "ScaledObject"]);
            Rendered {
                service_account: c[0].clone(),
                deployment: c[1].clone(),
                service: c[2].clone(),
                scaled_object: c[3].clone(),
            }
        })
        .collect();
    (claims, rendered)
}

#[test]
fn every_example_renders_its_promised_children() {
    let files = examples();
    assert!(files.len() >= 5, "{files:?}");
    for path in files {
        let (claims, rendered) = render(&path);
        for (claim, children) in claims.iter().zip(&rendered) {
            for child in [
                &children.service_account,
                &children.deployment,
                &children.service,
                &children.scaled_object,
            ] {
                assert_eq!(child["metadata"]["name"], claim["metadata"]["name"]);
                assert_eq!(child["metadata"]["namespace"], claim["metadata"]["namespace"]);
                assert!(child["metadata"].get("ownerReferences").is_none());
            }
            assert!(children.deployment["spec"].get("replicas").is_none());
            assert_eq!(children.service_account["automountServiceAccountToken"], false);
            assert_eq!(children.worker()["image"], claim["spec"]["image"]);
            assert_eq!(children.trigger()["stream"], claim["spec"]["nats"]["stream"]);
            assert_eq!(children.trigger()["consumer"], claim["spec"]["nats"]["consumer"]);
            assert_eq!(children.trigger()["scalerAddress"], "eds-scaler.eds-system.svc:9090");
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        check_example(name, &rendered[0]);
    }
}

/// What each example is there to show. A new example needs its own checks.
fn check_example(name: &str, r: &Rendered) {
    let resources = &r.worker()["resources"];
    match name {
        "minimal.yaml" => {
            assert_eq!(
                *resources,
                json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}})
            );
            assert_eq!(
                r.env(),
                [
                    ("NATS_URL".into(), "nats://nats.nats.svc:4222".into()),
                    ("NATS_STREAM".into(), "ORDERS".into()),
                    ("NATS_CONSUMER".into(), "orders-worker".into())
                ]
            );
            assert_eq!(r.scaled_object["spec"]["minReplicaCount"], 1);
            assert_eq!(r.scaled_object["spec"]["maxReplicaCount"], 10);
            assert_eq!(r.trigger()["lagThreshold"], "5");
            assert_eq!(r.trigger()["activationLagThreshold"], "0");
            assert_eq!(r.worker()["ports"][0]["containerPort"], 8080);
            assert_eq!(r.worker()["livenessProbe"]["httpGet"]["path"], "/health");
            assert_eq!(r.worker()["readinessProbe"]["httpGet"]["path"], "/ready");
            assert!(r.pod().get("initContainers").is_none());
            assert!(r.worker().get("envFrom").is_none());
            assert_eq!(r.pod()["terminationGracePeriodSeconds"], 40);
            assert_eq!(
                *r.scale_down(),
                json!({"stabilizationWindowSeconds": 300, "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}]})
            );
        }
        "scale-to-zero.yaml" => {
            assert_eq!(r.scaled_object["spec"]["minReplicaCount"], 0);
            assert_eq!(r.scaled_object["spec"]["maxReplicaCount"], 5);
            assert_eq!(r.scaled_object["spec"]["pollingInterval"], 15);
            assert_eq!(r.scaled_object["spec"]["cooldownPeriod"], 300);
            assert_eq!(r.trigger()["lagThreshold"], "20");
            assert_eq!(resources["requests"]["cpu"], "250m");
        }
        "multiple-secrets.yaml" => {
            assert_eq!(r.env_from(), ["payments-config", "payments-db", "payments-psp-api"]);
            let names: Vec<String> = r.env().into_iter().map(|(n, _)| n).collect();
            assert_eq!(
                names,
                [
                    "NATS_URL",
                    "NATS_STREAM",
                    "NATS_CONSUMER",
                    "LOG_LEVEL",
                    "OTEL_SERVICE_NAME"
                ]
            );
        }
        "full.yaml" => {
            assert_eq!(
                *resources,
                json!({"requests": {"cpu": "1", "memory": "3Gi"}, "limits": {"cpu": "6", "memory": "8Gi"}})
            );
            assert_eq!(r.trigger()["natsConnection"], "billing");
            assert_eq!(r.trigger()["lagThreshold"], "2.5");
            assert_eq!(r.trigger()["activationLagThreshold"], "10");
            assert_eq!(
                r.scaled_object["spec"]["fallback"],
                json!({"failureThreshold": 3, "replicas": 6})
            );
            assert_eq!(r.env()[0], ("NATS_URL".into(), "tls://nats.billing.svc:4222".into()));
            assert_eq!(r.env_from(), ["invoice-worker-config", "invoice-db"]);
            let init = &r.pod()["initContainers"][0];
            assert_eq!(init["image"], "registry.acme.internal/billing/invoice-migrations:5.2.1");
            assert_eq!(init["args"], json!(["--database-url-from-env", "DATABASE_URL"]));
            assert_eq!(r.worker()["ports"][0]["containerPort"], 9000);
            assert_eq!(r.service["spec"]["ports"][0]["port"], 9000);
            assert_eq!(r.worker()["livenessProbe"]["httpGet"]["path"], "/livez");
            assert_eq!(r.pod()["imagePullSecrets"], json!([{"name": "acme-registry"}]));
            assert_eq!(r.pod()["terminationGracePeriodSeconds"], 120);
            assert_eq!(
                *r.scale_down(),
                json!({
                    "stabilizationWindowSeconds": 600,
                    "selectPolicy": "Min",
                    "policies": [
                        {"type": "Percent", "value": 25, "periodSeconds": 60},
                        {"type": "Pods", "value": 4, "periodSeconds": 60},
                    ],
                })
            );
        }
        "design-example.yaml" => {
            assert_eq!(r.trigger()["lagThreshold"], "5");
            assert_eq!(r.env_from(), ["my-service-config"]);
            assert_eq!(r.pod()["imagePullSecrets"], json!([{"name": "ghcr-pull-secret"}]));
            let init = &r.pod()["initContainers"][0];
            assert_eq!(init["image"], "ghcr.io/myorg/my-service:v1.0.0");
            assert_eq!(
                init["command"],
                json!(["/bin/sh", "-c", "scripts/ci/run-migrations.sh"])
            );
            assert_eq!(init["envFrom"], r.worker()["envFrom"]);
            assert_eq!(resources["limits"]["memory"], "4Gi");
        }
        other => panic!("examples/{other} has no checks here: add what it is there to show"),
    }
}

fn eds(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_eds"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_binary_renders_a_file_and_stdin_alike() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/design-example.yaml");
    let (ok, from_file, _) = eds(&["render", path.to_str().unwrap()], "");
    assert!(ok);
    let (ok, from_stdin, _) = eds(&["render", "-"], &std::fs::read_to_string(&path).unwrap());
    assert!(ok);
    assert_eq!(from_file, from_stdin);
    assert_eq!(documents(&from_file).len(), 4);
    let (ok, custom, _) = eds(
        &["render", "--scaler-address", "scaler.x.svc:1234", "-"],
        &std::fs::read_to_string(&path).unwrap(),
    );
    assert!(ok);
    assert!(custom.contains("scalerAddress: scaler.x.svc:1234"), "{custom}");
}

#[test]
fn the_binary_refuses_an_invalid_claim_with_its_messages() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/minimal.yaml");
    let claim = std::fs::read_to_string(path)
        .unwrap()
        .replace("consumer: orders-worker", "consumer: \"orders worker\"")
        .replace("image: ghcr.io/acme/orders-worker:1.4.2", "image: \"\"");
    let (ok, stdout, stderr) = eds(&["render", "-"], &claim);
    assert!(!ok);
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("spec.image: Invalid value: \"\": image must not be empty or contain whitespace"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.nats.consumer: Invalid value: \"orders worker\": nats.consumer must be a NATS name"),
        "{stderr}"
    );
}

#[test]
fn the_binary_prints_the_committed_crd() {
    let (ok, stdout, _) = eds(&["crd"], "");
    assert!(ok);
    assert_eq!(stdout, eds::api::crd_yaml().unwrap());
}
