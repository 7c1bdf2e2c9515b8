//! The controller against a real control plane (slow tier): etcd,
//! kube-apiserver with RBAC and kube-controller-manager (garbage collector,
//! deployments), with KEDA's own CRDs installed.
//!
//! Each test has its own namespace and runs the built `eds controller` binary
//! restricted to it, with its own Lease there and its own /metrics.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use eds::api::{ConsumerConfig, DeletionPolicy, EventDrivenService, fixtures};
use eds::controller::FINALIZER;
use eds::controller::drift::holds;
use eds::render::{Platform, ScaledObject, desired_children};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Pod, PodTemplateSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use testkit::control_plane as cluster;
use testkit::eventually;
use testkit::js;
use testkit::nats::NatsServer;
use testkit::process::{Peer, free_port};
use testkit::prometheus::Scrape;
use testkit::{http, repo};

const WAIT: Duration = Duration::from_secs(30);
/// Where the controller's NATS connection points when a test reads no lag:
/// nothing listens on port 1, so every read fails at once.
const NO_NATS: &str = "nats://127.0.0.1:1";

/// One `eds controller` process, reconciling one namespace.
struct Controller {
    peer: Peer,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Controller {
    /// Starts the binary as `identity`, with its Lease in `namespace`, and
    /// waits until it has reached the API server.
    fn start(kubeconfig: &Path, namespace: &str, identity: &str, nats_url: &str) -> Controller {
        Self::start_with(
            kubeconfig,
            namespace,
            identity,
            nats_url,
            &["--lease-namespace", namespace],
        )
    }

    fn start_with(kubeconfig: &Path, namespace: &str, identity: &str, nats_url: &str, extra: &[&str]) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_eds"));
        command
            .arg("controller")
            .args(["--watch-namespace", namespace])
            .args(["--identity", identity])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args([
                "--lag-interval",
                "1s",
                "--lease-duration",
                "3s",
                "--poison-window",
                "3s",
            ])
            .args(["--nats-url", nats_url])
            // One test, one namespace: every namespace may use NATS, written
            // down (a --nats-config default connection replaces this).
            .args(["--nats-namespaces", "*"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info");
        let mut peer = Peer::spawn(identity, command, &dir.path().join("controller.log"));
        peer.wait_http_ok(port, "/readyz", WAIT);
        Controller { peer, port, _dir: dir }
    }

    /// The sum of every sample of `name` whose labels include `labels`;
    /// `None` when there is no such sample.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let scrape = http::get(self.port, "/metrics").expect("the controller's /metrics");
        Scrape::parse(&scrape.body).sum(name, labels)
    }
}

/// A valid claim named `name` in `namespace`, as a user would create it.
fn claim(namespace: &str, name: &str) -> EventDrivenService {
    EventDrivenService::test()
        .without_uid()
        .with_name(name)
        .with_namespace(Some(namespace))
}

async fn create(client: &Client, claim: &EventDrivenService) -> EventDrivenService {
    Api::<EventDrivenService>::namespaced(client.clone(), &claim.namespace().unwrap())
        .create(&PostParams::default(), claim)
        .await
        .unwrap()
}

fn api<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), namespace)
}

/// The claim's four children, once they all exist.
struct Children {
    service_account: ServiceAccount,
    deployment: Deployment,
    service: Service,
    scaled_object: ScaledObject,
}

async fn children(client: &Client, namespace: &str, name: &str) -> Children {
    eventually("every child exists", WAIT, async || {
        match children_now(client, namespace, name).await {
            (Some(service_account), Some(deployment), Some(service), Some(scaled_object)) => Ok(Children {
                service_account,
                deployment,
                service,
                scaled_object,
            }),
            missing => Err(format!("{missing:?}")),
        }
    })
    .await
}

type Maybe = (
    Option<ServiceAccount>,
    Option<Deployment>,
    Option<Service>,
    Option<ScaledObject>,
);

async fn children_now(client: &Client, namespace: &str, name: &str) -> Maybe {
    (
        api::<ServiceAccount>(client, namespace).get_opt(name).await.unwrap(),
        api::<Deployment>(client, namespace).get_opt(name).await.unwrap(),
        api::<Service>(client, namespace).get_opt(name).await.unwrap(),
        api::<ScaledObject>(client, namespace).get_opt(name).await.unwrap(),
    )
}

/// One test's corner of the shared control plane: a fresh namespace and a
/// controller reconciling it.
struct Scenario {
    client: Client,
    ns: String,
    controller: Controller,
    /// Prints the control plane's logs if the test fails.
    _cluster: cluster::Shared,
}

impl Scenario {
    async fn new(name: &str, nats_url: &str) -> Scenario {
        let cp = cluster::shared();
        let client = cp.client().await;
        let ns = cp.namespace(&client, name).await;
        let controller = Controller::start(&cp.kubeconfig(), &ns, name, nats_url);
        Scenario {
            client,
            ns,
            controller,
            _cluster: cp,
        }
    }

    /// Creates `claim` here and waits for its children.
    async fn run(&self, claim: EventDrivenService) -> Children {
        let name = claim.name_any();
        create(&self.client, &claim.with_namespace(Some(&self.ns))).await;
        children(&self.client, &self.ns, &name).await
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        api(&self.client, &self.ns)
    }

    async fn claim_where(&self, what: &str, check: impl Fn(&EventDrivenService) -> bool) -> EventDrivenService {
        claim_where(&self.client, &self.ns, "worker", what, check).await
    }
}

/// The claim once its status describes its current generation and `check`
/// holds for it.
async fn claim_where(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    check: impl Fn(&EventDrivenService) -> bool,
) -> EventDrivenService {
    eventually(what, WAIT, async || {
        let claim = api::<EventDrivenService>(client, namespace).get(name).await.unwrap();
        let status = claim.status.as_ref();
        let current = status.and_then(|s| s.observed_generation) == claim.metadata.generation;
        if current && check(&claim) {
            Ok(claim)
        } else {
            Err(claim.status)
        }
    })
    .await
}

fn condition(claim: &EventDrivenService, type_: &str) -> Option<(String, String)> {
    let status = claim.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.message.clone()))
}

fn is(claim: &EventDrivenService, type_: &str, status: &str) -> bool {
    condition(claim, type_).is_some_and(|(s, _)| s == status)
}

/// The worker container of a pod template.
fn container(template: &PodTemplateSpec) -> &Container {
    &template.spec.as_ref().unwrap().containers[0]
}

fn image(deployment: &Deployment) -> String {
    let template = &deployment.spec.as_ref().unwrap().template;
    container(template).image.clone().unwrap()
}

