//! A freshness-bounded cache with single-flight in front of the lag source.
//!
//! KEDA calls GetMetrics, IsActive and GetMetricSpec for every ScaledObject on
//! its own timers, and several ScaledObjects may watch one consumer. NATS must
//! not see any of that: each consumer is read at most once per TTL, and
//! concurrent callers share the one request in flight. A value older than the
//! TTL is never served; the caller waits for a fresh read instead.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use metrics::Counter;

use super::limit::{MissLimit, MissLimiter};
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

struct Slot {
    last: Option<Reading>,
    inflight: Option<Pending>,
    used: Instant,
    /// The namespace that brought the entry in, whose share it counts in.
    owner: Arc<str>,
    /// Its place in the owner's least-recently-used order.
    tick: u64,
}

/// A read under way: its id (so only it clears itself), start and result.
struct Pending {
    id: u64,
    at: Instant,
    read: InFlight,
}

/// The owner of entries brought in by the scaler itself (push watchers),
/// not by a request: no Kubernetes namespace is empty.
const INTERNAL: &str = "";

/// How many entries the cache holds, and how fast a namespace may miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// Entries at most; the least recently used of the namespace holding
    /// the most entries is evicted to make room.
    pub max_entries: usize,
    /// Cache misses (NATS reads) each namespace may cause.
    pub misses: MissLimit,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_entries: DEFAULT_MAX_ENTRIES,
            misses: MissLimit::default(),
        }
    }
}

/// About 1.1 to 1.45 KiB an entry were measured: 20,000 entries hold at
/// most about 30 MiB, and cover 20,000 ScaledObjects.
pub const DEFAULT_MAX_ENTRIES: usize = 20_000;

/// The entries and their order. Eviction is max-min fair: a namespace adding
/// an entry to a full cache evicts its own least recently used entry unless
/// another namespace holds more entries than it does, and then that one's.
/// So with `n` namespaces in the cache each keeps at least `max_entries / n`
/// entries however many names the others send. A plain LRU crate has one
/// order for all; the share needs one order per namespace, which is a
/// `BTreeMap` by use tick here.
#[derive(Default)]
struct Store {
    slots: HashMap<ConsumerKey, Slot>,
    /// Per namespace: its entries by last use, oldest first.
    order: HashMap<Arc<str>, BTreeMap<u64, ConsumerKey>>,
    /// Namespaces by how many entries they hold.
    sizes: BTreeSet<(usize, Arc<str>)>,
    tick: u64,
}

impl Store {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Marks the entry used now; false if there is none.
    fn touch(&mut self, key: &ConsumerKey, now: Instant) -> bool {
        let tick = self.next_tick();
        let Some(slot) = self.slots.get_mut(key) else {
            return false;
        };
        let order = self.order.get_mut(&slot.owner).expect("every owner has an order");
        order.remove(&slot.tick);
        order.insert(tick, key.clone());
        slot.tick = tick;
        slot.used = now;
        true
    }

