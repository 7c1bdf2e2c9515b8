//! Real nats-server peers: one server, or a cluster, on free loopback ports
//! with JetStream and their own store directories.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{Peer, free_port, tool};

/// One nats-server with JetStream.
pub struct NatsServer {
    // Dropped before `dir`, so a failing test can still print the log.
    pub peer: Peer,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl NatsServer {
    /// JetStream on, a free port, its own store.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// As [`NatsServer::start`], with `extra` appended to the config file
    /// (authorization, TLS, accounts, a JetStream domain...).
    pub fn start_with(extra: &str) -> Self {
        Self::start_configured(free_port(), |dir| {
            format!(
                "listen: 127.0.0.1:{{port}}\nserver_name: solo\njetstream {{\n  store_dir: {:?}\n  max_memory_store: 256MB\n  max_file_store: 2GB\n{}}}\n{}\n",
                dir.join("js"),
                domain_line(extra),
                strip_domain(extra),
            )
        })
    }

    /// As [`NatsServer::start`], with two users: `eds` (password
    /// `eds-pass`) holding exactly `deploy/nats/eds-permissions.conf`, and
    /// `admin` (`admin-pass`) holding everything. The server logs each
    /// request a permission refused (`Violation`).
    pub fn start_with_eds_permissions() -> Self {
        let permissions = std::fs::read_to_string(crate::repo::path("deploy/nats/eds-permissions.conf")).unwrap();
        Self::start_with(&format!(
            "{permissions}\nauthorization {{\n  users: [\n    {{user: eds, password: eds-pass, permissions: $EDS_PERMISSIONS}}\n    {{user: admin, password: admin-pass}}\n  ]\n}}\n"
        ))
    }

    /// A client as `admin`, on a server from [`Self::start_with_eds_permissions`].
    pub async fn admin(&self) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pass".into())
            .connect(self.url())
            .await
            .unwrap()
    }

    fn start_configured(port: u16, config: impl FnOnce(&std::path::Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = config(dir.path()).replace("{port}", &port.to_string());
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, text).unwrap();
        let mut command = Command::new(tool("nats-server"));
        command.arg("-c").arg(&conf);
        let log = dir.path().join("nats.log");
        let mut peer = Peer::spawn("nats-server", command, &log);
        wait_listening(&mut peer, port);
        NatsServer { peer, port, dir }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Kills the server (no clean shutdown) and starts it again on the same
    /// port and store.
    pub fn restart(&mut self) {
        self.peer.restart();
        wait_listening(&mut self.peer, self.port);
    }

    pub fn stop(&mut self) {
        self.peer.stop();
    }

    pub fn start_again(&mut self) {
        self.restart();
    }
}

/// `jetstream { domain: x }` must sit inside the jetstream block: tests pass
/// it as a first line `domain: x` of `extra`.
fn domain_line(extra: &str) -> String {
    extra
        .lines()
        .find(|l| l.trim_start().starts_with("domain:"))
        .map(|l| format!("  {}\n", l.trim()))
        .unwrap_or_default()
}

fn strip_domain(extra: &str) -> String {
    extra
        .lines()
        .filter(|l| !l.trim_start().starts_with("domain:"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_listening(peer: &mut Peer, port: u16) {
    peer.wait_until("ready", Duration::from_secs(20), |p| {
        p.log().matches("Server is ready").count() > 0 && TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A JetStream cluster of `n` servers on loopback.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start(n: usize) -> Self {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let routes: String = ports
            .iter()
            .map(|(_, cluster)| format!("nats-route://127.0.0.1:{cluster}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut servers = Vec::new();
        for (i, (client, cluster)) in ports.iter().enumerate() {
            let routes = routes.clone();
            let server = NatsServer::start_configured(*client, |dir| {
                let mut c = String::new();
                writeln!(c, "listen: 127.0.0.1:{{port}}").unwrap();
                writeln!(c, "server_name: n{i}").unwrap();
                // Explicit limits: the default is a share of the free disk,
                // which would make stream placement depend on the machine.
                writeln!(
                    c,
                    "jetstream {{ store_dir: {:?}, max_file_store: 64GB, max_memory_store: 256MB }}",
                    dir.join("js")
                )
                .unwrap();
                writeln!(
                    c,
                    "cluster {{ name: eds-test\n listen: 127.0.0.1:{cluster}\n routes: [{routes}] }}"
                )
                .unwrap();
                c
            });
            servers.push(server);
        }
        NatsCluster { servers }
    }

    /// Every server's URL, comma separated (the scaler's configured list).
    pub fn urls(&self) -> String {
        self.servers.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }
}
