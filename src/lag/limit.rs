//! How many cache misses (NATS reads) each namespace may cause.
//!
//! Every distinct consumer name a ScaledObject sends is a `CONSUMER.INFO`
//! request: about 2,300 a second were measured from one client. A token
//! bucket per namespace (the namespace KEDA reports in the ScaledObjectRef)
//! keeps one namespace from using up the reads of every other: each has its
//! own `per_second` and `burst`, whatever the others do.
//!
//! Namespaces are hostile input too, so the table of buckets is bounded: a
//! bucket that has refilled is the same as no bucket and is dropped when room
//! is needed; beyond [`MAX_NAMESPACES`] busy namespaces, new ones share one
//! overflow bucket until room is made (at most one scan a second).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Namespaces with their own bucket at once (a Kubernetes cluster rarely has
/// more than a few thousand namespaces).
pub const MAX_NAMESPACES: usize = 10_000;

/// Longest namespace kept in the table: a Kubernetes namespace is a DNS
/// label of at most 63 bytes; a longer name shares the overflow bucket.
pub const MAX_NAMESPACE_BYTES: usize = 63;

/// The rate and burst of cache misses allowed to each namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissLimit {
    /// Misses a second, sustained.
    pub per_second: u32,
    /// Misses at once (a scaler restart reads every consumer at once).
    pub burst: u32,
}

impl Default for MissLimit {
    fn default() -> Self {
        MissLimit {
            per_second: 100,
            burst: 1000,
        }
    }
}

/// Per-namespace token buckets, bounded in number.
#[derive(Debug)]
pub struct MissLimiter {
    limit: MissLimit,
    buckets: HashMap<Arc<str>, Bucket>,
    overflow: Bucket,
    last_scan: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: MissLimit, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    fn refill(&mut self, limit: MissLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(limit.per_second)).min(f64::from(limit.burst));
        self.at = now;
    }

    fn take(&mut self, limit: MissLimit, now: Instant) -> bool {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, limit: MissLimit, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * f64::from(limit.per_second) >= f64::from(limit.burst)
    }
}

impl MissLimiter {
    pub fn new(limit: MissLimit) -> Self {
        MissLimiter {
            limit,
            buckets: HashMap::new(),
            overflow: Bucket::full(limit, Instant::now()),
            last_scan: None,
        }
    }

    pub fn limit(&self) -> MissLimit {
        self.limit
    }

    /// Takes one miss from `namespace`'s bucket; false when it is empty.
    pub fn allow(&mut self, namespace: &str, now: Instant) -> bool {
        let limit = self.limit;
        if let Some(bucket) = self.buckets.get_mut(namespace) {
            return bucket.take(limit, now);
        }
        if namespace.len() > MAX_NAMESPACE_BYTES || !self.make_room(now) {
            return self.overflow.take(limit, now);
        }
        let mut bucket = Bucket::full(limit, now);
        let allowed = bucket.take(limit, now);
        self.buckets.insert(namespace.into(), bucket);
        allowed
    }

    /// Namespaces with a bucket of their own.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Drops refilled buckets when the table is full: at most one scan a
    /// second, so a flood of new namespaces costs no more than that.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.buckets.len() < MAX_NAMESPACES {
            return true;
        }
        if self
            .last_scan
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
        {
            return false;
        }
        self.last_scan = Some(now);
        let limit = self.limit;
        self.buckets.retain(|_, bucket| !bucket.is_full(limit, now));
        self.buckets.len() < MAX_NAMESPACES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: MissLimit = MissLimit {
        per_second: 10,
        burst: 3,
    };

    #[test]
    fn a_namespace_gets_its_burst_then_its_rate() {
        let mut limiter = MissLimiter::new(LIMIT);
        let t0 = Instant::now();
        let allowed = (0..5).filter(|_| limiter.allow("team-a", t0)).count();
        assert_eq!(allowed, 3, "the burst");
        assert!(!limiter.allow("team-a", t0 + Duration::from_millis(50)));
        assert!(
            limiter.allow("team-a", t0 + Duration::from_millis(100)),
            "one token a tenth of a second"
        );
        assert!(!limiter.allow("team-a", t0 + Duration::from_millis(100)));
    }

    #[test]
    fn one_namespace_cannot_use_up_another_s_reads() {
        let mut limiter = MissLimiter::new(LIMIT);
        let t0 = Instant::now();
        for _ in 0..1000 {
            limiter.allow("noisy", t0);
        }
        assert!((0..3).all(|_| limiter.allow("quiet", t0)), "a full burst of its own");
    }

    #[test]
    fn the_table_of_namespaces_is_bounded() {
        let mut limiter = MissLimiter::new(LIMIT);
        let t0 = Instant::now();
        for i in 0..MAX_NAMESPACES + 500 {
            limiter.allow(&format!("ns-{i}"), t0);
        }
        assert_eq!(limiter.len(), MAX_NAMESPACES);
        // Newcomers beyond the table share the overflow bucket.
        let overflow = (0..10).filter(|i| limiter.allow(&format!("late-{i}"), t0)).count();
        assert_eq!(overflow, 0, "the overflow bucket was used up by the first 500");
        // Once the old buckets have refilled, they make room.
        let later = t0 + Duration::from_secs(2);
        assert!(limiter.allow("late-0", later));
        assert_eq!(limiter.len(), 1);
        let long = "x".repeat(MAX_NAMESPACE_BYTES + 1);
        limiter.allow(&long, later);
        assert_eq!(limiter.len(), 1, "a name no namespace can have gets no bucket");
    }
}