    /// Adds an empty entry owned by `owner`, evicting one first when full.
    fn insert(&mut self, owner: &str, key: &ConsumerKey, now: Instant, max_entries: usize) -> &mut Slot {
        while self.slots.len() >= max_entries.max(1) {
            if !self.evict_for(owner) {
                break;
            }
        }
        let owner: Arc<str> = self
            .order
            .get_key_value(owner)
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| owner.into());
        let tick = self.next_tick();
        let order = self.order.entry(owner.clone()).or_default();
        let size = order.len();
        order.insert(tick, key.clone());
        self.resize(&owner, size, size + 1);
        self.slots.entry(key.clone()).or_insert(Slot {
            last: None,
            inflight: None,
            used: now,
            owner,
            tick,
        })
    }

    /// Evicts one entry to make room for `owner`: its own oldest, unless
    /// another namespace holds more.
    fn evict_for(&mut self, owner: &str) -> bool {
        let own = self.order.get(owner).map_or(0, BTreeMap::len);
        let victim = match self.sizes.last() {
            Some((most, name)) if *most > own => name.clone(),
            _ if own > 0 => owner.into(),
            _ => return false,
        };
        let key = self.order[&victim]
            .values()
            .next()
            .expect("a listed namespace has entries")
            .clone();
        self.remove(&key);
        true
    }

    fn remove(&mut self, key: &ConsumerKey) -> Option<Slot> {
        let slot = self.slots.remove(key)?;
        let order = self.order.get_mut(&slot.owner).expect("every owner has an order");
        let size = order.len();
        order.remove(&slot.tick);
        if order.is_empty() {
            self.order.remove(&slot.owner);
        }
        self.resize(&slot.owner, size, size - 1);
        Some(slot)
    }

    fn resize(&mut self, owner: &Arc<str>, from: usize, to: usize) {
        if from > 0 {
            self.sizes.remove(&(from, owner.clone()));
        }
        if to > 0 {
            self.sizes.insert((to, owner.clone()));
        }
    }
}

/// Lag by consumer, at most `ttl` old, at most `max_entries` consumers.
pub struct LagCache {
    source: Arc<dyn LagSource>,
    ttl: Duration,
    limits: CacheLimits,
    store: Mutex<Store>,
    limiter: Mutex<MissLimiter>,
    next_id: std::sync::atomic::AtomicU64,
    last_sweep: Mutex<Instant>,
    /// Bounds the reads in flight at once; see [`MAX_IN_FLIGHT`].
    in_flight: Arc<tokio::sync::Semaphore>,
    hits: Counter,
    misses: Counter,
    coalesced: Counter,
    refused: Counter,
    evicted: Counter,
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
    /// A cache with the default limits.
    pub fn new(source: Arc<dyn LagSource>, ttl: Duration) -> Arc<Self> {
        Self::with_limits(source, ttl, CacheLimits::default())
    }

