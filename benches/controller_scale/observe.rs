//! What the driver sees: when each claim's children appear and its status
//! is written (through watches of its own), and the controller process's
//! memory and CPU (from /proc).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eds::api::EventDrivenService;
use eds::controller::ChildKind;
use eds::render::MANAGED_BY;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::Serialize;
use tokio::sync::Notify;

/// Bits of a claim's progress: one per child kind, and its status.
const STATUS: u8 = 1 << 4;
const DONE: u8 = 0b1_1111;

/// Per claim, what has been seen; and when each claim became complete.
pub struct Convergence {
    started: Instant,
    n: usize,
    state: Mutex<State>,
    complete: Notify,
}

#[derive(Default)]
struct State {
    seen: HashMap<(String, String), u8>,
    /// Seconds from the start at which each claim became complete, in order.
    times: Vec<f64>,
}

impl Convergence {
    /// Tracks `n` claims from `started`. With `status` false, a claim is
    /// complete when its four children exist (the floor writes no status).
    pub fn new(started: Instant, n: usize) -> Arc<Self> {
        Arc::new(Convergence {
            started,
            n,
            state: Mutex::default(),
            complete: Notify::new(),
        })
    }

    fn mark(&self, namespace: String, name: String, bit: u8, need: u8) {
        let mut state = self.state.lock().unwrap();
        let seen = state.seen.entry((namespace, name)).or_default();
        if *seen & bit != 0 {
            return;
        }
        *seen |= bit;
        if *seen & need == need {
            let at = self.started.elapsed().as_secs_f64();
            state.times.push(at);
            if state.times.len() >= self.n {
                self.complete.notify_one();
            }
        }
    }

    /// Waits until every claim is complete; `false` after `timeout`.
    pub async fn wait(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.count() >= self.n {
                return true;
            }
            let notified = self.complete.notified();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() >= self.n;
            }
        }
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().times.len()
    }

    /// The completion times so far, ascending.
    pub fn times(&self) -> Vec<f64> {
        let mut times = self.state.lock().unwrap().times.clone();
        times.sort_by(f64::total_cmp);
        times
    }

    /// Watches every child kind (metadata only) and, with `status`, the
    /// claims, marking progress until the returned tasks are aborted.
    pub fn watch(self: &Arc<Self>, client: &Client, status: bool) -> Vec<tokio::task::JoinHandle<()>> {
        let need = if status { DONE } else { DONE & !STATUS };
        let ours = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
        let mut tasks = Vec::new();
        for (i, kind) in ChildKind::APPLY_ORDER.into_iter().enumerate() {
            // Metadata only: the driver needs names, not objects.
            let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), kind.resource());
            let this = self.clone();
            let config = ours.clone();
            tasks.push(tokio::spawn(async move {
                let mut events = watcher(api, config).default_backoff().touched_objects().boxed();
                while let Some(event) = events.next().await {
                    if let Ok(child) = event {
                        this.mark(child.namespace().unwrap_or_default(), child.name_any(), 1 << i, need);
                    }
                }
            }));
        }
        if status {
            tasks.push(self.watch_claims(client, STATUS, need, |claim| {
                claim
                    .status
                    .as_ref()
                    .and_then(|s| s.observed_generation)
                    .is_some_and(|g| Some(g) == claim.metadata.generation)
            }));
        }
        tasks
    }

    /// Watches the claims, marking each once its status says
    /// `DeploymentAvailable=True` (pods that KWOK made Ready, counted by the
    /// ReplicaSet and the Deployment), until the returned task is aborted.
    /// Not `Ready`: that also needs KEDA's verdict, and KEDA does not run here.
    pub fn watch_ready(self: &Arc<Self>, client: &Client) -> tokio::task::JoinHandle<()> {
        self.watch_claims(client, STATUS, STATUS, |claim| {
            claim.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "DeploymentAvailable" && c.status == "True")
            })
        })
    }

    /// Watches the Deployments of the children, marking each claim once its
    /// Deployment has a replica available (the floor's counterpart of
    /// [`Convergence::watch_ready`]: the pod that KWOK made Ready, counted by
    /// the ReplicaSet and the Deployment), until the returned task is
    /// aborted. Started late, it marks what is already available at once.
    pub fn watch_available(self: &Arc<Self>, client: &Client) -> tokio::task::JoinHandle<()> {
        let ours = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
        self.watch_marking(Api::<Deployment>::all(client.clone()), ours, STATUS, STATUS, |d| {
            d.status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .is_some_and(|n| n > 0)
        })
    }

    /// Watches the claims, marking `bit` on each claim for which `seen`
    /// holds, until the returned task is aborted.
    fn watch_claims(
        self: &Arc<Self>,
        client: &Client,
        bit: u8,
        need: u8,
        seen: fn(&EventDrivenService) -> bool,
    ) -> tokio::task::JoinHandle<()> {
        let api = Api::<EventDrivenService>::all(client.clone());
        self.watch_marking(api, watcher::Config::default(), bit, need, seen)
    }

    /// Watches `api`'s objects, marking `bit` on the claim of the same
    /// namespace and name as each object for which `seen` holds, until the
    /// returned task is aborted.
    fn watch_marking<K>(
        self: &Arc<Self>,
        api: Api<K>,
        config: watcher::Config,
        bit: u8,
        need: u8,
        seen: fn(&K) -> bool,
    ) -> tokio::task::JoinHandle<()>
    where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().touched_objects().boxed();
            while let Some(event) = events.next().await {
                if let Ok(object) = event
                    && seen(&object)
                {
                    this.mark(object.namespace().unwrap_or_default(), object.name_any(), bit, need);
                }
            }
        })
    }
}

/// One reading of a process.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProcSample {
    /// Seconds from the start.
    pub at: f64,
    pub rss_bytes: u64,
    /// CPU time used so far (user + system), seconds.
    pub cpu_seconds: f64,
}

/// Reads `/proc/<pid>` every `every` on a thread of its own until dropped.
pub struct ProcSampler {
    samples: Arc<Mutex<Vec<ProcSample>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pid: u32,
    started: Instant,
}

impl ProcSampler {
    pub fn start(pid: u32, started: Instant, every: Duration) -> ProcSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, halt) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(sample) = read_proc(pid, started) {
                    s.lock().unwrap().push(sample);
                }
                std::thread::sleep(every);
            }
        });
        ProcSampler {
            samples,
            stop,
            pid,
            started,
        }
    }

    /// A reading now.
    pub fn now(&self) -> ProcSample {
        read_proc(self.pid, self.started).expect("the controller is running")
    }

    pub fn samples(&self) -> Vec<ProcSample> {
        self.samples.lock().unwrap().clone()
    }
}

impl Drop for ProcSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn read_proc(pid: u32, started: Instant) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(ProcSample {
        at: started.elapsed().as_secs_f64(),
        rss_bytes: rss_kib * 1024,
        cpu_seconds: cpu_seconds(pid)?,
    })
}

/// The CPU time process `pid` has used so far (user and system), seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / testkit::process::clock_ticks())
}
