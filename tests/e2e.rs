//! End to end: a claim scales on JetStream lag through real KEDA on a real
//! control plane (slow tier). One rig per test binary (`testkit::rig`), a
//! namespace and a stream per scenario. A scheduler and KWOK place the
//! worker's pods on a fake node, where they turn Running and Ready by
//! simulation (no container runs), so the claim's status reads as a user's
//! would: `Ready`, `readyReplicas`, and no pods at zero.
//!
//! Measured figures are printed; run with `-- --nocapture` to see them. How
//! long KEDA's built-in `nats-jetstream` trigger takes to activate, beside
//! ours, is a benchmark (`benches/e2e_activation.rs`), not a test.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use eds::api::{CONDITION_SCALER_READY, EventDrivenService};
use eds::lag::desired_replicas;
use eds::proto::external_scaler_client::ExternalScalerClient;
use eds::scaler::Tuning;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};
use testkit::certs::Pki;
use testkit::control_plane::apply_yaml;
use testkit::prometheus::Scrape;
use testkit::rig::{self, Rig, SharedRig};
use testkit::scaler::{metrics_request, scaled_object};
use testkit::scenario::{ALL_CHILDREN, LAG_THRESHOLD, Scenario, WORKER, bare_deployment};
use testkit::{chart, eventually, http, keda, promql};
use tokio::sync::RwLock;
use tonic::Code;

/// Push activation: publish to `spec.replicas == 1`.
const PUSH_ACTIVATION_BOUND: Duration = Duration::from_secs(5);
/// KEDA's manager exits when a cache of a kind it watches has not synced
/// after this long (its CloudEventSource cache, when that CRD is missing).
const KEDA_CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// Scenarios share the rig's nats-server and controller; the two that stop
/// one of them (the NATS outage, and the TLS scenario, which runs a controller
/// of its own) take them exclusively.
static PEERS: RwLock<()> = RwLock::const_new(());

fn rig() -> SharedRig {
    rig::shared(Path::new(env!("CARGO_BIN_EXE_eds")))
}

