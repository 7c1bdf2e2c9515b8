//! KEDA's built-in `nats-jetstream` scaler, driven by its own code in the Go
//! harness `benches/keda-baseline` (built by `scripts/tools.sh keda-bench`).
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use testkit::process::tool;

/// What the harness prints: the same figures as ours.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    pub mode: String,
    pub consumers: usize,
    pub scaled_objects: usize,
    pub window_secs: f64,
    pub calls: u64,
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    pub calls_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// `/jsz` requests nats-server served in the window.
    pub http_requests: u64,
    pub bytes_read: u64,
    pub bytes_per_call: f64,
    pub bytes_per_sec: f64,
    pub harness_cpu_secs: f64,
    pub nats_cpu_secs: f64,
    pub harness_rss_bytes: u64,
}

/// Where and how to run the harness.
pub struct Harness {
    pub monitor_port: u16,
    pub nats_pid: u32,
    pub stream: String,
    pub consumer_prefix: String,
}

impl Harness {
    /// KEDA's schedule (pollingInterval and HPA sync) for `scaled_objects`
    /// ScaledObjects spread over `consumers` consumers.
    pub fn poll(
        &self,
        consumers: usize,
        scaled_objects: usize,
        interval: Duration,
        hpa: Duration,
        window: Duration,
    ) -> Run {
        self.run(
            consumers,
            &[
                "-mode=poll".into(),
                format!("-scaled-objects={scaled_objects}"),
                format!("-interval={}ms", interval.as_millis()),
                format!("-hpa={}ms", hpa.as_millis()),
                format!("-window={}ms", window.as_millis()),
            ],
        )
    }

    /// `workers` callers back to back for `window`.
    pub fn closed_loop(&self, consumers: usize, workers: usize, window: Duration) -> Run {
        self.run(
            consumers,
            &[
                "-mode=max".into(),
                format!("-workers={workers}"),
                format!("-window={}ms", window.as_millis()),
            ],
        )
    }

    fn run(&self, consumers: usize, args: &[String]) -> Run {
        let output = Command::new(tool("keda-bench"))
            .arg(format!("-monitor=127.0.0.1:{}", self.monitor_port))
            .arg(format!("-nats-pid={}", self.nats_pid))
            .arg(format!("-stream={}", self.stream))
            .arg(format!("-prefix={}", self.consumer_prefix))
            .arg(format!("-consumers={consumers}"))
            .args(args)
            .output()
            .expect("running keda-bench (scripts/tools.sh keda-bench builds it)");
        assert!(
            output.status.success(),
            "keda-bench {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "keda-bench printed no result ({e}):\n{}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}
