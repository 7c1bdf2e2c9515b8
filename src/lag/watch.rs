//! Push activation: tell KEDA a sleeping consumer has work the moment the
//! first message is stored, without polling every consumer all the time.
//!
//! While a consumer is idle, its watcher registers with its stream's shared
//! notifier ([`super::notify`]), which hears of every new stored message the
//! consumer counts. A notice triggers one fresh `CONSUMER.INFO`; more notices
//! within one cache TTL wait for the next TTL, so a consumer that is busy but
//! below its activation threshold costs at most one read per TTL.
//!
//! Once a watcher has seen the consumer active it stops reading. KEDA's own
//! `GetMetrics` and `IsActive` calls read the consumer through the shared
//! cache, which tells the watcher of every reading ([`LagCache::set_listener`]);
//! the watcher learns from those that the consumer went idle, and only then
//! listens for new messages again. A slow re-check (`idle_recheck`) covers
//! what no one else reads: an active consumer nobody polls, a failing target,
//! a reset consumer, a server restart.
//!
//! Watchers are shared by every stream open on the same consumer and stop when
//! the last one closes; the activation threshold they watch for is the highest
//! among the streams open now.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::notify::{Notifiers, Registration};
use super::{ConsumerKey, LagCache};
use crate::nats::Connections;

/// How often watchers re-read.
#[derive(Clone, Copy, Debug)]
pub struct WatchConfig {
    /// Re-read interval while idle and no notifier covers the consumer yet
    /// (it is being set up).
    pub active_poll: Duration,
    /// The slow re-check: while idle with a notifier in place, while active
    /// (KEDA's own reads tell the watcher more often), and while failing.
    pub idle_recheck: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            active_poll: Duration::from_secs(1),
            idle_recheck: Duration::from_secs(15),
        }
    }
}

/// Every consumer watched for push activation.
pub struct Watchers {
    cache: Arc<LagCache>,
    connections: Connections,
    config: WatchConfig,
    watches: Mutex<HashMap<ConsumerKey, Arc<Watch>>>,
    notifiers: Arc<Notifiers>,
}

struct Watch {
    /// The last reading's lag (`None`: the read failed), and its version.
    latest: Mutex<Latest>,
    /// Subscribers wait here; every reading wakes them all.
    changed: Notify,
    subscribers: AtomicUsize,
    /// The activation thresholds of the subscribers open now (one each):
    /// the watcher keeps its notifier while the lag is at or below the
    /// highest of them.
    thresholds: Mutex<Vec<f64>>,
    /// Set by the watcher while the consumer is active or failing: it then
    /// wants to hear of other callers' readings instead of reading itself.
    /// While idle it listens to the notifier only, so a cache reading can
    /// never stand in for a notice.
    wants_readings: AtomicBool,
    /// Wakes the watcher: a notice of a new message, a change of its
    /// notifier, a reading in the cache, or a subscriber leaving. One
    /// wake-up source keeps each of the (possibly ten thousand) watcher tasks
    /// small.
    poke: Arc<Notify>,
}

#[derive(Default)]
struct Latest {
    version: u64,
    lag: Option<u64>,
}

impl Watch {
    /// A watch with its first subscriber.
    fn new(activation_threshold: f64) -> Self {
        Watch {
            latest: Mutex::default(),
            changed: Notify::new(),
            subscribers: AtomicUsize::new(1),
            thresholds: Mutex::new(vec![activation_threshold]),
            wants_readings: AtomicBool::new(false),
            poke: Arc::new(Notify::new()),
        }
    }