/// The fields a field manager owns in an object, as JSON.
fn owned_by(meta: &kube::api::ObjectMeta, manager: &str) -> Value {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .map(|m| m.fields_v1.as_ref().map_or(Value::Null, |f| f.0.clone()))
        .next()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_design_example_is_accepted_and_rendered_into_its_children() {
    let cp = cluster::shared();
    let client = cp.client().await;
    // The design's own namespace, with the Restricted pod security profile
    // enforced: the ReplicaSet can create the worker's pods only if they
    // comply.
    cluster::create_namespace(
        &client,
        "my-namespace",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let example = repo::path("examples/design-example.yaml");
    cluster::apply_file(&client, &example, None).await;
    let _controller = Controller::start(&cp.kubeconfig(), "my-namespace", "design", NO_NATS);

    let live = children(&client, "my-namespace", "my-service").await;
    let claim = claim_where(&client, "my-namespace", "my-service", "reconciled", |c| {
        is(c, "Reconciled", "True")
    })
    .await;

    // Every field the pure render produces made it into the cluster as is:
    // in particular the ScaledObject passed KEDA's own schema with nothing
    // pruned (the controller applies with strict field validation).
    let desired = desired_children(&claim, &Platform::default()).unwrap();
    let pairs = [
        (json!(live.service_account), json!(desired.service_account)),
        (json!(live.deployment), json!(desired.deployment)),
        (json!(live.service), json!(desired.service)),
        (json!(live.scaled_object), json!(desired.scaled_object)),
    ];
    for (live, desired) in &pairs {
        assert!(
            holds(live, desired),
            "live {live:#}\ndoes not hold rendered {desired:#}"
        );
    }
    for meta in [
        &live.service_account.metadata,
        &live.deployment.metadata,
        &live.service.metadata,
        &live.scaled_object.metadata,
    ] {
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.controller, owner.uid.as_str()),
            (Some(true), claim.uid().unwrap().as_str())
        );
    }

    // A few fields by hand, as the design asked for them.
    assert_eq!(live.service_account.automount_service_account_token, Some(false));
    assert_eq!(image(&live.deployment), "ghcr.io/myorg/my-service:v1.0.0");
    let so = json!(live.scaled_object.spec);
    assert_eq!(so["minReplicaCount"], 1);
    assert_eq!(so["maxReplicaCount"], 10);
    let trigger = &so["triggers"][0];
    assert_eq!(trigger["type"], "external-push");
    assert_eq!(trigger["metadata"]["lagThreshold"], "5");
    assert_eq!(trigger["metadata"]["scalerAddress"], "eds-scaler.eds-system.svc:9090");
    assert_eq!(
        live.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .name
            .as_deref(),
        Some("http")
    );
    // KEDA owns the replica count: we never apply it.
    let ours = owned_by(&live.deployment.metadata, "eds-controller");
    assert!(ours["f:spec"].is_object(), "{ours}");
    assert!(ours["f:spec"].get("f:replicas").is_none(), "{ours}");

    // The Restricted profile let the ReplicaSet create a pod.
    eventually("a worker pod is admitted", WAIT, async || {
        let pods = api::<Pod>(&client, "my-namespace")
            .list(&ListParams::default().labels("app.kubernetes.io/instance=my-service"))
            .await
            .unwrap();
        if pods.items.is_empty() {
            let sets = api::<ReplicaSet>(&client, "my-namespace")
                .list(&Default::default())
                .await
                .unwrap();
            Err(sets.items.into_iter().map(|rs| rs.status).collect::<Vec<_>>())
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test]
async fn the_api_server_refuses_every_invalid_claim_with_its_message() {
    let cp = cluster::shared();
    let client = cp.client().await;
    let ns = cp.namespace(&client, "invalid").await;
    let path = format!("/apis/platform.bizmatters.io/v1alpha1/namespaces/{ns}/eventdrivenservices");
    let mut wrong = Vec::new();
    let cases = fixtures::invalid_cases();
    for case in &cases {
        let mut claim = case.claim();
        claim["metadata"]["namespace"] = json!(ns);
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let mut request = kube::core::Request::new(&path)
            .create(&dry_run, serde_json::to_vec(&claim).unwrap())
            .unwrap();
        // As kubectl does: an unknown field is an error, not silently dropped.
        *request.uri_mut() = format!("{}&fieldValidation=Strict", request.uri()).parse().unwrap();
        match client.request::<Value>(request).await {
            Ok(_) => wrong.push(format!("{}: accepted", case.case)),
            Err(kube::Error::Api(status)) => {
                let named = case.field.is_empty() || status.message.contains(&case.field);
                if status.code != 422 && status.code != 400 || !named || !status.message.contains(&case.message) {
                    wrong.push(format!("{}: {} {}", case.case, status.code, status.message));
                }
            }
            Err(e) => wrong.push(format!("{}: {e}", case.case)),
        }
    }
    assert!(cases.len() > 40, "the table has every rule");
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    // And the valid claim of the same table is accepted.
    let valid = claim(&ns, "valid");
    create(&client, &valid).await;
}

#[tokio::test]
async fn an_image_change_rolls_the_deployment() {
    let scenario = Scenario::new("rollout", NO_NATS).await;
    let before = scenario.run(claim("", "worker")).await.deployment;
    let sets = scenario.api::<ReplicaSet>();
    let first_rs = eventually("a first ReplicaSet", WAIT, async || {
        let sets = sets.list(&Default::default()).await.unwrap();
        (sets.items.len() == 1)
            .then(|| sets.items[0].name_any())
            .ok_or(sets.items.len())
    })
    .await;

    let new_image = "ghcr.io/acme/orders-worker:2.0.0";
    scenario
        .api::<EventDrivenService>()
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": new_image}})),
        )
        .await
        .unwrap();
    let after = eventually("the Deployment runs the new image", WAIT, async || {
        let d = scenario.api::<Deployment>().get("worker").await.unwrap();
        let running = image(&d);
        (running == new_image).then_some(d).ok_or(running)
    })
    .await;
    assert!(after.metadata.generation > before.metadata.generation);
    // The deployment controller rolls out: a second ReplicaSet with the new
    // pod template.
    eventually("a new ReplicaSet for the new image", WAIT, async || {
        let all = sets.list(&Default::default()).await.unwrap().items;
        let images: Vec<Option<String>> = all
            .iter()
            .filter(|rs| rs.name_any() != first_rs)
            .map(|rs| container(rs.spec.as_ref()?.template.as_ref()?).image.clone())
            .collect();
        (images == [Some(new_image.to_string())]).then_some(()).ok_or(images)
    })
    .await;
}

#[tokio::test]
async fn drift_is_repaired_and_deleted_children_come_back() {
    let scenario = Scenario::new("drift", NO_NATS).await;
    let original = scenario.run(claim("", "worker")).await;

    // Someone else edits fields we own, with their own field manager...
    let worker = container(&original.deployment.spec.as_ref().unwrap().template);
    let meddler = PatchParams::default();
    scenario
        .api::<Deployment>()
        .patch(
            "worker",
            &meddler,
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": worker.name, "image": "evil:latest"}
            ]}}}})),
        )
        .await
        .unwrap();
    scenario
        .api::<ServiceAccount>()
        .patch(
            "worker",
            &meddler,
            &Patch::Merge(json!({"automountServiceAccountToken": true})),
        )
        .await
        .unwrap();
    // ...and deletes two children outright.
    let gone = DeleteParams::default();
    scenario.api::<Service>().delete("worker", &gone).await.unwrap();
    scenario.api::<ScaledObject>().delete("worker", &gone).await.unwrap();

    eventually("drift is undone and deleted children are back", WAIT, async || {
        let now = children(&scenario.client, &scenario.ns, "worker").await;
        let repaired = (
            image(&now.deployment) == image(&original.deployment),
            now.service_account.automount_service_account_token == Some(false),
            now.service.uid() != original.service.uid(),
            now.scaled_object.uid() != original.scaled_object.uid(),
        );
        (repaired == (true, true, true, true)).then_some(()).ok_or(repaired)
    })
    .await;
}

