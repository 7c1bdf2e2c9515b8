//! `drainWithin` against fixed `lagThreshold`s, on a simulated worker pool.
//!
//! A pool of replicas, each acknowledging `MU` messages a second one at a
//! time, is scaled by an HPA that follows Kubernetes' rules as eds renders
//! them: `ceil(metric / target)` every 15 s with a 10 % tolerance, scale-up
//! by at most max(100 %, 4 pods) per sync, scale-down after a 300 s
//! stabilization window and by at most 50 % a minute; a new pod works after
//! 10 s. The metric and target come either from a fixed `lagThreshold` or
//! from eds's own `drainWithin` estimator (`src/drain.rs`, compiled in), fed
//! the consumer counts every 5 s and sending a target as the scaler does.
//!
//! The first 300 s are warm-up, left out of the figures (not the plot): every
//! policy settles on the steady inflow, and `drainWithin` goes through its
//! cold start on the fallback target until μ has been measured.
//!
//! Writes a markdown table to stdout and `drain.md`, and the plot to
//! `drain.png`, both in the directory given as the first argument.
#[path = "../../../src/drain.rs"]
#[allow(dead_code)]
mod drain;

use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use drain::{Estimator, EstimatorConfig, Hysteresis, Rates, drain_metric, drain_target, quantize};
use plotters::prelude::*;

/// Messages one replica acknowledges per second.
const MU: f64 = 10.0;
/// The steady inflow, messages per second (two replicas' worth).
const STEADY: f64 = 20.0;
const BURST_START: u64 = 300;
const BURST_SECONDS: u64 = 30;
const RAMP_SECONDS: u64 = 1200;
const DURATION: u64 = 1800;
const HPA_SYNC: u64 = 15;
const SAMPLE_EVERY: u64 = 5;
const POD_START: u64 = 10;
const MIN_REPLICAS: u32 = 1;
const MAX_REPLICAS: u32 = 100;
const STABILIZATION: u64 = 300;
const DRAIN_WITHIN: Duration = Duration::from_secs(60);
/// The `lagThreshold` a drainWithin claim falls back on (eds's default).
const FALLBACK_THRESHOLD: f64 = 5.0;
const THRESHOLDS: [f64; 11] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Load {
    /// 10× the steady rate for 30 s.
    Burst,
    /// From the steady rate to 5× over 20 minutes.
    Ramp,
}

