//! One claim's reconcile: apply what changed, observe, write the status if it
//! changed; and what happens when that fails.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Deserialize;
use serde_json::Value;

use super::advisory::AdvisoryCounts;
use super::apply::{add_finalizer, apply_child, patch_status, remove_finalizer};
use super::children::{ByKind, ChildKind};
use super::drift::{live_holds, stamp};
use super::gauges::ClaimGauges;
use super::live::LiveChild;
use super::metrics::{RECONCILE_DURATION, RECONCILE_ERRORS, RECONCILES};
use super::{ControllerConfig, FIELD_MANAGER, FINALIZER};
use crate::api::{
    CONDITION_CONSUMER_HEALTHY, DrainStatus, EventDrivenService, EventDrivenServiceStatus, FieldError, InvalidClaim,
    Nats,
};
use crate::consumer::{self, ConsumerError, Deletion, Outcome, deletes_consumer};
use crate::health::{History, Sample, Settings};
use crate::lag::{ConsumerKey, LagCache, LagError, desired_replicas};
use crate::nats::{Connection, Connections, DEFAULT_CONNECTION};
use crate::render::status::{
    ConsumerHealth, HealthReason, Observed, changed_condition, desired_status, keda_conditions,
};
use crate::render::{Children, Platform, desired_children};
use crate::tenancy::Access;
use crate::trigger::LagThreshold;
use crate::{Error, Result};

/// The watch-fed stores of the live children, one per kind.
pub type Stores = ByKind<Store<LiveChild>>;

/// A child as the watch cached it, or as an apply returned it.
type Live = Option<Arc<LiveChild>>;

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    client: Client,
    platform: Platform,
    lag: Arc<LagCache>,
    connections: Connections,
    /// Which namespaces may use which NATS connection: the scaler's rules.
    access: Arc<Access>,
    lag_interval: Duration,
    poison_window: Duration,
    advisories: Arc<AdvisoryCounts>,
    /// Each claim's `eds_service_*` figures, shown at scrape time.
    gauges: Arc<ClaimGauges>,
    /// What each claim's consumer readings showed so far: O(1) each (see
    /// [`crate::health`]); a deleted claim's goes with it, and one not seen
    /// for an hour (a claim deleted while another replica led) is pruned.
    health: Mutex<HealthHistories>,
    recorder: Recorder,
    stores: Stores,
    /// Resolves once every child store has been listed (or a watch stopped).
    /// Reconciles wait on this shared future rather than on each store's
    /// `wait_until_ready`: that one wakes only the last of several concurrent
    /// waiters (kube-runtime's `DelayedInit` polls a oneshot receiver, which
    /// keeps a single waker), so the claims that arrive while the children
    /// are still being listed would wait forever and never be reconciled.
    /// `Shared` polls the stores alone and wakes every waiter.
    stores_listed: Shared<BoxFuture<'static, ()>>,
    /// Failures in a row, per claim, for the back-off.
    failures: Mutex<HashMap<ObjectRef<EventDrivenService>, Retry>>,
    /// The drainWithin estimate of each claim that has one.
    drains: Mutex<HashMap<ObjectRef<EventDrivenService>, ClaimDrain>>,
    epoch: std::time::Instant,
    keda_version: crate::trigger::KedaVersion,
}

/// One claim's estimator, and when a reconcile last fed it.
struct ClaimDrain {
    estimator: crate::drain::Estimator,
    seen: std::time::Instant,
}

/// An estimate not fed for this long belongs to a claim that is gone or no
/// longer drains within a time: it is dropped, which bounds the map by the
/// claims with `drainWithin` reconciled in that time.
const DRAIN_ESTIMATE_TTL: Duration = Duration::from_secs(600);

