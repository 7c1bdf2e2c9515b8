//! `eds controller`: reconciles each EventDrivenService into its
//! ServiceAccount, Deployment, Service and KEDA ScaledObject.
//!
//! Kubernetes I/O only. What the children look like comes from
//! [`crate::render`]; whether one needs a write from [`drift`]; the writes
//! themselves are [`apply`]'s; what the status says comes from
//! [`crate::render::status`]; who may write from [`leader`].
//!
//! - Children are server-side applied under one field manager with force, so
//!   drift is undone and a deleted child comes back. Deleting a claim deletes
//!   its children through their owner references (the garbage collector).
//! - A child is written only when the live object no longer holds what we
//!   would apply, and the status only when it changed: a quiet cluster sees
//!   no writes from us at all.
//! - The Deployment's `spec.replicas` is never applied: KEDA owns it.
//! - A claim with `spec.nats.consumerConfig` owns its JetStream consumer:
//!   created (stamped as the claim's) before the ScaledObject, kept in shape,
//!   and deleted with the claim under `deletionPolicy: Delete`, which is the
//!   one thing the controller ever deletes, behind [`FINALIZER`].
pub mod advisory;
pub mod apply;
pub mod children;
pub mod drift;
pub mod gauges;
pub mod leader;
pub mod live;
pub mod metrics;
mod reconcile;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};

pub use children::{ByKind, ChildKind};
pub use reconcile::{Context, Stores, backoff, error_policy, reconcile};

use crate::Result;
use crate::api::EventDrivenService;
use crate::lag::{JetStreamLag, LagCache};
use crate::nats::{Connections, NatsConfig};
use crate::render::{MANAGED_BY, Platform};
use crate::tenancy::Access;
use advisory::AdvisoryCounts;
use gauges::ClaimGauges;
use live::LiveChild;

/// On a claim whose deletion deletes its consumer: the claim stays until the
/// consumer is gone.
pub const FINALIZER: &str = "eds.bizmatters.io/consumer";

/// Reconciles at once, at most. Unbounded (kube's default), 1,000 claims
/// created together start 1,000 reconciles, each opening its own connection
/// (the client speaks HTTP/1.1); the API server queues them, calls pass
/// [`apply::CALL_TIMEOUT`], and the retries and their failure Events make it
/// worse: in the benchmark 1,000 claims had not converged after minutes.
/// Bounded, each call is answered at once and the work flows
/// (docs/benchmarks.md, "The controller at scale").
pub const RECONCILE_CONCURRENCY: u16 = 32;

/// Where a client-side apply keeps the last configuration it applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The one field manager every write of ours goes under.
pub const FIELD_MANAGER: &str = "eds-controller";

/// What `eds controller` runs with.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub platform: Platform,
    /// NATS connections for reading each claim's lag into its status. Only
    /// these servers are dialled; a claim can pick a connection by name.
    pub nats: NatsConfig,
    /// How often each claim's lag is read (at most one NATS request per
    /// consumer per interval) and each claim is re-checked for drift.
    pub lag_interval: Duration,
    /// How long redeliveries must last, or how recent an advisory must be,
    /// for `PoisonMessages`.
    pub poison_window: Duration,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    pub http_addr: SocketAddr,
    /// Reconcile only this namespace's claims (default: every namespace).
    pub watch_namespace: Option<String>,
    pub leader: LeaderConfig,
    /// The KEDA the platform runs: before v2.21 a claim's `drainWithin` is
    /// reported as having no effect.
    pub keda_version: crate::trigger::KedaVersion,
}

/// Leader election: only the replica holding the Lease reconciles.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub lease_name: String,
    /// The controller's own namespace.
    pub lease_namespace: String,
    /// How long a Lease holds without renewal; a standby takes over this long
    /// after the leader stops renewing.
    pub lease_duration: Duration,
    /// This replica's name in the Lease and in Events.
    pub identity: String,
}

/// The controller's parts, wired: the Kubernetes client and the lag cache
/// that feeds each claim's status.
pub struct ClaimController {
    client: Client,
    config: ControllerConfig,
    lag: Arc<LagCache>,
    /// The same connections, for the consumers claims own and, on the
    /// leader, the advisories consumer health counts.
    connections: Connections,
    /// The connections' tenancy rules, read with them.
    access: Arc<Access>,
    /// Whether the last Lease request reached the API server.
    reachable: Arc<AtomicBool>,
    /// Each claim's `eds_service_*` figures, which `/metrics` shows.
    gauges: Arc<ClaimGauges>,
}

impl ClaimController {
    /// Connects to the API server (in-cluster or kubeconfig) and to NATS.
    pub async fn connect(config: ControllerConfig) -> Result<Self> {
        let client = Client::try_default().await?;
        let connections = Connections::connect(&config.nats, "eds-controller").await?;
        let access = Arc::new(connections.access().clone());
        let lag = LagCache::new(Arc::new(JetStreamLag::new(connections.clone())), config.lag_interval);
        Ok(ClaimController {
            client,
            config,
            lag,
            connections,
            access,
            reachable: Arc::new(AtomicBool::new(false)),
            gauges: Arc::default(),
        })
    }