#[tokio::test]
async fn an_object_someone_else_made_is_not_taken_over() {
    let scenario = Scenario::new("taken", NO_NATS).await;
    // A ServiceAccount of the claim's name, made by someone else, with a
    // field we would set to another value.
    let theirs: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": "worker"},
        "automountServiceAccountToken": true
    }))
    .unwrap();
    scenario
        .api::<ServiceAccount>()
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    create(&scenario.client, &claim(&scenario.ns, "worker")).await;

    let claim = scenario
        .claim_where("Reconciled False", |c| is(c, "Reconciled", "False"))
        .await;
    let (_, message) = condition(&claim, "Reconciled").unwrap();
    assert!(
        message.contains("ServiceAccount") && message.contains("conflict"),
        "{message}"
    );
    let sa = scenario.api::<ServiceAccount>().get("worker").await.unwrap();
    assert_eq!(sa.automount_service_account_token, Some(true), "their value stands");
    assert!(sa.owner_references().is_empty(), "not adopted");
    // The other children are still made.
    children_now(&scenario.client, &scenario.ns, "worker")
        .await
        .1
        .expect("the Deployment");
}

#[tokio::test]
async fn deleting_the_claim_deletes_every_child() {
    let scenario = Scenario::new("cascade", NO_NATS).await;
    scenario.run(claim("", "worker")).await;
    scenario
        .api::<EventDrivenService>()
        .delete("worker", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the garbage collector removes every child",
        WAIT,
        async || match children_now(&scenario.client, &scenario.ns, "worker").await {
            (None, None, None, None) => Ok(()),
            left => Err(left),
        },
    )
    .await;
}

#[tokio::test]
async fn a_keda_style_replica_change_survives_reconciles() {
    let scenario = Scenario::new("replicas", NO_NATS).await;
    scenario.run(claim("", "worker")).await;

    // What KEDA's HPA does: write the scale subresource as its own manager.
    let deployments = scenario.api::<Deployment>();
    deployments
        .patch_scale(
            "worker",
            &PatchParams::apply("keda-hpa").force(),
            &Patch::Apply(json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    // A claim change makes the controller apply the Deployment again.
    scenario
        .api::<EventDrivenService>()
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"env": [{"name": "MODE", "value": "fast"}]}})),
        )
        .await
        .unwrap();
    // With zero replicas the Deployment is available.
    scenario
        .claim_where("status shows 0 replicas, available", |c| {
            c.status.as_ref().and_then(|s| s.replicas) == Some(0) && is(c, "DeploymentAvailable", "True")
        })
        .await;
    let deployment = eventually("the new env is applied", WAIT, async || {
        let d = deployments.get("worker").await.unwrap();
        let env = json!(container(&d.spec.as_ref().unwrap().template).env);
        env.to_string().contains("MODE").then_some(d).ok_or(env)
    })
    .await;
    assert_eq!(
        deployment.spec.as_ref().unwrap().replicas,
        Some(0),
        "KEDA's replica count stands"
    );

    // Several resyncs later, still KEDA's number.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deployment = deployments.get("worker").await.unwrap();
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(0));
    assert!(
        owned_by(&deployment.metadata, "eds-controller")["f:spec"]
            .get("f:replicas")
            .is_none()
    );
}

#[tokio::test]
async fn the_status_reports_lag_from_nats_and_readiness_from_keda_and_the_deployment() {
    let nats = NatsServer::start();
    let js = js::js(&nats.url()).await;
    let stream = js::stream_with(&js, "ORDERS", &["orders.>"]).await;
    js::pull_consumer(&stream, "orders-workers", "", Duration::from_secs(30)).await;
    js::publish(&js, "orders.new", 12).await;

    let scenario = Scenario::new("status", &nats.url()).await;
    // Threshold 5, at most 10 replicas: 12 pending messages ask for 3.
    scenario.run(claim("", "worker").with_replicas(0, 10)).await;
    let lag = |n: i64| move |c: &EventDrivenService| c.status.as_ref().and_then(|s| s.lag) == Some(n);
    let claim = scenario.claim_where("lag 12 in the status", lag(12)).await;
    assert!(is(&claim, "ScalerReady", "Unknown"), "no KEDA yet: {:?}", claim.status);
    assert!(is(&claim, "Ready", "False"));
    let labels = [("name", "worker"), ("namespace", scenario.ns.as_str())];
    let metric = |name: &str| scenario.controller.metric(name, &labels);
    assert_eq!(metric("eds_service_lag"), Some(12.0));
    assert_eq!(metric("eds_service_desired_replicas"), Some(3.0));
    assert_eq!(metric("eds_service_max_replicas"), Some(10.0));

    js::publish(&js, "orders.new", 8).await;
    scenario.claim_where("lag 20 in the status", lag(20)).await;

    // KEDA reports the ScaledObject ready and active; the Deployment is
    // available once scaled to zero (no kubelet runs pods here).
    scenario
        .api::<ScaledObject>()
        .patch_status(
            "worker",
            &PatchParams::apply("keda-operator").force(),
            &Patch::Apply(json!({
                "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                "status": {"conditions": [
                    {"type": "Ready", "status": "True", "reason": "ScaledObjectReady", "message": "ScaledObject is defined correctly and is ready for scaling"},
                    {"type": "Active", "status": "True", "reason": "ScalerActive", "message": "Scaling is performed because triggers are active"}
                ]}
            })),
        )
        .await
        .unwrap();
    scenario
        .api::<Deployment>()
        .patch_scale(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    let claim = scenario.claim_where("Ready", |c| is(c, "Ready", "True")).await;
    let (_, scaler) = condition(&claim, "ScalerReady").unwrap();
    assert!(scaler.contains("active: True"), "{scaler}");
    assert!(is(&claim, "DeploymentAvailable", "True"));
}