impl Load {
    fn arrivals(self, t: u64) -> f64 {
        match self {
            Load::Burst if (BURST_START..BURST_START + BURST_SECONDS).contains(&t) => 10.0 * STEADY,
            Load::Burst => STEADY,
            Load::Ramp => {
                let progress = (t.saturating_sub(BURST_START) as f64 / RAMP_SECONDS as f64).min(1.0);
                STEADY * (1.0 + 4.0 * progress)
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Load::Burst => "burst (10x for 30 s)",
            Load::Ramp => "slow ramp (1x to 5x over 20 min)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    Threshold(f64),
    Drain,
}

impl Policy {
    fn label(self) -> String {
        match self {
            Policy::Threshold(t) => format!("lagThreshold {t}"),
            Policy::Drain => format!("drainWithin {}s", DRAIN_WITHIN.as_secs()),
        }
    }
}

/// One run, second by second.
#[derive(Clone)]
struct Run {
    policy: Policy,
    lag: Vec<f64>,
    replicas: Vec<u32>,
    replica_seconds: f64,
    changes: u32,
    /// Seconds from the burst's start until the lag is back under one
    /// second of steady inflow (burst load only).
    drain_time: Option<u64>,
    /// The longest a new message had to wait, `lag / (ready replicas × MU)`,
    /// in seconds.
    max_wait: f64,
}

/// The scaler's side of `drainWithin`, as `scaler::drain` runs it.
struct DrainScaler {
    estimator: Estimator,
    hysteresis: Hysteresis,
    sent: f64,
    measured: bool,
    sent_at: u64,
}

impl DrainScaler {
    fn new() -> Self {
        DrainScaler {
            estimator: Estimator::new(EstimatorConfig::default(), NonZeroU32::MIN),
            hysteresis: Hysteresis::default(),
            sent: FALLBACK_THRESHOLD,
            measured: false,
            sent_at: 0,
        }
    }

    fn observe(&mut self, t: u64, sample: drain::Sample) {
        self.estimator.observe(sample);
        let Some(target) = drain_target(self.estimator.rates(), DRAIN_WITHIN) else {
            return;
        };
        let since = Duration::from_secs(t - self.sent_at);
        let send = if self.measured {
            self.hysteresis.should_send(self.sent, target, since)
        } else {
            since >= self.hysteresis.min_interval
        };
        if send {
            self.sent = quantize(target);
            self.measured = true;
            self.sent_at = t;
        }
    }

    fn rates(&self) -> Rates {
        self.estimator.rates()
    }
}

fn simulate(load: Load, policy: Policy) -> Run {
    let mut backlog = 0.0f64; // pending + ack-pending
    let mut acked = 0.0f64;
    let mut spec: u32 = 2;
    let mut starting: Vec<u64> = Vec::new(); // ready times of pods starting
    let mut ready: u32 = 2;
    let mut recommendations: Vec<(u64, u32)> = Vec::new();
    let mut history: Vec<u32> = Vec::new();
    let mut scaler = DrainScaler::new();
    let mut run = Run {
        policy,
        lag: Vec::new(),
        replicas: Vec::new(),
        replica_seconds: 0.0,
        changes: 0,
        drain_time: None,
        max_wait: 0.0,
    };
    for t in 0..DURATION {
        // Pods that finished starting.
        starting.retain(|at| {
            if *at <= t {
                ready += 1;
                false
            } else {
                true
            }
        });
        ready = ready.min(spec);
        let arrivals = load.arrivals(t);
        backlog += arrivals;
        let done = backlog.min(f64::from(ready) * MU);
        backlog -= done;
        acked += done;
        let ack_pending = backlog.min(f64::from(ready));
        let pending = backlog - ack_pending;

        if t % SAMPLE_EVERY == 0 && policy == Policy::Drain {
            let sample = drain::Sample {
                at: t as f64,
                delivered: (acked + ack_pending).round() as u64,
                pending: pending.round() as u64,
                ack_pending: ack_pending.round() as u64,
                redelivered: 0,
            };
            scaler.observe(t, sample);
        }

        if t % HPA_SYNC == 0 && t > 0 {
            let lag = backlog.round();
            let (metric, target) = match policy {
                Policy::Threshold(threshold) => (lag, threshold),
                Policy::Drain if scaler.measured => {
                    (drain_metric(lag as u64, scaler.rates(), DRAIN_WITHIN), scaler.sent)
                }
                Policy::Drain => (lag, scaler.sent),
            };
            let current = spec;
            let ratio = metric / (target * f64::from(current));
            let raw = if (ratio - 1.0).abs() <= 0.1 {
                current
            } else {
                ((metric / target).ceil() as u32).clamp(MIN_REPLICAS, MAX_REPLICAS)
            };
            recommendations.push((t, raw));
            recommendations.retain(|(at, _)| at + STABILIZATION > t);
            let mut wanted = if raw > current {
                raw.min((current * 2).max(current + 4))
            } else {
                // Scale-down: the highest recommendation of the window,
                // and at most half the pods of a minute ago.
                let stable = recommendations.iter().map(|(_, r)| *r).max().unwrap_or(raw);
                let minute_ago = history[(t as usize).saturating_sub(60)];
                stable.min(current).max(minute_ago.div_ceil(2))
            };
            wanted = wanted.clamp(MIN_REPLICAS, MAX_REPLICAS);
            if wanted != spec {
                run.changes += u32::from(t >= BURST_START);
                if wanted > spec {
                    starting.extend(std::iter::repeat_n(t + POD_START, (wanted - spec) as usize));
                } else {
                    let mut remove = spec - wanted;
                    // Pods still starting go first.
                    while remove > 0 && starting.pop().is_some() {
                        remove -= 1;
                    }
                    ready -= remove.min(ready);
                }
                spec = wanted;
            }
        }
        history.push(spec);
        run.lag.push(backlog);
        run.replicas.push(spec);
        // The first BURST_START seconds are warm-up: every policy settles on
        // the steady inflow (drainWithin from its cold start on the fallback).
        if t < BURST_START {
            continue;
        }
        run.replica_seconds += f64::from(spec);
        run.max_wait = run.max_wait.max(backlog / (f64::from(ready.max(1)) * MU));
        if load == Load::Burst && run.drain_time.is_none() && t >= BURST_START + BURST_SECONDS && backlog <= STEADY {
            run.drain_time = Some(t - BURST_START);
        }
    }
    run
}

/// The best fixed threshold meets the objective (drained within D, or no
/// message waiting longer than D) with the fewest replica-seconds; the worst
/// misses it by the most.
fn best_and_worst(load: Load, runs: &[Run]) -> (usize, usize) {
    let score = |r: &Run| match load {
        Load::Burst => r.drain_time.map_or(f64::INFINITY, |d| d as f64),
        Load::Ramp => r.max_wait,
    };
    let objective = DRAIN_WITHIN.as_secs_f64();
    let best = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| score(r) <= objective)
        .min_by(|a, b| a.1.replica_seconds.total_cmp(&b.1.replica_seconds))
        .or_else(|| runs.iter().enumerate().min_by(|a, b| score(a.1).total_cmp(&score(b.1))))
        .map(|(i, _)| i)
        .unwrap();
    let worst = runs
        .iter()
        .enumerate()
        .max_by(|a, b| score(a.1).total_cmp(&score(b.1)))
        .map(|(i, _)| i)
        .unwrap();
    (best, worst)
}

fn table(load: Load, runs: &[&Run], notes: &[&str]) -> String {
    let mut out = String::new();
    writeln!(out, "#### {}\n", load.name()).unwrap();
    writeln!(
        out,
        "| policy | | time to drain the burst | longest wait (lag / pool rate) | replica-seconds | replica changes | most replicas |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|").unwrap();
    for (run, note) in runs.iter().zip(notes) {
        let drain = match (load, run.drain_time) {
            (Load::Burst, Some(d)) => format!("{d} s"),
            (Load::Burst, None) => "not drained".to_string(),
            (Load::Ramp, _) => "-".to_string(),
        };
        writeln!(
            out,
            "| {} | {} | {} | {:.0} s | {:.0} | {} | {} |",
            run.policy.label(),
            note,
            drain,
            run.max_wait,
            run.replica_seconds,
            run.changes,
            run.replicas.iter().max().unwrap()
        )
        .unwrap();
    }
    out
}

type Panel<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// One panel: a series per run over time, on a grid of minutes. No text:
/// the plotting crate is built without fonts; docs/benchmarks.md gives the
/// axes and colours.
fn panel(area: &Panel<'_>, runs: &[&Run], value: impl Fn(&Run, usize) -> f64) {
    let top = runs
        .iter()
        .flat_map(|r| (0..r.lag.len()).map(|i| value(r, i)))
        .fold(1.0f64, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .build_cartesian_2d(0f64..DURATION as f64, 0f64..top)
        .unwrap();
    chart
        .configure_mesh()
        .x_labels(0)
        .y_labels(0)
        .disable_x_mesh()
        .disable_y_mesh()
        .draw()
        .unwrap();
    let grid = RGBColor(220, 220, 220);
    for minute in (0..=DURATION).step_by(60) {
        chart
            .draw_series(LineSeries::new([(minute as f64, 0.0), (minute as f64, top)], grid))
            .unwrap();
    }
    let colours = [BLUE, GREEN, RED];
    for (run, colour) in runs.iter().zip(colours) {
        chart
            .draw_series(LineSeries::new(
                (0..run.lag.len()).map(|i| (i as f64, value(run, i))),
                colour.stroke_width(2),
            ))
            .unwrap();
    }
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (DURATION as f64, 0.0)], BLACK))
        .unwrap();
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&out).unwrap();
    let mut markdown = String::new();
    let mut plotted = Vec::new();
    for load in [Load::Burst, Load::Ramp] {
        let fixed: Vec<Run> = THRESHOLDS
            .iter()
            .map(|t| simulate(load, Policy::Threshold(*t)))
            .collect();
        let drain = simulate(load, Policy::Drain);
        let (best, worst) = best_and_worst(load, &fixed);
        markdown.push_str(&table(
            load,
            &[&drain, &fixed[best], &fixed[worst]],
            &["", "best fixed", "worst fixed"],
        ));
        markdown.push('\n');
        let all: Vec<&Run> = fixed.iter().collect();
        let mut details = table(load, &all, &[""; THRESHOLDS.len()]);
        details = details.replacen("#### ", "<details><summary>every fixed threshold, ", 1);
        details = details.replacen("\n\n", "</summary>\n\n", 1);
        markdown.push_str(&details);
        markdown.push_str("\n</details>\n\n");
        plotted.push((drain, fixed[best].clone(), fixed[worst].clone()));
    }
    print!("{markdown}");
    std::fs::write(out.join("drain.md"), &markdown).unwrap();

    let png = out.join("drain.png");
    let root = BitMapBackend::new(&png, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let columns = root.split_evenly((2, 2));
    for (column, (drain, best, worst)) in plotted.iter().enumerate() {
        let runs = [drain, best, worst];
        panel(&columns[column], &runs, |r, i| r.lag[i]);
        panel(&columns[2 + column], &runs, |r, i| f64::from(r.replicas[i]));
    }
    root.present().unwrap();
    eprintln!("wrote {} and {}", out.join("drain.md").display(), png.display());
}