    /// Each claim's figures, which `/metrics` shows.
    pub fn claim_gauges(&self) -> Arc<ClaimGauges> {
        self.gauges.clone()
    }

    /// The lag cache, whose readings `/metrics` shows.
    pub fn lag_cache(&self) -> Arc<LagCache> {
        self.lag.clone()
    }

    /// Ready while the API server answers the Lease requests.
    pub fn readiness(&self) -> impl Fn() -> std::result::Result<(), String> + Send + Sync + 'static {
        let reachable = self.reachable.clone();
        move || {
            if reachable.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("the Kubernetes API did not answer the last Lease request".to_string())
            }
        }
    }

    /// Waits for the Lease, then reconciles until `shutdown` resolves, and
    /// hands the Lease over on the way out.
    ///
    /// On `shutdown` the reconciles under way finish before the Lease is
    /// released; losing the Lease stops reconciling at once.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let ClaimController {
            client,
            config,
            lag,
            connections,
            access,
            reachable,
            gauges,
        } = self;
        let leader_config = &config.leader;
        let identity = &leader_config.identity;
        let mut lock = leader::LeaseLock::new(
            Api::<Lease>::namespaced(client.clone(), &leader_config.lease_namespace),
            &leader_config.lease_name,
            identity,
            leader_config.lease_duration,
            reachable,
        );
        let leader = ::metrics::gauge!(metrics::LEADER.name);
        leader.set(0.0);
        let shutdown = shutdown.boxed().shared();
        tracing::info!(%identity, lease = %leader_config.lease_name, namespace = %leader_config.lease_namespace, "waiting for the leader lease");
        tokio::select! {
            () = shutdown.clone() => return Ok(()),
            () = lock.acquire() => {}
        }
        leader.set(1.0);
        tracing::info!(%identity, "leading: reconciling claims");
        let result = tokio::select! {
            lost = lock.hold() => Err(lost),
            () = reconcile_claims(client, &config, lag, connections, access, gauges, identity, shutdown) => Ok(()),
        };
        leader.set(0.0);
        if result.is_ok()
            && let Err(e) = lock.release().await
        {
            tracing::warn!(error = %e, "releasing the leader lease");
        }
        result
    }
}

/// Runs the kube-rs controller over the claims and their four kinds of
/// children until `shutdown` resolves; then the reconciles under way finish
/// (kube's graceful shutdown) and no new one starts. Each child kind is
/// watched once, through a label selector on our own label, into a store
/// that reconcile reads the live children from; the same watch triggers the
/// owning claim's reconcile.
async fn reconcile_claims(
    client: Client,
    config: &ControllerConfig,
    lag: Arc<LagCache>,
    connections: Connections,
    access: Arc<Access>,
    gauges: Arc<ClaimGauges>,
    identity: &str,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // Advisories are not stored by the server: only the leader listens, from
    // when it starts leading, so a new leader's poison window starts afresh.
    let advisories = Arc::new(AdvisoryCounts::default());
    let listener = AbortOnDrop(tokio::spawn(advisory::listen(connections.clone(), advisories.clone())));
    let namespace = config.watch_namespace.as_deref();
    let claims: Api<EventDrivenService> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let ours = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"))
        .any_semantic();
    let (stores, events) = ByKind::from_fn(|kind| {
        let writer = reflector::store::Writer::new(kind);
        let store = writer.as_reader();
        let events = watcher(scoped(&client, namespace, kind), ours.clone())
            .default_backoff()
            .reflect(writer)
            .touched_objects();
        (store, events)
    })
    .unzip();
    let claims_writer = reflector::store::Writer::default();
    let claims_store = claims_writer.as_reader();
    let claim_events = watcher(claims, watcher::Config::default().any_semantic())
        .default_backoff()
        // Reconcile reads neither a claim's managedFields nor the copy of
        // the whole claim that a client-side apply (kubectl, Argo CD) keeps
        // in an annotation; together they are most of a cached claim.
        .modify(|claim: &mut EventDrivenService| {
            claim.metadata.managed_fields = None;
            if let Some(annotations) = claim.metadata.annotations.as_mut() {
                annotations.remove(LAST_APPLIED);
            }
        })
        .reflect(claims_writer)
        .touched_objects();
    gauges.follow(claims_store.clone());
    let mut controller = Controller::for_stream(claim_events, claims_store);
    for (kind, events) in events.into_array() {
        controller = controller.owns_stream_with(events, kind);
    }
    let context = Context::new(
        client,
        config,
        lag,
        connections.clone(),
        access,
        advisories,
        gauges,
        identity,
        stores,
    );
    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(context))
        .for_each(|result| async move {
            match result {
                // A child event for a claim that was just deleted: nothing to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(claim = %obj, "event for a claim that no longer exists")
                }
                // Reconcile failures are logged, evented and counted there.
                Err(e) => tracing::warn!(error = %e, "controller"),
                Ok(_) => {}
            }
        })
        .await;
    drop(listener);
}

/// Stops a spawned task when dropped (the leader's advisory listener ends
/// with its leadership).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn scoped(client: &Client, namespace: Option<&str>, kind: ChildKind) -> Api<LiveChild> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &kind),
        None => Api::all_with(client.clone(), &kind),
    }
}
