//! Peers as child processes: spawned with their output in a log file, waited
//! on until ready, killed on drop, and their log printed when a test fails.
//!
//! A peer also dies with the test process, however that ends: a peer kept in a
//! `static` is never dropped, and a killed `cargo test` drops nothing. See
//! [`GUARD`].

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::http;

/// A binary from `.tools/bin`, built by `scripts/tools.sh`.
pub fn tool(name: &str) -> PathBuf {
    let path = crate::repo::path(".tools/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `scripts/tools.sh` (the test scripts do this for you)",
        path.display()
    );
    path
}

/// `program` as a command, run under `wrapper` (a profiler and its
/// arguments, split on whitespace) unless that is empty.
pub fn wrapped(wrapper: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut words = wrapper.split_whitespace();
    match words.next() {
        Some(first) => {
            let mut command = Command::new(first);
            command.args(words).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// A port that was free a moment ago on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running peer.
pub struct Peer {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
    command: Option<Command>,
}

impl Peer {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, command: Command, log: &Path) -> Peer {
        let child = Self::start(name, &command, log);
        Peer {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
            command: Some(command),
        }
    }

    fn start(name: &str, command: &Command, log: &Path) -> Child {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        // A group of its own: Ctrl-C at a terminal (or `timeout`) signals the
        // whole foreground group, which would kill the guard's watcher and
        // leave a peer shutting down at its own pace. Peers die by the guard.
        guarded(command)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"))
    }

    /// The peer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until `ready()` holds; panics with the log on timeout or exit.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut(&Peer) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("{} exited ({status}) before {what}\n{}", self.name, self.log());
            }
            if Instant::now() > deadline {
                panic!("{} not {what} after {timeout:?}\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until `GET path` on loopback `port` answers 200.
    pub fn wait_http_ok(&mut self, port: u16, path: &str, timeout: Duration) {
        self.wait_until(&format!("answering GET {path}"), timeout, |_| http::ok(port, path));
    }

    /// As [`Self::wait_http_ok`], without panicking: whether it answered
    /// within `timeout` (for use while a failed test unwinds).
    pub fn try_wait_http_ok(&mut self, port: u16, path: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if http::ok(port, path) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        self.wait_until(&format!("logging {needle:?}"), timeout, |p| p.log().contains(needle));
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the process to exit (SIGTERM), then kills it after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.stop();
    }

    /// Starts the same command again, appending to the same log.
    pub fn restart(&mut self) {
        self.stop();
        let command = self.command.as_ref().expect("command kept");
        self.child = Some(Self::start(&self.name, command, &self.log));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// How the peer ended, if it exited by itself: not when a test stopped
    /// it ([`Peer::stop`], [`Peer::terminate`]).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Fails the test, with the peer's log, if the peer exited by itself.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            let log = self.log_tail(LOG_TAIL);
            panic!(
                "{} exited by itself ({status}); a test that needs it cannot pass\n{log}",
                self.name
            );
        }
    }

    /// Its state in a word: `running`, `stopped` (by a test) or how it exited.
    pub fn state(&mut self) -> String {
        if self.child.is_none() {
            return "stopped".to_string();
        }
        match self.exited() {
            None => "running".to_string(),
            Some(status) => format!("EXITED ({status})"),
        }
    }

    /// The last `lines` lines of the log, under a header with the peer's
    /// name and state.
    pub fn log_tail(&mut self, lines: usize) -> String {
        let log = self.log();
        let state = self.state();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        let mut out = format!(
            "----- {} ({}), last {} lines of {} -----\n",
            self.name,
            state,
            tail.len(),
            self.log.display()
        );
        for line in tail.iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&format!("----- end of {} log -----\n", self.name));
        out
    }

    /// One line, `name: state`; when it exited by itself, the tail of its
    /// log follows (for a person reading the rig's `status`).
    pub fn report(&mut self) -> String {
        match self.exited() {
            None => {
                let state = self.state();
                format!("{}: {state}", self.name)
            }
            Some(_) => self.log_tail(20),
        }
    }

    /// Prints [`Peer::log_tail`] to stderr (the test's output).
    pub fn print_log(&mut self) {
        eprint!("{}", self.log_tail(LOG_TAIL));
    }
}

/// How many lines of a peer's log a failure shows.
pub const LOG_TAIL: usize = 150;

/// Runs the peer under `sh`, which first starts a watcher and then `exec`s the
/// peer, so the child's pid is the peer's own. The watcher blocks reading the
/// peer's stdin, a pipe whose only writer is this test process: when the test
/// process exits or is killed, the read returns and the watcher kills the peer.
/// (`$$` in the watcher is the pid the peer took over.)
const GUARD: &str = r#"exec 3<&0 0</dev/null; (read _ <&3; kill -KILL $$) & exec "$@" 3<&-"#;

fn guarded(command: &Command) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(GUARD)
        .arg("sh")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => sh.env(key, value),
            None => sh.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        sh.current_dir(dir);
    }
    sh
}

/// Removes `dir` once this test process has exited, for state that outlives
/// every test (a `static` peer's directory). Like [`GUARD`], a pipe tells the
/// remover when; it waits a moment for the guarded peers to die first.
#[allow(clippy::zombie_processes, reason = "the remover outlives this process by design")]
pub fn remove_at_exit(dir: &Path) {
    let mut remover = Command::new("sh")
        .arg("-c")
        .arg(r#"read _; sleep 1; rm -rf -- "$1""#)
        .arg("sh")
        .arg(dir)
        .process_group(0)
        .stdin(Stdio::piped())
        .spawn()
        .expect("starting the directory remover");
    // The pipe must stay open until the process exits, so the handle is leaked.
    std::mem::forget(remover.stdin.take());
}

impl Drop for Peer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log();
        }
        self.stop();
    }
}

/// The kernel's clock ticks per second (`USER_HZ`), which `/proc/<pid>/stat`
/// counts CPU time in; the benchmarks read their processes' CPU with it.
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