/// 1. A claim with `minReplicas: 0` gets a Ready ScaledObject, an HPA on our
///    external metric with target = lagThreshold, and `ScalerReady` status.
#[tokio::test]
async fn claim_gets_ready_scaled_object_and_hpa() {
    let _peers = PEERS.read().await;
    let s = Scenario::new(rig(), "ready").await;
    s.apply_claim("minReplicas: 0\n    maxReplicas: 7\n    scaleDown:\n      maxPodsPerMinute: 3")
        .await;

    s.wait_scaled_object_ready().await;
    let hpa = s.wait_hpa().await;
    let spec = hpa.spec.expect("HPA spec");
    // The claim's scale-down limits reach the HPA through KEDA.
    let scale_down = spec.behavior.as_ref().and_then(|b| b.scale_down.as_ref());
    assert_eq!(
        serde_json::to_value(scale_down).unwrap(),
        json!({
            "stabilizationWindowSeconds": 300,
            "selectPolicy": "Min",
            "policies": [
                {"type": "Percent", "value": 50, "periodSeconds": 60},
                {"type": "Pods", "value": 3, "periodSeconds": 60},
            ],
        })
    );
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
///    Deployment goes 0 -> 1 within [`PUSH_ACTIVATION_BOUND`]; its pod turns
///    Ready and the claim says `Ready` with one ready replica.
#[tokio::test]
async fn push_activation_scales_from_zero() {
    let _peers = PEERS.read().await;
    let s = Scenario::new(rig(), "push").await;
    s.apply_claim("minReplicas: 0\n    pollingInterval: 30").await;
    s.wait_scaled_object_ready().await;
    s.wait_replicas(0, Duration::from_secs(30)).await;
    // KEDA scaled the worker to zero on a poll, so its next poll is about
    // 30 s away: only a push can wake the worker within the bound.

    s.wait_no_pods(Duration::from_secs(30)).await;

    let published = Instant::now();
    s.publish(1).await;
    let took = s.time_to_replicas(1, published, PUSH_ACTIVATION_BOUND).await;
    println!("activation, external-push (StreamIsActive), pollingInterval 30: publish -> replicas 1 in {took:?}");
    s.wait_claim_ready(1).await;
    println!(
        "activation: publish -> the claim Ready with 1 ready replica in {:?}",
        published.elapsed()
    );
}

/// 3. The external metric KEDA serves through the API server's aggregation
///    layer is pending + ack-pending, and the HPA controller scales 1 -> N
///    with N = ceil(lag / lagThreshold), clamped to maxReplicas. At N the
///    claim is `Ready` with N ready replicas.
#[tokio::test]
async fn external_metric_is_the_lag_and_the_hpa_scales_on_it() {
    let _peers = PEERS.read().await;
    let s = Scenario::new(rig(), "metric").await;
    s.apply_claim("minReplicas: 0\n    maxReplicas: 10\n    pollingInterval: 2")
        .await;
    s.wait_scaled_object_ready().await;
    s.wait_hpa().await;

    // 18 waiting and 3 taken by a worker but not yet acknowledged. 21 tells
    // ceil (5 replicas) from floor and rounding (4).
    s.publish(21).await;
    s.take(3, false).await;
    let (pending, ack_pending) = s.nats_lag().await;
    assert_eq!((pending, ack_pending), (18, 3));
    s.wait_external_metric(21.0).await;
    s.wait_replicas(replicas_for(21, 10), Duration::from_secs(30)).await;
    s.wait_hpa_desired(replicas_for(21, 10)).await;
    s.wait_claim_ready(replicas_for(21, 10)).await;

    // 61 would need 13 replicas; maxReplicas caps it. (The HPA adds at most
    // 100% or 4 replicas per 15 s, so this step takes that long.)
    s.publish(40).await;
    s.wait_external_metric(61.0).await;
    s.wait_replicas(replicas_for(61, 10), Duration::from_secs(45)).await;
    s.wait_hpa_desired(replicas_for(61, 10)).await;
}

/// 4. Once the backlog is drained the consumer goes inactive, and after the
///    cooldown the Deployment returns to 0: no pod is left.
#[tokio::test]
async fn drained_backlog_scales_to_zero_after_the_cooldown() {
    const POLLING: u64 = 2;
    const COOLDOWN: u64 = 5;
    let _peers = PEERS.read().await;
    let s = Scenario::new(rig(), "drain").await;
    s.apply_claim(&format!(
        "minReplicas: 0\n    pollingInterval: {POLLING}\n    cooldownPeriod: {COOLDOWN}"
    ))
    .await;
    s.wait_scaled_object_ready().await;
    s.wait_replicas(0, Duration::from_secs(30)).await;
    s.publish(8).await;
    eventually("the worker scaled up", Duration::from_secs(10), async || {
        (s.replicas().await? >= 1).then_some(())
    })
    .await;

    s.take(8, true).await;
    assert_eq!(s.nats_lag().await, (0, 0));
    let drained = Instant::now();
    s.wait_replicas(0, Duration::from_secs(30)).await;
    let took = drained.elapsed();
    // Scaled to zero means no pod, not just `replicas: 0`.
    s.wait_no_pods(Duration::from_secs(10)).await;
    s.wait_claim_ready(0).await;
    println!("drained -> replicas 0 in {took:?} (cooldownPeriod {COOLDOWN}s, pollingInterval {POLLING}s)");
    // KEDA counts the cooldown from the last poll that saw work, at most one
    // polling interval before the drain.
    assert!(
        took >= Duration::from_secs(COOLDOWN - POLLING) - Duration::from_millis(500),
        "scaled to zero {took:?} after the drain, before the {COOLDOWN}s cooldown"
    );
    let active = s.scaled_object_condition("Active").await.expect("Active condition");
    assert_eq!(active["status"], "False", "{active}");
}

/// 5. NATS goes away: the scaler answers with an error (never a made-up
///    zero), KEDA marks the trigger failing and applies the claim's fallback.
///    NATS comes back: everything recovers by itself.
#[tokio::test]
async fn nats_outage_falls_back_and_recovers() {
    const FALLBACK: i32 = 3;
    let _peers = PEERS.write().await;
    let s = Scenario::new(rig(), "outage").await;
    s.apply_claim(&format!(
        "minReplicas: 1\n    maxReplicas: 10\n    pollingInterval: 2\n    fallback:\n      failureThreshold: 2\n      replicas: {FALLBACK}"
    ))
    .await;
    s.wait_scaled_object_ready().await;
    s.wait_hpa().await;
    s.wait_replicas(1, Duration::from_secs(30)).await;
    s.wait_external_metric(0.0).await;

    let outage = NatsOutage::begin(&s.rig);
    let stopped = Instant::now();
    // What the scaler read within its cache TTL before the outage is still
    // true; anything older must not be served.
    tokio::time::sleep(Tuning::default().cache_ttl + Duration::from_millis(200)).await;
    let mut scaler = ExternalScalerClient::connect(format!("http://{}", s.rig.scaler_address))
        .await
        .expect("the scaler's gRPC");
    let trigger = scaled_object(&[("stream", &s.stream), ("consumer", WORKER)]);
    let asked = Instant::now();
    let refused = scaler
        .get_metrics(metrics_request(trigger))
        .await
        .expect_err("no lag can be known while NATS is down");
    assert!(
        matches!(refused.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{refused:?}"
    );
    assert!(asked.elapsed() < Duration::from_secs(3), "KEDA gives a call 3 s");

    eventually("KEDA marks the trigger failing", Duration::from_secs(30), async || {
        (s.trigger_health().await? == "Failing").then_some(())
    })
    .await;
    eventually("KEDA's Fallback condition", Duration::from_secs(30), async || {
        (s.scaled_object_condition("Fallback").await?["status"] == "True").then_some(())
    })
    .await;
    s.wait_replicas(FALLBACK, Duration::from_secs(30)).await;
    println!("NATS down -> fallback replicas {FALLBACK} in {:?}", stopped.elapsed());
    // KEDA's stand-in value: the HPA lands on exactly `replicas`.
    s.wait_external_metric((i64::from(FALLBACK) * LAG_THRESHOLD) as f64)
        .await;

    drop(outage);
    let restarted = Instant::now();
    eventually("the trigger healthy again", Duration::from_secs(30), async || {
        (s.trigger_health().await? == "Happy").then_some(())
    })
    .await;
    eventually("the Fallback condition cleared", Duration::from_secs(30), async || {
        (s.scaled_object_condition("Fallback").await?["status"] == "False").then_some(())
    })
    .await;
    s.wait_external_metric(0.0).await;
    println!(
        "NATS back -> trigger healthy, real metric served in {:?}",
        restarted.elapsed()
    );
    // Real numbers drive scaling again: 30 messages want 6 replicas.
    s.publish(30).await;
    s.wait_external_metric(30.0).await;
    s.wait_replicas(replicas_for(30, 10), Duration::from_secs(30)).await;
}

/// 6. Deleting the claim removes the Deployment, Service, ServiceAccount,
///    ScaledObject and KEDA's HPA (garbage collection through owners), and
///    the worker's pod.
#[tokio::test]
async fn deleting_the_claim_removes_every_child() {
    let _peers = PEERS.read().await;
    let s = Scenario::new(rig(), "delete").await;
    s.apply_claim("minReplicas: 1").await;
    s.wait_scaled_object_ready().await;
    s.wait_hpa().await;
    let children = s.children().await;
    assert_eq!(children, ALL_CHILDREN, "every child exists before the deletion");
    s.wait_claim_ready(1).await;
    let pods = s.pods().await;

    let claims: Api<EventDrivenService> = Api::namespaced(s.client.clone(), &s.ns);
    claims
        .delete(WORKER, &DeleteParams::default())
        .await
        .expect("delete the claim");
    eventually("every child gone", Duration::from_secs(60), async || {
        s.children().await.is_empty().then_some(())
    })
    .await;
    // The Deployment's pods go with it (through its ReplicaSet).
    let api: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    eventually("the worker's pod gone", Duration::from_secs(30), async || {
        for pod in &pods {
            if api.get_opt(&pod.name_any()).await.ok()?.is_some() {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// 7. An invalid claim is refused with a message naming the field, and
///    nothing is created.
#[tokio::test]
async fn invalid_claim_is_refused_and_creates_nothing() {
    let _peers = PEERS.read().await;
    let s = Scenario::new(rig(), "invalid").await;
    for (scaling, field, message) in [
        (
            "minReplicas: 5\n    maxReplicas: 2",
            "spec.scaling",
            "scaling.minReplicas must not be greater than scaling.maxReplicas",
        ),
        (
            "maxReplicas: 3\n    pollingInterval: 0",
            "spec.scaling.pollingInterval",
            "scaling.pollingInterval must be between 1 and 3600 seconds",
        ),
    ] {
        let claim: Value = serde_yaml::from_str(&s.claim(scaling)).expect("claim YAML");
        let claims: Api<EventDrivenService> = Api::namespaced(s.client.clone(), &s.ns);
        let refused = claims
            .patch(WORKER, &PatchParams::apply("e2e").force(), &Patch::Apply(&claim))
            .await
            .expect_err("an invalid claim must be refused");
        let kube::Error::Api(status) = refused else {
            panic!("not the API server's refusal: {refused}");
        };
        assert_eq!(status.code, 422, "{status:?}");
        assert!(
            status.message.contains(&format!("{field}: Invalid value")) && status.message.contains(message),
            "{field} / {message:?} in {:?}",
            status.message
        );
    }
    // Longer than the controller takes to act on a new claim.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let claims: Api<EventDrivenService> = Api::namespaced(s.client.clone(), &s.ns);
    assert!(claims.list(&Default::default()).await.unwrap().items.is_empty());
    assert_eq!(s.children().await, Vec::<&str>::new());
}

/// 8. KEDA dials the scaler over mutual TLS, as the chart sets it up with
///    `scaler.grpcTLS` (clientAuth on): the scaler serves with a server
///    certificate and requires a client certificate from the CA; KEDA's
///    certificate and that CA sit in a Secret in KEDA's namespace, which the
///    chart's ClusterTriggerAuthentication hands to KEDA; the controller, run
///    as the chart runs it, points the trigger at it with `enableTLS`. The
///    ScaledObject becomes Ready and a push activates the worker. The same
///    trigger with the chart's clientAuth-off ClusterTriggerAuthentication (no
///    client certificate) is refused in the TLS handshake.
#[tokio::test]
async fn keda_reaches_the_scaler_over_mutual_tls() {
    const REFUSED: &str = "no-client-cert";
    let _peers = PEERS.write().await;
    let s = Scenario::new(rig(), "tls").await;
    let rig = &s.rig;
    let dir = rig.dir().join(&s.ns);
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki::new(&dir, "scaler-grpc");
    let server = pki.server("eds-scaler");
    let keda_client = pki.client("keda", &[]);
    let tls_flags = [
        OsStr::new("--grpc-tls-cert"),
        server.cert.as_os_str(),
        OsStr::new("--grpc-tls-key"),
        server.key.as_os_str(),
        OsStr::new("--grpc-tls-client-ca"),
        pki.ca_pem.as_os_str(),
    ];
    let scaler = rig.start_scaler(&format!("eds-scaler-{}", s.ns), &tls_flags);

    let secret = format!("{}-scaler-client", s.ns);
    let pem = |path: &Path| base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap());
    apply_yaml(
        &s.client,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {secret}\ndata:\n  ca.crt: {}\n  tls.crt: {}\n  tls.key: {}\n",
            pem(&pki.ca_pem),
            pem(&keda_client.cert),
            pem(&keda_client.key)
        ),
        Some(keda::NAMESPACE),
    )
    .await;
    let shipped = chart_grpc_tls(&s.ns, &secret, true);
    let authentication = apply_cluster_trigger_authentication(&s.client, &shipped).await;
    assert_eq!(
        controller_env(&shipped, "EDS_SCALER_TRIGGER_AUTHENTICATION").as_deref(),
        Some(authentication.as_str()),
        "the chart's controller points triggers at the chart's ClusterTriggerAuthentication"
    );
    let no_client_cert = chart_grpc_tls(&format!("{}-{REFUSED}", s.ns), &secret, false);
    let no_client_cert = apply_cluster_trigger_authentication(&s.client, &no_client_cert).await;

    let _paused = rig.pause_controller();
    let _controller = rig.start_controller(
        &format!("eds-controller-{}", s.ns),
        &s.ns,
        &scaler.address,
        &["--scaler-trigger-authentication", &authentication],
    );
    s.apply_claim("minReplicas: 0\n    pollingInterval: 30").await;
    s.wait_scaled_object_ready().await;
    let so = s.scaled_objects().get(WORKER).await.expect("the claim's ScaledObject");
    let trigger = &so.data["spec"]["triggers"][0];
    assert_eq!(trigger["metadata"]["scalerAddress"], scaler.address.as_str());
    assert_eq!(trigger["metadata"]["enableTLS"], "true");
    assert_eq!(
        trigger["authenticationRef"],
        json!({"name": authentication, "kind": "ClusterTriggerAuthentication"})
    );
    s.wait_replicas(0, Duration::from_secs(30)).await;
    let published = Instant::now();
    s.publish(1).await;
    let took = s.time_to_replicas(1, published, PUSH_ACTIVATION_BOUND).await;
    println!(
        "activation over mutual TLS, external-push (StreamIsActive), pollingInterval 30: publish -> replicas 1 in {took:?}"
    );
    let metrics = http::get(scaler.http_port, "/metrics").expect("the TLS scaler's /metrics");
    let pushed = Scrape::parse(&metrics.body).sum("eds_push_activations_total", &[]);
    assert!(
        pushed.is_some_and(|n| n > 0.0),
        "the TLS scaler pushed the activation:\n{}",
        metrics.body
    );

    // The same trigger without KEDA's client certificate.
    let mut triggers = so.data["spec"]["triggers"].clone();
    triggers[0]["authenticationRef"]["name"] = json!(no_client_cert);
    apply_yaml(&s.client, &bare_deployment(REFUSED), Some(&s.ns)).await;
    let refused = json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": REFUSED},
        "spec": {"scaleTargetRef": {"name": REFUSED}, "minReplicaCount": 0, "triggers": triggers},
    });
    apply_yaml(&s.client, &refused.to_string(), Some(&s.ns)).await;
    let applied = Instant::now();
    let ready = eventually(
        "the refused ScaledObject's Ready condition",
        Duration::from_secs(30),
        async || {
            let so = s.scaled_objects().get(REFUSED).await.ok()?;
            let conditions = so.data["status"]["conditions"].as_array()?.clone();
            conditions
                .into_iter()
                .find(|c| c["type"] == "Ready" && c["status"] != "Unknown")
        },
    )
    .await;
    assert_eq!(ready["status"], "False", "{ready}");
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(message.contains("no metric specs returned from scalers"), "{ready}");
    // Why KEDA got no metric spec: the scaler refused the handshake. (KEDA
    // logs the trigger's errors with the ScaledObject's namespace and name.)
    // With TLS 1.3 the client learns of the refusal only when it next uses
    // the connection, so the same refusal reads as the server's alert, or as
    // the closed socket that follows it. The same scaler serves `worker`,
    // whose KEDA client has a certificate, just above: the connection is
    // refused for the missing certificate, not for being unreachable.
    let refused_by = format!(r#""namespace": "{}", "name": "{REFUSED}""#, s.ns);
    let refusals = [
        "tls: certificate required",
        "write: broken pipe",
        "connection reset by peer",
    ];
    let log = rig.keda_operator_log();
    assert!(
        log.lines()
            .any(|l| l.contains(&refused_by) && refusals.iter().any(|r| l.contains(r))),
        "KEDA's operator logs no refused handshake for {REFUSED}"
    );
    println!(
        "without a client certificate: Ready False (TLS handshake refused) in {:?}",
        applied.elapsed()
    );
    // The restarted rig controller would take the claim over; KEDA would
    // keep retrying the refused ScaledObject.
    Api::<Namespace>::all(s.client.clone())
        .delete(&s.ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");
}

/// 9. KEDA keeps working after it has run longer than its manager's cache
///    sync timeout: a manager that waits for a kind whose CRD is missing
///    exits then, and nothing scales after that. This test waits (without
///    holding the peers, so the other scenarios run meanwhile) until KEDA has
///    been up for longer, then checks that every peer still runs and that a
///    new claim still scales from zero.
#[tokio::test]
async fn claims_still_scale_after_keda_has_run_past_its_cache_sync_timeout() {
    let keda_started = rig().keda_started();
    let long_enough = keda_started + KEDA_CACHE_SYNC_TIMEOUT + Duration::from_secs(15);
    tokio::time::sleep_until(long_enough.into()).await;
    let _peers = PEERS.read().await;
    // Fails with the operator's log if it exited.
    let s = Scenario::new(rig(), "later").await;
    s.apply_claim("minReplicas: 0\n    maxReplicas: 4\n    pollingInterval: 2")
        .await;
    s.wait_scaled_object_ready().await;
    s.wait_replicas(0, Duration::from_secs(30)).await;
    s.publish(12).await;
    s.wait_replicas(replicas_for(12, 4), Duration::from_secs(45)).await;
    s.rig.assert_running();
    println!("KEDA up for {:?}: a new claim still scales", keda_started.elapsed());
}

/// The platform kit's dashboard and alerts query only metrics that the
/// running scaler and controller really export: both are scraped after a
/// claim has been reconciled, activated by a push, and another claim has
/// failed to render.
#[tokio::test]
async fn dashboard_and_alerts_query_metrics_the_running_platform_exports() {
    let _peers = PEERS.read().await;
    let s = Scenario::new(rig(), "scrape").await;
    s.apply_claim("minReplicas: 0\n    pollingInterval: 5").await;
    s.wait_scaled_object_ready().await;
    s.publish(3).await;
    s.wait_replicas(1, PUSH_ACTIVATION_BOUND).await;
    // A request above its limit passes the schema but not the render: the
    // controller counts a failed reconcile.
    apply_yaml(
        &s.client,
        &s.claim("minReplicas: 0\n  resources:\n    requests:\n      cpu: \"3\"")
            .replace(&format!("name: {WORKER}\n"), "name: broken\n"),
        Some(&s.ns),
    )
    .await;

    let wanted = promql::kit_metric_names();
    assert!(wanted.len() > 10, "the kit queries {wanted:?}");
    let port = |addr: &str| addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let (scaler, controller) = (port(&s.rig.scaler_http), port(&s.rig.controller_http));
    let what = "the kit's metric names in a live scrape of the scaler and the controller";
    eventually(what, Duration::from_secs(60), async || {
        let mut exported = std::collections::BTreeSet::new();
        for port in [scaler, controller] {
            let scrape = http::get(port, "/metrics").expect("/metrics");
            assert_eq!(scrape.code, 200);
            exported.extend(Scrape::parse(&scrape.body).names());
        }
        let missing: Vec<String> = wanted.difference(&exported).cloned().collect();
        missing.is_empty().then_some(()).ok_or(missing)
    })
    .await;
    println!("the kit's {} metric names are all in a live scrape", wanted.len());
}

/// The chart's ClusterTriggerAuthentication and controller Deployment for
/// release `release` with `scaler.grpcTLS` on, KEDA's side in Secret
/// `secret`; rendered for the control plane's Kubernetes version.
fn chart_grpc_tls(release: &str, secret: &str, client_auth: bool) -> Vec<Value> {
    let args = [
        "--show-only=templates/cluster-trigger-authentication.yaml".to_string(),
        "--show-only=templates/controller-deployment.yaml".to_string(),
        // The chart requires an image; the rig runs the binary instead.
        "--set=image.repository=registry.example.com/platform/eds".to_string(),
        "--set=scaler.grpcTLS.enabled=true".to_string(),
        // The scaler's own Secret: the rig's scaler reads files instead.
        "--set=scaler.grpcTLS.secretName=eds-scaler-grpc-tls".to_string(),
        format!("--set=scaler.grpcTLS.clientAuth={client_auth}"),
        format!("--set=scaler.grpcTLS.kedaClientSecretName={secret}"),
    ];
    let text = chart::template(release, rig::SYSTEM_NAMESPACE, &args).unwrap_or_else(|e| panic!("helm template: {e}"));
    chart::documents(&text)
}

/// Applies the ClusterTriggerAuthentication of `objects`; its name.
async fn apply_cluster_trigger_authentication(client: &Client, objects: &[Value]) -> String {
    let cta = objects
        .iter()
        .find(|o| o["kind"] == "ClusterTriggerAuthentication")
        .expect("the chart's ClusterTriggerAuthentication");
    apply_yaml(client, &cta.to_string(), None).await;
    cta["metadata"]["name"].as_str().expect("a name").to_string()
}

/// Environment variable `name` of the controller container in `objects`.
fn controller_env(objects: &[Value], name: &str) -> Option<String> {
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment")?;
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array()?;
    let var = env.iter().find(|e| e["name"] == name)?;
    var["value"].as_str().map(str::to_string)
}

/// NATS stopped until dropped, so a failing test leaves it running for the
/// others.
struct NatsOutage<'a>(&'a Rig);

impl<'a> NatsOutage<'a> {
    fn begin(rig: &'a Rig) -> Self {
        rig.nats().stop();
        NatsOutage(rig)
    }
}

impl Drop for NatsOutage<'_> {
    fn drop(&mut self) {
        self.0.nats().start_again();
    }
}

/// The replicas KEDA's HPA settles on for `lag`: eds's own formula, from 1
/// (KEDA owns 0 <-> 1) to `max`.
fn replicas_for(lag: u64, max: u32) -> i32 {
    let replicas = desired_replicas(lag, LAG_THRESHOLD as f64, 1, max);
    i32::try_from(replicas).expect("a replica count")
}

/// Issue 12: a claim with `spec.nats.consumerConfig` gets its consumer from
/// the controller, stamped as its own, and scales from zero on it; nobody
/// made that consumer by hand.
#[tokio::test]
async fn a_claim_with_consumer_config_scales_from_zero_with_no_consumer_made_by_hand() {
    let _peers = PEERS.read().await;
    let s = Scenario::new(rig(), "ownconsumer").await;
    // The scenario's own consumer is made by hand; the claim names another.
    let claim = s.claim("minReplicas: 0\n    pollingInterval: 5").replace(
        &format!("    consumer: {WORKER}\n"),
        "    consumer: owned\n    consumerConfig:\n      maxDeliver: 3\n",
    );
    assert!(claim.contains("consumerConfig"), "{claim}");
    let stream = s.js.get_stream(s.stream.as_str()).await.unwrap();
    assert!(
        stream.consumer_info("owned").await.is_err(),
        "no consumer before the claim"
    );
    apply_yaml(&s.client, &claim, Some(&s.ns)).await;

    let info = eventually(
        "the controller creates the consumer",
        Duration::from_secs(30),
        async || stream.consumer_info("owned").await.ok(),
    )
    .await;
    assert_eq!(info.config.max_deliver, 3);
    assert_eq!(
        info.config.metadata.get("eds.bizmatters.io/claim-namespace"),
        Some(&s.ns)
    );
    s.wait_scaled_object_ready().await;
    s.wait_replicas(0, Duration::from_secs(30)).await;

    let published = Instant::now();
    s.publish(2).await;
    let took = s.time_to_replicas(1, published, Duration::from_secs(60)).await;
    println!("a claim's own consumer: publish -> replicas 1 in {took:?}");
}

// Issue 14: drainWithin

/// The scaler streams a measured target (`StreamMetricSpec`) and KEDA
/// v2.21.0 rebuilds the HPA with it: the HPA's target changes while nobody
/// writes the ScaledObject (its generation and spec stay as applied).
#[tokio::test]
async fn a_streamed_metric_spec_changes_the_hpa_target_without_a_write_to_the_scaled_object() {
    const FALLBACK: &str = "7";
    let _peers = PEERS.read().await;
    let s = Scenario::new(rig(), "drain").await;
    let scaler = s.rig.start_scaler(
        &format!("eds-scaler-{}", s.ns),
        &[
            "--drain-sample-every",
            "500ms",
            "--drain-min-interval",
            "2s",
            "--cache-ttl",
            "200ms",
        ],
    );
    apply_yaml(&s.client, &bare_deployment(WORKER), Some(&s.ns)).await;
    let scaled_object = json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": WORKER},
        "spec": {
            "scaleTargetRef": {"name": WORKER},
            "minReplicaCount": 1,
            "maxReplicaCount": 50,
            "pollingInterval": 5,
            "triggers": [{"type": "external-push", "metadata": {
                "scalerAddress": scaler.address,
                "stream": s.stream,
                "consumer": WORKER,
                "lagThreshold": FALLBACK,
                "drainWithin": "10s",
            }}],
        },
    });
    apply_yaml(&s.client, &scaled_object.to_string(), Some(&s.ns)).await;
    s.wait_scaled_object_ready().await;
    let target = async || -> Option<f64> {
        let hpa = s.wait_hpa().await;
        let metric = hpa.spec?.metrics?.into_iter().next()?;
        let value = metric.external?.target.average_value?.0;
        match value.strip_suffix('m') {
            Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
            None => value.parse().ok(),
        }
    };
    let first = eventually("the HPA's first target", Duration::from_secs(30), async || {
        target().await
    })
    .await;
    assert_eq!(first, 7.0, "the fallback lagThreshold until μ is known");
    let before = s.scaled_objects().get(WORKER).await.unwrap();

    // A deep backlog and one worker (this test) acking about 20 a second.
    s.publish(3000).await;
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        s.js.get_consumer_from_stream(WORKER, s.stream.as_str()).await.unwrap();
    let worker = tokio::spawn(async move {
        let mut messages = consumer.stream().max_messages_per_batch(1).messages().await.unwrap();
        while let Some(Ok(message)) = futures::StreamExt::next(&mut messages).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
            message.double_ack().await.unwrap();
        }
    });
    let started = Instant::now();
    let measured = eventually("a measured HPA target", Duration::from_secs(90), async || {
        target().await.filter(|t| *t != first)
    })
    .await;
    worker.abort();
    println!(
        "HPA target {first} -> {measured} (μ·D, D = 10 s) {:?} after the worker started",
        started.elapsed()
    );
    // μ is at most 20/s (50 ms a message). It is counted low when the
    // client holds more than one message (prefetch; see docs/scaler.md), and
    // a loaded machine is slower: the lower bound only says "measured".
    assert!(measured > 5.0 && measured <= 220.0, "μ·D = {measured}");
    let after = s.scaled_objects().get(WORKER).await.unwrap();
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "no write to the spec"
    );
    assert_eq!(after.data["spec"], before.data["spec"]);
    let metrics = http::get(scaler.http_port, "/metrics").expect("the scaler's /metrics");
    let opened = Scrape::parse(&metrics.body).sum(
        "eds_scaler_rpc_total",
        &[("method", "StreamMetricSpec"), ("code", "OK")],
    );
    assert!(
        opened.is_some_and(|n| n > 0.0),
        "KEDA opened StreamMetricSpec:\n{}",
        metrics.body
    );
}