    /// The highest activation threshold among the open subscribers.
    fn threshold(&self) -> f64 {
        let thresholds = self.thresholds.lock().expect("threshold lock");
        thresholds.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    fn publish(&self, lag: Option<u64>) {
        {
            let mut latest = self.latest.lock().expect("latest lock");
            latest.version += 1;
            latest.lag = lag;
        }
        self.changed.notify_waiters();
    }
}

/// One subscriber's view of a watched consumer: every new reading. Dropping
/// it tells the watcher, which stops with its last subscriber.
pub struct Subscription {
    watch: Arc<Watch>,
    seen: u64,
    threshold: f64,
}

impl Subscription {
    /// The next reading this subscriber has not seen (at once if there is
    /// one): the consumer's lag, or `None` when the read failed.
    pub async fn next(&mut self) -> Option<u64> {
        loop {
            let changed = self.watch.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a reading published in
            // between still wakes us.
            changed.as_mut().enable();
            {
                let latest = self.watch.latest.lock().expect("latest lock");
                if latest.version != self.seen {
                    self.seen = latest.version;
                    return latest.lag;
                }
            }
            changed.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        {
            let mut thresholds = self.watch.thresholds.lock().expect("threshold lock");
            let mine = self.threshold.to_bits();
            if let Some(at) = thresholds.iter().position(|t| t.to_bits() == mine) {
                thresholds.swap_remove(at);
            }
        }
        self.watch.subscribers.fetch_sub(1, Ordering::AcqRel);
        self.watch.poke.notify_one();
    }
}

impl Watchers {
    pub fn new(cache: Arc<LagCache>, connections: Connections, config: WatchConfig) -> Arc<Self> {
        let watchers = Arc::new(Watchers {
            cache: cache.clone(),
            connections,
            config,
            watches: Mutex::default(),
            notifiers: Arc::default(),
        });
        let weak = Arc::downgrade(&watchers);
        cache.set_listener(Box::new(move |key| {
            if let Some(watchers) = weak.upgrade() {
                watchers.heard_reading(key);
            }
        }));
        watchers
    }

    /// A reading of `key` was stored in the cache: wake its watcher if it
    /// is waiting to learn from one that the consumer went idle.
    fn heard_reading(&self, key: &ConsumerKey) {
        let watches = self.watches.lock().expect("watchers lock");
        if let Some(watch) = watches.get(key)
            && watch.wants_readings.load(Ordering::Acquire)
        {
            watch.poke.notify_one();
        }
    }

    /// Subscribes to `key`, starting its watcher if none runs.
    pub fn subscribe(self: &Arc<Self>, key: &ConsumerKey, activation_threshold: f64) -> Subscription {
        let mut watches = self.watches.lock().expect("watchers lock");
        if let Some(existing) = watches.get(key) {
            existing
                .thresholds
                .lock()
                .expect("threshold lock")
                .push(activation_threshold);
            existing.subscribers.fetch_add(1, Ordering::AcqRel);
            return Subscription {
                watch: existing.clone(),
                seen: 0,
                threshold: activation_threshold,
            };
        }
        let watch = Arc::new(Watch::new(activation_threshold));
        watches.insert(key.clone(), watch.clone());
        metrics::gauge!(super::metrics::PUSH_WATCHERS.name).set(watches.len() as f64);
        tokio::spawn(Arc::clone(self).run(key.clone(), watch.clone()));
        Subscription {
            watch,
            seen: 0,
            threshold: activation_threshold,
        }
    }

