//! The whole platform on loopback, for the end-to-end tests and for a person
//! (`scripts/rig.sh`): the control plane of [`crate::control_plane`], KEDA's operator
//! and metrics adapter ([`crate::keda`]), kube-scheduler and KWOK with a fake
//! node ([`crate::kwok`]: pods are scheduled and turn Running and Ready, by
//! simulation), a nats-server with JetStream and HTTP monitoring, and the
//! `eds scaler` and `eds controller` binaries.
//!
//! ```text
//! let rig = rig::shared(Path::new(env!("CARGO_BIN_EXE_eds"))); // one per test binary
//! let client = rig.client().await;
//! rig.nats().stop();    // an outage; `start_again` ends it
//! ```
//!
//! The controller renders every ScaledObject's `scalerAddress` as the
//! scaler's loopback gRPC address, so KEDA dials our scaler as it would the
//! in-cluster Service.
//!
//! A scenario that needs the platform configured otherwise (the scaler behind
//! mutual TLS) starts a scaler and a controller of its own
//! ([`Rig::start_scaler`], [`Rig::start_controller`]). The rig's controller
//! watches every namespace, so it would fight the scenario's over the same
//! claim: [`Rig::pause_controller`] stops it meanwhile.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::control_plane::{self, ControlPlane, apply_yaml};
use crate::keda::Keda;
use crate::kwok::Kwok;
use crate::nats::NatsServer;
use crate::process::{Peer, free_port, remove_at_exit};

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
    rig.assert_running();
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
    kwok: Mutex<Kwok>,
    keda_started: Instant,
    dir: PathBuf,
    eds: PathBuf,
    controller_http_port: u16,
}

/// An `eds scaler` of a scenario's own, killed on drop.
pub struct Scaler {
    pub peer: Peer,
    /// Its gRPC address, `127.0.0.1:<port>`.
    pub address: String,
    /// The port of its /metrics, /healthz and /readyz on 127.0.0.1.
    pub http_port: u16,
}

/// The rig's controller, stopped until this is dropped.
pub struct PausedController<'a>(&'a Rig);

