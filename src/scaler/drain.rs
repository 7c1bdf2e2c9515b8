//! The streamed targets of `drainWithin` triggers: one sampler per distinct
//! trigger with an open `StreamMetricSpec`, shared by every stream on it and
//! stopped with the last one. The arithmetic is [`crate::drain`]'s.
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::service::LagProvider;
use crate::drain::{EstimatorConfig, Hysteresis, Rates, drain_metric, drain_target, quantize};
use crate::lag::{ConsumerKey, ConsumerState};
use crate::trigger::{ScaleMetric, Trigger, scale_metric_of};

/// How the samplers pace themselves and when they send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DrainConfig {
    /// Interval between two readings of a consumer (through the lag cache).
    pub sample_every: Duration,
    pub hysteresis: Hysteresis,
    pub estimator: EstimatorConfig,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            sample_every: Duration::from_secs(5),
            hysteresis: Hysteresis::default(),
            estimator: EstimatorConfig::default(),
        }
    }
}

/// The target a drain has sent, and whether it is measured (`μ·D`) or the
/// `lagThreshold` fallback.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sent {
    pub target: f64,
    pub measured: bool,
}

/// What identifies a drain: triggers that read the same consumer with the
/// same parameters share one estimate and one sent target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DrainKey {
    consumer: ConsumerKey,
    drain_within: Duration,
    lag_threshold_bits: u64,
    concurrency: NonZeroU32,
}

impl DrainKey {
    fn of(trigger: &Trigger) -> Option<Self> {
        Some(DrainKey {
            consumer: trigger.key.clone(),
            drain_within: trigger.drain_within?,
            lag_threshold_bits: trigger.lag_threshold.get().to_bits(),
            concurrency: trigger.concurrency,
        })
    }
}

type Registry = Mutex<HashMap<DrainKey, Weak<Drain>>>;

/// Every live drain. Entries are weak: a drain lives as long as a stream
/// holds it, and removes itself when the last one goes.
#[derive(Default)]
pub struct Drains {
    config: DrainConfig,
    registry: Arc<Registry>,
}

impl Drains {
    pub fn new(config: DrainConfig) -> Self {
        Drains {
            config,
            registry: Arc::default(),
        }
    }

    /// The drain of `trigger`, started (with its sampler) if none runs.
    /// `None` for a trigger without `drainWithin`. The sampler's reads count
    /// against `namespace`'s share (the namespace of the first stream).
    pub fn open<L: LagProvider>(&self, trigger: &Trigger, source: &L, namespace: &str) -> Option<Arc<Drain>> {
        let key = DrainKey::of(trigger)?;
        let mut registry = self.registry.lock().expect("drain registry");
        if let Some(drain) = registry.get(&key).and_then(Weak::upgrade) {
            return Some(drain);
        }
        let (stop, stopped) = oneshot::channel();
        let (sent, _) = watch::channel(Sent {
            target: trigger.lag_threshold.get(),
            measured: false,
        });
        let now = Instant::now();
        let drain = Arc::new(Drain {
            key: key.clone(),
            registry: Arc::downgrade(&self.registry),
            config: self.config,
            epoch: now,
            sent,
            state: Mutex::new(DrainState {
                estimator: crate::drain::Estimator::new(self.config.estimator, trigger.concurrency),
                sent_at: now,
            }),
            _stop: stop,
        });
        registry.insert(key, Arc::downgrade(&drain));
        tokio::spawn(sample(
            Arc::downgrade(&drain),
            source.clone(),
            namespace.to_owned(),
            stopped,
        ));
        Some(drain)
    }

    /// The live drain of `trigger`, if a stream holds one.
    pub fn get(&self, trigger: &Trigger) -> Option<Arc<Drain>> {
        let key = DrainKey::of(trigger)?;
        self.registry
            .lock()
            .expect("drain registry")
            .get(&key)
            .and_then(Weak::upgrade)
    }

    /// How many drains are live (a stream holds them).
    pub fn len(&self) -> usize {
        let registry = self.registry.lock().expect("drain registry");
        registry.values().filter(|d| d.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One trigger's estimate and the target its streams were sent.
pub struct Drain {
    key: DrainKey,
    registry: Weak<Registry>,
    config: DrainConfig,
    epoch: Instant,
    sent: watch::Sender<Sent>,
    state: Mutex<DrainState>,
    /// Dropped with the drain: stops its sampler at once.
    _stop: oneshot::Sender<()>,
}

struct DrainState {
    estimator: crate::drain::Estimator,
    sent_at: Instant,
}

impl Drain {
    /// The target last sent: what `GetMetricSpec` answers.
    pub fn sent(&self) -> Sent {
        *self.sent.borrow()
    }

    /// The sent targets from now on, the current one first.
    pub fn subscribe(&self) -> watch::Receiver<Sent> {
        let mut receiver = self.sent.subscribe();
        receiver.mark_changed();
        receiver
    }

    pub fn rates(&self) -> Rates {
        self.state.lock().expect("drain state").estimator.rates()
    }

    /// The metric in the form that goes with the target sent: `lag + λ·D`
    /// (capped) once the target is measured, the plain lag before.
    pub fn scale_metric(&self, trigger: &Trigger, state: &ConsumerState) -> ScaleMetric {
        let sent = self.sent();
        if !sent.measured {
            return scale_metric_of(state, state.lag() as f64, sent.target, trigger.concurrency);
        }
        let wanted = drain_metric(state.lag(), self.rates(), self.key.drain_within);
        scale_metric_of(state, wanted, sent.target, trigger.concurrency)
    }

    /// Takes a reading and sends a new target when it has changed enough.
    fn observe(&self, now: Instant, reading: &ConsumerState) {
        let mut state = self.state.lock().expect("drain state");
        let at = now.duration_since(self.epoch).as_secs_f64();
        state.estimator.observe(reading.sample(at));
        let Some(target) = drain_target(state.estimator.rates(), self.key.drain_within) else {
            return;
        };
        let candidate = Sent {
            target: quantize(target),
            measured: true,
        };
        let current = self.sent();
        let since = now.duration_since(state.sent_at);
        let changed = !current.measured && since >= self.config.hysteresis.min_interval
            || current.measured && self.config.hysteresis.should_send(current.target, target, since);
        if changed {
            tracing::debug!(consumer = %self.key.consumer, target = candidate.target, "streaming a new metric target");
            state.sent_at = now;
            self.sent.send_replace(candidate);
        }
    }

    fn interrupt(&self) {
        self.state.lock().expect("drain state").estimator.interrupt();
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            let mut registry = registry.lock().expect("drain registry");
            // A new drain for the same key may already have replaced this one.
            if registry.get(&self.key).is_some_and(|d| d.strong_count() == 0) {
                registry.remove(&self.key);
            }
        }
    }
}

/// Reads the consumer every `sample_every` until the drain goes. A failed
/// read sends nothing and breaks the window: never a target from a guess.
async fn sample<L: LagProvider>(drain: Weak<Drain>, source: L, namespace: String, mut stopped: oneshot::Receiver<()>) {
    let (every, consumer) = match drain.upgrade() {
        Some(d) => (d.config.sample_every, d.key.consumer.clone()),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let reading = tokio::select! {
            _ = &mut stopped => return,
            reading = source.consumer_state(&namespace, &consumer) => reading,
        };
        let Some(drain) = drain.upgrade() else { return };
        match reading {
            Ok(state) => drain.observe(Instant::now(), &state),
            Err(error) => {
                tracing::debug!(%consumer, %error, "drain sample failed");
                drain.interrupt();
            }
        }
    }
}
