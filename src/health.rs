//! Consumer health: whether more replicas can drain a claim's consumer, and if
//! not, why. Pure: the controller feeds it one [`Sample`] per lag reading and
//! turns the [`Assessment`] into the `ConsumerHealthy` condition.
//!
//! # Acknowledgements come from consumer sequences, not the ack floor
//! Between two readings, `acks = Δdelivered − Δack_pending − Δredelivered⁺`:
//! each delivery raises `delivered.consumer_seq` by one, a first delivery also
//! raises `num_ack_pending`, and an acknowledgement lowers it. A message
//! redelivered for the first time raises `num_redelivered` instead, so it is
//! not mistaken for progress. The ack floor would be simpler, but one slow
//! message holds it still while every other message flows, and that pool is
//! not stalled. A message redelivered again and again does count here: that
//! pool is caught as `PoisonMessages` instead.
//!
//! # Bounded
//! Per consumer the history is one sample and four instants, whatever the
//! window or the reading rate: O(1) memory per claim.
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use crate::api::Scaling;
use crate::lag::ConsumerState;
use crate::render::status::{ConsumerHealth, HealthReason};
use crate::trigger::replica_cap;

pub use crate::api::DEFAULT_STALL_AFTER;
/// How long redeliveries must last, or how recent an advisory must be, for
/// `PoisonMessages`.
pub const DEFAULT_POISON_WINDOW: Duration = Duration::from_secs(10 * 60);

/// One reading of a consumer, and what surrounded it.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When the consumer was read (a cached reading keeps its time, so a
    /// reading seen twice is recorded once).
    pub at: Instant,
    pub state: ConsumerState,
    /// The Deployment's ready replicas.
    pub ready_replicas: u32,
    /// Advisories counted for this consumer since the listener started.
    pub advisories: Advisories,
}

/// Counts of the server's per-consumer advisories, which fire only where
/// `max_deliver` is finite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Advisories {
    /// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES`: a message reached
    /// `max_deliver` and is no longer delivered.
    pub max_deliveries: u64,
    /// `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED`: a worker gave up on a
    /// message (`+TERM`).
    pub terminated: u64,
}

impl Advisories {
    fn total(self) -> u64 {
        self.max_deliveries.saturating_add(self.terminated)
    }
}

/// The claim's side of the assessment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub stall_after: Duration,
    pub poison_window: Duration,
    pub concurrency: NonZeroU32,
    pub max_replicas: u32,
}

impl Settings {
    /// A claim's settings; the poison window is the controller's.
    pub fn for_claim(scaling: &Scaling, poison_window: Duration) -> Self {
        Settings {
            stall_after: scaling.stall_after(),
            poison_window,
            concurrency: scaling
                .concurrency
                .and_then(|n| NonZeroU32::new(u32::try_from(n).unwrap_or(0)))
                .unwrap_or(NonZeroU32::MIN),
            max_replicas: u32::try_from(scaling.max_replicas).unwrap_or(0),
        }
    }
}

/// What was learnt from the samples so far.
#[derive(Clone, Debug, Default)]
pub struct History {
    last: Option<Sample>,
    /// The last acknowledgement, or the last time there was nothing to
    /// acknowledge (no backlog, no ready replica), or the first sample.
    last_progress: Option<Instant>,
    /// Since when every sample had redelivered messages, and the fewest seen.
    redelivering: Option<(Instant, u64)>,
    /// When the advisory counts last rose.
    last_advisory: Option<Instant>,
    /// Advisory counts when the current run of advisories began.
    advisories_before: Advisories,
}