    pub fn with_limits(source: Arc<dyn LagSource>, ttl: Duration, limits: CacheLimits) -> Arc<Self> {
        let lookups = |result: &'static str| metrics::counter!(super::metrics::CACHE_REQUESTS.name, "result" => result);
        Arc::new(LagCache {
            source,
            ttl,
            limits,
            store: Mutex::default(),
            limiter: Mutex::new(MissLimiter::new(limits.misses)),
            next_id: Default::default(),
            last_sweep: Mutex::new(Instant::now()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            hits: lookups("hit"),
            misses: lookups("miss"),
            coalesced: lookups("coalesced"),
            refused: lookups("refused"),
            evicted: metrics::counter!(super::metrics::CACHE_EVICTIONS.name),
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

    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.store.lock().expect("lag cache lock").slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The consumer's state, read within the last TTL, for the scaler
    /// itself (push watchers): not counted against any namespace.
    pub async fn get(self: &Arc<Self>, key: &ConsumerKey) -> Reading {
        let now = Instant::now();
        self.lookup(None, key, now.checked_sub(self.ttl).unwrap_or(now)).await
    }

    /// The consumer's state, read within the last TTL, for a request from
    /// `namespace`: a miss takes one of the namespace's reads, and when it
    /// has none left the reading is [`LagError::MissLimited`] (nothing is
    /// read or stored).
    pub async fn get_for(self: &Arc<Self>, namespace: &str, key: &ConsumerKey) -> Reading {
        let now = Instant::now();
        self.lookup(Some(namespace), key, now.checked_sub(self.ttl).unwrap_or(now))
            .await
    }

    /// The consumer's state from a read that started at or after `since`.
    /// Push activation uses this to see a message it was just told about.
    pub async fn get_newer_than(self: &Arc<Self>, key: &ConsumerKey, since: Instant) -> Reading {
        self.lookup(None, key, since).await
    }

    async fn lookup(self: &Arc<Self>, namespace: Option<&str>, key: &ConsumerKey, since: Instant) -> Reading {
        let now = Instant::now();
        let pending = {
            let mut store = self.store.lock().expect("lag cache lock");
            if store.touch(key, now) {
                let slot = store.slots.get(key).expect("touched");
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
                    _ => match self.miss(&mut store, namespace, key, now) {
                        Ok(read) => read,
                        Err(refused) => return refused,
                    },
                }
            } else {
                match self.miss(&mut store, namespace, key, now) {
                    Ok(read) => read,
                    Err(refused) => return refused,
                }
            }
        };
        self.sweep_if_due();
        pending.await
    }

    /// A read is needed: takes one from the namespace's share and starts
    /// it, or says why not. Called with the store lock held.
    fn miss(
        self: &Arc<Self>,
        store: &mut Store,
        namespace: Option<&str>,
        key: &ConsumerKey,
        now: Instant,
    ) -> Result<InFlight, Reading> {
        if let Some(namespace) = namespace {
            let mut limiter = self.limiter.lock().expect("miss limiter lock");
            if !limiter.allow(namespace, now) {
                self.refused.increment(1);
                let limit = limiter.limit();
                return Err(Reading {
                    at: now,
                    result: Err(LagError::MissLimited {
                        namespace: crate::quote::quote(namespace),
                        per_second: limit.per_second,
                        burst: limit.burst,
                    }),
                });
            }
        }
        self.misses.increment(1);
        let before = store.slots.len();
        if !store.slots.contains_key(key) {
            store.insert(namespace.unwrap_or(INTERNAL), key, now, self.limits.max_entries);
            let evicted = (before + 1).saturating_sub(store.slots.len());
            self.evicted.increment(evicted as u64);
        }
        let pending = self.start_fetch(key.clone());
        let read = pending.read.clone();
        store.slots.get_mut(key).expect("inserted").inflight = Some(pending);
        Ok(read)
    }

    /// The last successful reading of every consumer in the cache, for the
    /// per-consumer gauges. Copies numbers only, under the lock, so an
    /// evicted consumer leaves `/metrics` with its entry.
    pub fn samples(&self) -> Vec<super::exposition::Sample> {
        let store = self.store.lock().expect("lag cache lock");
        store
            .slots
            .iter()
            .filter_map(|(key, slot)| {
                let state = slot.last.as_ref()?.result.as_ref().ok()?;
                Some(super::exposition::Sample::new(key.clone(), state))
            })
            .collect()
    }

    /// The last reading, however old, without touching NATS (for status).
    pub fn peek(&self, key: &ConsumerKey) -> Option<Reading> {
        self.store.lock().expect("lag cache lock").slots.get(key)?.last.clone()
    }

    /// Spawns the read so that it completes (and fills the cache) even if
    /// every caller gives up. Called with the store lock held, so the task
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
                let mut store = this.store.lock().expect("lag cache lock");
                // An entry evicted while its read was under way stays out:
                // its callers get the reading, the cache does not grow back.
                if let Some(slot) = store.slots.get_mut(&key) {
                    // An older read finishing late must not replace a newer one.
                    if slot.last.as_ref().is_none_or(|last| last.at <= at) {
                        slot.last = Some(reading.clone());
                    }
                    if slot.inflight.as_ref().is_some_and(|p| p.id == id) {
                        slot.inflight = None;
                    }
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
        let mut store = self.store.lock().expect("lag cache lock");
        let idle: Vec<ConsumerKey> = store
            .slots
            .iter()
            .filter(|(_, slot)| slot.inflight.is_none() && now.duration_since(slot.used) >= IDLE_EVICTION)
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle {
            store.remove(&key);
        }
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
    fn key(consumer: &str) -> ConsumerKey {
        ConsumerKey::new("default", None, "S", consumer)
    }

    fn bounded(max_entries: usize, misses: MissLimit) -> Arc<LagCache> {
        let source = Arc::new(Counting {
            reads: AtomicU64::new(0),
            delay: Duration::ZERO,
        });
        LagCache::with_limits(source, Duration::from_secs(60), CacheLimits { max_entries, misses })
    }

    const GENEROUS: MissLimit = MissLimit {
        per_second: 1_000_000,
        burst: 1_000_000,
    };

    #[tokio::test]
    async fn the_cache_holds_at_most_its_bound_and_evicts_the_least_recently_used() {
        let cache = bounded(3, GENEROUS);
        for c in ["a", "b", "c"] {
            cache.get_for("team", &key(c)).await.result.unwrap();
        }
        // "a" is used again, so "b" is now the least recently used.
        cache.get_for("team", &key("a")).await.result.unwrap();
        cache.get_for("team", &key("d")).await.result.unwrap();
        assert_eq!(cache.len(), 3);
        assert!(cache.peek(&key("b")).is_none(), "the least recently used went");
        for c in ["a", "c", "d"] {
            assert!(cache.peek(&key(c)).is_some(), "{c} stays");
        }
        for i in 0..1000 {
            cache.get_for("team", &key(&format!("x{i}"))).await.result.unwrap();
        }
        assert_eq!(cache.len(), 3, "however many names arrive");
    }

    #[tokio::test]
    async fn the_exposition_follows_eviction() {
        let cache = bounded(2, GENEROUS);
        for c in ["a", "b", "c"] {
            cache.get_for("team", &key(c)).await.result.unwrap();
        }
        let mut consumers: Vec<String> = cache.samples().iter().map(|s| s.key.consumer.to_string()).collect();
        consumers.sort();
        assert_eq!(consumers, ["b", "c"], "an evicted consumer leaves /metrics");
    }

    #[tokio::test]
    async fn one_namespace_cannot_evict_another_s_fair_share() {
        let cache = bounded(10, GENEROUS);
        for i in 0..4 {
            cache.get_for("quiet", &key(&format!("q{i}"))).await.result.unwrap();
        }
        for i in 0..500 {
            cache.get_for("noisy", &key(&format!("n{i}"))).await.result.unwrap();
        }
        assert_eq!(cache.len(), 10);
        for i in 0..4 {
            assert!(
                cache.peek(&key(&format!("q{i}"))).is_some(),
                "q{i} is within quiet's share"
            );
        }
        // A third namespace takes its share from the one holding the most.
        for i in 0..5 {
            cache.get_for("third", &key(&format!("t{i}"))).await.result.unwrap();
        }
        let held = |prefix: &str| {
            cache
                .samples()
                .iter()
                .filter(|s| s.key.consumer.starts_with(prefix))
                .count()
        };
        let held = [held("q"), held("n"), held("t")];
        assert_eq!(held.iter().sum::<usize>(), 10);
        assert!(
            held.iter().all(|&n| n >= 10 / 3),
            "each keeps at least its share of 10 over 3: {held:?}"
        );
    }

    #[tokio::test]
    async fn a_namespace_over_its_reads_is_refused_by_name_and_others_are_not() {
        let cache = bounded(
            100,
            MissLimit {
                per_second: 1,
                burst: 2,
            },
        );
        assert!(cache.get_for("greedy", &key("a")).await.result.is_ok());
        assert!(cache.get_for("greedy", &key("b")).await.result.is_ok());
        let refused = cache.get_for("greedy", &key("c")).await.result.unwrap_err();
        assert_eq!(
            refused,
            LagError::MissLimited {
                namespace: "\"greedy\"".into(),
                per_second: 1,
                burst: 2
            }
        );
        assert!(refused.to_string().contains("namespace \"greedy\""), "{refused}");
        assert!(cache.peek(&key("c")).is_none(), "a refused miss stores nothing");
        // Hits cost no reads.
        assert!(cache.get_for("greedy", &key("a")).await.result.is_ok());
        assert!(cache.get_for("modest", &key("c")).await.result.is_ok());
        // The scaler's own reads (push watchers) are not any namespace's.
        assert!(cache.get(&key("d")).await.result.is_ok());
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
