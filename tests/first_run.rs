//! What a new user meets first, against a real nats-server: the demo's
//! output, the scaler's first call after start-up, files the configuration
//! names, and `eds lag`'s answer.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use eds::lag::{ConsumerKey, JetStreamLag, LagError};
use eds::nats::{Connections, NatsConfig};
use testkit::js::{js, publish, pull_consumer, stream_with};
use testkit::nats::NatsServer;
use testkit::process::tool;

fn eds(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eds"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running eds")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The demo example, which `cargo test` builds beside the binary.
fn demo_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_eds"))
        .with_file_name("examples")
        .join("demo");
    assert!(
        path.exists(),
        "{} is missing: cargo build --example demo",
        path.display()
    );
    path
}

#[test]
fn the_demo_prints_its_table_and_nothing_else() {
    let out = Command::new(demo_binary())
        .args(["--duration", "4s", "--nats-server"])
        .arg(tool("nats-server"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("HPA wants"),
        "the column says whose wish it is:\n{stdout}"
    );
    assert!(!stdout.contains("error") && !stdout.contains("Status {"), "{stdout}");
    let rows = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()));
    assert!(rows.count() >= 4, "a row a second:\n{stdout}");
    assert!(stdout.contains("\ndone: "), "{stdout}");
    assert_eq!(stderr, "", "no warnings, during or after the run");

    let help = Command::new(demo_binary()).arg("--help").output().unwrap();
    let help = text(&help.stdout);
    for flag in [
        "--min-replicas",
        "--max-replicas",
        "--lag-threshold",
        "--work-time",
        "--duration",
    ] {
        let line = help.lines().find(|l| l.trim_start().starts_with(flag)).expect(flag);
        let words = line.split_whitespace().count();
        assert!(words > 4, "{flag} has no help text: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_before_the_first_connect_waits_and_one_after_a_loss_fails_at_once() {
    let mut nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let stream = stream_with(&js, "ORDERS", &["orders.>"]).await;
    pull_consumer(&stream, "workers", "", Duration::from_secs(30)).await;
    publish(&js, "orders.new", 3).await;
    drop(js);
    nats.stop();

    // The scaler starts while its server is down; the server comes up 300 ms later.
    let connections = Connections::connect(&NatsConfig::for_url(nats.url()), "first-run")
        .await
        .unwrap();
    let lag = JetStreamLag::new(connections);
    let key = ConsumerKey::new("default", None, "ORDERS", "workers");
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        nats.start_again();
        nats
    });
    let started = Instant::now();
    let state = lag
        .consumer_state(&key)
        .await
        .expect("the first call waits for the first connect");
    assert_eq!(state.lag(), 3);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "within the request timeout"
    );
    let mut nats = starter.join().unwrap();

    // Once it has been up, a lost connection answers at once.
    nats.stop();
    let started = Instant::now();
    let error = loop {
        match lag.consumer_state(&key).await {
            Err(e @ LagError::Disconnected { .. }) => break e,
            _ if started.elapsed() > Duration::from_secs(5) => panic!("the loss was never noticed"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let quick = Instant::now();
    let again = lag.consumer_state(&key).await.unwrap_err();
    assert!(quick.elapsed() < Duration::from_millis(100), "{:?}", quick.elapsed());
    assert_eq!(again, error);
}

#[test]
fn every_file_the_configuration_names_fails_at_start_up_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("connections.yaml");
    let missing = dir.path().join("missing-ca.pem");
    std::fs::write(
        &config,
        format!(
            "connections:\n  orders:\n    url: tls://127.0.0.1:4222\n    tls:\n      caFile: {}\n",
            missing.display()
        ),
    )
    .unwrap();
    let not_pem = dir.path().join("not-pem.crt");
    std::fs::write(&not_pem, "hello").unwrap();
    let cases: [(Vec<String>, &Path); 4] = [
        (vec!["--nats-tls-ca".into(), missing.display().to_string()], &missing),
        (vec!["--nats-config".into(), config.display().to_string()], &missing),
        (vec!["--nats-tls-ca".into(), not_pem.display().to_string()], &not_pem),
        (
            vec![
                "--nats-tls-cert".into(),
                not_pem.display().to_string(),
                "--nats-tls-key".into(),
                missing.display().to_string(),
            ],
            &not_pem,
        ),
    ];
    for (flags, path) in cases {
        let started = Instant::now();
        let mut args = vec!["scaler", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"];
        args.extend(flags.iter().map(String::as_str));
        let out = eds(&args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{flags:?} started");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(stderr.contains(&path.display().to_string()), "{flags:?}: {stderr}");
        assert!(stderr.contains("TLS"), "{flags:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn eds_lag_prints_its_answer_or_one_error_and_dials_only_its_connection() {
    let nats = NatsServer::start();
    let js = js(&nats.url()).await;
    let stream = stream_with(&js, "ORDERS", &["orders.>"]).await;
    pull_consumer(&stream, "workers", "", Duration::from_secs(30)).await;
    publish(&js, "orders.new", 2).await;

    let out = eds(&[
        "lag",
        "--nats-url",
        &nats.url(),
        "--stream",
        "ORDERS",
        "--consumer",
        "workers",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("lag          2"), "{}", text(&out.stdout));
    assert_eq!(text(&out.stderr), "", "no log lines on success");

    // A named connection: the default one (flags) is not dialled at all.
    let default = TcpListener::bind("127.0.0.1:0").unwrap();
    default.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("connections.yaml");
    std::fs::write(&config, format!("connections:\n  orders:\n    url: {}\n", nats.url())).unwrap();
    let out = eds(&[
        "lag",
        "--nats-url",
        &format!("nats://{}", default.local_addr().unwrap()),
        "--nats-config",
        config.to_str().unwrap(),
        "--connection",
        "orders",
        "--stream",
        "ORDERS",
        "--consumer",
        "workers",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"lag\":2"), "{}", text(&out.stdout));
    assert_eq!(text(&out.stderr), "");
    assert!(default.accept().is_err(), "eds lag dialled the default connection");

    // Nothing listening: one line, naming the connection and its server.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("nats://{closed}");
    let out = eds(&["lag", "--nats-url", &url, "--stream", "ORDERS", "--consumer", "workers"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("eds: ") && stderr.contains(&url), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes outside a terminal: {stderr:?}"
    );
}