#[tokio::test]
async fn nothing_is_written_when_nothing_changed() {
    let scenario = Scenario::new("quiet", NO_NATS).await;
    scenario.run(claim("", "worker")).await;
    scenario
        .claim_where("reconciled", |c| is(c, "Reconciled", "True"))
        .await;

    let versions = async || {
        let c = children(&scenario.client, &scenario.ns, "worker").await;
        let claim = scenario.api::<EventDrivenService>().get("worker").await.unwrap();
        [
            claim.resource_version(),
            c.service_account.resource_version(),
            c.deployment.resource_version(),
            c.service.resource_version(),
            c.scaled_object.resource_version(),
        ]
    };
    // Let the deployment controller finish its own status writes first.
    let mut settled = versions().await;
    eventually("resourceVersions settle", WAIT, async || {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = versions().await;
        let same = now == settled;
        settled = now;
        same.then_some(()).ok_or(())
    })
    .await;

    let metric = |name: &str, labels: &[(&str, &str)]| scenario.controller.metric(name, labels).unwrap_or(0.0);
    let reconciles = || metric("eds_reconcile_total", &[("result", "ok")]);
    let applies = || metric("eds_child_applies_total", &[]);
    let (reconciles_before, applies_before) = (reconciles(), applies());
    // --lag-interval 1s requeues the claim every second; each resync also
    // waits (within the NATS request deadline) for a NATS that never
    // connects here. Three resyncs, however long they take.
    eventually("three more resyncs", WAIT, async || {
        tokio::time::sleep(Duration::from_millis(250)).await;
        (reconciles() >= reconciles_before + 3.0).then_some(())
    })
    .await;
    println!("resyncs: {reconciles_before} -> {}", reconciles());
    assert_eq!(applies(), applies_before, "no child was applied again");
    assert_eq!(versions().await, settled, "no object changed");
}

#[tokio::test]
async fn failures_are_events_on_the_claim_and_back_off() {
    let scenario = Scenario::new("failing", NO_NATS).await;
    let (client, ns, controller) = (&scenario.client, &scenario.ns, &scenario.controller);
    // The schema accepts this override; rendering refuses it, since the CPU
    // request is above the size's limit.
    let bad = claim(ns, "worker")
        .with_spec(|s| s.resources = Some(serde_json::from_value(json!({"requests": {"cpu": "8"}})).unwrap()));
    create(client, &bad).await;

    let claim = scenario
        .claim_where("Reconciled False", |c| is(c, "Reconciled", "False"))
        .await;
    let (_, message) = condition(&claim, "Reconciled").unwrap();
    assert!(message.contains("spec.resources"), "{message}");
    let events = eventually("a Warning Event on the claim", WAIT, async || {
        let events = api::<Event>(client, ns).list(&Default::default()).await.unwrap().items;
        let ours: Vec<Event> = events
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("worker"))
            .filter(|e| e.reason.as_deref() == Some("ReconcileFailed"))
            .collect();
        (!ours.is_empty()).then_some(ours).ok_or(())
    })
    .await;
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    assert!(events[0].note.as_deref().unwrap_or_default().contains("spec.resources"));
    // Retries back off (1 s, 2 s, 4 s, 8 s...): once three have failed, the
    // next five seconds hold one or two more, where a fixed 1 s retry would
    // hold five.
    let errors = eventually("failures are counted", WAIT, async || {
        let n = controller.metric("eds_reconcile_errors_total", &[("error", "invalid_claim")]);
        n.filter(|n| *n >= 3.0).ok_or(n)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = controller.metric("eds_reconcile_errors_total", &[]).unwrap();
    assert!(later - errors <= 2.0, "{errors} -> {later}");
    let deployment = api::<Deployment>(client, ns).get_opt("worker").await.unwrap();
    assert!(
        deployment.is_none(),
        "nothing is applied for a claim that cannot render"
    );
}

/// The shipped RBAC files.
fn rbac_file(name: &str) -> PathBuf {
    repo::path("deploy/rbac").join(name)
}

/// (apiGroup, resource[/subresource], verb) for every permission a role file
/// grants.
fn granted(file: &Path) -> BTreeSet<(String, String, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let role: Value = serde_yaml::from_str(&text).unwrap();
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert((
                        group.as_str().unwrap().to_string(),
                        resource.as_str().unwrap().to_string(),
                        verb.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    out
}

const CONTROLLER_USER: &str = "system:serviceaccount:eds-system:eds-controller";

#[tokio::test]
async fn the_controller_works_with_only_the_shipped_role_and_uses_all_of_it() {
    let cp = cluster::shared();
    let admin = cp.client().await;
    cluster::create_namespace(&admin, "eds-system", &[]).await;
    for file in [
        "controller-clusterrole.yaml",
        "controller-leader-election-role.yaml",
        "controller-bindings.yaml",
    ] {
        cluster::apply_file(&admin, &rbac_file(file), None).await;
    }
    let ns = cp.namespace(&admin, "rbac").await;
    let kubeconfig = cp.kubeconfig_for("eds-system", "eds-controller").await;
    // As installed: the Lease in eds-system under its default name.
    let controller = Controller::start_with(&kubeconfig, &ns, "rbac", NO_NATS, &[]);

    // The whole life of a claim, as the ServiceAccount.
    create(&admin, &claim(&ns, "worker")).await;
    let first = children(&admin, &ns, "worker").await;
    claim_where(&admin, &ns, "worker", "reconciled", |c| is(c, "Reconciled", "True")).await;
    api::<Service>(&admin, &ns)
        .delete("worker", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted Service is back", WAIT, async || {
        let s = api::<Service>(&admin, &ns).get_opt("worker").await.unwrap();
        s.filter(|s| s.uid() != first.service.uid()).map(|_| ()).ok_or(())
    })
    .await;
    // A failing claim twice in a row: an Event, then its series patched.
    let bad = claim(&ns, "broken")
        .with_spec(|s| s.resources = Some(serde_json::from_value(json!({"requests": {"cpu": "8"}})).unwrap()));
    create(&admin, &bad).await;
    eventually("the failure Event repeats", WAIT, async || {
        let n = controller.metric("eds_reconcile_errors_total", &[]).unwrap_or(0.0);
        (n >= 2.0).then_some(()).ok_or(n)
    })
    .await;
    // A claim whose deletion would delete its consumer gets the finalizer,
    // and loses it when its policy goes back to Retain (NATS is not needed
    // for either: the consumer itself cannot be made here).
    let owning = claim(&ns, "owning").with_spec(|s| {
        s.nats.consumer_config = Some(ConsumerConfig::default());
        s.nats.deletion_policy = DeletionPolicy::Delete;
    });
    create(&admin, &owning).await;
    claim_where(&admin, &ns, "owning", "the finalizer", |c| {
        c.finalizers().iter().any(|f| f == FINALIZER)
    })
    .await;
    api::<EventDrivenService>(&admin, &ns)
        .patch(
            "owning",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nats": {"deletionPolicy": "Retain"}}})),
        )
        .await
        .unwrap();
    claim_where(&admin, &ns, "owning", "no finalizer", |c| c.finalizers().is_empty()).await;
    let lease = api::<Lease>(&admin, "eds-system").get("eds-controller").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("rbac"));
    // Renewals (lease duration 3 s: every 0.5 s) and watches are in the log.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Nothing outside the role.
    let sa = cp.client_for("eds-system", "eds-controller").await;
    let forbidden = |result: kube::Result<()>, what: &str| match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: {other:?}"),
    };
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap();
    forbidden(
        api::<Secret>(&sa, &ns)
            .create(&PostParams::default(), &secret)
            .await
            .map(drop),
        "creating a Secret",
    );
    forbidden(
        api::<Secret>(&sa, &ns).list(&Default::default()).await.map(drop),
        "reading Secrets",
    );
    forbidden(
        api::<Deployment>(&sa, &ns)
            .delete("worker", &DeleteParams::default())
            .await
            .map(drop),
        "deleting a Deployment",
    );
    // `patch` on claims is granted for the consumer finalizer (RBAC cannot
    // narrow it to metadata.finalizers); deleting a claim is not.
    forbidden(
        api::<EventDrivenService>(&sa, &ns)
            .delete("worker", &DeleteParams::default())
            .await
            .map(drop),
        "deleting a claim",
    );
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "escalate"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "eds-controller", "namespace": "eds-system"}]
    }))
    .unwrap();
    forbidden(
        Api::<ClusterRoleBinding>::all(sa.clone())
            .create(&PostParams::default(), &binding)
            .await
            .map(drop),
        "granting itself cluster-admin",
    );

    // Every permission granted was used (audit log of the API server).
    let used: BTreeSet<(String, String, String)> = cp
        .audit()
        .iter()
        .filter(|e| e["user"]["username"] == CONTROLLER_USER)
        .filter(|e| e["responseStatus"]["code"].as_u64().is_some_and(|c| c < 400))
        .map(|e| {
            let object = &e["objectRef"];
            let mut resource = object["resource"].as_str().unwrap_or_default().to_string();
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            let group = object["apiGroup"].as_str().unwrap_or_default().to_string();
            (group, resource, e["verb"].as_str().unwrap().to_string())
        })
        .collect();
    let mut all = granted(&rbac_file("controller-clusterrole.yaml"));
    all.extend(granted(&rbac_file("controller-leader-election-role.yaml")));
    let unused: Vec<_> = all.difference(&used).collect();
    // Two permissions are checked inside other requests, so the audit log
    // never shows them as verbs; `permissions_checked_inside_other_requests`
    // shows each one is needed.
    let inside = |(group, resource, verb): &&(String, String, String)| {
        (verb == "create"
            && ["serviceaccounts", "deployments", "services", "scaledobjects"].contains(&resource.as_str()))
            || (group == "platform.bizmatters.io" && resource == "eventdrivenservices/finalizers" && verb == "update")
    };
    let unexplained: Vec<_> = unused.iter().filter(|p| !inside(p)).collect();
    assert!(
        unexplained.is_empty(),
        "granted but never used: {unexplained:?}\nused: {used:?}"
    );
}