// Issue 11: consumer health

/// A saturated consumer with a large backlog: `max_ack_pending` 3 and
/// `concurrency` 1 let at most 3 replicas hold work, so the scaler's metric
/// stops at 3 × lagThreshold and the HPA asks for 3, not `maxReplicas`; the
/// claim shows the true lag and says `Saturated`.
#[tokio::test]
async fn a_saturated_consumer_keeps_the_hpa_at_the_replica_cap() {
    use async_nats::jetstream::consumer;
    let _peers = PEERS.read().await;
    let s = Scenario::new(rig(), "saturated").await;
    let stream = s.js.get_stream(s.stream.as_str()).await.unwrap();
    stream.delete_consumer(WORKER).await.unwrap();
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(WORKER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(600),
            max_ack_pending: 3,
            max_deliver: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    s.apply_claim("minReplicas: 0\n    maxReplicas: 10\n    pollingInterval: 2")
        .await;
    s.wait_scaled_object_ready().await;
    s.wait_hpa().await;

    // 100 messages: the lag alone would ask for 10 replicas (maxReplicas).
    s.publish(100).await;
    s.take(3, false).await;
    assert_eq!(s.nats_lag().await, (97, 3));
    let cap = 3;
    s.wait_external_metric((cap * LAG_THRESHOLD) as f64).await;
    s.wait_replicas(cap as i32, Duration::from_secs(45)).await;
    s.wait_hpa_desired(cap as i32).await;
    // It stays there: a few more KEDA polls (2 s) and HPA syncs later.
    tokio::time::sleep(Duration::from_secs(10)).await;
    s.wait_hpa_desired(cap as i32).await;
    assert_eq!(s.replicas().await, Some(cap as i32));

    let claims: Api<EventDrivenService> = Api::namespaced(s.client.clone(), &s.ns);
    eventually(
        "the claim shows the true lag and says Saturated",
        Duration::from_secs(30),
        async || {
            let claim = claims.get(WORKER).await.ok()?;
            let status = claim.status?;
            let health = status
                .conditions
                .iter()
                .find(|c| c.type_ == eds::api::CONDITION_CONSUMER_HEALTHY)?;
            (status.lag == Some(100) && health.reason == "Saturated").then_some(health.message.clone())
        },
    )
    .await;
}
