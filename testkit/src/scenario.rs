//! One scenario on the shared [`rig`](crate::rig): a namespace of its own,
//! a stream named after it with a durable pull consumer, and what a test
//! asks of the claim, KEDA and the HPA there.
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use eds::api::{CONDITION_DEPLOYMENT_AVAILABLE, CONDITION_READY, EventDrivenService};
use eds::render::resources::quantity_value;
use eds::trigger::metric_name;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt as _};
use serde_json::Value;

use crate::control_plane::apply_yaml;
use crate::rig::SharedRig;
use crate::{eventually, js, kwok};

/// Claim, Deployment and consumer name in every scenario.
pub const WORKER: &str = "worker";
/// Every claim's `lagThreshold`.
pub const LAG_THRESHOLD: i64 = 5;

/// A Deployment of nothing but a container image, for a ScaledObject to target.
pub fn bare_deployment(name: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      automountServiceAccountToken: false
      containers:
      - name: worker
        image: registry.example/worker:1
"#
    )
}

/// What a claim owns, directly or through its ScaledObject.
pub const ALL_CHILDREN: [&str; 5] = [
    "Deployment",
    "Service",
    "ServiceAccount",
    "ScaledObject",
    "HorizontalPodAutoscaler",
];

/// A scenario: a namespace, a stream named after it with a durable pull
/// consumer, and clients for both.
pub struct Scenario {
    pub rig: SharedRig,
    pub client: Client,
    pub ns: String,
    /// The stream, named after the namespace; its subjects are `<stream>.>`.
    pub stream: String,
    pub js: jetstream::Context,
}

impl Scenario {
    pub async fn new(rig: SharedRig, prefix: &str) -> Scenario {
        let client = rig.client().await;
        let ns = rig.control_plane().namespace(&client, prefix).await;
        let js = js::js(&rig.nats_url).await;
        let stream = ns.clone();
        let created = js::stream_with(&js, &stream, &[&format!("{stream}.>")]).await;
        // Messages taken without an ack stay ack-pending for the test.
        js::pull_consumer(&created, WORKER, "", Duration::from_secs(600)).await;
        Scenario {
            rig,
            client,
            ns,
            stream,
            js,
        }
    }

    /// The claim as a service team writes it, with `scaling` lines (indented
    /// four spaces) after `lagThreshold`.
    pub fn claim(&self, scaling: &str) -> String {
        format!(
            r#"apiVersion: platform.bizmatters.io/v1alpha1
kind: EventDrivenService
metadata:
  name: {WORKER}
spec:
  image: registry.example/worker:1
  size: micro
  nats:
    stream: "{stream}"
    consumer: {WORKER}
  scaling:
    lagThreshold: "{LAG_THRESHOLD}"
    {scaling}
"#,
            stream = self.stream,
        )
    }

    pub async fn apply_claim(&self, scaling: &str) {
        apply_yaml(&self.client, &self.claim(scaling), Some(&self.ns)).await;
    }

    pub async fn publish(&self, n: usize) {
        js::publish(&self.js, &format!("{}.job", self.stream), n).await;
    }

    /// The consumer's (pending, ack-pending) as NATS reports them.
    pub async fn nats_lag(&self) -> (u64, usize) {
        let mut consumer: consumer::PullConsumer = self
            .js
            .get_consumer_from_stream(WORKER, self.stream.as_str())
            .await
            .expect("consumer");
        let info = consumer.info().await.expect("consumer info");
        (info.num_pending, info.num_ack_pending)
    }

    /// Takes `n` messages as a worker would; acks them or leaves them in flight.
    pub async fn take(&self, n: usize, ack: bool) {
        let consumer: consumer::PullConsumer = self
            .js
            .get_consumer_from_stream(WORKER, self.stream.as_str())
            .await
            .expect("consumer");
        let mut taken = 0;
        while taken < n {
            let mut batch = consumer
                .fetch()
                .max_messages(n - taken)
                .messages()
                .await
                .expect("fetch");
            while let Some(message) = batch.next().await {
                let message = message.expect("message");
                if ack {
                    message.double_ack().await.expect("ack");
                }
                taken += 1;
            }
        }
    }

