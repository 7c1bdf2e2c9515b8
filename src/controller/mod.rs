//! `eds controller`: reconciles each EventDrivenService into its
//! ServiceAccount, Deployment, Service and KEDA ScaledObject.
//!
//! Kubernetes I/O only. What the children look like comes from
//! [`crate::render`]; whether one needs a write from [`apply`]; what the status
//! says from [`status`]; who may write from [`leader`].
//!
//! - Children are server-side applied under one field manager with force, so
//!   drift is undone and a deleted child comes back. Deleting a claim deletes
//!   its children through their owner references (the garbage collector).
//! - A child is written only when the live object no longer holds what we
//!   would apply, and the status only when it changed: a quiet cluster sees
//!   no writes from us at all.
//! - The Deployment's `spec.replicas` is never applied: KEDA owns it.
pub mod apply;
pub mod leader;
mod reconcile;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};

pub use reconcile::{ChildKind, Context, backoff, child_resources, error_policy, reconcile};

use crate::api::EventDrivenService;
use crate::lag::{JetStreamLag, LagCache};
use crate::nats::{Connections, NatsArgs, parse_duration};
use crate::render::{MANAGED_BY, Platform};
use crate::telemetry;
use crate::{Error, Result};

/// The one field manager every write of ours goes under.
pub const FIELD_MANAGER: &str = "eds-controller";

/// `eds controller` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub platform: Platform,
    /// NATS connections for reading each claim's lag into its status. Only
    /// these servers are dialled; a claim can pick a connection by name.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// How often each claim's lag is read (at most one NATS request per
    /// consumer per interval) and each claim is re-checked for drift.
    #[arg(long, env = "EDS_LAG_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub lag_interval: Duration,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "EDS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Reconcile only this namespace's claims (default: every namespace).
    #[arg(long, env = "EDS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

/// Leader election: only the replica holding the Lease reconciles.
#[derive(clap::Args, Clone, Debug)]
pub struct LeaderArgs {
    /// Name of the Lease.
    #[arg(long, env = "EDS_LEASE_NAME", default_value = "eds-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (the controller's own).
    #[arg(long, env = "EDS_LEASE_NAMESPACE", default_value = "eds-system")]
    pub lease_namespace: String,
    /// How long a Lease holds without renewal; a standby takes over this long
    /// after the leader stops renewing.
    #[arg(long, env = "EDS_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// This replica's name in the Lease and in Events (set it to the pod
    /// name). Default: the host name and process id.
    #[arg(long, env = "EDS_POD_NAME")]
    pub identity: Option<String>,
}

impl LeaderArgs {
    fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "eds-controller".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// `eds controller`: waits for the Lease, then reconciles until SIGINT or
/// SIGTERM, and hands the Lease over on the way out.
pub async fn run(args: Args) -> Result<()> {
    telemetry::prometheus();
    let client = Client::try_default().await?;
    let connections = Connections::connect(&args.nats, "eds-controller").await?;
    let lag = LagCache::new(Arc::new(JetStreamLag::new(connections)), args.lag_interval);
    let reachable = Arc::new(AtomicBool::new(false));
    let ready = {
        let reachable = reachable.clone();
        Arc::new(move || {
            if reachable.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("the Kubernetes API did not answer the last Lease request".to_string())
            }
        })
    };
    let gauges = telemetry::consumer_gauges(lag.clone());
    let http = tokio::spawn(telemetry::serve_http(args.http_addr, ready, vec![gauges]));
    tokio::select! {
        result = run_elected(client, &args, lag, reachable, crate::scaler::shutdown_signal()) => result,
        http = http => http.map_err(|e| Error::Server(e.to_string()))?,
    }
}

async fn run_elected(
    client: Client,
    args: &Args,
    lag: Arc<LagCache>,
    reachable: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let identity = args.leader.identity();
    let mut lock = leader::LeaseLock::new(
        Api::<Lease>::namespaced(client.clone(), &args.leader.lease_namespace),
        &args.leader.lease_name,
        &identity,
        args.leader.lease_duration,
        reachable,
    );
    let leader = metrics::gauge!("eds_leader");
    leader.set(0.0);
    tokio::pin!(shutdown);
    tracing::info!(%identity, lease = %args.leader.lease_name, namespace = %args.leader.lease_namespace, "waiting for the leader lease");
    tokio::select! {
        () = &mut shutdown => return Ok(()),
        () = lock.acquire() => {}
    }
    leader.set(1.0);
    tracing::info!(%identity, "leading: reconciling claims");
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        lost = lock.hold() => Err(lost),
        () = reconcile_claims(client, args, lag, &identity) => Ok(()),
    };
    leader.set(0.0);
    if result.is_ok()
        && let Err(e) = lock.release().await
    {
        tracing::warn!(error = %e, "releasing the leader lease");
    }
    result
}

/// Runs the kube-rs controller over the claims and their four kinds of
/// children. Each child kind is watched once, through a label selector on
/// our own label, into a store that reconcile reads the live children from;
/// the same watch triggers the owning claim's reconcile.
async fn reconcile_claims(client: Client, args: &Args, lag: Arc<LagCache>, identity: &str) {
    let namespace = args.watch_namespace.as_deref();
    let claims: Api<EventDrivenService> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut controller = Controller::new(claims, watcher::Config::default().any_semantic());
    let ours = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"))
        .any_semantic();
    let mut kinds = Vec::new();
    for resource in child_resources() {
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let children = watcher(scoped(&client, namespace, &resource), ours.clone())
            .default_backoff()
            // Reconcile never reads managedFields; keeping them would double
            // the memory each child takes.
            .modify(|child: &mut DynamicObject| child.metadata.managed_fields = None)
            .reflect(writer)
            .touched_objects();
        controller = controller.owns_stream_with(children, resource.clone());
        kinds.push(ChildKind { resource, store });
    }
    let context = Context::new(client, args, lag, identity, kinds);
    controller
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
}

fn scoped(client: &Client, namespace: Option<&str>, resource: &ApiResource) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// Registers descriptions for the controller's metrics (names are used by the
/// Grafana dashboard).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("eds_reconcile_total", "Reconciles by result: ok or error.");
    describe_histogram!(
        "eds_reconcile_duration_seconds",
        metrics::Unit::Seconds,
        "Time one reconcile took."
    );
    describe_counter!("eds_reconcile_errors_total", "Failed reconciles by error kind.");
    describe_counter!(
        "eds_child_applies_total",
        "Children written (created, changed or repaired) by kind."
    );
    describe_gauge!("eds_service_lag", "A claim's consumer lag when last read.");
    describe_gauge!("eds_service_replicas", "A claim's Deployment replicas.");
    describe_gauge!(
        "eds_service_desired_replicas",
        "Replicas the lag asks for: ceil(lag / lagThreshold), within min and max."
    );
    describe_gauge!("eds_service_max_replicas", "A claim's scaling.maxReplicas.");
    describe_gauge!("eds_leader", "1 while this replica holds the leader lease.");
}
