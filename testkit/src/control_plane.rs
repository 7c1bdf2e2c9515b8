//! A real Kubernetes control plane for tests: etcd, kube-apiserver and
//! kube-controller-manager on loopback, with generated certificates, RBAC on
//! and the API server's default admission plugins.
//!
//! ```text
//! use testkit::control_plane as cluster;
//! let cp = cluster::shared();                    // one per test binary
//! let client = cp.client().await;                // admin (system:masters)
//! let ns = cp.namespace(&client, "drift").await; // a fresh namespace per test
//! cluster::apply_file(&client, path, Some(&ns)).await;
//! let sa = cp.client_for(&ns, "eds-controller").await; // a ServiceAccount's token
//! ```
//!
//! - [`shared`]: started on first use, with every CRD in `apis/` and KEDA's
//!   CRDs (`.tools/keda-crds/`, from `scripts/tools.sh keda`) installed and
//!   Established. Its processes die with the test binary and its directory is
//!   removed after it. The guard it returns prints the peers' logs when the
//!   test holding it fails; a peer that exited by itself fails the next test
//!   that asks for the control plane, with its log.
//! - [`ControlPlane::client`], [`ControlPlane::client_for`]: clients for admin
//!   and for a ServiceAccount (a TokenRequest token, so RBAC sees exactly what a
//!   pod would).
//! - [`ControlPlane::kubeconfig`], [`ControlPlane::kubeconfig_for`]: kubeconfig
//!   files for admin and for a ServiceAccount, for binaries.
//! - [`ControlPlane::namespace`], [`create_namespace`]: namespaces.
//! - [`apply_file`], [`apply_yaml`]: server-side apply of multi-document YAML;
//!   CRDs are waited on until Established.
//! - [`ControlPlane::audit`]: the API server's audit events for every
//!   ServiceAccount of namespace `eds-system`, so a test can list exactly
//!   which verbs a component used.
//!
//! The controller manager runs the garbage collector (so deleting an owner
//! cascades), the namespace, deployment, replicaset and serviceaccount
//! controllers, and the HPA controller for KEDA's HPAs. The API server runs its
//! default admission plugins plus OwnerReferencesPermissionEnforcement (as
//! hardened clusters do: setting `blockOwnerDeletion` needs a permission), and
//! has the aggregation layer set up, so an extension API server (KEDA's
//! metrics adapter) can be registered.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams, ValidationDirective};
use kube::config::AuthInfo;
use kube::core::{GroupVersionKind, ObjectMeta};
use kube::discovery::{Scope, pinned_kind};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use rcgen::KeyPair;
use serde::Deserialize as _;

use crate::certs::{Leaf, Pki};
use crate::process::{Peer, free_port, remove_at_exit, tool};
use crate::repo;

/// The field manager the harness applies YAML with.
const MANAGER: &str = "eds-test";
const STARTUP: Duration = Duration::from_secs(60);
/// Set (to anything): kube-apiserver serves `/debug/pprof` to its admin, so
/// a benchmark can take a CPU profile of it (docs/benchmarks.md).
pub const PROFILING: &str = "EDS_TEST_APISERVER_PROFILING";

/// The control plane shared by every test of this binary. See the module docs.
pub fn shared() -> Shared {
    static SHARED: OnceLock<ControlPlane> = OnceLock::new();
    let cp = SHARED.get_or_init(boot);
    cp.assert_running();
    Shared(cp)
}

/// The shared control plane, for one test: prints the peers' logs if the test
/// fails while holding it.
pub struct Shared(&'static ControlPlane);

impl std::ops::Deref for Shared {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        self.0
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.print_logs();
        }
    }
}

/// etcd, kube-apiserver and kube-controller-manager.
pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    dir: PathBuf,
    credentials: Credentials,
    /// The controller manager, the API server, etcd.
    peers: Mutex<Vec<Peer>>,
}

impl ControlPlane {
    /// A client authenticated as the admin (group `system:masters`).
    pub async fn client(&self) -> Client {
        let mut config = self.config();
        config.auth_info = AuthInfo {
            client_certificate: Some(self.credentials.admin.cert.display().to_string()),
            client_key: Some(self.credentials.admin.key.display().to_string()),
            ..Default::default()
        };
        Client::try_from(config).expect("admin client")
    }