impl Context {
    pub fn new(
        client: Client,
        config: &ControllerConfig,
        lag: Arc<LagCache>,
        connections: Connections,
        access: Arc<Access>,
        advisories: Arc<AdvisoryCounts>,
        gauges: Arc<ClaimGauges>,
        identity: &str,
        stores: Stores,
    ) -> Self {
        Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some(identity.into()),
                },
            ),
            client,
            platform: config.platform.clone(),
            lag,
            connections,
            access,
            lag_interval: config.lag_interval,
            poison_window: config.poison_window,
            advisories,
            gauges,
            health: Mutex::default(),
            stores_listed: listed(stores.clone()),
            stores,
            failures: Mutex::default(),
            drains: Mutex::default(),
            epoch: std::time::Instant::now(),
            keda_version: config.keda_version,
        }
    }

    /// Waits until every child store has been listed, so that reconcile
    /// reads the live children from a complete cache.
    async fn children_listed(&self) -> Result<()> {
        self.stores_listed.clone().await;
        // Each store has resolved by now (or the first that failed has), so
        // these return at once; they only fetch the error.
        for kind in ChildKind::APPLY_ORDER {
            self.stores
                .get(kind)
                .wait_until_ready()
                .await
                .map_err(|source| Error::WatchStopped {
                    kind: format!("{kind:?}"),
                    source,
                })?;
        }
        Ok(())
    }
}

/// Resolves once each store is ready, or once one's writer is dropped.
fn listed(stores: Stores) -> Shared<BoxFuture<'static, ()>> {
    async move {
        for kind in ChildKind::APPLY_ORDER {
            if stores.get(kind).wait_until_ready().await.is_err() {
                return;
            }
        }
    }
    .boxed()
    .shared()
}