impl Rig {
    /// Starts the scheduler and KWOK, NATS, the scaler, KEDA and the
    /// controller against `cp`, on a thread of its own (callers may be inside
    /// an async runtime). The rig's processes die with this process; its
    /// directory is removed after it.
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
        self.each_peer(Peer::print_log);
    }

    /// Fails the test, with its log, if a peer exited by itself (one that a
    /// test stopped on purpose, such as NATS during an outage, is fine).
    pub fn assert_running(&self) {
        self.each_peer(Peer::assert_running);
    }

    /// One line per peer, the control plane's included: its name and state,
    /// and the tail of its log when it exited by itself.
    pub fn report(&self, cp: &ControlPlane) -> Vec<String> {
        let mut lines = Vec::new();
        self.each_peer(|peer| lines.push(peer.report()));
        lines.extend(cp.report());
        lines
    }

    /// When KEDA's operator and adapter were started.
    pub fn keda_started(&self) -> Instant {
        self.keda_started
    }

    fn each_peer(&self, mut f: impl FnMut(&mut Peer)) {
        f(&mut self.nats().peer);
        f(&mut self.scaler.lock().unwrap_or_else(|e| e.into_inner()));
        f(&mut self.controller());
        let mut keda = self.keda.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut keda.operator);
        f(&mut keda.adapter);
        let mut kwok = self.kwok.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut kwok.scheduler);
        f(&mut kwok.kwok);
    }

    /// Where the rig keeps its state and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts another `eds scaler` on the rig's NATS with `args` added, and
    /// waits until it is ready. `name` names its log.
    pub fn start_scaler<S: AsRef<OsStr>>(&self, name: &str, args: &[S]) -> Scaler {
        start_scaler(&self.eds, &self.nats_url, &self.dir, name, args)
    }

    /// Starts another `eds controller` that reconciles only `namespace`'s
    /// claims, holds a Lease of its own, renders `scaler_address` and takes
    /// `args` besides; waits until it is ready. Pause the rig's controller
    /// first ([`Rig::pause_controller`]).
    pub fn start_controller<S: AsRef<OsStr>>(
        &self,
        name: &str,
        namespace: &str,
        scaler_address: &str,
        args: &[S],
    ) -> Peer {
        let mut command = controller_command(&self.eds, &self.kubeconfig, scaler_address, &self.nats_url);
        command
            .args(["--watch-namespace", namespace])
            .args(["--lease-name", name])
            .args(args);
        start_controller(command, &self.dir, name).0
    }

    /// Stops the rig's controller (gracefully, so it hands its Lease back)
    /// until the guard is dropped; then it starts again.
    pub fn pause_controller(&self) -> PausedController<'_> {
        self.controller().terminate(Duration::from_secs(10));
        PausedController(self)
    }

    /// The KEDA operator's log so far.
    pub fn keda_operator_log(&self) -> String {
        self.keda.lock().unwrap_or_else(|e| e.into_inner()).operator.log()
    }

    fn controller(&self) -> MutexGuard<'_, Peer> {
        self.controller.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for PausedController<'_> {
    fn drop(&mut self) {
        let mut controller = self.0.controller();
        controller.restart();
        let port = self.0.controller_http_port;
        if !std::thread::panicking() {
            controller.wait_http_ok(port, "/readyz", STARTUP);
            return;
        }
        // A failed test unwinds: panicking again would abort the run, but the
        // next test still needs the controller back before it starts.
        if !controller.try_wait_http_ok(port, "/readyz", STARTUP) {
            eprintln!("the shared controller did not become ready again within {STARTUP:?}");
        }
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
    let kwok = Kwok::start(cp, &client, &dir).await;

    let monitoring = format!("127.0.0.1:{}", free_port());
    let nats = NatsServer::start_with(&format!("http: {monitoring}"));
    // The shared rig is never dropped, and neither is the server's directory.
    remove_at_exit(nats.dir.path());
    let nats_url = nats.url();

    let scaler = start_scaler::<&str>(eds, &nats_url, &dir, "eds-scaler", &[]);

    let keda_started = Instant::now();
    let keda = Keda::start(cp, &client, &dir).await;

    apply_yaml(
        &client,
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SYSTEM_NAMESPACE}\n"),
        None,
    )
    .await;
    let command = controller_command(eds, &cp.kubeconfig(), &scaler.address, &nats_url);
    let (controller, controller_http_port) = start_controller(command, &dir, "eds-controller");

    Rig {
        kubeconfig: cp.kubeconfig(),
        api_url: cp.url.clone(),
        nats_url,
        nats_monitoring: monitoring,
        scaler_address: scaler.address,
        scaler_http: format!("127.0.0.1:{}", scaler.http_port),
        controller_http: format!("127.0.0.1:{controller_http_port}"),
        adapter_port: keda.adapter_port,
        started_in: started.elapsed(),
        nats: Mutex::new(nats),
        scaler: Mutex::new(scaler.peer),
        controller: Mutex::new(controller),
        keda: Mutex::new(keda),
        kwok: Mutex::new(kwok),
        keda_started,
        dir,
        eds: eds.to_path_buf(),
        controller_http_port,
    }
}

fn start_scaler<S: AsRef<OsStr>>(eds: &Path, nats_url: &str, dir: &Path, name: &str, args: &[S]) -> Scaler {
    let address = format!("127.0.0.1:{}", free_port());
    let http_port = free_port();
    let mut command = Command::new(eds);
    command
        .arg("scaler")
        .args(["--nats-url", nats_url])
        // One team's test cluster: every namespace, written down.
        .args(["--nats-namespaces", "*"])
        .args(["--grpc-addr", &address])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(args);
    let mut peer = Peer::spawn(name, command, &dir.join(format!("{name}.log")));
    peer.wait_http_ok(http_port, "/readyz", STARTUP);
    Scaler {
        peer,
        address,
        http_port,
    }
}

/// `eds controller` as the rig runs it, without its HTTP address.
fn controller_command(eds: &Path, kubeconfig: &Path, scaler_address: &str, nats_url: &str) -> Command {
    let mut command = Command::new(eds);
    command
        .arg("controller")
        .env("KUBECONFIG", kubeconfig)
        .args(["--scaler-address", scaler_address])
        .args(["--nats-url", nats_url])
        .args(["--nats-namespaces", "*"])
        .args(["--lease-namespace", SYSTEM_NAMESPACE])
        // Claims show their lag soon after it changes.
        .args(["--lag-interval", "2s"]);
    command
}

/// Starts `command` with an HTTP port of its own and waits until it is
/// ready; the peer and that port.
fn start_controller(mut command: Command, dir: &Path, name: &str) -> (Peer, u16) {
    let http_port = free_port();
    command.args(["--http-addr", &format!("127.0.0.1:{http_port}")]);
    let mut peer = Peer::spawn(name, command, &dir.join(format!("{name}.log")));
    peer.wait_http_ok(http_port, "/readyz", STARTUP);
    (peer, http_port)
}