    /// A client authenticated as ServiceAccount `namespace/name`, which must
    /// exist, with a one-hour token from the TokenRequest API.
    pub async fn client_for(&self, namespace: &str, name: &str) -> Client {
        let mut config = self.config();
        config.auth_info = AuthInfo {
            token: Some(self.token(namespace, name).await.into()),
            ..Default::default()
        };
        Client::try_from(config).expect("ServiceAccount client")
    }

    /// A kubeconfig file for ServiceAccount `namespace/name` (see
    /// [`ControlPlane::client_for`]), for a binary to run as it.
    pub async fn kubeconfig_for(&self, namespace: &str, name: &str) -> PathBuf {
        let path = self.dir.join(format!("{namespace}-{name}.kubeconfig"));
        let user = format!("token: {}", self.token(namespace, name).await);
        write_kubeconfig(&path, &self.url, &self.credentials.ca, &user);
        path
    }

    async fn token(&self, namespace: &str, name: &str) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(self.client().await, namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("token for ServiceAccount {namespace}/{name}: {e}"))
            .status
            .expect("TokenRequest status")
            .token
    }

    /// An admin kubeconfig file.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Creates a namespace named `<prefix>-<n>`, unique in this process and
    /// across runs against the same control plane.
    pub async fn namespace(&self, client: &Client, prefix: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        create_namespace(client, &name, &[]).await;
        name
    }

    /// Prints the tail of every peer's log.
    pub fn print_logs(&self) {
        for peer in self.peers().iter_mut() {
            peer.print_log();
        }
    }

    /// Fails the test, with its log, if a peer exited by itself.
    pub fn assert_running(&self) {
        for peer in self.peers().iter_mut() {
            peer.assert_running();
        }
    }

    /// Each peer's name and state (see [`Peer::state`]), with the tail of
    /// its log when it exited by itself.
    pub fn report(&self) -> Vec<String> {
        self.peers().iter_mut().map(Peer::report).collect()
    }

    /// Each running peer's name and process id (etcd, kube-apiserver,
    /// kube-controller-manager), for a benchmark that reads their CPU.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.peers()
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.pid()?)))
            .collect()
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, Vec<Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Audit events (JSON, one per request) of every ServiceAccount in
    /// namespace `eds-system`, oldest first.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("an audit event"))
            .collect()
    }

    /// The audit log file that [`ControlPlane::audit`] reads, for a reader
    /// that follows it as it grows (a benchmark's millions of lines).
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    fn config(&self) -> Config {
        let mut config = Config::new(self.url.parse().expect("API server URL"));
        config.root_cert_file = Some(self.credentials.ca.clone());
        config
    }
}

/// Creates namespace `name` with `labels`.
pub async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

/// Applies every document of a YAML file. See [`apply_yaml`].
pub async fn apply_file(client: &Client, path: &Path, namespace: Option<&str>) -> Vec<DynamicObject> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    apply_yaml(client, &text, namespace).await
}

/// Server-side applies each document (field manager `eds-test`, forced).
/// Namespaced objects without a namespace land in `namespace`. Returns the
/// applied objects; a CRD is returned once it is Established.
pub async fn apply_yaml(client: &Client, yaml: &str, namespace: Option<&str>) -> Vec<DynamicObject> {
    let mut applied = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(document).expect("YAML document");
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value).expect("a Kubernetes object");
        let types = object.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).expect("apiVersion");
        let (resource, caps) = pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discovering {}/{}: {e}", types.api_version, types.kind));
        let name = object.metadata.name.clone().expect("metadata.name");
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => {
                let ns = object.metadata.namespace.as_deref().or(namespace).unwrap_or("default");
                Api::namespaced_with(client.clone(), ns, &resource)
            }
        };
        let result = api
            .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("applying {} {name}: {e}", types.kind));
        if types.kind == "CustomResourceDefinition" {
            let crds = Api::<CustomResourceDefinition>::all(client.clone());
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(crds, &name, conditions::is_crd_established()),
            )
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not Established after 30s"))
            .unwrap_or_else(|e| panic!("waiting for CRD {name}: {e}"));
        }
        applied.push(result);
    }
    applied
}