    /// How many consumers are watched now.
    pub fn len(&self) -> usize {
        self.watches.lock().expect("watchers lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many streams have a notifier task now.
    pub fn notifiers(&self) -> usize {
        self.notifiers.len()
    }

    /// Removes `key` if nobody listens any more. Under the map lock, so a
    /// subscriber arriving now either finds the watch alive or starts anew.
    fn retire_if_unused(&self, key: &ConsumerKey, watch: &Arc<Watch>) -> bool {
        let mut watches = self.watches.lock().expect("watchers lock");
        if watch.subscribers.load(Ordering::Acquire) > 0 {
            return false;
        }
        if watches.get(key).is_some_and(|w| Arc::ptr_eq(w, watch)) {
            watches.remove(key);
        }
        metrics::gauge!(super::metrics::PUSH_WATCHERS.name).set(watches.len() as f64);
        true
    }

    async fn run(self: Arc<Self>, key: ConsumerKey, watch: Arc<Watch>) {
        let Some(conn) = self.connections.get(Some(&key.connection)) else {
            // Metadata parsing refuses unknown connections; keep the
            // subscriber informed anyway rather than hanging it.
            watch.publish(None);
            while !self.retire_if_unused(&key, &watch) {
                watch.poke.notified().await;
            }
            return;
        };
        let mut registration: Option<Registration> = None;
        let mut since = Instant::now();
        // What the last reading said, and when that read started.
        let mut state = Seen::Failing;
        let mut last_at: Option<Instant> = None;
        // When the reading the watcher itself asked for started.
        let mut own_at: Option<Instant> = None;
        // The last read a notice caused while idle: more notices within a
        // TTL of it wait for the TTL.
        let mut last_noticed: Option<Instant> = None;
        let mut use_fresh = false;
        // Whether the registration was armed at the last wake-up: the wake-up
        // that arms it is a re-read of its own (below).
        let mut was_armed = false;
        let mut schedule = Schedule::new(self.config.active_poll);
        loop {
            // Someone else's reading (KEDA's calls through the cache), or our
            // own read of one at least as new as `since`.
            let reading = if use_fresh {
                self.cache.peek(&key).filter(|r| last_at.is_none_or(|at| r.at > at))
            } else {
                let reading = self.cache.get_newer_than(&key, since).await;
                own_at = Some(reading.at);
                Some(reading)
            };
            if let Some(reading) = reading {
                last_at = Some(reading.at);
                let threshold = watch.threshold();
                let was = state;
                state = match &reading.result {
                    Ok(s) if s.lag() as f64 > threshold => Seen::Active,
                    Ok(_) => Seen::Idle,
                    Err(_) => Seen::Failing,
                };
                match &reading.result {
                    Ok(_) if state == Seen::Active => {
                        registration = None;
                        was_armed = false;
                    }
                    // Registering is immediate; the notifier wakes the
                    // watcher once it covers the consumer, for a re-read
                    // that catches a message stored in between.
                    Ok(s) if registration.as_ref().is_none_or(|r| r.filters() != s.filter_subjects) => {
                        registration = Some(self.notifiers.register(
                            &key,
                            &conn.client,
                            &conn.connects,
                            &s.filter_subjects,
                            watch.poke.clone(),
                        ));
                        was_armed = false;
                    }
                    _ => {}
                }
                if state == Seen::Idle && was != Seen::Idle {
                    // Just gone idle: the first new message is read at once.
                    last_noticed = None;
                }
                watch
                    .wants_readings
                    .store(learns_from_others(state, &registration), Ordering::Release);
                watch.publish(reading.result.as_ref().ok().map(|s| s.lag()));
            }
            // Idle with a live notifier, active, or failing: the slow
            // re-check (an active consumer is read by KEDA's own calls, and
            // a failing one must not be hammered). Idle while the notifier
            // is being set up: the short poll.
            let period = match (&state, &registration) {
                (Seen::Idle, Some(r)) if !r.armed() => self.config.active_poll,
                _ => self.config.idle_recheck,
            };
            // Never more often than the TTL: NATS sees at most one read per
            // consumer per TTL from the watcher.
            let period = period.max(self.cache.ttl());
            let due = schedule.next(period);
            if tokio::time::timeout_at(due.into(), watch.poke.notified())
                .await
                .is_err()
            {
                // A re-check: a reading anyone made within the last period
                // and a half (KEDA's calls, through the cache) will do, and
                // is used if the watcher has not seen it yet; only a consumer
                // nobody read for that long costs a read. The half period is
                // for callers on the same period: KEDA's metrics adapter
                // reads every 15 s, the default re-check period, and its
                // reads drift past a grid point by the time its calls take;
                // with a strict period the watcher read about 9 % of the
                // consumers again (measured by benches/load at 1,000).
                let recent = self
                    .cache
                    .peek(&key)
                    .is_some_and(|r| r.at + period + period / 2 >= due && Some(r.at) != own_at);
                use_fresh = recent;
                since = due;
                continue;
            }
            if watch.subscribers.load(Ordering::Acquire) == 0 && self.retire_if_unused(&key, &watch) {
                return;
            }
            // Active, or failing with no notifier: a reading someone else
            // made says whether that changed, and nothing else is worth a
            // read. (No notice is lost to this: no notifier is registered.)
            if learns_from_others(state, &registration) {
                use_fresh = true;
                continue;
            }
            // Idle, or failing with a notifier (NATS went away and the
            // notifier is back): a notice of a new message, a re-armed
            // notifier, or a subscriber coming or going is worth a read; the
            // first at once, then at most one per TTL.
            use_fresh = false;
            let armed = registration.as_ref().is_some_and(Registration::armed);
            if armed && !was_armed {
                // The notifier has just come up: one read catches a message
                // stored before it did. It does not count against the
                // notices' one read per TTL, so a message right after it (a
                // consumer that has just gone idle) is read at once too. The
                // notifier comes up once per registration or reconnect, so
                // this adds at most one read each.
            } else {
                if let Some(last) = last_noticed {
                    let next = last + self.cache.ttl();
                    if next > Instant::now() {
                        tokio::time::sleep_until(next.into()).await;
                    }
                }
                last_noticed = Some(Instant::now());
            }
            was_armed = armed;
            since = Instant::now();
        }
    }
}

/// Whether the watcher waits for other callers' readings (KEDA's, through
/// the cache) instead of reading on a wake-up: while active, and while
/// failing with no notifier to tell it anything.
fn learns_from_others(state: Seen, registration: &Option<Registration>) -> bool {
    match state {
        Seen::Active => true,
        Seen::Failing => registration.is_none(),
        Seen::Idle => false,
    }
}

/// What a watcher's last reading said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Lag above the highest open threshold: nothing to listen for.
    Active,
    /// At or below it: listening for new messages.
    Idle,
    /// The read failed.
    Failing,
}

/// When a watcher re-reads: on a grid of the period from a random phase.
/// A slow read or a busy scheduler delays one wake, not the grid. Re-reading
/// a fixed time after each read instead lets watchers that were released
/// together (they started together, or one slow NATS answer freed them all)
/// re-read together for ever, and a burst of thousands of requests queues
/// on the server: every read in it, and the KEDA calls waiting on them, pay.
struct Schedule {
    due: Instant,
    period: Duration,
}

impl Schedule {
    fn new(period: Duration) -> Self {
        Schedule {
            due: Instant::now() + random_fraction(period),
            period,
        }
    }