impl History {
    /// Folds one sample in. A sample no newer than the last is ignored; a
    /// consumer whose sequence went back (deleted and made again) starts over.
    pub fn record(&mut self, sample: Sample, settings: &Settings) {
        let at = sample.at;
        if let Some(last) = &self.last {
            if at <= last.at {
                return;
            }
            if sample.state.delivered_consumer_seq < last.state.delivered_consumer_seq {
                *self = History::default();
            }
        }
        let idle = sample.state.lag() == 0 || sample.ready_replicas == 0;
        match &self.last {
            Some(last) if !idle && acknowledged(&last.state, &sample.state) == 0 => {}
            _ => self.last_progress = Some(at),
        }
        self.redelivering = match (sample.state.redelivered, self.redelivering) {
            (0, _) => None,
            (now, Some((since, fewest))) => Some((since, fewest.min(now))),
            (now, None) => Some((at, now)),
        };
        let before = self.last.as_ref().map_or(sample.advisories, |l| l.advisories);
        if sample.advisories.total() > before.total() {
            let run_over = |t: Instant| at.saturating_duration_since(t) >= settings.poison_window;
            if self.last_advisory.is_none_or(run_over) {
                self.advisories_before = before;
            }
            self.last_advisory = Some(at);
        }
        self.last = Some(sample);
    }

    /// When the last sample was read.
    pub fn last_at(&self) -> Option<Instant> {
        self.last.as_ref().map(|s| s.at)
    }

    /// The consumer's health at `now`, from the samples so far.
    pub fn assess(&self, settings: &Settings, now: Instant) -> Assessment {
        let Some(last) = &self.last else {
            return Assessment::default();
        };
        let state = &last.state;
        let cap = replica_cap(state.max_ack_pending, settings.concurrency);
        let since_progress = self.last_progress.map(|t| now.saturating_duration_since(t));
        let mut problems = Vec::new();

        if state.lag() > 0
            && last.ready_replicas > 0
            && let Some(quiet) = since_progress.filter(|q| *q >= settings.stall_after)
        {
            problems.push((
                HealthReason::Stalled,
                format!(
                    "lag {} with {} ready replicas, and no message acknowledged for {}s (stallAfter {}s): \
                     the workers are not finishing messages; more replicas will not help",
                    state.lag(),
                    last.ready_replicas,
                    quiet.as_secs(),
                    settings.stall_after.as_secs()
                ),
            ));
        }

        let mut poison = Vec::new();
        if let Some((since, fewest)) = self.redelivering
            && now.saturating_duration_since(since) >= settings.poison_window
        {
            poison.push(format!(
                "at least {fewest} un-acknowledged messages have been redelivered for {}s",
                now.saturating_duration_since(since).as_secs()
            ));
        }
        if let Some(at) = self.last_advisory
            && now.saturating_duration_since(at) < settings.poison_window
        {
            let recent = |total: u64, before: u64| total.saturating_sub(before);
            poison.push(format!(
                "the server gave up on {} messages at max_deliver {} and workers terminated {}, the last {}s ago",
                recent(last.advisories.max_deliveries, self.advisories_before.max_deliveries),
                state.max_deliver.map_or("unlimited".into(), |n| n.to_string()),
                recent(last.advisories.terminated, self.advisories_before.terminated),
                now.saturating_duration_since(at).as_secs(),
            ));
        }
        if !poison.is_empty() {
            problems.push((
                HealthReason::PoisonMessages,
                format!(
                    "{} within the last {}s: some messages fail every time",
                    poison.join("; "),
                    settings.poison_window.as_secs()
                ),
            ));
        }

        if let (Some(limit), Some(cap)) = (state.max_ack_pending, cap)
            && state.ack_pending >= limit
            && cap < u64::from(settings.max_replicas)
        {
            problems.push((
                HealthReason::Saturated,
                format!(
                    "ack-pending {} has reached the consumer's max_ack_pending {limit}: at most {cap} replicas \
                     (ceil({limit} / concurrency {})) get messages, below maxReplicas {}",
                    state.ack_pending, settings.concurrency, settings.max_replicas
                ),
            ));
        }

        let mut misconfigured = Vec::new();
        if state.ack_policy != "explicit" {
            misconfigured.push(format!(
                "ack_policy is {:?}, not \"explicit\": a replica cannot acknowledge only its own messages",
                state.ack_policy
            ));
        }
        if state.max_deliver.is_none() {
            misconfigured.push("max_deliver is unlimited: a poison message is redelivered forever".to_string());
        }
        if !misconfigured.is_empty() {
            problems.push((
                HealthReason::Misconfigured,
                format!("consumer config {}", misconfigured.join("; ")),
            ));
        }

        Assessment {
            problems,
            replica_cap: cap,
            since_progress,
        }
    }
}