/// Server-side apply with `dryRun=All` and strict field validation: every
/// admission step runs, nothing is stored, and a field the schema does not
/// know is an error rather than pruned. Namespaced objects without a
/// namespace land in `namespace`, which must exist. The API server's refusal
/// as text.
pub async fn dry_run(client: &Client, doc: &serde_json::Value, namespace: &str) -> Result<(), String> {
    let object: DynamicObject = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let types = object.types.clone().ok_or("no apiVersion or kind")?;
    let gvk = GroupVersionKind::try_from(&types).map_err(|e| e.to_string())?;
    let (resource, caps) = pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("unknown kind: {e}"))?;
    let name = object.metadata.name.clone().ok_or("no metadata.name")?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            let ns = object.metadata.namespace.as_deref().unwrap_or(namespace);
            Api::namespaced_with(client.clone(), ns, &resource)
        }
    };
    let mut params = PatchParams::apply(MANAGER).force().dry_run();
    params.field_validation = Some(ValidationDirective::Strict);
    api.patch(&name, &params, &Patch::Apply(&object))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Starts the peers on a thread of its own: callers may be inside an async
/// runtime, and startup needs one of its own.
fn boot() -> ControlPlane {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // A port picked free can be taken by another process (a test's
        // outgoing connection gets one from the same range) before our peer
        // binds it: start again on new ports.
        for _ in 1..PORT_ATTEMPTS {
            match runtime.block_on(boot_async()) {
                Ok(cp) => return cp,
                Err(taken) => eprintln!("control plane: {taken}; starting again on other ports"),
            }
        }
        runtime
            .block_on(boot_async())
            .unwrap_or_else(|taken| panic!("control plane: {taken}, {PORT_ATTEMPTS} times"))
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Starts on fresh ports this many times at most.
const PORT_ATTEMPTS: usize = 3;

/// The control plane, or `Err` when a peer could not bind its port.
async fn boot_async() -> Result<ControlPlane, String> {
    let started = std::time::Instant::now();
    // The directory outlives every test (a static is never dropped): it is
    // removed once the test process has exited.
    let dir = tempfile::Builder::new()
        .prefix("eds-control-plane-")
        .tempdir()
        .expect("temp dir")
        .keep();
    remove_at_exit(&dir);
    let credentials = Credentials::create(&dir);
    let api_port = free_port();
    let url = format!("https://127.0.0.1:{api_port}");
    write_kubeconfig(
        &dir.join("admin.kubeconfig"),
        &url,
        &credentials.ca,
        &client_certificate(&credentials.admin),
    );
    write_kubeconfig(
        &dir.join("controller-manager.kubeconfig"),
        &url,
        &credentials.ca,
        &client_certificate(&credentials.controller_manager),
    );
    std::fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY).unwrap();

    let etcd_port = free_port();
    let etcd = Peer::spawn("etcd", etcd_command(&dir, etcd_port), &dir.join("etcd.log"));
    let apiserver = Peer::spawn(
        "kube-apiserver",
        apiserver_command(&dir, &credentials, api_port, etcd_port),
        &dir.join("kube-apiserver.log"),
    );
    let cp = ControlPlane {
        url,
        dir: dir.clone(),
        peers: Mutex::new(vec![apiserver, etcd]),
        credentials,
    };
    let client = cp.client().await;
    wait_ready(&cp, &client).await?;
    install_crds(&client).await;
    // After the CRDs: the garbage collector discovers resources at startup, so
    // it watches claims from the first test on.
    let mut manager = Peer::spawn(
        "kube-controller-manager",
        controller_manager_command(&dir, &cp.credentials),
        &dir.join("kube-controller-manager.log"),
    );
    manager.wait_for_log("Proceeding to collect garbage", STARTUP);
    cp.peers().insert(0, manager);
    eprintln!("control plane at {} ready in {:?}", cp.url, started.elapsed());
    Ok(cp)
}