/// Reconciles one claim, timing it, counting it, and recording a failure as
/// an Event on the claim.
#[tracing::instrument(skip_all, fields(namespace = claim.namespace(), name = %claim.name_any()))]
pub async fn reconcile(claim: Arc<EventDrivenService>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_claim(&claim, &ctx).await;
    metrics::histogram!(RECONCILE_DURATION.name).record(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(RECONCILES.name, "result" => outcome).increment(1);
    match &result {
        Ok(_) => {
            ctx.failures
                .lock()
                .expect("failures lock")
                .remove(&ObjectRef::from(&*claim));
        }
        Err(e) => publish_failure(&ctx.recorder, &claim, e).await,
    }
    result
}

/// Retries a failed claim with a back-off that doubles per failure in a row,
/// and counts the failure by kind.
pub fn error_policy(claim: Arc<EventDrivenService>, error: &Error, ctx: Arc<Context>) -> Action {
    let (failures, retry) = {
        let mut failures = ctx.failures.lock().expect("failures lock");
        let claim_retry = failures.entry(ObjectRef::from(&*claim)).or_insert_with(|| Retry {
            failures: 0,
            delays: backoff(),
        });
        claim_retry.failures = claim_retry.failures.saturating_add(1);
        let delay = claim_retry.delays.next().unwrap_or(MAX_BACKOFF);
        (claim_retry.failures, delay)
    };
    metrics::counter!(RECONCILE_ERRORS.name, "error" => error.metric_label()).increment(1);
    tracing::warn!(
        namespace = claim.namespace(), name = %claim.name_any(), %error, failures, retry = ?retry,
        "reconcile failed"
    );
    Action::requeue(retry)
}

/// One claim's failures in a row, and the delays left for its next ones.
struct Retry {
    failures: u32,
    delays: ExponentialBackoff,
}

/// The longest wait before retrying a failed claim.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The retry delays of a failing claim: 1 s after the first failure,
/// doubling, at most 5 minutes.
pub fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(MAX_BACKOFF)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

async fn reconcile_claim(claim: &EventDrivenService, ctx: &Context) -> Result<Action> {
    // Owner references hand a deleted claim's children to the garbage
    // collector; applying now would only race it. Only the consumer, which
    // no owner reference reaches, is ours to delete.
    if claim.metadata.deletion_timestamp.is_some() {
        ctx.health.lock().expect("health lock").forget(&ObjectRef::from(claim));
        if has_finalizer(claim) {
            release_consumer(ctx, claim).await?;
            remove_finalizer(&ctx.client, claim).await?;
        }
        return Ok(Action::await_change());
    }
    // The finalizer is on the claim exactly while deleting the claim would
    // delete its consumer.
    match (deletes_consumer(claim), has_finalizer(claim)) {
        (true, false) => add_finalizer(&ctx.client, claim).await?,
        (false, true) => remove_finalizer(&ctx.client, claim).await?,
        _ => {}
    }
    let namespace = claim.namespace().ok_or_else(|| {
        Error::InvalidClaim(InvalidClaim {
            claim: claim.name_any(),
            errors: vec![FieldError {
                field: "metadata.namespace".into(),
                detail: "Required value: an EventDrivenService is namespaced".into(),
            }],
        })
    })?;
    let name = claim.name_any();
    ctx.children_listed().await?;

    // The scaler would refuse this claim's ScaledObject: render nothing, and
    // read nothing from NATS for it (and write no consumer).
    let allowed = authorize(&ctx.access, claim, &namespace);
    let refused = allowed.is_err();
    // The consumer comes before the ScaledObject, so KEDA's first question
    // about it finds it. A failure here is reported, and the children are
    // applied all the same: they do not depend on it.
    let owned = if refused {
        Ok(None)
    } else {
        ensure_consumer(ctx, claim).await
    };
    let desired = allowed
        .and_then(|()| desired_children(claim, &ctx.platform))
        .and_then(|c| desired_objects(&c));
    let (live, mut failure) = match desired {
        Ok(desired) => apply_changed(ctx, &namespace, &name, desired).await,
        Err(e) => (
            ByKind::from_fn(|kind| cached_child(ctx, kind, &namespace, &name)),
            Some(e),
        ),
    };
    let owned = match owned {
        Ok(outcome) => outcome,
        Err(e) => {
            failure.get_or_insert(e);
            None
        }
    };

    let deployment = live
        .deployment
        .as_ref()
        .and_then(|d| d.field("status"))
        .and_then(|s| DeploymentStatus::deserialize(s).ok());
    let ready_replicas = deployment
        .as_ref()
        .and_then(|d| d.ready_replicas)
        .map_or(0, |n| n.max(0) as u32);
    let (lag, consumer) = if refused {
        (None, None)
    } else {
        let (lag, mut consumer) = read_consumer(ctx, claim, &namespace, ready_replicas).await;
        // What the controller refused to change outranks what the reading says.
        if let Some(health) = owned.as_ref().and_then(|o| owned_consumer_health(o, &claim.spec.nats)) {
            consumer = health;
        }
        (lag, Some(consumer))
    };
    let observed = Observed {
        applied: failure.as_ref().map_or(Ok(()), Err),
        deployment,
        scaler: live
            .scaled_object
            .as_ref()
            .map(|so| keda_conditions(&so.object()))
            .unwrap_or_default(),
        lag,
        consumer,
    };
    let mut status = desired_status(claim, &observed, Timestamp::now());
    status.drain = observe_drain(ctx, claim).await;
    record_gauges(&ctx.gauges, claim, &namespace, &status);
    if claim.status.as_ref() != Some(&status) {
        patch_status(&ctx.client, claim, &namespace, &status).await?;
        if let Some(health) = changed_condition(claim.status.as_ref(), &status, CONDITION_CONSUMER_HEALTHY) {
            let type_ = if health.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            publish(
                &ctx.recorder,
                claim,
                type_,
                &health.reason,
                "AssessConsumer",
                &health.message,
            )
            .await;
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(Action::requeue(ctx.lag_interval)),
    }
}

/// Creates or repairs the consumer the claim owns; `None` when the claim
/// leaves its consumer to someone else.
async fn ensure_consumer(ctx: &Context, claim: &EventDrivenService) -> Result<Option<Outcome>> {
    if claim.spec.nats.consumer_config.is_none() {
        return Ok(None);
    }
    let conn = claim_connection(ctx, claim)?;
    let outcome = consumer::reconcile(conn, claim).await?;
    match &outcome {
        Some(Outcome::Created) | Some(Outcome::Updated(_)) => {
            let message = outcome
                .as_ref()
                .map(|o| o.message(&claim.spec.nats.stream, &claim.spec.nats.consumer))
                .unwrap_or_default();
            tracing::info!(%message, "consumer");
            let reason = if matches!(outcome, Some(Outcome::Created)) {
                "ConsumerCreated"
            } else {
                "ConsumerUpdated"
            };
            publish(
                &ctx.recorder,
                claim,
                EventType::Normal,
                reason,
                "ReconcileConsumer",
                &message,
            )
            .await;
        }
        _ => {}
    }
    Ok(outcome)
}

/// Deletes the claim's consumer if the claim's deletion should (and the
/// consumer is the claim's own); a consumer that is not is kept, and said so.
async fn release_consumer(ctx: &Context, claim: &EventDrivenService) -> Result<()> {
    if !deletes_consumer(claim) {
        return Ok(());
    }
    let nats = &claim.spec.nats;
    let conn = match claim_connection(ctx, claim) {
        Ok(conn) => conn,
        // The namespace may not touch that stream (any more): nothing there
        // is this claim's to delete, and waiting would keep the claim for ever.
        Err(Error::Consumer(refused)) if refused.action == "authorizing" => {
            let note = format!("kept consumer {:?}: {refused}", nats.consumer);
            publish(
                &ctx.recorder,
                claim,
                EventType::Warning,
                "ConsumerKept",
                "DeleteConsumer",
                &note,
            )
            .await;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let note = match consumer::release(conn, claim).await? {
        Some(Deletion::Deleted) => format!("deleted consumer {:?} on stream {:?}", nats.consumer, nats.stream),
        Some(Deletion::NotOwned(owner)) => Outcome::NotOwned(owner).message(&nats.stream, &nats.consumer),
        Some(Deletion::Absent) | None => return Ok(()),
    };
    tracing::info!(%note, "claim deleted");
    publish(
        &ctx.recorder,
        claim,
        EventType::Normal,
        "ConsumerReleased",
        "DeleteConsumer",
        &note,
    )
    .await;
    Ok(())
}

/// The claim's NATS connection, if the connection's namespace rules (the
/// tenancy rules the scaler applies) let the claim's namespace reach its
/// stream there: the controller writes a consumer only where the claim could
/// read its lag.
fn claim_connection<'a>(ctx: &'a Context, claim: &EventDrivenService) -> Result<&'a Connection> {
    let nats = &claim.spec.nats;
    let connection = nats.connection.as_deref().unwrap_or(DEFAULT_CONNECTION);
    let refused = |action, message: String| {
        Error::Consumer(ConsumerError {
            action,
            connection: connection.to_string(),
            stream: nats.stream.clone(),
            consumer: nats.consumer.clone(),
            message,
        })
    };
    let namespace = claim.namespace().unwrap_or_default();
    ctx.connections
        .access()
        .authorize(&namespace, connection, None, &nats.stream)
        .map_err(|denied| refused("authorizing", denied.to_string()))?;
    ctx.connections.get(Some(connection)).ok_or_else(|| {
        refused(
            "reaching",
            "no NATS connection of that name is configured (--nats-config)".into(),
        )
    })
}

/// The `ConsumerHealthy` verdict of what the controller would not change.
fn owned_consumer_health(outcome: &Outcome, nats: &Nats) -> Option<ConsumerHealth> {
    let reason = match outcome {
        Outcome::Misconfigured(_) => HealthReason::Misconfigured,
        Outcome::NotOwned(_) => HealthReason::ConsumerNotOwned,
        Outcome::Created | Outcome::Updated(_) | Outcome::InShape => return None,
    };
    Some(ConsumerHealth::unhealthy(
        reason,
        outcome.message(&nats.stream, &nats.consumer),
    ))
}

fn has_finalizer(claim: &EventDrivenService) -> bool {
    claim.finalizers().iter().any(|f| f == FINALIZER)
}

/// Applies, in [`ChildKind::APPLY_ORDER`], each child whose live object no
/// longer holds the desired one. Returns every child as it now is, and the
/// first failure.
async fn apply_changed(
    ctx: &Context,
    namespace: &str,
    name: &str,
    mut desired: ByKind<Value>,
) -> (ByKind<Live>, Option<Error>) {
    let mut live = ByKind::default();
    let mut failure = None;
    for kind in ChildKind::APPLY_ORDER {
        let object = desired.get_mut(kind);
        stamp(object);
        let current = cached_child(ctx, kind, namespace, name);
        if current.as_ref().is_some_and(|c| live_holds(c, object)) {
            *live.get_mut(kind) = current;
            continue;
        }
        // Force only over a child we already have: drift in our own fields is
        // undone, but an object of the same name that someone else made is
        // not taken over (the apply conflicts instead).
        let force = current.is_some();
        *live.get_mut(kind) = match apply_child(&ctx.client, kind, namespace, name, object, force).await {
            Ok(applied) => Some(Arc::new(applied)),
            Err(e) => {
                failure.get_or_insert(e);
                current
            }
        };
    }
    (live, failure)
}

/// The children as JSON, each under its kind.
fn desired_objects(children: &Children) -> Result<ByKind<Value>> {
    let json = |object: Result<Value, serde_json::Error>| object.map_err(|e| Error::serialize("a child as JSON", e));
    Ok(ByKind {
        service_account: json(serde_json::to_value(&children.service_account))?,
        deployment: json(serde_json::to_value(&children.deployment))?,
        service: json(serde_json::to_value(&children.service))?,
        scaled_object: json(serde_json::to_value(&children.scaled_object))?,
    })
}

/// Whether the claim's namespace may read its stream on the connection it
/// names, by the same rules the scaler applies to its ScaledObject.
fn authorize(access: &Access, claim: &EventDrivenService, namespace: &str) -> Result<()> {
    let nats = &claim.spec.nats;
    let connection = nats.connection.as_deref().unwrap_or(DEFAULT_CONNECTION);
    Ok(access.authorize(namespace, connection, None, &nats.stream)?)
}

fn cached_child(ctx: &Context, kind: ChildKind, namespace: &str, name: &str) -> Live {
    let key = ObjectRef::new_with(name, kind).within(namespace);
    ctx.stores.get(kind).get(&key)
}

/// The consumer's lag and health through the shared cache: at most one NATS
/// request per consumer per lag interval, however often claims are
/// reconciled. Each new reading goes into the claim's history, and the health
/// gauges are set from the assessment.
async fn read_consumer(
    ctx: &Context,
    claim: &EventDrivenService,
    namespace: &str,
    ready_replicas: u32,
) -> (Option<u64>, ConsumerHealth) {
    let nats = &claim.spec.nats;
    let connection = nats.connection.as_deref().unwrap_or(DEFAULT_CONNECTION);
    let key = ConsumerKey::new(connection, None, &nats.stream, &nats.consumer);
    let reading = ctx.lag.get(&key).await;
    let name = claim.name_any();
    let (lag, health, problems) = match reading.result {
        Ok(state) => {
            let settings = Settings::for_claim(&claim.spec.scaling, ctx.poison_window);
            let lag = state.lag();
            let sample = Sample {
                at: reading.at,
                state,
                ready_replicas,
                advisories: ctx.advisories.count_for(&key),
            };
            let assessment = {
                let mut histories = ctx.health.lock().expect("health lock");
                let history = histories.get(ObjectRef::from(claim), &key, reading.at);
                history.record(sample, &settings);
                history.assess(&settings, Instant::now())
            };
            let cap = assessment.replica_cap.map_or(f64::INFINITY, |cap| cap as f64);
            ctx.gauges.update(namespace, &name, |f| {
                f.replica_cap = Some(cap);
                if let Some(quiet) = assessment.since_progress {
                    f.seconds_since_ack = Some(quiet.as_secs_f64());
                }
            });
            let problems: Vec<HealthReason> = assessment.problems.iter().map(|(r, _)| *r).collect();
            (Some(lag), assessment.health(), problems)
        }
        Err(e @ (LagError::StreamNotFound { .. } | LagError::ConsumerNotFound { .. })) => (
            None,
            ConsumerHealth::unhealthy(HealthReason::ConsumerMissing, e.to_string()),
            vec![HealthReason::ConsumerMissing],
        ),
        Err(e) => {
            tracing::debug!(consumer = %key, error = %e, "lag unavailable");
            return (None, ConsumerHealth::Unknown(e.to_string()));
        }
    };
    let found = HealthReason::ALL.map(|reason| problems.contains(&reason));
    ctx.gauges.update(namespace, &name, |f| f.unhealthy = Some(found));
    (lag, health)
}

/// Each claim's consumer history, keyed by claim.
#[derive(Default)]
struct HealthHistories {
    by_claim: HashMap<ObjectRef<EventDrivenService>, (ConsumerKey, History)>,
    next_prune: Option<Instant>,
}

/// A history not fed for this long belongs to a claim that is gone.
const HEALTH_IDLE: Duration = Duration::from_secs(3600);

impl HealthHistories {
    /// The claim's history; a new one if the claim now names another
    /// consumer. Prunes idle histories at most once a minute.
    fn get(&mut self, claim: ObjectRef<EventDrivenService>, key: &ConsumerKey, now: Instant) -> &mut History {
        if self.next_prune.is_none_or(|t| now >= t) {
            self.by_claim.retain(|_, (_, history)| {
                history
                    .last_at()
                    .is_none_or(|t| now.saturating_duration_since(t) < HEALTH_IDLE)
            });
            self.next_prune = Some(now + Duration::from_secs(60));
        }
        let entry = self
            .by_claim
            .entry(claim)
            .or_insert_with(|| (key.clone(), History::default()));
        if entry.0 != *key {
            *entry = (key.clone(), History::default());
        }
        &mut entry.1
    }

    fn forget(&mut self, claim: &ObjectRef<EventDrivenService>) {
        self.by_claim.remove(claim);
    }
}

/// Feeds the claim's drainWithin estimator with the consumer as the cache
/// has it (the read above made it fresh: no second NATS request) and
/// reports its estimate. `None` without `drainWithin`.
async fn observe_drain(ctx: &Context, claim: &EventDrivenService) -> Option<DrainStatus> {
    let scaling = &claim.spec.scaling;
    let within = crate::trigger::parse_drain_within(scaling.drain_within.as_deref()?).ok()?;
    let concurrency = scaling
        .concurrency
        .and_then(|c| u32::try_from(c).ok())
        .and_then(std::num::NonZeroU32::new)
        .unwrap_or(crate::trigger::DEFAULT_CONCURRENCY);
    let threshold = LagThreshold::from_claim(&scaling.lag_threshold).unwrap_or_default();
    let nats = &claim.spec.nats;
    let key = ConsumerKey::new(
        nats.connection.as_deref().unwrap_or(DEFAULT_CONNECTION),
        None,
        &nats.stream,
        &nats.consumer,
    );
    let state = ctx.lag.get(&key).await.result.ok();
    let now = std::time::Instant::now();
    let mut drains = ctx.drains.lock().expect("drain estimates");
    drains.retain(|_, d| now.duration_since(d.seen) < DRAIN_ESTIMATE_TTL);
    let entry = drains.entry(ObjectRef::from_obj(claim)).or_insert_with(|| ClaimDrain {
        estimator: crate::drain::Estimator::new(Default::default(), concurrency),
        seen: now,
    });
    entry.seen = now;
    match state {
        Some(state) => entry
            .estimator
            .observe(state.sample(now.duration_since(ctx.epoch).as_secs_f64())),
        None => entry.estimator.interrupt(),
    }
    Some(drain_status(
        entry.estimator.rates(),
        within,
        threshold,
        ctx.keda_version,
    ))
}

/// What the claim's status shows of an estimate: rates to two decimals (so
/// the status does not change with every read's noise) and the target the
/// scaler would stream.
/// With KEDA older than v2.21 the target stays `lagThreshold`, and the
/// status says why.
fn drain_status(
    rates: crate::drain::Rates,
    within: Duration,
    threshold: LagThreshold,
    keda: crate::trigger::KedaVersion,
) -> DrainStatus {
    let round = |r: f64| (r * 100.0).round() / 100.0;
    let streamed = keda.streams_metric_specs();
    DrainStatus {
        arrivals_per_second: rates.arrivals.map(round),
        replica_capacity_per_second: rates.capacity.map(round),
        target: crate::drain::drain_target(rates, within)
            .filter(|_| streamed)
            .map(crate::drain::quantize)
            .unwrap_or(threshold.get()),
        unsupported: (!streamed).then(|| {
            format!(
                "drainWithin needs KEDA {} or later, which streams the target (StreamMetricSpec); KEDA {keda} polls GetMetricSpec, so the HPA's target stays lagThreshold {threshold}",
                crate::trigger::KedaVersion::STREAMS_METRIC_SPECS
            )
        }),
    }
}

fn record_gauges(gauges: &ClaimGauges, claim: &EventDrivenService, namespace: &str, status: &EventDrivenServiceStatus) {
    let scaling = &claim.spec.scaling;
    gauges.update(namespace, &claim.name_any(), |f| {
        f.max_replicas = Some(f64::from(scaling.max_replicas));
        if let Some(replicas) = status.replicas {
            f.replicas = Some(f64::from(replicas));
        }
        let Some(lag) = status.lag else { return };
        f.lag = Some(lag as f64);
        if let Ok(threshold) = LagThreshold::from_claim(&scaling.lag_threshold) {
            let (min, max) = (scaling.min_replicas.max(0) as u32, scaling.max_replicas.max(0) as u32);
            let desired = desired_replicas(lag.max(0) as u64, threshold.get(), min, max);
            f.desired_replicas = Some(f64::from(desired));
        }
    });
}

async fn publish_failure(recorder: &Recorder, claim: &EventDrivenService, error: &Error) {
    publish(
        recorder,
        claim,
        EventType::Warning,
        "ReconcileFailed",
        "Reconcile",
        &error.to_string(),
    )
    .await;
}

/// Events carry at most 1 kB of note.
async fn publish(
    recorder: &Recorder,
    claim: &EventDrivenService,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let mut note = note.to_string();
    if note.len() > 1024 {
        let mut end = 1021;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &claim.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an Event on the claim");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::LeaderConfig;
    use crate::lag::JetStreamLag;
    use crate::nats::NatsConfig;
    use kube::runtime::reflector::store::Writer;

    fn context_with(stores: Stores) -> Arc<Context> {
        let config = kube::Config::new("https://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let config = ControllerConfig {
            platform: Platform::default(),
            nats: NatsConfig::for_url("nats://127.0.0.1:9"),
            lag_interval: Duration::from_secs(15),
            poison_window: Duration::from_secs(600),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            watch_namespace: None,
            leader: LeaderConfig {
                lease_name: "eds-controller".into(),
                lease_namespace: "eds-system".into(),
                lease_duration: Duration::from_secs(15),
                identity: "test".into(),
            },
            keda_version: crate::trigger::KedaVersion::STREAMS_METRIC_SPECS,
        };
        let lag = LagCache::new(Arc::new(JetStreamLag::new(Connections::default())), config.lag_interval);
        Arc::new(Context::new(
            client,
            &config,
            lag,
            Connections::default(),
            Arc::default(),
            Arc::default(),
            Arc::default(),
            "test",
            stores,
        ))
    }

    #[test]
    fn what_the_controller_refused_to_change_is_a_consumer_health_naming_it() {
        let nats = &EventDrivenService::test().spec.nats;
        let field = "spec.nats.consumerConfig.deliverPolicy";
        let Some(ConsumerHealth::Unhealthy { reason, message }) =
            owned_consumer_health(&Outcome::Misconfigured(vec![field]), nats)
        else {
            panic!("Misconfigured is unhealthy")
        };
        assert_eq!(reason, HealthReason::Misconfigured);
        assert!(message.contains(field), "{message}");
        let not_owned = owned_consumer_health(&Outcome::NotOwned(consumer::Ownership::Unstamped), nats);
        assert!(matches!(
            not_owned,
            Some(ConsumerHealth::Unhealthy {
                reason: HealthReason::ConsumerNotOwned,
                ..
            })
        ));
        for fine in [Outcome::Created, Outcome::InShape, Outcome::Updated(vec![])] {
            assert_eq!(
                owned_consumer_health(&fine, nats),
                None,
                "{fine:?}: the reading decides"
            );
        }
    }

    fn context() -> Arc<Context> {
        context_with(ByKind::from_fn(|kind| Writer::new(kind).as_reader()))
    }

    /// Claims that arrive while the children are still being listed all go
    /// on once the lists are in, not only the last one to wait.
    #[tokio::test]
    async fn every_reconcile_waiting_for_the_child_lists_goes_on() {
        let mut writers = ByKind::from_fn(|kind| Writer::<LiveChild>::new(kind));
        let ctx = context_with(ByKind::from_fn(|kind| writers.get(kind).as_reader()));
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let ctx = ctx.clone();
                tokio::spawn(async move { ctx.children_listed().await })
            })
            .collect();
        // Let each start waiting before the lists come in.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for kind in ChildKind::APPLY_ORDER {
            writers
                .get_mut(kind)
                .apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        }
        for (i, task) in waiting.into_iter().enumerate() {
            let done = tokio::time::timeout(Duration::from_secs(5), task).await;
            assert!(matches!(done, Ok(Ok(Ok(())))), "waiter {i} still waits: {done:?}");
        }
    }

    #[test]
    fn the_drain_status_is_the_fallback_until_mu_is_known() {
        use crate::drain::Rates;
        let threshold = LagThreshold::parse("5").unwrap();
        let minute = Duration::from_secs(60);
        let current = crate::trigger::KedaVersion::parse("2.21.0").unwrap();
        let unknown = drain_status(Rates::default(), minute, threshold, current);
        assert_eq!((unknown.arrivals_per_second, unknown.target), (None, 5.0));
        let rates = Rates {
            arrivals: Some(3.14159),
            capacity: Some(2.0),
        };
        let measured = drain_status(rates, minute, threshold, current);
        assert_eq!(measured.arrivals_per_second, Some(3.14));
        assert_eq!(measured.replica_capacity_per_second, Some(2.0));
        assert!((measured.target / 120.0 - 1.0).abs() < 0.05, "{measured:?}");
        assert_eq!(measured.unsupported, None);
    }

    /// Older KEDA polls GetMetricSpec only: the claim says drainWithin
    /// needs v2.21, and shows the target the HPA really has.
    #[test]
    fn before_keda_2_21_the_drain_status_says_it_needs_it() {
        let rates = crate::drain::Rates {
            arrivals: Some(1.0),
            capacity: Some(2.0),
        };
        let old = crate::trigger::KedaVersion::parse("v2.20.2").unwrap();
        let status = drain_status(rates, Duration::from_secs(60), LagThreshold::parse("5").unwrap(), old);
        assert_eq!(status.target, 5.0);
        assert_eq!(
            status.replica_capacity_per_second,
            Some(2.0),
            "the measurement is still shown"
        );
        let why = status.unsupported.expect("a reason");
        assert!(why.contains("v2.21.0") && why.contains("v2.20.2"), "{why}");
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = backoff().take(12).map(|d| d.as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[tokio::test]
    async fn error_policy_backs_off_per_claim_and_counts_failures() {
        let ctx = context();
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let orders = Arc::new(EventDrivenService::test());
        let billing = Arc::new(EventDrivenService::test().with_name("billing"));
        let error = || Error::NoClaim;

        let actions = metrics::with_local_recorder(&recorder, || {
            [
                error_policy(orders.clone(), &error(), ctx.clone()),
                error_policy(orders.clone(), &error(), ctx.clone()),
                error_policy(orders.clone(), &error(), ctx.clone()),
                error_policy(billing.clone(), &error(), ctx.clone()),
            ]
        });
        assert_eq!(
            actions,
            [1, 2, 4, 1].map(|s| Action::requeue(Duration::from_secs(s))),
            "the back-off doubles per claim"
        );
        let text = handle.render();
        assert!(
            text.contains(r#"eds_reconcile_errors_total{error="invalid_claim"} 4"#),
            "{text}"
        );
    }

    #[test]
    fn children_are_json_each_under_its_kind() {
        let children = desired_children(&EventDrivenService::test(), &Platform::default()).unwrap();
        let objects = desired_objects(&children).unwrap();
        for kind in ChildKind::APPLY_ORDER {
            assert_eq!(objects.get(kind)["kind"], kind.resource().kind, "{kind:?}");
        }
        assert!(
            objects.deployment["spec"].get("replicas").is_none(),
            "KEDA owns the replica count"
        );
    }
}
