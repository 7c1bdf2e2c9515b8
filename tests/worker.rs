//! The reference worker (`examples/worker`) scales in cleanly on a real
//! nats-server: sent SIGTERM mid-batch, it loses no message and leaves none
//! waiting for `ack_wait`.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{Consumer, Info, pull};
use testkit::eventually_every;
use testkit::js::{js, publish, pull_consumer, stream_with};
use testkit::nats::NatsServer;
use testkit::process::Peer;

/// Far longer than any wait below: a message that waits for it fails the test.
const ACK_WAIT: Duration = Duration::from_secs(60);
/// What "at once" allows for a hand-over, on a loaded machine.
const HAND_OVER_BOUND: Duration = Duration::from_secs(10);

/// The example binary, which `cargo test` builds with every other target.
fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/worker-<hash> -> target/<profile>/examples/worker
    let path = exe.parent().unwrap().parent().unwrap().join("examples").join("worker");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it, or run `cargo build --example worker`",
        path.display()
    );
    path
}

struct Worker {
    peer: Peer,
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(name: &str, url: &str, concurrency: u32, work_seconds: f64, drain_seconds: f64) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(worker_binary());
        command
            .env("NATS_URL", url)
            .env("NATS_STREAM", "WORK")
            .env("NATS_CONSUMER", "workers")
            .env("CONCURRENCY", concurrency.to_string())
            .env("WORK_SECONDS", work_seconds.to_string())
            .env("DRAIN_SECONDS", drain_seconds.to_string())
            .env("PORT", "0")
            .env("RUST_LOG", "info");
        let mut peer = Peer::spawn(name, command, &dir.path().join("worker.log"));
        peer.wait_for_log("working", Duration::from_secs(10));
        Worker { peer, _dir: dir }
    }

    /// Stream sequences of the messages this worker logged as `outcome`.
    fn settled(&self, outcome: &str) -> Vec<u64> {
        self.peer
            .log()
            .lines()
            .filter(|line| line.contains(&format!(" {outcome} stream_sequence=")))
            .map(|line| {
                let value = line
                    .split("stream_sequence=")
                    .nth(1)
                    .unwrap_or_else(|| panic!("{line}"));
                value.split_whitespace().next().unwrap().parse().unwrap()
            })
            .collect()
    }

    /// SIGTERM; returns how long the worker took to exit.
    fn terminate(&mut self) -> Duration {
        let start = Instant::now();
        self.peer.terminate(Duration::from_secs(30));
        let took = start.elapsed();
        assert!(
            self.peer.log().contains("exiting: every message settled"),
            "the worker did not stop cleanly:\n{}",
            self.peer.log()
        );
        took
    }
}

async fn info(consumer: &Consumer<pull::Config>) -> Info {
    consumer.get_info().await.unwrap()
}

async fn wait_for(consumer: &Consumer<pull::Config>, what: &str, check: impl Fn(&Info) -> bool) -> Info {
    eventually_every(Duration::from_millis(20), what, HAND_OVER_BOUND, async || {
        let info = info(consumer).await;
        if check(&info) {
            Ok(info)
        } else {
            Err(format!(
                "pending {}, ack pending {}, ack floor {}",
                info.num_pending, info.num_ack_pending, info.ack_floor.stream_sequence
            ))
        }
    })
    .await
}

/// Stream `WORK`, durable `workers` with a long ack_wait, and `n` messages.
async fn work(server: &NatsServer, n: usize) -> Consumer<pull::Config> {
    let js = js(&server.url()).await;
    let stream = stream_with(&js, "WORK", &["work.>"]).await;
    let consumer = pull_consumer(&stream, "workers", "", ACK_WAIT).await;
    publish(&js, "work.x", n).await;
    consumer
}

fn unique(sequences: &[u64]) -> BTreeSet<u64> {
    let set: BTreeSet<u64> = sequences.iter().copied().collect();
    assert_eq!(set.len(), sequences.len(), "a message settled twice: {sequences:?}");
    set
}

