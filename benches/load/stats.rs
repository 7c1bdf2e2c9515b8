//! Latency samples and what the report says about them.
use std::time::Duration;

use serde::Serialize;

/// Latencies of one kind of call, with its failures.
#[derive(Clone, Default)]
pub struct Latencies {
    micros: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Latencies {
    pub fn record<T, E: std::fmt::Display>(&mut self, took: Duration, result: &Result<T, E>) {
        match result {
            Ok(_) => self.micros.push(took.as_micros() as u64),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    /// Awaits `call`, recording how long it took and whether it failed.
    pub async fn time<T, E: std::fmt::Display>(&mut self, call: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let started = tokio::time::Instant::now();
        let result = call.await;
        self.record(started.elapsed(), &result);
        result
    }

    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn summary(mut self, window: Duration) -> Summary {
        self.micros.sort_unstable();
        let calls = self.micros.len() as u64 + self.errors;
        Summary {
            calls,
            errors: self.errors,
            first_error: self.first_error,
            per_sec: calls as f64 / window.as_secs_f64(),
            p50_us: quantile(&self.micros, 0.50),
            p99_us: quantile(&self.micros, 0.99),
            max_us: self.micros.last().copied().unwrap_or(0),
        }
    }
}

/// A latency distribution as reported.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Summary {
    pub calls: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    pub per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Nearest-rank quantile of sorted values (0 when there are none). The KEDA
/// harness uses the same rule, so the two columns compare.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() as f64 * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A small, seedable generator for poll phases (no crate needed for this).
pub struct SplitMix(u64);

impl SplitMix {
    pub fn from_time() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        SplitMix(nanos)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, period)`.
    pub fn phase(&mut self, period: Duration) -> Duration {
        let nanos = period.as_nanos().max(1) as u64;
        Duration::from_nanos(self.next_u64() % nanos)
    }
}