/// Waits for `/readyz`; `Err` if a peer exited because its port was taken.
async fn wait_ready(cp: &ControlPlane, client: &Client) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + STARTUP;
    // `Request::new("").get("readyz")` is the way kube builds `GET /readyz`.
    let readyz = kube::core::Request::new("")
        .get("readyz", &Default::default())
        .expect("readyz request");
    loop {
        let request = readyz.clone();
        match client.request_text(request).await {
            Ok(body) if body == "ok" => return Ok(()),
            result => {
                if tokio::time::Instant::now() > deadline {
                    cp.print_logs();
                    panic!("kube-apiserver not ready after {STARTUP:?}: {result:?}");
                }
                let mut peers = cp.peers();
                for peer in peers.iter_mut() {
                    if !peer.is_running() {
                        if peer.log().contains("address already in use") {
                            return Err(format!("{} found its port taken", peer.name));
                        }
                        drop(peers);
                        cp.print_logs();
                        panic!("a control-plane peer exited during startup");
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn install_crds(client: &Client) {
    let keda = repo::path(".tools/keda-crds");
    let mut files = yaml_files(&keda);
    // Every CRD the pinned KEDA ships: its manager waits for a cache of each
    // kind it watches and exits when one never syncs (after 2 minutes).
    for group in KEDA_CRD_GROUPS {
        assert!(
            files.iter().any(|f| file_name(f).starts_with(&format!("{group}_"))),
            "no {group} CRDs in {}: run `scripts/tools.sh keda`",
            keda.display()
        );
    }
    files.extend(yaml_files(&repo::path("apis")));
    for file in files {
        apply_file(client, &file, None).await;
    }
}

/// The API groups of KEDA's CRDs (`<group>_<plural>.yaml` in its module).
const KEDA_CRD_GROUPS: [&str; 2] = ["keda.sh", "eventing.keda.sh"];

fn file_name(path: &Path) -> String {
    path.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    files
}

fn etcd_command(dir: &Path, port: u16) -> Command {
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let client_url = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(tool("etcd"));
    command
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        // Test data need not survive a power cut; fsync dominates write latency.
        .arg("--unsafe-no-fsync")
        .args(["--log-level", "warn"]);
    command
}

fn apiserver_command(dir: &Path, credentials: &Credentials, port: u16, etcd_port: u16) -> Command {
    let mut command = Command::new(tool("kube-apiserver"));
    command
        .args(["--etcd-servers", &format!("http://127.0.0.1:{etcd_port}")])
        .args(["--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1"])
        .args(["--secure-port", &port.to_string()])
        .arg("--cert-dir")
        .arg(dir.join("apiserver-certs"))
        .arg("--tls-cert-file")
        .arg(&credentials.apiserver.cert)
        .arg("--tls-private-key-file")
        .arg(&credentials.apiserver.key)
        .arg("--client-ca-file")
        .arg(&credentials.ca)
        .args(["--authorization-mode", "Node,RBAC"])
        .args(["--enable-admission-plugins", "OwnerReferencesPermissionEnforcement"])
        .args(["--service-cluster-ip-range", "10.96.0.0/16"])
        .args([
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
        ])
        .arg("--service-account-key-file")
        .arg(&credentials.service_account_pub)
        .arg("--service-account-signing-key-file")
        .arg(&credentials.service_account_key)
        // The aggregation layer, for extension API servers such as KEDA's
        // metrics adapter. No `--enable-aggregator-routing`: its endpoint
        // resolver refuses ExternalName Services, and an ExternalName Service
        // for `localhost` is how an APIService reaches a loopback process
        // (Endpoints refuse loopback addresses). See `crate::keda`.
        .arg("--requestheader-client-ca-file")
        .arg(&credentials.front_proxy_ca)
        .args(["--requestheader-allowed-names", "front-proxy-client"])
        .args(["--requestheader-username-headers", "X-Remote-User"])
        .args(["--requestheader-group-headers", "X-Remote-Group"])
        .args(["--requestheader-extra-headers-prefix", "X-Remote-Extra-"])
        .arg("--proxy-client-cert-file")
        .arg(&credentials.front_proxy_client.cert)
        .arg("--proxy-client-key-file")
        .arg(&credentials.front_proxy_client.key)
        .arg("--audit-policy-file")
        .arg(dir.join("audit-policy.yaml"))
        .arg("--audit-log-path")
        .arg(dir.join("audit.log"))
        // Off unless asked for: `/debug/pprof` for a benchmark's profile.
        .arg(format!("--profiling={}", std::env::var_os(PROFILING).is_some()));
    command
}

/// Metadata (who did which verb on what, and the answer) for the
/// ServiceAccounts of `eds-system`, where the platform's components run.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: [\"system:serviceaccounts:eds-system\"]
- level: None
";

fn controller_manager_command(dir: &Path, credentials: &Credentials) -> Command {
    let mut command = Command::new(tool("kube-controller-manager"));
    command
        .arg("--kubeconfig")
        .arg(dir.join("controller-manager.kubeconfig"))
        // No serving port: nothing scrapes it, and it would need its own certs.
        .args(["--secure-port", "0"])
        .arg("--leader-elect=false")
        // Each controller acts as its own ServiceAccount with the bootstrap
        // RBAC roles, as in a real cluster.
        .arg("--use-service-account-credentials")
        .args([
            "--controllers",
            "garbagecollector,namespace,deployment,replicaset,serviceaccount,horizontalpodautoscaling",
        ])
        .args(["--horizontal-pod-autoscaler-sync-period", "2s"])
        // Each controller's client may send 1,000 requests a second (default
        // 20), so the controllers here keep up with whatever is created: the
        // controller benchmark's Deployments get their ReplicaSets, Pods and
        // status updates as fast as the machine allows, in the floor's run as
        // in the controller's. At 100 a second the floor created its objects
        // faster than the controller manager followed, and its clock stopped
        // with half of that work still to come (docs/benchmarks.md). The
        // tests' handful of objects never reach either rate.
        .args(["--kube-api-qps", "1000", "--kube-api-burst", "2000"])
        .arg("--root-ca-file")
        .arg(&credentials.ca)
        .arg("--service-account-private-key-file")
        .arg(&credentials.service_account_key)
        .arg("--profiling=false");
    command
}

/// The certificates and keys every peer and client uses, as files.
struct Credentials {
    ca: PathBuf,
    apiserver: Leaf,
    admin: Leaf,
    controller_manager: Leaf,
    front_proxy_ca: PathBuf,
    front_proxy_client: Leaf,
    /// Signs ServiceAccount tokens (private) and checks them (public).
    service_account_key: PathBuf,
    service_account_pub: PathBuf,
}

impl Credentials {
    fn create(dir: &Path) -> Credentials {
        let pki = Pki::new(dir, "kube");
        let front_proxy = Pki::new(dir, "front-proxy");
        let signing = KeyPair::generate().unwrap();
        let service_account_key = dir.join("service-account-key.pem");
        let service_account_pub = dir.join("service-account-pub.pem");
        std::fs::write(&service_account_key, signing.serialize_pem()).unwrap();
        std::fs::write(&service_account_pub, signing.public_key_pem()).unwrap();
        Credentials {
            apiserver: pki.server("kube-apiserver"),
            admin: pki.client("eds-test-admin", &["system:masters"]),
            controller_manager: pki.client("system:kube-controller-manager", &[]),
            ca: pki.ca_pem,
            front_proxy_client: front_proxy.client("front-proxy-client", &[]),
            front_proxy_ca: front_proxy.ca_pem,
            service_account_key,
            service_account_pub,
        }
    }
}

/// `user` is the kubeconfig's user entry, one line of YAML.
fn write_kubeconfig(path: &Path, url: &str, ca: &Path, user: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: eds-test\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\nusers:\n- name: user\n  user: {{{user}}}\ncontexts:\n- name: eds-test\n  context:\n    cluster: eds-test\n    user: user\ncurrent-context: eds-test\n",
        ca = ca.display(),
    );
    std::fs::write(path, text).unwrap();
}

fn client_certificate(leaf: &Leaf) -> String {
    format!(
        "client-certificate: {}, client-key: {}",
        leaf.cert.display(),
        leaf.key.display()
    )
}