/// Server-side apply creates a missing object only for a client allowed to
/// `create` it, and `blockOwnerDeletion` needs `update` on the owner's
/// finalizers: both are checked inside the apply request. A ServiceAccount
/// with the shipped role minus one of them cannot apply a new child.
#[tokio::test]
async fn permissions_checked_inside_other_requests() {
    let cp = cluster::shared();
    let admin = cp.client().await;
    let ns = cp.namespace(&admin, "inside").await;
    let claim = create(&admin, &claim(&ns, "worker")).await;
    let child = desired_children(&claim, &Platform::default()).unwrap().service;
    let full: Value =
        serde_yaml::from_str(&std::fs::read_to_string(rbac_file("controller-clusterrole.yaml")).unwrap()).unwrap();

    let mut outcomes = Vec::new();
    for (case, strip) in [
        ("whole role", None),
        ("without create", Some(("services", "create"))),
        (
            "without finalizers update",
            Some(("eventdrivenservices/finalizers", "update")),
        ),
    ] {
        let name = format!("role-{}", outcomes.len());
        let mut role = full.clone();
        role["metadata"]["name"] = json!(name);
        if let Some((resource, verb)) = strip {
            let rules = role["rules"].as_array_mut().unwrap();
            for rule in rules.iter_mut() {
                if rule["resources"].as_array().unwrap().iter().any(|r| r == resource) {
                    rule["verbs"].as_array_mut().unwrap().retain(|v| v != verb);
                }
            }
            rules.retain(|rule| !rule["verbs"].as_array().unwrap().is_empty());
        }
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
        });
        let yaml = [role, sa, binding]
            .iter()
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect::<Vec<_>>()
            .join("---\n");
        cluster::apply_yaml(&admin, &yaml, Some(&ns)).await;
        let as_role = cp.client_for(&ns, &name).await;
        let mut service = child.clone();
        service.metadata.name = Some(name.clone());
        let applied = eventually("RBAC settles", Duration::from_secs(5), async || {
            let result = api::<Service>(&as_role, &ns)
                .patch(
                    &name,
                    &PatchParams::apply("eds-controller").force(),
                    &Patch::Apply(&service),
                )
                .await;
            match result {
                Ok(_) => Ok(Ok(())),
                Err(kube::Error::Api(s)) if s.code == 403 && strip.is_some() => Ok(Err(s.message)),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        outcomes.push((case, applied));
    }
    assert!(outcomes[0].1.is_ok(), "{outcomes:?}");
    for (case, outcome) in &outcomes[1..] {
        assert!(outcome.is_err(), "{case}: the apply succeeded");
    }
}

#[tokio::test]
async fn with_two_controllers_only_the_leader_writes() {
    let cp = cluster::shared();
    let client = cp.client().await;
    let ns = cp.namespace(&client, "leader").await;
    let mut controllers = ["first", "second"].map(|id| Controller::start(&cp.kubeconfig(), &ns, id, NO_NATS));
    let gauge = |c: &Controller| c.metric("eds_leader", &[]);
    let leader = eventually("exactly one leader", WAIT, async || {
        match (gauge(&controllers[0]), gauge(&controllers[1])) {
            (Some(1.0), Some(0.0)) => Ok(0),
            (Some(0.0), Some(1.0)) => Ok(1),
            other => Err(other),
        }
    })
    .await;
    let standby = 1 - leader;
    let holder = || async {
        let lease = api::<Lease>(&client, &ns).get("eds-controller").await.unwrap();
        lease.spec.unwrap().holder_identity
    };
    assert_eq!(holder().await.as_deref(), Some(controllers[leader].peer.name.as_str()));

    create(&client, &claim(&ns, "worker")).await;
    children(&client, &ns, "worker").await;
    claim_where(&client, &ns, "worker", "reconciled", |c| is(c, "Reconciled", "True")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = |c: &Controller| c.metric("eds_child_applies_total", &[]).unwrap_or(0.0);
    let reconciles = |c: &Controller| c.metric("eds_reconcile_total", &[]).unwrap_or(0.0);
    assert!(
        writes(&controllers[leader]) >= 4.0,
        "the leader applied the four children"
    );
    assert_eq!(writes(&controllers[standby]), 0.0, "the standby wrote nothing");
    assert_eq!(reconciles(&controllers[standby]), 0.0, "the standby reconciled nothing");

    // The leader crashes (SIGKILL: no hand-over). The standby waits until the
    // Lease has gone unrenewed for its duration (3 s), then leads and applies
    // the next change.
    let crashed = std::time::Instant::now();
    controllers[leader].peer.stop();
    let lead = async |c: &Controller| {
        eventually("the standby leads", WAIT, async || {
            let now = gauge(c);
            (now == Some(1.0)).then_some(()).ok_or(now)
        })
        .await;
        assert_eq!(holder().await.as_deref(), Some(c.peer.name.as_str()));
    };
    lead(&controllers[standby]).await;
    let waited = crashed.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "took over after {waited:?}, before the Lease expired"
    );
    let patch_image = async |new: &str| {
        api::<EventDrivenService>(&client, &ns)
            .patch(
                "worker",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"image": new}})),
            )
            .await
            .unwrap();
        eventually("the new leader applies the change", WAIT, async || {
            let d = api::<Deployment>(&client, &ns).get("worker").await.unwrap();
            let now = image(&d);
            (now == new).then_some(()).ok_or(now)
        })
        .await;
    };
    patch_image("img:2").await;
    assert!(writes(&controllers[standby]) >= 1.0);

    // A new standby joins; the leader stops gracefully (SIGTERM hands the
    // Lease over), so the standby leads at its next try (every 0.5 s), not
    // once the Lease expires (2.5 s or more after the last renewal).
    let third = Controller::start(&cp.kubeconfig(), &ns, "third", NO_NATS);
    assert_eq!(gauge(&third), Some(0.0));
    let stopped = std::time::Instant::now();
    controllers[standby].peer.terminate(Duration::from_secs(10));
    lead(&third).await;
    let waited = stopped.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "took over after {waited:?}: the Lease was not handed over"
    );
    patch_image("img:3").await;
    assert!(writes(&third) >= 1.0);
}

