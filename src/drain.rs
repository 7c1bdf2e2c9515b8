//! `drainWithin`: turning "drain the backlog in D" into an HPA target, from
//! what the consumer itself counts. Pure: samples in, rates and targets out;
//! the scaler feeds it readings and streams the target (`scaler::drain`).
//!
//! # The model
//! The replicas wanted are `ceil((λ + lag / D) / μ)`, with λ the arrival rate
//! of the consumer's messages and μ what one replica acknowledges per second.
//! The HPA computes `ceil(metric / target)`, so the scaler reports
//!
//! ```text
//! metric = min(lag + λ·D, R_cap × target)      target = μ·D
//! ```
//!
//! which is the same quotient, with the replica cap of
//! the trigger's `scale_metric` kept. Until μ is known the target is the
//! trigger's `lagThreshold` and the metric the plain lag, as without
//! `drainWithin`.
//!
//! # What is measured, and why this way
//! Every count comes from `CONSUMER.INFO`, in consumer terms: the delivered
//! consumer sequence (stream sequences count other subjects' messages too),
//! `num_pending` and `num_ack_pending`. Over a window between two readings:
//! - acknowledgements = Δdelivered − Δack_pending − Δredelivered⁺ ([`acknowledged`], shared with the health assessment);
//! - arrivals = Δ(delivered + pending) (what entered the consumer's view).
//!
//! μ is sampled only in windows where work was waiting at both ends
//! (`pending > 0`): otherwise the pool was not the bottleneck and the rate
//! measures demand, which would shrink the pool until it is, and so on down.
//! The replicas doing the work come from Little's law rather than from
//! Kubernetes: a saturated replica holds `concurrency` messages, so
//! `busy replicas = ack_pending / concurrency`. That needs no RBAC, and every
//! scaler replica reading the same consumer computes the same thing.
//!
//! Both rates are smoothed with an exponential moving average over time
//! (time constants in [`EstimatorConfig`]), so one slow minute moves μ by
//! `1 − e^(−60/120) ≈ 39 %` of the difference, not all of it.
//!
//! State per consumer: the last sample and two numbers, whatever the history.
//!
//! This module depends on nothing else in the crate, so the simulation in
//! `benches/drain` runs this very code.
use std::num::NonZeroU32;
use std::time::Duration;

/// One reading of a consumer, at `at` seconds on any monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at: f64,
    /// The consumer sequence of the last delivery (redeliveries included).
    pub delivered: u64,
    pub pending: u64,
    pub ack_pending: u64,
    /// Messages redelivered at least once (`num_redelivered`).
    pub redelivered: u64,
}

impl Sample {
    fn progress(&self) -> Progress {
        Progress {
            delivered: self.delivered,
            ack_pending: self.ack_pending,
            redelivered: self.redelivered,
        }
    }
}

/// A consumer's own counters, for the acknowledgements between two readings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// `delivered.consumer_seq`: deliveries so far, redeliveries included.
    pub delivered: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
}

/// Acknowledgements between two readings, from the consumer's own
/// sequences, never from the ack floor (one slow message holds the floor
/// while the rest flow): `Δdelivered − Δack_pending − Δredelivered⁺`. Each
/// delivery raises `delivered`; a first delivery also raises `ack_pending`,
/// and an acknowledgement lowers it; a message redelivered for the first
/// time raises `redelivered` instead, so it is not taken for progress. The
/// estimator here and the health assessment both count with this.
pub fn acknowledged(before: Progress, after: Progress) -> u64 {
    let delta = |a: u64, b: u64| i128::from(b) - i128::from(a);
    let acks = delta(before.delivered, after.delivered)
        - delta(before.ack_pending, after.ack_pending)
        - delta(before.redelivered, after.redelivered).max(0);
    u64::try_from(acks.max(0)).unwrap_or(u64::MAX)
}

