//! The whole machine during a run's clock, not only the controller: CPU
//! time by process (from `/proc`), and the API server's requests by verb and
//! resource from its own `/metrics` (every client's: the controller
//! manager's, the scheduler's and KWOK's too, which the audit log leaves
//! out; a watch is counted when it ends). Everything shares the same two
//! cores, so this is where both runs spend them.
use std::collections::BTreeMap;

use kube::Client;
use serde_json::{Value, json};
use testkit::prometheus::Scrape;

/// The processes to read: a name and a pid each.
pub struct Machine {
    processes: Vec<(String, u32)>,
}

/// CPU seconds by process, and requests by `verb resource[/subresource]`.
pub struct Reading {
    at: std::time::Instant,
    cpu_seconds: BTreeMap<String, f64>,
    requests: BTreeMap<String, f64>,
}

impl Machine {
    pub fn new(processes: Vec<(String, u32)>) -> Machine {
        Machine { processes }
    }

    /// A reading now. The API server's metrics first: the scrape is the
    /// largest request of the two, and its cost falls on the window it opens
    /// or closes either way.
    pub async fn read(&self, admin: &Client) -> Reading {
        let requests = api_requests(admin).await;
        let cpu_seconds = self
            .processes
            .iter()
            .map(|(name, pid)| {
                let seconds = crate::observe::cpu_seconds(*pid)
                    .unwrap_or_else(|| panic!("{name} (pid {pid}) is no longer running"));
                (name.clone(), seconds)
            })
            .collect();
        Reading {
            at: std::time::Instant::now(),
            cpu_seconds,
            requests,
        }
    }
}

/// What was spent between two readings, as JSON: `seconds` between them,
/// `cpu_seconds` by process, `requests` by verb and resource.
pub fn spent(from: &Reading, to: &Reading) -> Value {
    let delta = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| -> serde_json::Map<String, Value> {
        b.iter()
            .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, v)| *v > 0.0)
            .map(|(k, v)| (k, json!(v)))
            .collect()
    };
    json!({
        "seconds": to.at.duration_since(from.at).as_secs_f64(),
        "cpu_seconds": delta(&from.cpu_seconds, &to.cpu_seconds),
        "requests": delta(&from.requests, &to.requests),
    })
}

/// `apiserver_request_total` summed over codes and clients, by verb and
/// resource (`patch eventdrivenservices/status`).
async fn api_requests(admin: &Client) -> BTreeMap<String, f64> {
    let request = kube::core::Request::new("")
        .get("metrics", &Default::default())
        .expect("a /metrics request");
    let text = admin.request_text(request).await.expect("the API server's /metrics");
    let mut requests = BTreeMap::new();
    for sample in Scrape::parse(&text).select("apiserver_request_total", &[]) {
        let label = |k: &str| sample.labels.get(k).map(String::as_str).unwrap_or_default();
        let resource = match label("subresource") {
            "" => label("resource").to_string(),
            sub => format!("{}/{sub}", label("resource")),
        };
        let key = format!("{} {resource}", label("verb").to_lowercase());
        *requests.entry(key).or_insert(0.0) += sample.value;
    }
    requests
}