// Issue 12: consumer ownership

/// The condition of that type on the claim, if any.
fn consumer_condition<'a>(
    claim: &'a EventDrivenService,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    claim.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// A claim that owns consumer `orders-workers` on stream ORDERS.
fn owning_claim(name: &str, policy: DeletionPolicy) -> EventDrivenService {
    claim("", name).with_spec(|s| {
        s.nats.consumer_config = Some(ConsumerConfig {
            filter_subjects: vec!["orders.>".into()],
            ..ConsumerConfig::default()
        });
        s.nats.deletion_policy = policy;
    })
}

async fn consumer_exists(stream: &async_nats::jetstream::stream::Stream, name: &str) -> bool {
    match stream.consumer_info(name).await {
        Ok(_) => true,
        Err(e) if e.to_string().contains("not found") => false,
        Err(e) => panic!("reading consumer {name}: {e}"),
    }
}

async fn deleted(client: &Client, namespace: &str, name: &str) {
    api::<EventDrivenService>(client, namespace)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the claim is gone", WAIT, async || {
        match api::<EventDrivenService>(client, namespace)
            .get_opt(name)
            .await
            .unwrap()
        {
            None => Ok(()),
            Some(c) => Err(c.finalizers().to_vec()),
        }
    })
    .await;
}

#[tokio::test]
async fn a_claim_with_consumer_config_creates_its_consumer_and_deletes_it_under_delete() {
    let nats = NatsServer::start();
    let js = js::js(&nats.url()).await;
    let stream = js::stream_with(&js, "ORDERS", &["orders.>"]).await;
    let scenario = Scenario::new("owndelete", &nats.url()).await;

    let children = scenario.run(owning_claim("worker", DeletionPolicy::Delete)).await;
    assert!(children.scaled_object.metadata.name.is_some());
    let info = stream
        .consumer_info("orders-workers")
        .await
        .expect("the consumer was created");
    assert_eq!(
        info.config.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::Explicit
    );
    assert_eq!(info.config.max_ack_pending, 10, "maxReplicas 10 × concurrency 1");
    assert_eq!(
        info.config.metadata.get("eds.bizmatters.io/claim-namespace"),
        Some(&scenario.ns)
    );
    let claim = scenario
        .claim_where("the finalizer and a healthy consumer", |c| {
            c.finalizers().iter().any(|f| f == FINALIZER)
                && consumer_condition(c, "ConsumerHealthy").is_some_and(|c| c.status == "True")
        })
        .await;
    assert_eq!(
        info.config.metadata.get("eds.bizmatters.io/claim-uid"),
        claim.metadata.uid.as_ref()
    );

    deleted(&scenario.client, &scenario.ns, "worker").await;
    assert!(
        !consumer_exists(&stream, "orders-workers").await,
        "deletionPolicy Delete deletes the consumer before the claim goes"
    );
}

#[tokio::test]
async fn retain_keeps_the_consumer_and_sets_no_finalizer() {
    let nats = NatsServer::start();
    let js = js::js(&nats.url()).await;
    let stream = js::stream_with(&js, "ORDERS", &["orders.>"]).await;
    let scenario = Scenario::new("ownretain", &nats.url()).await;

    scenario.run(owning_claim("worker", DeletionPolicy::Retain)).await;
    let claim = scenario
        .claim_where("a healthy consumer", |c| {
            consumer_condition(c, "ConsumerHealthy").is_some_and(|c| c.status == "True")
        })
        .await;
    assert!(claim.finalizers().is_empty(), "{:?}", claim.finalizers());
    assert!(consumer_exists(&stream, "orders-workers").await);

    deleted(&scenario.client, &scenario.ns, "worker").await;
    assert!(
        consumer_exists(&stream, "orders-workers").await,
        "Retain keeps the consumer"
    );
}

