//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas
//! can run and only one reconciles.
//!
//! The holder renews the Lease every `duration / 6`. A candidate takes the
//! Lease when it is free, or when its record has not changed for `duration` as
//! measured by the candidate's own clock: clocks of different nodes are never
//! compared. A holder that cannot renew for two thirds of `duration` gives up
//! before any candidate may take over, so two leaders never overlap.
//!
//! Why not a crate: kube-lease-manager (0.13) supports kube 5 and is the
//! candidate to replace this file. It needs Rust 1.89 (this crate says
//! 1.88), and the swap must keep what tests/controller.rs checks of this
//! one: the Lease handed over at once on shutdown, readiness from the last
//! Lease request, and no overlap between an old and a new leader.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

use crate::{Error, Result};

/// One candidate for one Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The holder and renew time last seen, and when they were first seen.
    observed: Option<(Record, Instant)>,
    /// Whether the last round reached the API server (for readiness).
    reachable: Arc<AtomicBool>,
}

#[derive(Clone, Debug, PartialEq)]
struct Record {
    holder: Option<String>,
    renewed: Option<MicroTime>,
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration, reachable: Arc<AtomicBool>) -> Self {
        LeaseLock {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            observed: None,
            reachable,
        }
    }

    fn retry_period(&self) -> Duration {
        self.duration / 6
    }

    /// Waits until this candidate holds the Lease. API errors are logged and
    /// retried: a standby outlives a flaky API server.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "acquiring the leader lease"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the Lease until leadership is lost, and says why.
    pub async fn hold(&mut self) -> Error {
        let deadline = self.duration * 2 / 3;
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.retry_period()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => return self.lost("another candidate holds it"),
                Err(e) if renewed.elapsed() >= deadline => {
                    return self.lost(&format!("not renewed for {deadline:?}: {e}"));
                }
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "renewing the leader lease"),
            }
        }
    }

    /// Frees the Lease so that a standby takes over at once (on shutdown).
    pub async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api.replace(&self.name, &PostParams::default(), &lease).await?;
        Ok(())
    }

    fn lost(&self, why: &str) -> Error {
        Error::Leader(format!("lost the lease {}: {why}", self.name))
    }

    /// One round: takes or renews the Lease if it is ours to take. A lost
    /// race (the Lease changed under us) is `Ok(false)`, not an error.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let result = self.round().await;
        self.reachable.store(result.is_ok(), Ordering::Relaxed);
        result
    }

    async fn round(&mut self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return lost_race_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let record = Record {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renewed: spec.renew_time.clone(),
        };
        let ours = record.holder.as_deref() == Some(&self.identity);
        let held_for = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(0) as u64));
        let unchanged_since = match &self.observed {
            Some((seen, since)) if *seen == record => *since,
            _ => {
                self.observed = Some((record.clone(), Instant::now()));
                Instant::now()
            }
        };
        let expired = record.holder.is_none() || unchanged_since.elapsed() > held_for;
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            tracing::info!(lease = %self.name, identity = %self.identity, previous = ?record.holder, "taking the leader lease");
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        // `replace` carries the resourceVersion we read: a concurrent change
        // makes it fail with 409 instead of overwriting another candidate.
        lost_race_is_false(self.api.replace(&self.name, &PostParams::default(), &lease).await)
    }
}

fn lost_race_is_false(result: kube::Result<Lease>) -> Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}
