//! A freshness-bounded cache with single-flight in front of the lag source.
//!
//! KEDA calls GetMetrics, IsActive and GetMetricSpec for every ScaledObject on
//! its own timers, and several ScaledObjects may watch one consumer. NATS must
//! not see any of that: each consumer is read at most once per TTL, and
//! concurrent callers share the one request in flight. A value older than the
//! TTL is never served; the caller waits for a fresh read instead.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use metrics::Counter;

use super::{ConsumerKey, ConsumerState, LagError};

/// Where lag comes from. The NATS implementation is [`super::JetStreamLag`].
pub trait LagSource: Send + Sync + 'static {
    fn fetch(&self, key: &ConsumerKey) -> BoxFuture<'static, Result<ConsumerState, LagError>>;
}

/// One read: when it started, and what it returned. Errors are kept for the
/// TTL too, so a missing consumer or a dead server is not hammered.
#[derive(Clone, Debug)]
pub struct Reading {
    pub at: Instant,
    pub result: Result<ConsumerState, LagError>,
}

type InFlight = Shared<BoxFuture<'static, Reading>>;

/// Told of every completed read, whoever caused it: push watchers learn
/// from KEDA's own reads instead of reading again.
pub type ReadingListener = Box<dyn Fn(&ConsumerKey) + Send + Sync>;

#[derive(Default)]
struct Slot {
    last: Option<Reading>,
    inflight: Option<Pending>,
    used: Option<Instant>,
}

/// A read under way: its id (so only it clears itself), start and result.
struct Pending {
    id: u64,
    at: Instant,
    read: InFlight,
}

/// Lag by consumer, at most `ttl` old.
pub struct LagCache {
    source: Arc<dyn LagSource>,
    ttl: Duration,
    slots: Mutex<HashMap<ConsumerKey, Slot>>,
    next_id: std::sync::atomic::AtomicU64,
    last_sweep: Mutex<Instant>,
    /// Bounds the reads in flight at once; see [`MAX_IN_FLIGHT`].
    in_flight: Arc<tokio::sync::Semaphore>,
    hits: Counter,
    misses: Counter,
    coalesced: Counter,
    listener: std::sync::OnceLock<ReadingListener>,
}

/// Entries unused for this long are dropped (a deleted ScaledObject).
const IDLE_EVICTION: Duration = Duration::from_secs(600);

/// Reads sent to NATS at once; the rest wait their turn, each holding a
/// few bytes instead of a request under way. KEDA opening 10,000 streams
/// at once (a scaler restart) otherwise puts 10,000 requests in flight:
/// about 20 MiB held at once and a queue on the server. At a few hundred
/// microseconds a read, 256 at a time still reads 10,000 consumers in well
/// under a second.
pub const MAX_IN_FLIGHT: usize = 256;