#[tokio::test]
async fn an_immutable_change_is_misconfigured_and_a_foreign_consumer_not_owned() {
    let nats = NatsServer::start();
    let js = js::js(&nats.url()).await;
    let stream = js::stream_with(&js, "ORDERS", &["orders.>"]).await;
    // Made by hand, under another name: no stamp.
    js::pull_consumer(&stream, "by-hand", "", Duration::from_secs(30)).await;
    let scenario = Scenario::new("ownmisc", &nats.url()).await;

    scenario.run(owning_claim("worker", DeletionPolicy::Retain)).await;
    scenario
        .claim_where("a healthy consumer", |c| {
            consumer_condition(c, "ConsumerHealthy").is_some_and(|c| c.status == "True")
        })
        .await;
    let before = stream.consumer_info("orders-workers").await.unwrap().config;

    scenario
        .api::<EventDrivenService>()
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nats": {"consumerConfig": {"deliverPolicy": "New", "ackWait": "1m"}}}})),
        )
        .await
        .unwrap();
    let claim = scenario
        .claim_where("Misconfigured", |c| {
            consumer_condition(c, "ConsumerHealthy").is_some_and(|c| c.reason == "Misconfigured")
        })
        .await;
    let message = &consumer_condition(&claim, "ConsumerHealthy").unwrap().message;
    assert!(message.contains("spec.nats.consumerConfig.deliverPolicy"), "{message}");
    assert_eq!(
        stream.consumer_info("orders-workers").await.unwrap().config,
        before,
        "nothing changed on NATS"
    );

    // Pointed at a consumer it did not create.
    scenario
        .api::<EventDrivenService>()
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"nats": {"consumer": "by-hand", "consumerConfig": {"deliverPolicy": "All"}}}}),
            ),
        )
        .await
        .unwrap();
    let claim = scenario
        .claim_where("ConsumerNotOwned", |c| {
            consumer_condition(c, "ConsumerHealthy").is_some_and(|c| c.reason == "ConsumerNotOwned")
        })
        .await;
    let message = &consumer_condition(&claim, "ConsumerHealthy").unwrap().message;
    assert!(message.contains("\"by-hand\""), "{message}");
    let by_hand = stream.consumer_info("by-hand").await.unwrap().config;
    assert!(
        by_hand.metadata.get("eds.bizmatters.io/claim-uid").is_none(),
        "not adopted"
    );
}

/// Issue 14: a claim with `drainWithin` renders the trigger key through the
/// API server, and its status carries the controller's estimate: the
/// `lagThreshold` fallback target until μ has been measured.
#[tokio::test]
async fn a_drain_within_claim_gets_its_trigger_key_and_a_drain_status() {
    let nats = NatsServer::start();
    let js = js::js(&nats.url()).await;
    let stream = js::stream_with(&js, "ORDERS", &["orders.>"]).await;
    js::pull_consumer(&stream, "orders-workers", "", Duration::from_secs(30)).await;
    js::publish(&js, "orders.new", 4).await;

    let scenario = Scenario::new("drain", &nats.url()).await;
    scenario
        .run(claim("", "worker").with_spec(|s| s.scaling.drain_within = Some("90s".into())))
        .await;
    let claim = scenario
        .claim_where("a drain status", |c| {
            c.status.as_ref().and_then(|s| s.drain.as_ref()).is_some()
        })
        .await;
    let drain = claim.status.unwrap().drain.unwrap();
    assert_eq!(drain.target, 5.0, "lagThreshold until μ is known: {drain:?}");
    assert_eq!(drain.replica_capacity_per_second, None, "nothing was acknowledged");
    let so = scenario.api::<ScaledObject>().get("worker").await.unwrap();
    let metadata = serde_json::to_value(&so).unwrap()["spec"]["triggers"][0]["metadata"].clone();
    assert_eq!(metadata["drainWithin"], "90s", "{metadata}");
}

// Issue 18: tenancy

/// Counts the JetStream API requests on `subject` (wildcards allowed), as
/// any subscriber sees them; a task reads each so none is dropped.
async fn count_requests(url: &str, subject: &str) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use futures::StreamExt;
    let watcher = async_nats::connect(url).await.unwrap();
    let mut sub = watcher.subscribe(subject.to_string()).await.unwrap();
    watcher.flush().await.unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        let _watcher = watcher;
        while sub.next().await.is_some() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    seen
}

/// The connection rules the scaler applies are the controller's too: a claim
/// its namespace may not back gets no children (no ScaledObject), its NATS is
/// never read, and `Ready` and `Reconciled` say why, naming the namespace,
/// the connection and the rule; a claim the rules allow is rendered.
#[tokio::test]
async fn a_claim_the_connection_rules_refuse_gets_no_scaled_object_and_a_condition_naming_the_rule() {
    use std::sync::atomic::Ordering::SeqCst;
    let nats = NatsServer::start();
    let cp = cluster::shared();
    let client = cp.client().await;
    let ns = cp.namespace(&client, "tenancy").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("connections.yaml");
    // `default` here replaces the flags' connection: no test namespace may
    // use it. `orders` lets this one read only ORDERS.
    let url = nats.url();
    std::fs::write(
        &config,
        format!(
            "connections:\n  default:\n    url: {url}\n    namespaces: [team-*]\n  orders:\n    url: {url}\n    namespaces: ['*']\n    reads:\n      - namespaces: [{ns}]\n        streams: [ORDERS]\n"
        ),
    )
    .unwrap();
    let refused_reads = count_requests(&url, "$JS.API.CONSUMER.INFO.ORDERS.refused-workers").await;
    let other_stream_reads = count_requests(&url, "$JS.API.CONSUMER.INFO.PAYMENTS.>").await;
    let allowed_reads = count_requests(&url, "$JS.API.CONSUMER.INFO.ORDERS.orders-workers").await;
    let controller = Controller::start_with(
        &cp.kubeconfig(),
        &ns,
        "tenancy",
        &url,
        &["--lease-namespace", &ns, "--nats-config", config.to_str().unwrap()],
    );

    create(&client, &claim(&ns, "allowed").with_connection("orders")).await;
    create(
        &client,
        &claim(&ns, "refused").with_spec(|s| s.nats.consumer = "refused-workers".into()),
    )
    .await;
    create(
        &client,
        &claim(&ns, "other-stream")
            .with_connection("orders")
            .with_spec(|s| s.nats.stream = "PAYMENTS".into()),
    )
    .await;
    children(&client, &ns, "allowed").await;

    for (name, connection, rule) in [
        ("refused", "default", "connections.default.namespaces is [team-*]"),
        ("other-stream", "orders", "connections.orders.reads[0] allows"),
    ] {
        let refused = claim_where(&client, &ns, name, "refused by the rules", |c| {
            is(c, "Ready", "False") && is(c, "Reconciled", "False")
        })
        .await;
        let conditions = &refused.status.as_ref().unwrap().conditions;
        for type_ in ["Ready", "Reconciled"] {
            let c = conditions.iter().find(|c| c.type_ == type_).unwrap();
            assert_eq!(c.reason, "NamespaceNotAllowed", "{name} {type_}: {c:?}");
            for needle in [
                format!("namespace {ns:?}"),
                format!("connection {connection:?}"),
                rule.to_string(),
            ] {
                assert!(
                    c.message.contains(&needle),
                    "{name} {type_}: {needle:?} not in {:?}",
                    c.message
                );
            }
        }
        assert!(
            api::<ScaledObject>(&client, &ns).get_opt(name).await.unwrap().is_none(),
            "{name}: a refused claim gets no ScaledObject"
        );
        assert!(
            api::<Deployment>(&client, &ns).get_opt(name).await.unwrap().is_none(),
            "{name}: nor any other child"
        );
    }
    eventually("refusals counted", WAIT, async || {
        let n = controller.metric("eds_reconcile_errors_total", &[("error", "not_allowed")]);
        n.filter(|n| *n >= 2.0).ok_or(n)
    })
    .await;
    claim_where(&client, &ns, "allowed", "the allowed claim reconciled", |c| {
        is(c, "Reconciled", "True")
    })
    .await;
    // The allowed claim's lag is read (so the counters do see reads); the
    // refused ones' never are.
    eventually("the allowed claim's lag read", WAIT, async || {
        (allowed_reads.load(SeqCst) > 0).then_some(())
    })
    .await;
    assert_eq!(refused_reads.load(SeqCst), 0, "NATS read for a refused claim");
    assert_eq!(other_stream_reads.load(SeqCst), 0, "NATS read for a refused stream");
}

