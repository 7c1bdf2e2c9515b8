//! End to end: a claim scales on JetStream lag through real KEDA on a real
//! control plane (slow tier). One rig per test binary (`support::rig`), a
//! namespace and a stream per scenario.
//!
//! Measured figures are printed; run with `-- --nocapture` to see them.
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use eds::api::{CONDITION_SCALER_READY, EventDrivenService};
use eds::scaler::metadata::metric_name;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::Value;
use support::kube::apply_yaml;
use support::rig::{self, SharedRig};
use tokio::sync::RwLock;

/// Claim, Deployment and consumer name in every scenario.
const WORKER: &str = "worker";
/// Every claim's `lagThreshold`.
const LAG_THRESHOLD: i64 = 5;
/// Push activation: publish to `spec.replicas == 1`.
const PUSH_ACTIVATION_BOUND: Duration = Duration::from_secs(5);
/// KEDA's built-in trigger at pollingInterval 30 takes up to 30 s, plus
/// its own scale-up.
const POLLING_ACTIVATION_BOUND: Duration = Duration::from_secs(45);

/// Scenarios share the one nats-server; the outage takes it exclusively.
static NATS: RwLock<()> = RwLock::const_new(());

fn rig() -> SharedRig {
    rig::shared(Path::new(env!("CARGO_BIN_EXE_eds")))
}

/// 1. A claim with `minReplicas: 0` gets a Ready ScaledObject, an HPA on our
///    external metric with target = lagThreshold, and `ScalerReady` status.
#[tokio::test]
async fn claim_gets_ready_scaled_object_and_hpa() {
    let _nats = NATS.read().await;
    let s = Scenario::new("ready").await;
    s.apply_claim("minReplicas: 0\n    maxReplicas: 7").await;

    s.wait_scaled_object_ready().await;
    let hpa = s.wait_hpa().await;
    let spec = hpa.spec.expect("HPA spec");
    assert_eq!(
        spec.min_replicas,
        Some(1),
        "KEDA's HPA starts at 1; KEDA itself owns 0 <-> 1"
    );
    assert_eq!(spec.max_replicas, 7);
    let metrics = spec.metrics.expect("HPA metrics");
    assert_eq!(metrics.len(), 1, "{metrics:?}");
    let external = metrics[0].external.as_ref().expect("an external metric");
    assert_eq!(external.metric.name, s.hpa_metric());
    assert_eq!(external.target.type_, "AverageValue");
    assert_eq!(
        external.target.average_value.as_ref().map(|q| q.0.as_str()),
        Some(LAG_THRESHOLD.to_string().as_str())
    );

    let claims: Api<EventDrivenService> = Api::namespaced(s.client.clone(), &s.ns);
    eventually(
        "the claim's ScalerReady condition",
        Duration::from_secs(30),
        async || {
            let claim = claims.get(WORKER).await.ok()?;
            let conditions = claim.status?.conditions;
            conditions
                .iter()
                .any(|c| c.type_ == CONDITION_SCALER_READY && c.status == "True")
                .then_some(())
        },
    )
    .await;
    // Nothing to do: KEDA takes the idle worker to zero.
    s.wait_replicas(0, Duration::from_secs(30)).await;
}

/// 2. Work arrives: KEDA activates through `StreamIsActive` and the
///    Deployment goes 0 -> 1 within [`PUSH_ACTIVATION_BOUND`].
#[tokio::test]
async fn push_activation_scales_from_zero() {
    let _nats = NATS.read().await;
    let s = Scenario::new("push").await;
    s.apply_claim("minReplicas: 0\n    pollingInterval: 30").await;
    s.wait_scaled_object_ready().await;
    s.wait_replicas(0, Duration::from_secs(30)).await;

    let published = Instant::now();
    s.publish(1).await;
    let took = s.time_to_replicas(1, published, PUSH_ACTIVATION_BOUND).await;
    println!("activation, external-push (StreamIsActive), pollingInterval 30: publish -> replicas 1 in {took:?}");
}