impl LagCache {
    pub fn new(source: Arc<dyn LagSource>, ttl: Duration) -> Arc<Self> {
        let lookups = |result: &'static str| metrics::counter!(super::metrics::CACHE_REQUESTS.name, "result" => result);
        Arc::new(LagCache {
            source,
            ttl,
            slots: Mutex::default(),
            next_id: Default::default(),
            last_sweep: Mutex::new(Instant::now()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            hits: lookups("hit"),
            misses: lookups("miss"),
            coalesced: lookups("coalesced"),
            listener: std::sync::OnceLock::new(),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Sets the one listener told of every completed read (after it is
    /// stored, outside the cache's lock). A second call is ignored.
    pub fn set_listener(&self, listener: ReadingListener) {
        let _ = self.listener.set(listener);
    }

    /// The consumer's state, read within the last TTL.
    pub async fn get(self: &Arc<Self>, key: &ConsumerKey) -> Reading {
        let now = Instant::now();
        self.get_newer_than(key, now.checked_sub(self.ttl).unwrap_or(now)).await
    }

    /// The consumer's state from a read that started at or after `since`.
    /// Push activation uses this to see a message it was just told about.
    pub async fn get_newer_than(self: &Arc<Self>, key: &ConsumerKey, since: Instant) -> Reading {
        let pending = {
            let mut slots = self.slots.lock().expect("lag cache lock");
            let slot = slots.entry(key.clone()).or_default();
            slot.used = Some(Instant::now());
            match (&slot.last, &slot.inflight) {
                (Some(last), _) if last.at >= since => {
                    self.hits.increment(1);
                    return last.clone();
                }
                // A read that started after `since` is as good as a new one.
                (_, Some(pending)) if pending.at >= since => {
                    self.coalesced.increment(1);
                    pending.read.clone()
                }
                _ => {
                    self.misses.increment(1);
                    let pending = self.start_fetch(key.clone());
                    let read = pending.read.clone();
                    slot.inflight = Some(pending);
                    read
                }
            }
        };
        self.sweep_if_due();
        pending.await
    }

    /// The last successful reading of every consumer in the cache, for the
    /// per-consumer gauges. Copies numbers only, under the lock.
    pub fn samples(&self) -> Vec<super::exposition::Sample> {
        let slots = self.slots.lock().expect("lag cache lock");
        slots
            .iter()
            .filter_map(|(key, slot)| {
                let state = slot.last.as_ref()?.result.as_ref().ok()?;
                Some(super::exposition::Sample::new(key.clone(), state))
            })
            .collect()
    }

    /// The last reading, however old, without touching NATS (for status).
    pub fn peek(&self, key: &ConsumerKey) -> Option<Reading> {
        self.slots.lock().expect("lag cache lock").get(key)?.last.clone()
    }

    /// Spawns the read so that it completes (and fills the cache) even if
    /// every caller gives up. Called with the slots lock held, so the task
    /// cannot store its result before the caller has registered it.
    fn start_fetch(self: &Arc<Self>, key: ConsumerKey) -> Pending {
        let this = Arc::clone(self);
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let at = Instant::now();
        let task = tokio::spawn(async move {
            let result = {
                let _turn = this.in_flight.acquire().await.expect("the semaphore is never closed");
                this.source.fetch(&key).await
            };
            let reading = Reading { at, result };
            {
                let mut slots = this.slots.lock().expect("lag cache lock");
                let slot = slots.entry(key.clone()).or_default();
                // An older read finishing late must not replace a newer one.
                if slot.last.as_ref().is_none_or(|last| last.at <= at) {
                    slot.last = Some(reading.clone());
                }
                if slot.inflight.as_ref().is_some_and(|p| p.id == id) {
                    slot.inflight = None;
                }
            }
            if let Some(listener) = this.listener.get() {
                listener(&key);
            }
            reading
        });
        let read = async move {
            task.await.unwrap_or_else(|e| Reading {
                at: Instant::now(),
                result: Err(LagError::Internal(format!("lag read task failed: {e}"))),
            })
        }
        .boxed()
        .shared();
        Pending { id, at, read }
    }

    fn sweep_if_due(&self) {
        let now = Instant::now();
        {
            let mut last = self.last_sweep.lock().expect("sweep lock");
            if now.duration_since(*last) < IDLE_EVICTION {
                return;
            }
            *last = now;
        }
        self.slots.lock().expect("lag cache lock").retain(|_, slot| {
            slot.inflight.is_some() || slot.used.is_some_and(|u| now.duration_since(u) < IDLE_EVICTION)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts reads and answers with the count as pending, after a delay.
    struct Counting {
        reads: AtomicU64,
        delay: Duration,
    }

    impl LagSource for Counting {
        fn fetch(&self, _key: &ConsumerKey) -> BoxFuture<'static, Result<ConsumerState, LagError>> {
            let n = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
            let delay = self.delay;
            async move {
                tokio::time::sleep(delay).await;
                Ok(ConsumerState {
                    pending: n,
                    ..Default::default()
                })
            }
            .boxed()
        }
    }

    fn cache(ttl: Duration, delay: Duration) -> (Arc<LagCache>, Arc<Counting>) {
        let source = Arc::new(Counting {
            reads: AtomicU64::new(0),
            delay,
        });
        (LagCache::new(source.clone(), ttl), source)
    }

    /// Counts reads under way at once, and the most seen.
    #[derive(Default)]
    struct Gauged(Arc<(AtomicU64, AtomicU64)>);

    impl LagSource for Gauged {
        fn fetch(&self, _key: &ConsumerKey) -> BoxFuture<'static, Result<ConsumerState, LagError>> {
            let counts = self.0.clone();
            let now = counts.0.fetch_add(1, Ordering::SeqCst) + 1;
            counts.1.fetch_max(now, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                counts.0.fetch_sub(1, Ordering::SeqCst);
                Ok(ConsumerState::default())
            }
            .boxed()
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn reads_in_flight_are_bounded() {
        let source = Gauged::default();
        let counts = source.0.clone();
        let cache = LagCache::new(Arc::new(source), Duration::from_secs(5));
        let keys: Vec<ConsumerKey> = (0..2 * MAX_IN_FLIGHT)
            .map(|i| ConsumerKey::new("default", None, "S", &format!("c{i}")))
            .collect();
        let reads = keys.iter().map(|key| {
            let cache = cache.clone();
            async move { cache.get(key).await.result.is_ok() }
        });
        let results = futures::future::join_all(reads).await;
        assert!(results.into_iter().all(|ok| ok), "every caller gets its reading");
        let most = counts.1.load(Ordering::SeqCst);
        assert_eq!(most, MAX_IN_FLIGHT as u64, "reads in flight at once");
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_read() {
        let (cache, source) = cache(Duration::from_secs(5), Duration::from_millis(50));
        let key = ConsumerKey::new("default", None, "S", "C");
        let calls = (0..100).map(|_| {
            let cache = cache.clone();
            let key = key.clone();
            tokio::spawn(async move { cache.get(&key).await.result.unwrap().pending })
        });
        for call in calls {
            assert_eq!(call.await.unwrap(), 1);
        }
        assert_eq!(source.reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn fresh_values_are_served_and_stale_ones_are_not() {
        let (cache, source) = cache(Duration::from_millis(100), Duration::ZERO);
        let key = ConsumerKey::new("default", None, "S", "C");
        assert_eq!(cache.get(&key).await.result.unwrap().pending, 1);
        assert_eq!(cache.get(&key).await.result.unwrap().pending, 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let reading = cache.get(&key).await;
        assert_eq!(reading.result.unwrap().pending, 2);
        assert!(reading.at.elapsed() < Duration::from_millis(100));
        assert_eq!(source.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn newer_than_forces_a_read_after_the_instant() {
        let (cache, _source) = cache(Duration::from_secs(60), Duration::ZERO);
        let key = ConsumerKey::new("default", None, "S", "C");
        assert_eq!(cache.get(&key).await.result.unwrap().pending, 1);
        let now = Instant::now();
        let reading = cache.get_newer_than(&key, now).await;
        assert!(reading.at >= now);
        assert_eq!(reading.result.unwrap().pending, 2);
    }

    #[tokio::test]
    async fn a_dropped_caller_still_fills_the_cache() {
        let (cache, source) = cache(Duration::from_secs(60), Duration::from_millis(30));
        let key = ConsumerKey::new("default", None, "S", "C");
        let _ = tokio::time::timeout(Duration::from_millis(5), cache.get(&key)).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(cache.peek(&key).unwrap().result.unwrap().pending, 1);
        assert_eq!(cache.get(&key).await.result.unwrap().pending, 1);
        assert_eq!(source.reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_listener_hears_of_every_read_once_it_is_stored() {
        let (cache, _source) = cache(Duration::from_millis(10), Duration::ZERO);
        let heard = Arc::new(Mutex::new(Vec::new()));
        let (weak, log) = (Arc::downgrade(&cache), heard.clone());
        cache.set_listener(Box::new(move |key| {
            // Stored before the listener runs, and the cache is not locked.
            let stored = weak.upgrade().and_then(|c| c.peek(key)).is_some();
            log.lock().unwrap().push((key.consumer.to_string(), stored));
        }));
        let (a, b) = (
            ConsumerKey::new("default", None, "S", "A"),
            ConsumerKey::new("default", None, "S", "B"),
        );
        cache.get(&a).await;
        cache.get(&a).await;
        cache.get(&b).await;
        assert_eq!(
            *heard.lock().unwrap(),
            vec![("A".to_string(), true), ("B".to_string(), true)],
            "a cached answer is not a read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        cache.get(&a).await;
        assert_eq!(heard.lock().unwrap().len(), 3);
    }
}