// Issue 11: consumer health

/// The claim's `ConsumerHealthy` condition as (status, reason, message).
fn health(claim: &EventDrivenService) -> Option<(String, String, String)> {
    let c = claim
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == eds::api::CONDITION_CONSUMER_HEALTHY)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Events on the claim named `worker` with `reason`.
async fn events_with_reason(scenario: &Scenario, reason: &str) -> Vec<Event> {
    let events = scenario.api::<Event>().list(&Default::default()).await.unwrap().items;
    events
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("worker"))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test]
async fn each_consumer_health_condition_appears_and_clears_with_an_event() {
    use async_nats::jetstream::{AckKind, consumer};
    let nats = NatsServer::start();
    let js = js::js(&nats.url()).await;
    let stream = js::stream_with(&js, "ORDERS", &["orders.>"]).await;

    let scenario = Scenario::new("health", &nats.url()).await;
    scenario.run(claim("", "worker").with_replicas(0, 10)).await;
    let reason_is = |reason: &'static str| move |c: &EventDrivenService| health(c).is_some_and(|(_, r, _)| r == reason);
    let labels = |reason: &'static str| [("name", "worker"), ("reason", reason)];

    // No consumer yet.
    let claim = scenario
        .claim_where("ConsumerMissing", reason_is("ConsumerMissing"))
        .await;
    let (status, _, message) = health(&claim).unwrap();
    assert_eq!(status, "False");
    assert!(
        message.contains(r#"consumer "orders-workers" not found on stream "ORDERS""#),
        "{message}"
    );
    let metric = |name: &str, labels: &[(&str, &str)]| scenario.controller.metric(name, labels);
    assert_eq!(
        metric("eds_service_consumer_unhealthy", &labels("ConsumerMissing")),
        Some(1.0)
    );
    eventually("a ConsumerMissing Event", WAIT, async || {
        let events = events_with_reason(&scenario, "ConsumerMissing").await;
        events
            .first()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .cloned()
    })
    .await;

    // A consumer that redelivers forever.
    let config = |max_deliver: i64| consumer::pull::Config {
        durable_name: Some("orders-workers".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        max_deliver,
        max_ack_pending: 2,
        ..Default::default()
    };
    stream.create_consumer(config(-1)).await.unwrap();
    let claim = scenario.claim_where("Misconfigured", reason_is("Misconfigured")).await;
    let (_, _, message) = health(&claim).unwrap();
    assert!(message.contains("max_deliver is unlimited"), "{message}");
    assert_eq!(
        metric("eds_service_consumer_unhealthy", &labels("ConsumerMissing")),
        Some(0.0)
    );

    // Well configured, and saturated: 2 of max_ack_pending 2 held, so at most
    // 2 replicas get work where 10 are allowed.
    stream.delete_consumer("orders-workers").await.unwrap();
    let workers = stream.create_consumer(config(5)).await.unwrap();
    js::publish(&js, "orders.new", 10).await;
    let held = js::take_exactly(&workers, 2).await;
    assert_eq!(held.len(), 2);
    let claim = scenario.claim_where("Saturated", reason_is("Saturated")).await;
    let (_, _, message) = health(&claim).unwrap();
    assert!(
        message.contains("ack-pending 2 has reached the consumer's max_ack_pending 2: at most 2 replicas"),
        "{message}"
    );
    assert_eq!(metric("eds_service_replica_cap", &[("name", "worker")]), Some(2.0));
    assert_eq!(
        metric("eds_service_consumer_unhealthy", &labels("Saturated")),
        Some(1.0)
    );
    assert_eq!(
        claim.status.as_ref().unwrap().lag,
        Some(10),
        "the true lag, not the capped metric"
    );

    // Both refused and delivered again: redelivered for longer than the
    // poison window (3 s here).
    for message in held {
        message.ack_with(AckKind::Nak(None)).await.unwrap();
    }
    let again = js::take_exactly(&workers, 2).await;
    assert_eq!(again.len(), 2);
    let claim = scenario
        .claim_where("PoisonMessages", reason_is("PoisonMessages"))
        .await;
    let (_, _, message) = health(&claim).unwrap();
    assert!(
        message.contains("un-acknowledged messages have been redelivered"),
        "{message}"
    );
    assert!(message.contains("(also: Saturated)"), "{message}");

    // Acknowledged: healthy again, with a Normal Event.
    for message in again {
        message.double_ack().await.unwrap();
    }
    let claim = scenario
        .claim_where("ConsumerHealthy", |c| health(c).is_some_and(|(s, _, _)| s == "True"))
        .await;
    assert_eq!(health(&claim).unwrap().1, "Healthy");
    for reason in [
        "ConsumerMissing",
        "Saturated",
        "PoisonMessages",
        "Stalled",
        "Misconfigured",
    ] {
        assert_eq!(
            metric("eds_service_consumer_unhealthy", &labels(reason)),
            Some(0.0),
            "{reason}"
        );
    }
    eventually("a Normal Healthy Event", WAIT, async || {
        let events = events_with_reason(&scenario, "Healthy").await;
        events.first().filter(|e| e.type_.as_deref() == Some("Normal")).cloned()
    })
    .await;
}

/// Claims created the moment the controller leads, while it is still listing
/// the children, are each reconciled. (Each reconcile waits for the child
/// lists; a store's own wait woke only the last waiter, so the others hung
/// forever and their claims were never reconciled, even later.)
#[tokio::test]
async fn claims_created_right_after_start_are_all_reconciled() {
    let cp = cluster::shared();
    let client = cp.client().await;
    let ns = cp.namespace(&client, "startup").await;
    let _controller = Controller::start(&cp.kubeconfig(), &ns, "startup", NO_NATS);
    let names = ["first", "second", "third", "fourth", "fifth"];
    for name in names {
        create(&client, &claim(&ns, name)).await;
    }
    for name in names {
        children(&client, &ns, name).await;
    }
}
