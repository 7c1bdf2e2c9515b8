//! The tenants of a run: team namespaces named by the namespace standard
//! (`{layer}-{category}`, labelled), one stream per namespace and one
//! consumer per claim named by the stream standard, and the claims.
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use eds::api::EventDrivenService;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Client;
use kube::api::{Api, PostParams};
use testkit::control_plane::{self as cluster, ControlPlane};
use testkit::repo;

/// Claims per team namespace: a team runs a handful of workers.
pub const CLAIMS_PER_NAMESPACE: usize = 10;
/// Concurrent requests while setting the stage (namespaces, NATS).
const SETUP_CONCURRENCY: usize = 64;
const LAYERS: [&str; 4] = ["payments", "intelligence", "services", "media"];

/// One claim's place: its namespace's parts and its own name.
#[derive(Clone, Debug)]
pub struct Slot {
    pub layer: &'static str,
    pub category: String,
    pub service: String,
}

impl Slot {
    pub fn namespace(&self) -> String {
        format!("{}-{}", self.layer, self.category)
    }

    /// `{LAYER}_{CATEGORY}_TASKS`.
    pub fn stream(&self) -> String {
        format!("{}_{}_TASKS", self.layer, self.category)
            .to_uppercase()
            .replace('-', "_")
    }

    /// `{service}-workers`.
    pub fn consumer(&self) -> String {
        format!("{}-workers", self.service)
    }

    fn subject(&self) -> String {
        format!("{}.{}.tasks.{}", self.layer, self.category, self.service)
    }

    /// The claim a team would write for this slot (defaults elsewhere).
    pub fn claim(&self) -> EventDrivenService {
        let (stream, consumer) = (self.stream(), self.consumer());
        EventDrivenService::test()
            .without_uid()
            .with_name(&self.service)
            .with_namespace(Some(&self.namespace()))
            .with_image("ghcr.io/acme/worker:1.0.0")
            .with_spec(|spec| {
                spec.nats.stream = stream;
                spec.nats.consumer = consumer;
            })
    }
}

/// `n` claims, [`CLAIMS_PER_NAMESPACE`] to a namespace.
pub fn slots(n: usize) -> Vec<Slot> {
    (0..n)
        .map(|i| {
            let team = i / CLAIMS_PER_NAMESPACE;
            Slot {
                layer: LAYERS[team % LAYERS.len()],
                category: format!("team-{team:05}"),
                service: format!("svc-{}", i % CLAIMS_PER_NAMESPACE),
            }
        })
        .collect()
}

/// Each distinct namespace of `slots`, once, in order.
pub fn namespaces(slots: &[Slot]) -> Vec<Slot> {
    let mut seen = std::collections::BTreeSet::new();
    slots.iter().filter(|s| seen.insert(s.namespace())).cloned().collect()
}

/// Creates each team namespace with the standard's labels.
pub async fn create_namespaces(client: &Client, slots: &[Slot]) {
    futures::stream::iter(namespaces(slots))
        .for_each_concurrent(SETUP_CONCURRENCY, |slot| async move {
            cluster::create_namespace(
                client,
                &slot.namespace(),
                &[
                    ("layer", slot.layer),
                    ("category", &slot.category),
                    ("pod-security.kubernetes.io/enforce", "restricted"),
                ],
            )
            .await
        })
        .await;
}

/// A stream per namespace (in memory: nothing here needs to survive) and a
/// durable pull consumer per claim.
pub async fn create_consumers(nats_url: &str, slots: &[Slot]) {
    let js = testkit::js::js(nats_url).await;
    let js = &js;
    futures::stream::iter(namespaces(slots))
        .for_each_concurrent(SETUP_CONCURRENCY, |slot| async move {
            create_stream(js, &slot).await;
        })
        .await;
    futures::stream::iter(slots)
        .for_each_concurrent(SETUP_CONCURRENCY, |slot| async move {
            let stream = js.get_stream(slot.stream()).await.expect("the namespace's stream");
            stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(slot.consumer()),
                    filter_subject: slot.subject(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    // As the stream standard configures a worker's consumer,
                    // so that each claim's consumer is healthy.
                    max_deliver: 5,
                    max_ack_pending: 200,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("consumer {}: {e}", slot.consumer()));
        })
        .await;
}

async fn create_stream(js: &jetstream::Context, slot: &Slot) {
    js.create_stream(stream::Config {
        name: slot.stream(),
        subjects: vec![format!("{}.{}.tasks.>", slot.layer, slot.category)],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("stream {}: {e}", slot.stream()));
}

/// The namespace the platform's components run in; the API server audits
/// its ServiceAccounts' requests.
pub const SYSTEM: &str = "eds-system";

/// Installs the controller's RBAC (deploy/rbac) and returns a kubeconfig
/// for its ServiceAccount, as the chart would run it.
pub async fn controller_identity(cp: &ControlPlane, client: &Client) -> std::path::PathBuf {
    cluster::create_namespace(client, SYSTEM, &[]).await;
    for file in [
        "controller-clusterrole.yaml",
        "controller-leader-election-role.yaml",
        "controller-bindings.yaml",
    ] {
        cluster::apply_file(client, &repo::path("deploy/rbac").join(file), Some(SYSTEM)).await;
    }
    cp.kubeconfig_for(SYSTEM, "eds-controller").await
}

/// A ServiceAccount `eds-floor` in [`SYSTEM`] with the controller's own
/// ClusterRole (so it is audited, and may do exactly what the controller
/// may), and a client for it.
pub async fn floor_identity(cp: &ControlPlane, client: &Client) -> Client {
    cluster::create_namespace(client, SYSTEM, &[]).await;
    cluster::apply_file(client, &repo::path("deploy/rbac/controller-clusterrole.yaml"), None).await;
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "eds-floor", "namespace": SYSTEM}
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), SYSTEM)
        .create(&PostParams::default(), &sa)
        .await
        .expect("the floor's ServiceAccount");
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "eds-floor"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "eds-controller"},
        "subjects": [{"kind": "ServiceAccount", "name": "eds-floor", "namespace": SYSTEM}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("the floor's binding");
    cp.client_for(SYSTEM, "eds-floor").await
}