/// How fast the estimates follow the measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EstimatorConfig {
    /// Time constant of μ's moving average. Long, because μ sets the pool
    /// size: a slow minute should not halve it.
    pub capacity_smoothing: Duration,
    /// Time constant of λ's moving average. Shorter: a burst shows in the
    /// lag at once anyway, λ only carries the steady inflow.
    pub arrival_smoothing: Duration,
    /// A longer gap between readings (a NATS outage, a restart) starts over
    /// from the next reading instead of averaging across it.
    pub max_window: Duration,
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        EstimatorConfig {
            capacity_smoothing: Duration::from_secs(120),
            arrival_smoothing: Duration::from_secs(60),
            max_window: Duration::from_secs(300),
        }
    }
}

/// The smoothed rates of one consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// Arrivals per second, λ.
    pub arrivals: Option<f64>,
    /// Acknowledgements per second of one replica, μ: known once a window
    /// with waiting work has been seen.
    pub capacity: Option<f64>,
}

/// λ and μ of one consumer, from its readings.
#[derive(Clone, Debug)]
pub struct Estimator {
    config: EstimatorConfig,
    concurrency: NonZeroU32,
    last: Option<Sample>,
    rates: Rates,
}

impl Estimator {
    /// `concurrency` is the trigger's: the messages a saturated replica holds.
    pub fn new(config: EstimatorConfig, concurrency: NonZeroU32) -> Self {
        Estimator {
            config,
            concurrency,
            last: None,
            rates: Rates::default(),
        }
    }

    /// A restored estimator: μ and λ from elsewhere (another scaler replica,
    /// the claim's status), refined from the next two readings on.
    pub fn seeded(config: EstimatorConfig, concurrency: NonZeroU32, rates: Rates) -> Self {
        Estimator {
            rates,
            ..Self::new(config, concurrency)
        }
    }

    pub fn rates(&self) -> Rates {
        self.rates
    }

    /// Forgets the last reading (it could not be taken): the next window
    /// starts at the next reading, so no window spans the gap.
    pub fn interrupt(&mut self) {
        self.last = None;
    }

    /// Takes one reading into account.
    pub fn observe(&mut self, sample: Sample) {
        let Some(last) = self.last.replace(sample) else {
            return;
        };
        let window = sample.at - last.at;
        // A consumer recreated under the same name restarts its sequence.
        if window <= 0.0 || window > self.config.max_window.as_secs_f64() || sample.delivered < last.delivered {
            return;
        }
        let acks = acknowledged(last.progress(), sample.progress()) as f64;
        // Messages removed by the stream's limits lower `pending` without an
        // arrival or a delivery: never a negative inflow.
        let arrivals = ((sample.delivered + sample.pending) as f64 - (last.delivered + last.pending) as f64).max(0.0);
        self.rates.arrivals = Some(smooth(
            self.rates.arrivals,
            arrivals / window,
            window,
            self.config.arrival_smoothing,
        ));
        let saturated = last.pending > 0 && sample.pending > 0;
        let in_flight = (last.ack_pending + sample.ack_pending) as f64 / 2.0;
        if !saturated || in_flight <= 0.0 {
            return;
        }
        // Little's law: a saturated replica holds `concurrency` messages.
        let busy_replicas = (in_flight / f64::from(self.concurrency.get())).max(1.0);
        let per_replica = acks / window / busy_replicas;
        // μ becomes known with a window that did work: a pool stalled from
        // the start has told us nothing about its capacity.
        if self.rates.capacity.is_none() && per_replica <= 0.0 {
            return;
        }
        self.rates.capacity = Some(smooth(
            self.rates.capacity,
            per_replica,
            window,
            self.config.capacity_smoothing,
        ));
    }
}

/// Exponential moving average over time: a window of `window` seconds moves
/// the estimate by `1 − e^(−window/τ)` of the difference.
fn smooth(previous: Option<f64>, measured: f64, window: f64, time_constant: Duration) -> f64 {
    match previous {
        None => measured,
        Some(previous) => {
            let weight = 1.0 - (-window / time_constant.as_secs_f64().max(f64::MIN_POSITIVE)).exp();
            previous + weight * (measured - previous)
        }
    }
}

/// The HPA target for `drainWithin`: `μ·D` messages per replica, once μ is
/// known.
pub fn drain_target(rates: Rates, drain_within: Duration) -> Option<f64> {
    rates
        .capacity
        .filter(|mu| *mu > 0.0)
        .map(|mu| mu * drain_within.as_secs_f64())
}