#[tokio::test]
async fn what_a_stopping_worker_cannot_finish_goes_straight_to_another_replica() {
    let server = NatsServer::start();
    let consumer = work(&server, 20).await;

    // A holds four messages it would need 30 s each for.
    let mut slow = Worker::start("slow worker", &server.url(), 4, 30.0, 1.0);
    wait_for(&consumer, "held by the slow worker", |i| i.num_ack_pending == 4).await;
    // Its prefetch stays within its concurrency.
    for _ in 0..20 {
        let held = info(&consumer).await.num_ack_pending;
        assert!(held <= 4, "the worker holds {held} messages with concurrency 4");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // B takes the rest, while A still holds its four.
    let mut fast = Worker::start("fast worker", &server.url(), 2, 0.05, 5.0);
    wait_for(&consumer, "only the slow worker's messages left", |i| {
        i.num_pending == 0 && i.num_ack_pending == 4
    })
    .await;

    let sigterm = Instant::now();
    let exit = slow.terminate();
    let info = wait_for(&consumer, "every message acknowledged", |i| {
        i.num_pending == 0 && i.num_ack_pending == 0 && i.ack_floor.stream_sequence == 20
    })
    .await;
    let hand_over = sigterm.elapsed();
    eprintln!(
        "hand-over: 4 held messages NAKed and acked by another replica {hand_over:?} after SIGTERM \
         (the worker drained for 1 s and exited after {exit:?}; ack_wait is {ACK_WAIT:?})"
    );
    assert!(hand_over < HAND_OVER_BOUND, "{hand_over:?}");
    assert_eq!(info.num_redelivered, 0, "nothing is left redelivered and unacked");
    fast.terminate();

    let nacked = unique(&slow.settled("nacked"));
    assert_eq!(nacked.len(), 4, "{}", slow.peer.log());
    assert!(slow.settled("acked").is_empty(), "{}", slow.peer.log());
    let acked = unique(&fast.settled("acked"));
    assert_eq!(
        acked,
        (1..=20).collect(),
        "every message acked once, by the fast worker"
    );
    assert!(nacked.is_subset(&acked));
}

#[tokio::test]
async fn a_stopping_worker_fetches_no_more_and_acks_what_it_finishes() {
    let server = NatsServer::start();
    let consumer = work(&server, 10).await;

    let mut worker = Worker::start("worker", &server.url(), 3, 1.5, 20.0);
    wait_for(&consumer, "three messages held", |i| i.num_ack_pending == 3).await;
    let exit = worker.terminate();
    eprintln!("a worker holding 3 messages of 1.5 s work exited {exit:?} after SIGTERM");
    assert!(exit < HAND_OVER_BOUND, "{exit:?}");

    let acked = unique(&worker.settled("acked"));
    assert_eq!(acked.len(), 3, "{}", worker.peer.log());
    assert!(worker.settled("nacked").is_empty(), "{}", worker.peer.log());
    let info = info(&consumer).await;
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (7, 0),
        "the three it held are acked and it took no more"
    );
}

#[tokio::test]
async fn what_arrives_on_an_open_pull_request_after_sigterm_is_handed_back() {
    let server = NatsServer::start();
    let consumer = work(&server, 0).await;
    let js = js(&server.url()).await;

    // An idle worker always has a pull request open, waiting for work.
    let mut idle = Worker::start("idle worker", &server.url(), 5, 30.0, 20.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    idle.peer.signal("TERM");
    // Work that arrives now may reach the request the worker still reads.
    publish(&js, "work.x", 5).await;
    // (A second SIGTERM changes nothing: the worker is already stopping.)
    let exit = idle.terminate();
    assert!(idle.settled("acked").is_empty(), "{}", idle.peer.log());

    // Whatever it was sent, it handed back: the next replica gets all five
    // at once, not after ack_wait.
    let handed_back = Instant::now();
    let mut next = Worker::start("next worker", &server.url(), 5, 0.05, 5.0);
    wait_for(&consumer, "every message acknowledged", |i| {
        i.num_pending == 0 && i.num_ack_pending == 0 && i.ack_floor.stream_sequence == 5
    })
    .await;
    eprintln!(
        "a stopping worker NAKed {} deliveries on its last pull request and exited {exit:?} after SIGTERM; \
         the next replica had all 5 messages acked {:?} after it started",
        idle.settled("nacked").len(),
        handed_back.elapsed()
    );
    next.terminate();
    assert_eq!(unique(&next.settled("acked")), (1..=5).collect());
}
