//! The whole platform on loopback, for the end-to-end tests and for a person
//! (`scripts/rig.sh`): the control plane of [`super::kube`], KEDA's operator
//! and metrics adapter ([`super::keda`]), a nats-server with JetStream and
//! HTTP monitoring, and the `eds scaler` and `eds controller` binaries.
//!
//! ```ignore
//! let rig = rig::shared(Path::new(env!("CARGO_BIN_EXE_eds"))); // one per test binary
//! let client = rig.client().await;
//! rig.nats().stop();    // an outage; `start_again` ends it
//! ```
//!
//! The controller renders every ScaledObject's `scalerAddress` as the
//! scaler's loopback gRPC address, so KEDA dials our scaler as it would the
//! in-cluster Service.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::keda::Keda;
use super::kube::{self as control_plane, ControlPlane, apply_yaml};
use super::nats::NatsServer;
use super::process::{Peer, free_port, remove_at_exit};

const STARTUP: Duration = Duration::from_secs(60);

/// The namespace the controller's Lease lives in, as in an installation.
pub const SYSTEM_NAMESPACE: &str = "eds-system";

/// The rig shared by every test of this binary, started on first use with the
/// `eds` binary at `eds`. The guard prints every peer's log when the test
/// holding it fails.
pub fn shared(eds: &Path) -> SharedRig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    let control_plane = control_plane::shared();
    let rig = RIG.get_or_init(|| Rig::start(&control_plane, eds));
    SharedRig { rig, control_plane }
}

pub struct SharedRig {
    rig: &'static Rig,
    // Also prints the control plane's logs on a failure, after the rig's.
    control_plane: control_plane::Shared,
}

impl SharedRig {
    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }
}

impl std::ops::Deref for SharedRig {
    type Target = Rig;
    fn deref(&self) -> &Rig {
        self.rig
    }
}

impl Drop for SharedRig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.rig.print_logs();
        }
    }
}

/// Everything but the control plane, which it runs against.
pub struct Rig {
    /// An admin kubeconfig for the control plane.
    pub kubeconfig: PathBuf,
    /// The API server, `https://127.0.0.1:<port>`.
    pub api_url: String,
    /// `nats://127.0.0.1:<port>`.
    pub nats_url: String,
    /// `127.0.0.1:<port>` of nats-server's HTTP monitoring (what KEDA's
    /// built-in `nats-jetstream` trigger polls).
    pub nats_monitoring: String,
    /// The scaler's gRPC address, `127.0.0.1:<port>`: every ScaledObject's
    /// `scalerAddress`.
    pub scaler_address: String,
    /// The scaler's /metrics, /healthz and /readyz, `127.0.0.1:<port>`.
    pub scaler_http: String,
    /// The controller's /metrics, /healthz and /readyz, `127.0.0.1:<port>`.
    pub controller_http: String,
    /// The KEDA metrics adapter's HTTPS port (the aggregated API).
    pub adapter_port: u16,
    /// How long [`Rig::start`] took, control plane excluded.
    pub started_in: Duration,
    nats: Mutex<NatsServer>,
    scaler: Mutex<Peer>,
    controller: Mutex<Peer>,
    keda: Mutex<Keda>,
    dir: PathBuf,
}

impl Rig {
    /// Starts NATS, the scaler, KEDA and the controller against `cp`, on a
    /// thread of its own (callers may be inside an async runtime). The rig's
    /// processes die with this process; its directory is removed after it.
    pub fn start(cp: &ControlPlane, eds: &Path) -> Rig {
        let eds = eds.to_path_buf();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime")
                        .block_on(start(cp, &eds))
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// An admin client for the control plane.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("the rig's kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("a client config from the rig's kubeconfig");
        Client::try_from(config).expect("admin client")
    }

    /// The nats-server, to stop and start it again.
    pub fn nats(&self) -> MutexGuard<'_, NatsServer> {
        self.nats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prints the tail of every peer's log but the control plane's.
    pub fn print_logs(&self) {
        let print = |peer: &Peer| {
            let log = peer.log();
            let tail: Vec<&str> = log.lines().rev().take(150).collect();
            eprintln!("----- {} log (last {} lines) -----", peer.name, tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        };
        print(&self.nats().peer);
        print(&self.scaler.lock().unwrap_or_else(|e| e.into_inner()));
        print(&self.controller.lock().unwrap_or_else(|e| e.into_inner()));
        let keda = self.keda.lock().unwrap_or_else(|e| e.into_inner());
        print(&keda.operator);
        print(&keda.adapter);
    }

    /// Where the rig keeps its state and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

async fn start(cp: &ControlPlane, eds: &Path) -> Rig {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("eds-rig-")
        .tempdir()
        .expect("temp dir")
        .keep();
    remove_at_exit(&dir);
    let client = cp.client().await;

    let monitoring = format!("127.0.0.1:{}", free_port());
    let nats = NatsServer::start_with(&format!("http: {monitoring}"));
    // The shared rig is never dropped, and neither is the server's directory.
    remove_at_exit(nats.dir.path());
    let nats_url = nats.url();

    let scaler_address = format!("127.0.0.1:{}", free_port());
    let scaler_http_port = free_port();
    let scaler_http = format!("127.0.0.1:{scaler_http_port}");
    let mut scaler = Command::new(eds);
    scaler
        .arg("scaler")
        .args(["--nats-url", &nats_url])
        .args(["--grpc-addr", &scaler_address])
        .args(["--http-addr", &scaler_http]);
    let mut scaler = Peer::spawn("eds-scaler", scaler, &dir.join("eds-scaler.log"));
    scaler.wait_http_ok(scaler_http_port, "/readyz", STARTUP);

    let keda = Keda::start(cp, &client, &dir).await;

    apply_yaml(
        &client,
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SYSTEM_NAMESPACE}\n"),
        None,
    )
    .await;
    let controller_http_port = free_port();
    let controller_http = format!("127.0.0.1:{controller_http_port}");
    let mut controller = Command::new(eds);
    controller
        .arg("controller")
        .env("KUBECONFIG", cp.kubeconfig())
        .args(["--scaler-address", &scaler_address])
        .args(["--nats-url", &nats_url])
        .args(["--http-addr", &controller_http])
        .args(["--lease-namespace", SYSTEM_NAMESPACE])
        // Claims show their lag soon after it changes.
        .args(["--lag-interval", "2s"]);
    let mut controller = Peer::spawn("eds-controller", controller, &dir.join("eds-controller.log"));
    controller.wait_http_ok(controller_http_port, "/readyz", STARTUP);

    Rig {
        kubeconfig: cp.kubeconfig(),
        api_url: cp.url.clone(),
        nats_url,
        nats_monitoring: monitoring,
        scaler_address,
        scaler_http,
        controller_http,
        adapter_port: keda.adapter_port,
        started_in: started.elapsed(),
        nats: Mutex::new(nats),
        scaler: Mutex::new(scaler),
        controller: Mutex::new(controller),
        keda: Mutex::new(keda),
        dir,
    }
}
