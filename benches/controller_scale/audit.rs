//! The API server's own record of a client's requests: its audit log, which
//! holds every request of the ServiceAccounts of `eds-system`.
use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::Value;

/// One request, as the audit log has it.
#[derive(Clone, Debug)]
pub struct Request {
    pub verb: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub at: Timestamp,
    pub code: i64,
    /// From the request's arrival to its answer, as the API server saw it
    /// (queueing in priority and fairness included).
    pub latency_s: f64,
}

impl Request {
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// `verb resource`, the key requests are counted under.
    pub fn key(&self) -> String {
        format!("{} {}", self.verb, self.resource)
    }
}

/// Follows the audit log as it grows, keeping the requests of one user
/// (e.g. `system:serviceaccount:eds-system:eds-controller`): a watch once,
/// when it started; anything else when it completed.
pub struct Tail {
    file: std::fs::File,
    partial: String,
    user: String,
    pub requests: Vec<Request>,
}

impl Tail {
    pub fn new(path: &std::path::Path, user: &str) -> Tail {
        Tail {
            file: std::fs::File::open(path).expect("the audit log"),
            partial: String::new(),
            user: user.to_string(),
            requests: Vec::new(),
        }
    }

    /// Reads what was appended since the last call.
    pub fn read(&mut self) -> &[Request] {
        use std::io::Read as _;
        let mut text = std::mem::take(&mut self.partial);
        self.file.read_to_string(&mut text).expect("reading the audit log");
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        self.partial = text[complete..].to_string();
        let quoted = format!("\"{}\"", self.user);
        for line in text[..complete].lines().filter(|l| l.contains(&quoted)) {
            let event: Value = serde_json::from_str(line).expect("an audit event");
            if event["user"]["username"] == self.user.as_str()
                && let Some(request) = request(&event)
            {
                self.requests.push(request);
            }
        }
        &self.requests
    }
}

fn request(e: &Value) -> Option<Request> {
    let stage = e["stage"].as_str()?;
    let counted = if e["verb"] == "watch" {
        "ResponseStarted"
    } else {
        "ResponseComplete"
    };
    if stage != counted {
        return None;
    }
    let object = &e["objectRef"];
    let mut resource = object["resource"].as_str().unwrap_or("-").to_string();
    if let Some(sub) = object["subresource"].as_str() {
        resource = format!("{resource}/{sub}");
    }
    let at: Timestamp = e["stageTimestamp"].as_str()?.parse().ok()?;
    let received: Timestamp = e["requestReceivedTimestamp"].as_str()?.parse().ok()?;
    Some(Request {
        verb: e["verb"].as_str()?.to_string(),
        resource,
        at,
        code: e["responseStatus"]["code"].as_i64().unwrap_or(0),
        latency_s: at.duration_since(received).as_secs_f64(),
    })
}

/// Requests in `[from, to)`, counted by `verb resource`.
pub fn count(requests: &[Request], from: Timestamp, to: Timestamp) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in requests.iter().filter(|r| r.at >= from && r.at < to) {
        *counts.entry(r.key()).or_default() += 1;
    }
    counts
}

/// The latency of the writes in `[from, to)`, by `verb resource`: mean,
/// p50 and p99 in seconds.
pub fn write_latency(requests: &[Request], from: Timestamp, to: Timestamp) -> BTreeMap<String, [f64; 3]> {
    let mut by_key: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in requests.iter().filter(|r| r.at >= from && r.at < to && r.is_write()) {
        by_key.entry(r.key()).or_default().push(r.latency_s);
    }
    by_key
        .into_iter()
        .map(|(key, mut l)| {
            l.sort_by(f64::total_cmp);
            // Nearest rank, as the report's other quantiles.
            let at = |q: f64| l[((q * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1];
            let mean = l.iter().sum::<f64>() / l.len() as f64;
            (key, [mean, at(0.5), at(0.99)])
        })
        .collect()
}

/// Requests in `[from, to)` that failed, by `verb resource code`.
pub fn failures(requests: &[Request], from: Timestamp, to: Timestamp) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in requests.iter().filter(|r| r.at >= from && r.at < to && r.code >= 400) {
        *counts.entry(format!("{} {}", r.key(), r.code)).or_default() += 1;
    }
    counts
}

/// The last write to anything but the controller's own Lease (which it
/// renews whatever the claims do).
pub fn last_claim_write(requests: &[Request]) -> Option<Timestamp> {
    requests
        .iter()
        .filter(|r| r.is_write() && r.resource != "leases")
        .map(|r| r.at)
        .max()
}