/// 2b. The same with KEDA's built-in `nats-jetstream` trigger, which polls
///     nats-server's HTTP monitoring every pollingInterval (30 s).
#[tokio::test]
async fn builtin_polling_activation_for_comparison() {
    let _nats = NATS.read().await;
    let s = Scenario::new("polled").await;
    let rig = &s.rig;
    apply_yaml(
        &s.client,
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {WORKER}
spec:
  selector:
    matchLabels: {{app: {WORKER}}}
  template:
    metadata:
      labels: {{app: {WORKER}}}
    spec:
      automountServiceAccountToken: false
      containers:
      - name: worker
        image: registry.example/worker:1
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {WORKER}
spec:
  scaleTargetRef:
    name: {WORKER}
  minReplicaCount: 0
  maxReplicaCount: 10
  pollingInterval: 30
  triggers:
  - type: nats-jetstream
    metadata:
      natsServerMonitoringEndpoint: "{monitoring}"
      account: "$G"
      stream: "{stream}"
      consumer: {WORKER}
      lagThreshold: "{LAG_THRESHOLD}"
"#,
            monitoring = rig.nats_monitoring,
            stream = s.stream,
        ),
        Some(&s.ns),
    )
    .await;
    s.wait_scaled_object_ready().await;
    s.wait_replicas(0, Duration::from_secs(30)).await;

    let published = Instant::now();
    s.publish(1).await;
    let took = s.time_to_replicas(1, published, POLLING_ACTIVATION_BOUND).await;
    println!("activation, built-in nats-jetstream, pollingInterval 30: publish -> replicas 1 in {took:?}");
}

/// A scenario: a namespace, a stream named after it with a durable pull
/// consumer, and clients for both.
struct Scenario {
    rig: SharedRig,
    client: Client,
    ns: String,
    /// The stream, named after the namespace; its subjects are `<stream>.>`.
    stream: String,
    js: jetstream::Context,
}

impl Scenario {
    async fn new(prefix: &str) -> Scenario {
        let rig = rig();
        let client = rig.client().await;
        let ns = rig.control_plane().namespace(&client, prefix).await;
        let js = jetstream::new(async_nats::connect(&rig.nats_url).await.expect("NATS"));
        let stream = ns.clone();
        js.create_stream(stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{stream}.>")],
            ..Default::default()
        })
        .await
        .expect("stream");
        js.create_consumer_on_stream(
            consumer::pull::Config {
                durable_name: Some(WORKER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                // Messages taken without an ack stay ack-pending for the test.
                ack_wait: Duration::from_secs(600),
                ..Default::default()
            },
            stream.as_str(),
        )
        .await
        .expect("consumer");
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
    fn claim(&self, scaling: &str) -> String {
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

    async fn apply_claim(&self, scaling: &str) {
        apply_yaml(&self.client, &self.claim(scaling), Some(&self.ns)).await;
    }

    async fn publish(&self, n: usize) {
        for i in 0..n {
            self.js
                .publish(format!("{}.job", self.stream), format!("job {i}").into())
                .await
                .expect("publish")
                .await
                .expect("publish ack");
        }
    }

    /// The consumer's lag as NATS reports it: pending + ack-pending.
    async fn nats_lag(&self) -> u64 {
        let mut consumer: consumer::PullConsumer = self
            .js
            .get_consumer_from_stream(WORKER, self.stream.as_str())
            .await
            .expect("consumer");
        let info = consumer.info().await.expect("consumer info");
        info.num_pending + info.num_ack_pending as u64
    }

    /// Takes `n` messages as a worker would; acks them or leaves them in flight.
    async fn take(&self, n: usize, ack: bool) {
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
    fn hpa_metric(&self) -> String {
        format!("s0-{}", metric_name(&self.stream, WORKER))
    }

    fn scaled_objects(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
        Api::namespaced_with(self.client.clone(), &self.ns, &ApiResource::from_gvk(&gvk))
    }

    async fn scaled_object_condition(&self, type_: &str) -> Option<Value> {
        let so = self.scaled_objects().get(WORKER).await.ok()?;
        so.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }

    async fn wait_scaled_object_ready(&self) {
        eventually("the ScaledObject Ready", Duration::from_secs(30), async || {
            let ready = self.scaled_object_condition("Ready").await?;
            (ready["status"] == "True").then_some(())
        })
        .await;
    }

    async fn wait_hpa(&self) -> HorizontalPodAutoscaler {
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(self.client.clone(), &self.ns);
        let name = format!("keda-hpa-{WORKER}");
        eventually("KEDA's HPA", Duration::from_secs(30), async || {
            hpas.get(&name).await.ok()
        })
        .await
    }

    async fn replicas(&self) -> Option<i32> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
        deployments.get(WORKER).await.ok()?.spec?.replicas
    }

    async fn wait_replicas(&self, want: i32, timeout: Duration) {
        eventually(&format!("spec.replicas == {want}"), timeout, async || {
            (self.replicas().await == Some(want)).then_some(())
        })
        .await;
    }

    /// Polls `spec.replicas` every 20 ms until it is `want`; the time since
    /// `since`, which must stay within `bound`.
    async fn time_to_replicas(&self, want: i32, since: Instant, bound: Duration) -> Duration {
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

/// Polls `probe` every 200 ms until it returns a value.
async fn eventually<T>(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
