//! Real KEDA (operator and metrics adapter, `scripts/tools.sh keda`) run out
//! of cluster against a [`ControlPlane`], on loopback.
//!
//! - The operator's metrics gRPC service and the adapter's client use mutual
//!   TLS with one certificate from a throwaway CA (KEDA reads `ca.crt`,
//!   `tls.crt` and `tls.key` from its cert dir); the adapter serves the
//!   aggregated API with the same certificate. Cert rotation, webhook and
//!   APIService patching are off: nothing here runs in a pod.
//! - The adapter is registered as `v1beta1.external.metrics.k8s.io`. An
//!   APIService must name a Service, and Endpoints refuse loopback addresses,
//!   so the Service is of type ExternalName with `externalName: localhost`:
//!   the aggregator dials that host at the APIService's port. This needs the
//!   API server's default service resolver (no `--enable-aggregator-routing`,
//!   whose endpoint resolver refuses ExternalName Services). The HPA
//!   controller then reads KEDA's external metrics as in a cluster.
//! - Every port but one is on 127.0.0.1: the adapter's Prometheus listener
//!   only takes a port (`--port`) and binds every interface.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;

use crate::certs::Pki;
use crate::control_plane::{ControlPlane, apply_yaml};
use crate::process::{Peer, free_port, tool};

/// KEDA's own namespace: the Service the APIService names lives here, and
/// the operator looks for cluster-wide trigger secrets here.
pub const NAMESPACE: &str = "keda";
/// The APIService KEDA's adapter serves.
pub const METRICS_API_SERVICE: &str = "v1beta1.external.metrics.k8s.io";
const METRICS_SERVICE: &str = "keda-metrics-apiserver";
const STARTUP: Duration = Duration::from_secs(60);

pub struct Keda {
    pub operator: Peer,
    pub adapter: Peer,
    /// The adapter's HTTPS port (the aggregated API, on 127.0.0.1).
    pub adapter_port: u16,
}

impl Keda {
    /// Starts the operator and the adapter with their state in `dir`,
    /// registers the adapter's APIService, and waits until the API server
    /// reports it Available.
    pub async fn start(cp: &ControlPlane, client: &Client, dir: &Path) -> Keda {
        let certs = dir.join("keda-certs");
        std::fs::create_dir_all(&certs).unwrap();
        let pki = Pki::new(dir, "keda");
        // The aggregator checks the name `<service>.<namespace>.svc`.
        let service_name = format!("{METRICS_SERVICE}.{NAMESPACE}.svc");
        let leaf = pki.server_and_client("keda", &[&service_name]);
        std::fs::copy(&pki.ca_pem, certs.join("ca.crt")).unwrap();
        std::fs::copy(&leaf.cert, certs.join("tls.crt")).unwrap();
        std::fs::copy(&leaf.key, certs.join("tls.key")).unwrap();
        // Scalers' extra CAs: none, and not the pod path KEDA defaults to.
        let scaler_cas = dir.join("keda-scaler-cas");
        std::fs::create_dir_all(&scaler_cas).unwrap();

        apply_yaml(
            client,
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"),
            None,
        )
        .await;

        let kubeconfig = cp.kubeconfig();
        let metrics_service = format!("127.0.0.1:{}", free_port());
        let operator_metrics = format!("127.0.0.1:{}", free_port());
        let probes = free_port();
        let mut operator = keda_command("operator", &kubeconfig);
        operator
            .args(["--metrics-bind-address", &operator_metrics])
            .args(["--health-probe-bind-address", &format!("127.0.0.1:{probes}")])
            .args(["--metrics-service-bind-address", &metrics_service])
            .arg("--cert-dir")
            .arg(&certs)
            .arg("--ca-dir")
            .arg(&scaler_cas)
            .arg("--leader-elect=false")
            .arg("--enable-cert-rotation=false")
            .arg("--enable-webhook-patching=false")
            .arg("--enable-apiservice-patching=false");
        let mut operator = Peer::spawn("keda-operator", operator, &dir.join("keda-operator.log"));

        let adapter_port = free_port();
        let mut adapter = keda_command("adapter", &kubeconfig);
        for flag in [
            "--lister-kubeconfig",
            "--authentication-kubeconfig",
            "--authorization-kubeconfig",
        ] {
            adapter.arg(flag).arg(&kubeconfig);
        }
        adapter
            .args(["--bind-address", "127.0.0.1"])
            .args(["--secure-port", &adapter_port.to_string()])
            .arg("--cert-dir")
            .arg(&certs)
            .arg("--tls-cert-file")
            .arg(certs.join("tls.crt"))
            .arg("--tls-private-key-file")
            .arg(certs.join("tls.key"))
            .args(["--metrics-service-address", &metrics_service])
            .args(["--port", &free_port().to_string()]);
        let mut adapter = Peer::spawn("keda-adapter", adapter, &dir.join("keda-adapter.log"));

        operator.wait_http_ok(probes, "/readyz", STARTUP);
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&pki.ca_pem).unwrap());
        apply_yaml(
            client,
            &format!(
                r#"apiVersion: v1
kind: Service
metadata:
  name: {METRICS_SERVICE}
  namespace: {NAMESPACE}
spec:
  type: ExternalName
  externalName: localhost
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: {METRICS_API_SERVICE}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: {ca_bundle}
  service:
    name: {METRICS_SERVICE}
    namespace: {NAMESPACE}
    port: {adapter_port}
"#
            ),
            None,
        )
        .await;
        wait_available(client, &mut adapter).await;
        Keda {
            operator,
            adapter,
            adapter_port,
        }
    }
}

fn keda_command(binary: &str, kubeconfig: &Path) -> Command {
    let mut command = Command::new(tool(binary));
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--zap-log-level", "info", "--zap-encoder", "console"])
        // Every namespace: tests make a namespace per scenario.
        .env("WATCH_NAMESPACE", "")
        .env("KEDA_CLUSTER_OBJECT_NAMESPACE", NAMESPACE)
        .env("POD_NAMESPACE", NAMESPACE);
    command
}

/// Waits for the APIService's `Available` condition, which the API server
/// sets once it has reached the adapter through the aggregator.
async fn wait_available(client: &Client, adapter: &mut Peer) {
    let gvk = GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService");
    let (resource, _) = pinned_kind(client, &gvk).await.expect("APIService kind");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let deadline = tokio::time::Instant::now() + STARTUP;
    let mut last = String::new();
    loop {
        if let Ok(service) = api.get(METRICS_API_SERVICE).await {
            let available = service.data["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Available"))
                .cloned()
                .unwrap_or_default();
            if available["status"] == "True" {
                return;
            }
            last = available.to_string();
        }
        assert!(adapter.is_running(), "keda-adapter exited\n{}", adapter.log());
        assert!(
            tokio::time::Instant::now() < deadline,
            "APIService {METRICS_API_SERVICE} not Available after {STARTUP:?}: {last}\n{}",
            adapter.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