/// The metric for `drainWithin` before the replica cap: `lag + λ·D`, the
/// work there will be to do within D.
pub fn drain_metric(lag: u64, rates: Rates, drain_within: Duration) -> f64 {
    lag as f64 + rates.arrivals.unwrap_or(0.0) * drain_within.as_secs_f64()
}

/// When to stream a new target: KEDA rebuilds the HPA on every message, so
/// only changes that matter, and not too often.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hysteresis {
    /// The least time between two messages after the first.
    pub min_interval: Duration,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            min_interval: Duration::from_secs(60),
        }
    }
}

/// Targets are sent in steps of 10 %: the power of [`STEP`] nearest to the
/// estimate. Two estimates a few percent apart (two scaler replicas, two
/// readings) give the same target, and a change of a step is one that matters.
pub const STEP: f64 = 1.1;

/// The step of `target` (see [`STEP`]).
pub fn quantize(target: f64) -> f64 {
    STEP.powf((target.ln() / STEP.ln()).round())
}

impl Hysteresis {
    /// Whether the estimate `candidate` replaces `sent`, `since_sent` after
    /// it went out: it must be at least a step away from what was sent, so
    /// an estimate hovering at the edge of two steps does not flap.
    pub fn should_send(&self, sent: f64, candidate: f64, since_sent: Duration) -> bool {
        since_sent >= self.min_interval && (candidate / sent).ln().abs() >= STEP.ln() * (1.0 - 1e-9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: NonZeroU32 = NonZeroU32::MIN;

    fn estimator() -> Estimator {
        Estimator::new(EstimatorConfig::default(), ONE)
    }

    fn sample(at: f64, delivered: u64, pending: u64, ack_pending: u64) -> Sample {
        Sample {
            at,
            delivered,
            pending,
            ack_pending,
            redelivered: 0,
        }
    }

    /// `replicas` workers, each acking `rate` messages per second one at a
    /// time, `backlog` messages waiting, read every `step` seconds.
    fn saturated(e: &mut Estimator, from: f64, until: f64, replicas: u64, rate: f64, backlog: u64) -> u64 {
        let step = 5.0;
        let mut delivered = 0u64;
        let mut t = from;
        while t <= until {
            delivered = ((t - from) * rate * replicas as f64) as u64 + replicas;
            e.observe(sample(t, delivered, backlog, replicas));
            t += step;
        }
        delivered
    }

    #[test]
    fn a_saturated_pool_gives_mu() {
        let mut e = estimator();
        saturated(&mut e, 0.0, 300.0, 4, 2.0, 1000);
        let mu = e.rates().capacity.unwrap();
        assert!((mu - 2.0).abs() < 1e-9, "μ = {mu}");
        // Little's law with concurrency: 4 replicas holding 3 each.
        let mut e = Estimator::new(EstimatorConfig::default(), NonZeroU32::new(3).unwrap());
        for i in 0..20u64 {
            e.observe(sample(i as f64 * 5.0, 12 + i * 40, 500, 12));
        }
        assert!((e.rates().capacity.unwrap() - 2.0).abs() < 1e-9, "{:?}", e.rates());
        assert_eq!(drain_target(e.rates(), Duration::from_secs(60)), Some(120.0));
    }

    #[test]
    fn mu_is_unknown_until_a_window_with_waiting_work() {
        let mut e = estimator();
        // Lag in flight, but nothing waiting: the pool keeps up.
        for i in 0..10u64 {
            e.observe(sample(i as f64 * 5.0, i * 10, 0, 2));
        }
        assert_eq!(e.rates().capacity, None);
        assert_eq!(drain_target(e.rates(), Duration::from_secs(60)), None);
        assert!(e.rates().arrivals.unwrap() > 0.0);
    }

    #[test]
    fn an_idle_pool_does_not_lower_mu() {
        let mut e = estimator();
        let delivered = saturated(&mut e, 0.0, 120.0, 4, 2.0, 1000);
        let mu = e.rates().capacity.unwrap();
        // The queue drains and stays empty for ten minutes, a trickle arriving.
        for i in 1..=120u64 {
            e.observe(sample(120.0 + i as f64 * 5.0, delivered + i, 0, 0));
        }
        assert_eq!(e.rates().capacity, Some(mu));
    }

    #[test]
    fn one_stuck_message_does_not_zero_mu() {
        let mut e = estimator();
        let delivered = saturated(&mut e, 0.0, 120.0, 4, 2.0, 1000);
        let mu = e.rates().capacity.unwrap();
        // One replica hangs on its message; the other three keep acking.
        let mut t = 125.0;
        for i in 1..=24u64 {
            e.observe(sample(t, delivered + i * 30, 900, 4));
            t += 5.0;
        }
        let after = e.rates().capacity.unwrap();
        assert!(after > 0.7 * mu && after < mu, "μ {mu} -> {after}");
        // The whole pool stalls for one window: μ barely moves.
        let mut e = estimator();
        let delivered = saturated(&mut e, 0.0, 120.0, 1, 2.0, 1000);
        e.observe(sample(130.0, delivered, 1000, 1));
        let stalled = e.rates().capacity.unwrap();
        assert!(stalled > 0.9 * 2.0, "one stalled window: {stalled}");
        // A pool that never acked anything has no μ at all.
        let mut e = estimator();
        e.observe(sample(0.0, 1, 50, 1));
        e.observe(sample(5.0, 1, 50, 1));
        assert_eq!(e.rates().capacity, None);
    }

    #[test]
    fn one_slow_minute_does_not_halve_the_pool() {
        let mut e = estimator();
        let delivered = saturated(&mut e, 0.0, 300.0, 1, 2.0, 1000);
        // A minute at half speed.
        for i in 1..=12u64 {
            e.observe(sample(300.0 + i as f64 * 5.0, delivered + i * 5, 1000, 1));
        }
        let mu = e.rates().capacity.unwrap();
        assert!(mu > 1.5, "μ after a slow minute: {mu}");
    }

    #[test]
    fn arrivals_give_lambda() {
        let mut e = estimator();
        // 10 msg/s arrive; nothing is delivered: pending grows.
        for i in 0..30u64 {
            e.observe(sample(i as f64 * 5.0, 0, i * 50, 0));
        }
        assert!((e.rates().arrivals.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(e.rates().capacity, None, "nothing acked: no μ");
        // Delivered and acked as they come: λ is the same, counted on the
        // delivered side.
        let mut e = estimator();
        for i in 0..30u64 {
            e.observe(sample(i as f64 * 5.0, i * 50, 0, 1));
        }
        assert!((e.rates().arrivals.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(drain_metric(100, e.rates(), Duration::from_secs(60)), 700.0);
    }

    #[test]
    fn a_gap_or_a_recreated_consumer_starts_over() {
        let mut e = estimator();
        saturated(&mut e, 0.0, 60.0, 1, 2.0, 1000);
        let before = e.rates();
        // Sequence back to 0 (consumer recreated), then a 10-minute gap.
        e.observe(sample(65.0, 0, 1000, 0));
        e.observe(sample(665.0, 5000, 1000, 1));
        assert_eq!(e.rates(), before);
        e.interrupt();
        e.observe(sample(670.0, 1, 0, 0));
        assert_eq!(e.rates(), before);
    }

    #[test]
    fn targets_move_in_steps_of_ten_percent_at_most_once_a_minute() {
        let h = Hysteresis::default();
        let minute = Duration::from_secs(60);
        let sent = quantize(100.0);
        assert!((sent / 100.0 - 1.0).abs() < 0.05, "{sent}");
        assert_eq!(quantize(99.0), sent, "a few percent is the same step");
        // 97.0 is sent; estimates between the neighbouring steps' edges do
        // not flap it, a full step away does.
        assert!((sent - 97.0).abs() < 0.1, "{sent}");
        assert!(!h.should_send(sent, 103.0, minute));
        assert!(!h.should_send(sent, 90.0, minute));
        assert!(h.should_send(sent, 107.0, minute));
        assert!(h.should_send(sent, 80.0, minute));
        assert!(!h.should_send(sent, 200.0, Duration::from_secs(59)));
        for t in [0.01, 0.5, 7.0, 1e6] {
            assert!((quantize(t) / t - 1.0).abs() < 0.05, "{t}");
        }
    }
}