/// Acknowledgements between two readings (see the module docs).
pub fn acknowledged(before: &ConsumerState, after: &ConsumerState) -> u64 {
    crate::drain::acknowledged(before.progress(), after.progress())
}

/// The problems found, most pressing first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    /// Each reason found, with its message; in the order Stalled,
    /// PoisonMessages, Saturated, Misconfigured.
    pub problems: Vec<(HealthReason, String)>,
    /// `ceil(max_ack_pending / concurrency)`, where the consumer sets a limit.
    pub replica_cap: Option<u64>,
    /// Time since the last acknowledgement (or since there was nothing to
    /// acknowledge).
    pub since_progress: Option<Duration>,
}

impl Assessment {
    /// Whether `reason` is among the problems.
    pub fn has(&self, reason: HealthReason) -> bool {
        self.problems.iter().any(|(r, _)| *r == reason)
    }

    /// The condition: the first problem, the others named after it.
    pub fn health(&self) -> ConsumerHealth {
        let Some((reason, message)) = self.problems.first() else {
            return ConsumerHealth::Healthy;
        };
        let others: Vec<&str> = self.problems[1..].iter().map(|(r, _)| r.as_str()).collect();
        let message = if others.is_empty() {
            message.clone()
        } else {
            format!("{message} (also: {})", others.join(", "))
        };
        ConsumerHealth::unhealthy(*reason, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        stall_after: Duration::from_secs(300),
        poison_window: Duration::from_secs(600),
        concurrency: NonZeroU32::MIN,
        max_replicas: 10,
    };

    /// A well-configured consumer.
    fn state(pending: u64, ack_pending: u64, delivered: u64) -> ConsumerState {
        ConsumerState {
            pending,
            ack_pending,
            delivered_consumer_seq: delivered,
            ack_policy: "explicit".into(),
            max_deliver: Some(5),
            ..Default::default()
        }
    }

    struct Feed {
        start: Instant,
        history: History,
    }

    impl Feed {
        fn new() -> Self {
            Feed {
                start: Instant::now(),
                history: History::default(),
            }
        }
        fn at(&self, secs: u64) -> Instant {
            self.start + Duration::from_secs(secs)
        }
        fn record(&mut self, secs: u64, state: ConsumerState, ready: u32, advisories: Advisories) {
            let sample = Sample {
                at: self.at(secs),
                state,
                ready_replicas: ready,
                advisories,
            };
            self.history.record(sample, &SETTINGS);
        }
        fn assess(&self, secs: u64) -> Assessment {
            self.history.assess(&SETTINGS, self.at(secs))
        }
    }

    #[test]
    fn settings_come_from_the_claim() {
        let scaling = Scaling {
            concurrency: Some(4),
            max_replicas: 7,
            stall_after: Some("90s".into()),
            ..Scaling::default()
        };
        let settings = Settings::for_claim(&scaling, Duration::from_secs(60));
        assert_eq!(
            settings,
            Settings {
                stall_after: Duration::from_secs(90),
                poison_window: Duration::from_secs(60),
                concurrency: NonZeroU32::new(4).unwrap(),
                max_replicas: 7,
            }
        );
        let defaults = Settings::for_claim(&Scaling::default(), DEFAULT_POISON_WINDOW);
        assert_eq!(
            (defaults.stall_after, defaults.concurrency.get()),
            (DEFAULT_STALL_AFTER, 1)
        );
    }

    #[test]
    fn acknowledgements_come_from_consumer_sequences() {
        // 10 new deliveries, ack-pending up by 4: 6 acknowledged.
        assert_eq!(acknowledged(&state(50, 3, 100), &state(40, 7, 110)), 6);
        // Only redeliveries of already pending messages: none acknowledged.
        let before = ConsumerState {
            redelivered: 0,
            ..state(0, 3, 100)
        };
        let after = ConsumerState {
            redelivered: 3,
            ..state(0, 3, 103)
        };
        assert_eq!(acknowledged(&before, &after), 0);
        // Nothing delivered, two acknowledged.
        assert_eq!(acknowledged(&state(0, 5, 100), &state(0, 3, 100)), 2);
        assert_eq!(acknowledged(&state(0, 5, 100), &state(0, 9, 100)), 0, "never negative");
    }

    #[test]
    fn a_pool_that_acknowledges_nothing_stalls_after_stall_after() {
        let mut feed = Feed::new();
        for t in (0..=300).step_by(15) {
            feed.record(t, state(100, 10, 10), 3, Advisories::default());
        }
        assert!(!feed.assess(299).has(HealthReason::Stalled), "not before stallAfter");
        let assessment = feed.assess(300);
        assert_eq!(assessment.problems[0].0, HealthReason::Stalled);
        assert!(assessment.problems[0].1.contains("lag 110 with 3 ready replicas"));
        assert_eq!(assessment.since_progress, Some(Duration::from_secs(300)));
        // One acknowledgement clears it.
        feed.record(315, state(100, 9, 10), 3, Advisories::default());
        assert!(!feed.assess(315).has(HealthReason::Stalled));
        assert_eq!(feed.assess(320).since_progress, Some(Duration::from_secs(5)));
    }

    #[test]
    fn one_slow_message_among_many_flowing_is_not_stalled() {
        // The ack floor would stay put behind the slow message; deliveries
        // keep coming and ack-pending stays at 1 + the flow in hand.
        let mut feed = Feed::new();
        for (i, t) in (0..=900).step_by(15).enumerate() {
            let delivered = 1 + 20 * i as u64;
            feed.record(t, state(500, 3, delivered), 4, Advisories::default());
        }
        assert!(!feed.assess(900).has(HealthReason::Stalled));
    }

    #[test]
    fn nothing_to_do_or_nobody_to_do_it_is_not_stalled() {
        let mut feed = Feed::new();
        for t in (0..=600).step_by(15) {
            feed.record(t, state(0, 0, 10), 3, Advisories::default());
        }
        assert!(!feed.assess(600).has(HealthReason::Stalled), "no lag");
        let mut feed = Feed::new();
        for t in (0..=600).step_by(15) {
            feed.record(t, state(100, 0, 10), 0, Advisories::default());
        }
        assert!(!feed.assess(600).has(HealthReason::Stalled), "scaled to zero");
        // Replicas come up and do nothing: the clock starts then.
        for t in (615..=900).step_by(15) {
            feed.record(t, state(100, 0, 10), 2, Advisories::default());
        }
        assert!(!feed.assess(899).has(HealthReason::Stalled));
        assert!(
            feed.assess(900).has(HealthReason::Stalled),
            "from the last idle reading"
        );
    }

    #[test]
    fn redeliveries_that_last_the_window_are_poison() {
        let mut feed = Feed::new();
        let redelivering = |n, delivered| ConsumerState {
            redelivered: n,
            ..state(0, 5, delivered)
        };
        feed.record(0, redelivering(2, 10), 1, Advisories::default());
        for t in (15..=600).step_by(15) {
            feed.record(t, redelivering(3, 10 + t), 1, Advisories::default());
        }
        let assessment = feed.assess(600);
        assert!(assessment.has(HealthReason::PoisonMessages), "{assessment:?}");
        assert!(!assessment.has(HealthReason::Stalled), "redeliveries are deliveries");
        assert!(
            assessment.problems[0].1.contains("at least 2 un-acknowledged messages"),
            "{assessment:?}"
        );
        // A sample without redeliveries restarts the window.
        feed.record(615, redelivering(0, 700), 1, Advisories::default());
        feed.record(630, redelivering(1, 701), 1, Advisories::default());
        assert!(!feed.assess(1200).has(HealthReason::PoisonMessages));
        assert!(feed.assess(1230).has(HealthReason::PoisonMessages));
    }

    #[test]
    fn advisories_within_the_window_are_poison() {
        let mut feed = Feed::new();
        let advisories = |max_deliveries, terminated| Advisories {
            max_deliveries,
            terminated,
        };
        feed.record(0, state(0, 0, 10), 1, advisories(4, 0));
        assert!(
            !feed.assess(0).has(HealthReason::PoisonMessages),
            "counts before we looked"
        );
        feed.record(15, state(0, 0, 12), 1, advisories(6, 1));
        feed.record(30, state(0, 0, 14), 1, advisories(7, 1));
        let assessment = feed.assess(30);
        let (reason, message) = &assessment.problems[0];
        assert_eq!(*reason, HealthReason::PoisonMessages);
        assert!(
            message.contains("gave up on 3 messages at max_deliver 5 and workers terminated 1, the last 0s ago"),
            "{message}"
        );
        assert!(feed.assess(629).has(HealthReason::PoisonMessages));
        assert!(!feed.assess(630).has(HealthReason::PoisonMessages), "the window passed");
    }

    #[test]
    fn saturated_only_where_the_cap_binds() {
        let mut feed = Feed::new();
        let saturated = ConsumerState {
            max_ack_pending: Some(4),
            ..state(96, 4, 4)
        };
        feed.record(0, saturated.clone(), 4, Advisories::default());
        let assessment = feed.assess(0);
        assert_eq!(assessment.replica_cap, Some(4));
        let (reason, message) = &assessment.problems[0];
        assert_eq!(*reason, HealthReason::Saturated);
        assert_eq!(
            message,
            "ack-pending 4 has reached the consumer's max_ack_pending 4: at most 4 replicas \
             (ceil(4 / concurrency 1)) get messages, below maxReplicas 10"
        );
        let wide = Settings {
            max_replicas: 4,
            ..SETTINGS
        };
        assert!(!feed.history.assess(&wide, feed.at(0)).has(HealthReason::Saturated));
        let mut feed = Feed::new();
        feed.record(
            0,
            ConsumerState {
                ack_pending: 3,
                ..saturated
            },
            4,
            Advisories::default(),
        );
        assert!(!feed.assess(0).has(HealthReason::Saturated), "below the limit");
    }

    #[test]
    fn misconfiguration_names_each_setting() {
        let mut feed = Feed::new();
        feed.record(
            0,
            ConsumerState {
                ack_policy: "none".into(),
                max_deliver: None,
                ..state(0, 0, 0)
            },
            1,
            Advisories::default(),
        );
        let health = feed.assess(0).health();
        let ConsumerHealth::Unhealthy { reason, message } = health else {
            panic!("{health:?}")
        };
        assert_eq!(reason, HealthReason::Misconfigured);
        assert!(message.contains(r#"ack_policy is "none""#), "{message}");
        assert!(message.contains("max_deliver is unlimited"), "{message}");
    }

    #[test]
    fn the_most_pressing_reason_leads_and_names_the_others() {
        let mut feed = Feed::new();
        let bad = ConsumerState {
            max_ack_pending: Some(2),
            max_deliver: None,
            ..state(10, 2, 2)
        };
        feed.record(0, bad.clone(), 2, Advisories::default());
        feed.record(300, bad, 2, Advisories::default());
        let ConsumerHealth::Unhealthy { reason, message } = feed.assess(300).health() else {
            panic!("unhealthy expected")
        };
        assert_eq!(reason, HealthReason::Stalled);
        assert!(message.ends_with("(also: Saturated, Misconfigured)"), "{message}");

        let mut healthy = Feed::new();
        healthy.record(0, state(0, 0, 0), 1, Advisories::default());
        assert_eq!(healthy.assess(0).health(), ConsumerHealth::Healthy);
        assert_eq!(
            History::default().assess(&SETTINGS, Instant::now()).health(),
            ConsumerHealth::Healthy
        );
    }

    #[test]
    fn a_recreated_consumer_starts_over_and_old_readings_are_ignored() {
        let mut feed = Feed::new();
        for t in (0..=300).step_by(15) {
            feed.record(t, state(100, 10, 500), 3, Advisories::default());
        }
        assert!(feed.assess(300).has(HealthReason::Stalled));
        feed.record(300, state(100, 0, 0), 3, Advisories::default());
        assert!(
            feed.assess(300).has(HealthReason::Stalled),
            "the same reading again changes nothing"
        );
        feed.record(315, state(100, 0, 0), 3, Advisories::default());
        assert!(
            !feed.assess(315).has(HealthReason::Stalled),
            "sequence went back: a new consumer"
        );
    }
}
