//! Pods that run, as far as the API can tell: kube-scheduler and KWOK
//! (`scripts/tools.sh scheduler kwok`) out of cluster against a
//! [`ControlPlane`], with one fake node.
//!
//! ```text
//! let kwok = Kwok::start(&cp, &client, dir).await; // scheduler, KWOK, node Ready
//! let pods = kwok::deployment_pods(&client, ns, "worker").await;
//! ```
//!
//! - The scheduler binds pods to [`NODE`], the only node. It has room for
//!   100,000 pods, 10,000 CPUs and 64 TiB, and no taints (not even the
//!   `not-ready` one a new node gets), so a rendered Deployment fits as it is.
//! - KWOK manages that node only (it carries [`NODE_ANNOTATION`]) and plays
//!   our stages (`kwok-stages.yaml`): the node turns Ready and sends a
//!   heartbeat a minute; a pod bound to it turns Running and Ready at once;
//!   a pod being deleted is removed at once.
//! - **Readiness is simulated**: no container runs, no image is pulled and
//!   no probe is called. `readyReplicas` and the Deployment's `Available`
//!   say what a cluster would say of pods that start cleanly, and nothing
//!   about the worker's own code.
//! - Both run as the admin (the control plane's admin kubeconfig).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::control_plane::{ControlPlane, apply_yaml};
use crate::process::{Peer, free_port, tool};

/// The fake node's name.
pub const NODE: &str = "kwok-node";
/// The annotation that hands a node to KWOK (its
/// `--manage-nodes-with-annotation-selector`).
pub const NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
const STAGES: &str = include_str!("kwok-stages.yaml");
const STARTUP: Duration = Duration::from_secs(60);
/// Pod IPs come from the node's range; a /16 outlasts any benchmark.
const POD_CIDR: &str = "10.244.0.0/16";
/// The address the node reports, from a range nothing here uses.
const NODE_IP: &str = "10.0.0.1";

/// kube-scheduler and KWOK, killed on drop.
pub struct Kwok {
    pub scheduler: Peer,
    pub kwok: Peer,
}

impl Kwok {
    /// Creates the fake node, starts KWOK with our stages and the scheduler
    /// (logs and state in `dir`), and waits until the node is Ready.
    pub async fn start(cp: &ControlPlane, client: &Client, dir: &Path) -> Kwok {
        let stages = dir.join("kwok-stages.yaml");
        std::fs::write(&stages, STAGES).unwrap();
        let (key, value) = NODE_ANNOTATION;
        apply_yaml(
            client,
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n  annotations:\n    {key}: {value}\n  \
                 labels:\n    kubernetes.io/hostname: {NODE}\nspec:\n  podCIDR: {POD_CIDR}\n  podCIDRs: [{POD_CIDR}]\n"
            ),
            None,
        )
        .await;
        // The API server's admission taints a new node `not-ready`, and the
        // controller that lifts the taint once the node is Ready (node
        // lifecycle) does not run here: it would also taint the node again
        // whenever a heartbeat came late on a loaded machine. So the taint
        // goes now, and no other comes.
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .patch(
                NODE,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"taints": null}})),
            )
            .await
            .unwrap_or_else(|e| panic!("removing the taints of node {NODE}: {e}"));

        let health = free_port();
        let mut kwok = Command::new(tool("kwok"));
        kwok.arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .arg("--config")
            .arg(&stages)
            .arg("--manage-all-nodes=false")
            .args(["--manage-nodes-with-annotation-selector", &format!("{key}={value}")])
            .args(["--node-ip", NODE_IP])
            .args(["--server-address", &format!("127.0.0.1:{health}")])
            // Its own work directory: a `~/.kwok/kwok.yaml` of the person
            // running the tests would add stages of its own.
            .env("KWOK_WORKDIR", dir.join("kwok"));
        let mut kwok = Peer::spawn("kwok", kwok, &dir.join("kwok.log"));
        kwok.wait_http_ok(health, "/healthz", STARTUP);

        let mut scheduler = Command::new(tool("kube-scheduler"));
        scheduler
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .arg("--leader-elect=false")
            // No serving port: nothing scrapes it, and it would need its own certs.
            .args(["--secure-port", "0"])
            // Each binding and each pod that does not fit, in its log.
            .args(["--v", "2"])
            // Its client may send 500 requests a second (default 50; a
            // binding and an Event per pod): the controller benchmark's
            // 10,000 pods are bound in under a minute, as kwokctl's own
            // clusters do it (they lift the limit further).
            .args(["--kube-api-qps", "500", "--kube-api-burst", "1000"]);
        let mut scheduler = Peer::spawn("kube-scheduler", scheduler, &dir.join("kube-scheduler.log"));
        // Logged once its flags are accepted. Pods created before its caches
        // sync are scheduled when they do, so there is nothing more to await.
        scheduler.wait_for_log("Starting Kubernetes Scheduler", STARTUP);

        wait_node_ready(client, &mut kwok).await;
        Kwok { scheduler, kwok }
    }

    /// Fails the test, with its log, if either exited by itself.
    pub fn assert_running(&mut self) {
        self.scheduler.assert_running();
        self.kwok.assert_running();
    }
}

/// The pods of Deployment `namespace/name`, by its selector, oldest first.
/// None when the Deployment does not exist.
pub async fn deployment_pods(client: &Client, namespace: &str, name: &str) -> Vec<Pod> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let Some(selector) = deployments
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("reading Deployment {namespace}/{name}: {e}"))
        .and_then(|d| d.spec?.selector.match_labels)
    else {
        return Vec::new();
    };
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut list = pods
        .list(&ListParams::default().labels(&labels.join(",")))
        .await
        .unwrap_or_else(|e| panic!("listing the pods of Deployment {namespace}/{name}: {e}"))
        .items;
    list.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
    list
}

/// Whether the pod's `Ready` condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn wait_node_ready(client: &Client, kwok: &mut Peer) {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + STARTUP;
    loop {
        let node = nodes.get(NODE).await.expect("the fake node");
        let ready = node
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            return;
        }
        kwok.assert_running();
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {NODE} not Ready after {STARTUP:?}\n{}",
            kwok.log_tail(crate::process::LOG_TAIL)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