    /// The first grid point after now. A new period (the consumer went from
    /// idle to busy or back) starts a new grid from a random phase in the
    /// second half of the period: watchers that change together (one burst
    /// of messages woke them all) do not re-read together ever after, and a
    /// watcher that has just read (the read that changed its state) does
    /// not re-read within half a period of it. (From a phase anywhere in
    /// the period, one active watcher in thirty re-read its consumer within
    /// 2 s of going active, with a 60 s period.)
    fn next(&mut self, period: Duration) -> Instant {
        let period = period.max(Duration::from_millis(1));
        let now = Instant::now();
        if period != self.period {
            self.period = period;
            self.due = now + period / 2 + random_fraction(period / 2);
        }
        if self.due <= now {
            let behind = (now - self.due).as_nanos() / period.as_nanos() + 1;
            self.due += period * u32::try_from(behind).unwrap_or(u32::MAX);
        }
        self.due
    }
}

/// Uniform in `[0, period)`.
fn random_fraction(period: Duration) -> Duration {
    use std::hash::BuildHasher;
    let random = std::hash::RandomState::new().hash_one(Instant::now());
    period.mul_f64((random >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lag::{ConsumerState, LagError, cache::LagSource};
    use futures::future::BoxFuture;

    struct Idle;

    impl LagSource for Idle {
        fn fetch(&self, _key: &ConsumerKey) -> BoxFuture<'static, Result<ConsumerState, LagError>> {
            Box::pin(async { Ok(ConsumerState::default()) })
        }
    }

    #[test]
    fn watchers_start_at_spread_phases() {
        let period = Duration::from_secs(1);
        let now = Instant::now();
        let firsts: Vec<Duration> = (0..200).map(|_| Schedule::new(period).due - now).collect();
        assert!(
            firsts.iter().all(|d| *d <= period + Duration::from_millis(50)),
            "{firsts:?}"
        );
        let tenths: std::collections::HashSet<u128> = firsts.iter().map(|d| d.as_millis() / 100).collect();
        assert!(
            tenths.len() >= 8,
            "first re-reads fall in {} of 10 tenths",
            tenths.len()
        );
    }

    #[test]
    fn a_late_wake_keeps_the_grid() {
        let period = Duration::from_millis(100);
        let start = Instant::now() + Duration::from_millis(30);
        let mut schedule = Schedule { due: start, period };
        // Woken 250 ms late (a slow read, a stalled process): the next
        // re-read is the next point of the same grid, not 100 ms from now.
        std::thread::sleep(Duration::from_millis(280));
        let due = schedule.next(period);
        assert!(due > Instant::now());
        let offset = (due - start).as_nanos() % period.as_nanos();
        assert_eq!(offset, 0, "{:?} after the first point", due - start);
        // And a shorter period (idle to busy) re-reads within one period.
        let mut idle = Schedule {
            due: Instant::now() + Duration::from_secs(15),
            period: Duration::from_secs(15),
        };
        assert!(idle.next(period) <= Instant::now() + period);
    }

    #[test]
    fn a_new_period_starts_at_a_random_phase() {
        // 200 watchers woken together go idle together: their re-checks
        // spread over the second half of the idle period instead of landing
        // in one burst, and none comes within half a period of the change.
        let idle = Duration::from_secs(15);
        let now = Instant::now();
        let dues: Vec<Duration> = (0..200)
            .map(|_| {
                let mut busy = Schedule {
                    due: now + Duration::from_millis(500),
                    period: Duration::from_secs(1),
                };
                busy.next(idle) - now
            })
            .collect();
        assert!(dues.iter().all(|d| *d <= idle + Duration::from_millis(50)), "{dues:?}");
        assert!(dues.iter().all(|d| *d >= idle / 2), "{dues:?}");
        let seconds: std::collections::HashSet<u64> = dues.iter().map(|d| d.as_secs()).collect();
        assert!(
            seconds.len() >= 6,
            "re-checks fall in {} of the last 8 seconds",
            seconds.len()
        );
    }

    /// Every watched consumer holds one watcher task for as long as KEDA
    /// keeps its stream open: at 10,000 consumers each KiB is 10 MiB.
    #[test]
    fn a_watcher_task_stays_small() {
        let cache = LagCache::new(Arc::new(Idle), Duration::from_secs(1));
        let watchers = Watchers::new(cache, Connections::default(), WatchConfig::default());
        let state = Arc::new(Watch::new(0.0));
        let task = watchers.run(ConsumerKey::new("default", None, "S", "C"), state);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 768, "a watcher task takes {size} bytes");
        // And its state shared with the subscribers.
        let shared = std::mem::size_of::<Watch>();
        assert!(shared <= 256, "a watch takes {shared} bytes");
    }

    #[tokio::test]
    async fn subscribers_see_the_current_reading_then_each_new_one() {
        use futures::FutureExt;
        let watch = Arc::new(Watch::new(0.0));
        let mut first = Subscription {
            watch: watch.clone(),
            seen: 0,
            threshold: 0.0,
        };
        assert_eq!(first.next().now_or_never(), None, "nothing read yet");
        watch.publish(Some(3));
        assert_eq!(first.next().now_or_never(), Some(Some(3)));
        assert_eq!(first.next().now_or_never(), None, "seen already");
        // A late subscriber gets the current reading at once.
        watch.subscribers.fetch_add(1, Ordering::AcqRel);
        watch.thresholds.lock().unwrap().push(0.0);
        let mut late = Subscription {
            watch: watch.clone(),
            seen: 0,
            threshold: 0.0,
        };
        assert_eq!(late.next().now_or_never(), Some(Some(3)));
        // A waiting subscriber is woken by the next reading, failed or not.
        let waiting = tokio::spawn(async move { first.next().await });
        tokio::task::yield_now().await;
        watch.publish(None);
        assert_eq!(waiting.await.unwrap(), None);
        // Leaving counts down and wakes the watcher.
        drop(late);
        assert_eq!(watch.subscribers.load(Ordering::Acquire), 0);
        assert!(watch.poke.notified().now_or_never().is_some());
    }

    /// The threshold a watcher keeps its notifier for is the highest among
    /// the streams open now, not the highest any stream ever asked for.
    #[tokio::test]
    async fn the_threshold_follows_the_open_streams() {
        let cache = LagCache::new(Arc::new(Idle), Duration::from_secs(1));
        let watchers = Watchers::new(cache, Connections::default(), WatchConfig::default());
        let key = ConsumerKey::new("default", None, "S", "C");
        let low = watchers.subscribe(&key, 0.0);
        let high = watchers.subscribe(&key, 50.0);
        let same = watchers.subscribe(&key, 50.0);
        assert_eq!(low.watch.threshold(), 50.0);
        drop(high);
        assert_eq!(low.watch.threshold(), 50.0, "one stream still asks for 50");
        drop(same);
        assert_eq!(low.watch.threshold(), 0.0);
        let again = watchers.subscribe(&key, 5.0);
        assert_eq!(again.watch.threshold(), 5.0);
        drop(again);
        assert_eq!(low.watch.threshold(), 0.0);
    }
}