    /// The HPA's name for our metric: KEDA prefixes the trigger's index.
    pub fn hpa_metric(&self) -> String {
        format!("s0-{}", metric_name(&self.stream, WORKER))
    }

    pub fn scaled_objects(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
        Api::namespaced_with(self.client.clone(), &self.ns, &ApiResource::from_gvk(&gvk))
    }

    pub async fn scaled_object_condition(&self, type_: &str) -> Option<Value> {
        let so = self.scaled_objects().get(WORKER).await.ok()?;
        so.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }

    pub async fn wait_scaled_object_ready(&self) {
        eventually("the ScaledObject Ready", Duration::from_secs(30), async || {
            let ready = self.scaled_object_condition("Ready").await?;
            (ready["status"] == "True").then_some(())
        })
        .await;
    }

    pub async fn wait_hpa(&self) -> HorizontalPodAutoscaler {
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(self.client.clone(), &self.ns);
        let name = format!("keda-hpa-{WORKER}");
        eventually("KEDA's HPA", Duration::from_secs(30), async || {
            hpas.get(&name).await.ok()
        })
        .await
    }

    pub async fn replicas(&self) -> Option<i32> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
        deployments.get(WORKER).await.ok()?.spec?.replicas
    }

    /// Waits until the Deployment asks for `want` replicas and its controller
    /// has caught up with that (`status.observedGeneration`; at zero, no
    /// replica left). KEDA scales through the scale subresource and does not
    /// retry a conflict: a publish while the Deployment controller is still
    /// writing its status would lose the activation to that race, not to
    /// anything eds does.
    pub async fn wait_replicas(&self, want: i32, timeout: Duration) {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
        eventually(
            &format!("spec.replicas == {want}, observed by the Deployment controller"),
            timeout,
            async || {
                let deployment = deployments.get(WORKER).await.ok()?;
                let status = deployment.status.unwrap_or_default();
                let settled = status.observed_generation >= deployment.metadata.generation
                    && (want != 0 || status.replicas.unwrap_or(0) == 0);
                (deployment.spec?.replicas == Some(want) && settled).then_some(())
            },
        )
        .await;
    }

    /// The worker's pods (see [`kwok`]: they are scheduled and turn Running
    /// and Ready by simulation).
    pub async fn pods(&self) -> Vec<Pod> {
        kwok::deployment_pods(&self.client, &self.ns, WORKER).await
    }

    /// Waits until the claim says what a user sees of a worker at `replicas`:
    /// `Ready` and `DeploymentAvailable` True, `status.replicas` and
    /// `status.readyReplicas` equal to `replicas`, and as many pods Running
    /// and Ready, none left over.
    pub async fn wait_claim_ready(&self, replicas: i32) {
        let claims: Api<EventDrivenService> = Api::namespaced(self.client.clone(), &self.ns);
        let what = format!("the claim Ready with {replicas} ready replicas, and as many pods");
        eventually(&what, Duration::from_secs(30), async || {
            let status = claims.get(WORKER).await.map_err(|e| e.to_string())?.status;
            let status = status.ok_or("no status yet")?;
            let holds = |type_: &str| status.conditions.iter().any(|c| c.type_ == type_ && c.status == "True");
            let pods = self.pods().await;
            let ready = pods.iter().filter(|p| kwok::is_ready(p)).count();
            let seen = format!(
                "Ready {}, DeploymentAvailable {}, replicas {:?}, readyReplicas {:?}, pods {} ({ready} ready)",
                holds(CONDITION_READY),
                holds(CONDITION_DEPLOYMENT_AVAILABLE),
                status.replicas,
                status.ready_replicas,
                pods.len()
            );
            let want = usize::try_from(replicas).expect("a replica count");
            (holds(CONDITION_READY)
                && holds(CONDITION_DEPLOYMENT_AVAILABLE)
                && status.replicas == Some(replicas)
                && status.ready_replicas == Some(replicas)
                && pods.len() == want
                && ready == want)
                .then_some(())
                .ok_or(seen)
        })
        .await;
    }

    /// Waits until the worker has no pod left, terminating ones included.
    pub async fn wait_no_pods(&self, timeout: Duration) {
        eventually("no pod of the worker left", timeout, async || {
            let pods = self.pods().await;
            let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
            pods.is_empty().then_some(()).ok_or(format!("pods {names:?}"))
        })
        .await;
    }

    pub async fn wait_hpa_desired(&self, want: i32) {
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(self.client.clone(), &self.ns);
        let name = format!("keda-hpa-{WORKER}");
        eventually(
            &format!("HPA desiredReplicas == {want}"),
            Duration::from_secs(30),
            async || {
                let desired = hpas.get(&name).await.ok()?.status?.desired_replicas;
                (desired == want).then_some(())
            },
        )
        .await;
    }

    /// KEDA's health record of our trigger: `Happy` or `Failing`.
    pub async fn trigger_health(&self) -> Option<String> {
        let so = self.scaled_objects().get(WORKER).await.ok()?;
        so.data["status"]["health"][self.hpa_metric()]["status"]
            .as_str()
            .map(str::to_string)
    }

    /// The external metric as the HPA controller reads it: through the API
    /// server's aggregation layer, from KEDA's metrics adapter.
    pub async fn external_metric(&self) -> Result<f64, String> {
        let path = format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/{}",
            self.ns,
            self.hpa_metric()
        );
        let selector = ListParams::default().labels(&format!("scaledobject.keda.sh/name={WORKER}"));
        let request = kube::core::Request::new(path).list(&selector).expect("request");
        let list: Value = self.client.request(request).await.map_err(|e| e.to_string())?;
        let items = list["items"].as_array().ok_or_else(|| format!("no items: {list}"))?;
        let [item] = items.as_slice() else {
            return Err(format!("not one value: {list}"));
        };
        let value = item["value"].as_str().unwrap_or_default();
        quantity_value(value).ok_or_else(|| format!("metric value {value:?} is not a quantity"))
    }

    /// Waits until the served metric is `want`, reporting the last answer.
    pub async fn wait_external_metric(&self, want: f64) {
        let what = format!("the external metric {want}");
        eventually(&what, Duration::from_secs(30), async || {
            let served = self.external_metric().await?;
            (served == want).then_some(()).ok_or(format!("served {served}"))
        })
        .await;
    }

    /// The kinds in [`ALL_CHILDREN`] that exist now.
    pub async fn children(&self) -> Vec<&'static str> {
        let ns = &self.ns;
        let client = &self.client;
        let hpa = format!("keda-hpa-{WORKER}");
        let exists = [
            Api::<Deployment>::namespaced(client.clone(), ns)
                .get_opt(WORKER)
                .await
                .map(|o| o.is_some()),
            Api::<Service>::namespaced(client.clone(), ns)
                .get_opt(WORKER)
                .await
                .map(|o| o.is_some()),
            Api::<ServiceAccount>::namespaced(client.clone(), ns)
                .get_opt(WORKER)
                .await
                .map(|o| o.is_some()),
            self.scaled_objects().get_opt(WORKER).await.map(|o| o.is_some()),
            Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns)
                .get_opt(&hpa)
                .await
                .map(|o| o.is_some()),
        ];
        ALL_CHILDREN
            .iter()
            .zip(exists)
            .filter(|(_, exists)| *exists.as_ref().expect("reading a child"))
            .map(|(kind, _)| *kind)
            .collect()
    }

    /// Polls `spec.replicas` every 20 ms until it is `want`; the time since
    /// `since`, which must stay within `bound`.
    pub async fn time_to_replicas(&self, want: i32, since: Instant, bound: Duration) -> Duration {
        loop {
            if self.replicas().await == Some(want) {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < bound,
                "spec.replicas did not reach {want} within {bound:?} (now {:?})",
                self.replicas().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
