//! A reference worker for an EventDrivenService: it follows the worker
//! contract of `docs/worker-contract.md`, so a replica the autoscaler removes
//! loses no message and leaves none waiting for `ack_wait`.
//!
//! - It holds at most `--concurrency` messages at once, prefetch included: it
//!   asks the consumer only for as many messages as it has free slots.
//! - On SIGTERM (or SIGINT) it stops fetching and reports not ready, gives the
//!   messages it holds `--drain` to finish and be acked, NAKs with no delay
//!   what is still unfinished then (so the server hands it straight to another
//!   replica), flushes the acks and exits.
//!
//! The "work" is a sleep of `--work`, so the example can stand in for a real
//! worker in demos and tests. Configuration comes from flags or from the
//! environment the platform renders (`NATS_URL`, `NATS_STREAM`,
//! `NATS_CONSUMER`); probes are served on `--port` (`/health`, `/ready`).
//!
//!     cargo run --example worker -- --help
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use futures::StreamExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

/// How long one pull request waits for messages. A stopping worker reads its
/// open request to the end (NAKing what still arrives) rather than dropping
/// it, because a message sent to a dropped request waits out `ack_wait`: so
/// this also bounds how long the worker takes to notice an idle stop.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(about = "A NATS JetStream worker that scales in cleanly (see docs/worker-contract.md)")]
struct Args {
    /// NATS server URL(s).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// JetStream stream.
    #[arg(long, env = "NATS_STREAM")]
    stream: String,
    /// Durable pull consumer on that stream.
    #[arg(long, env = "NATS_CONSUMER")]
    consumer: String,
    /// Most messages held at once, prefetch included.
    #[arg(long, env = "CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Seconds of work per message (decimals allowed).
    #[arg(long, env = "WORK_SECONDS", default_value = "0.5", value_parser = seconds)]
    work: Duration,
    /// Seconds after SIGTERM to finish held messages before NAKing the rest:
    /// the pod's terminationGracePeriodSeconds less a margin to NAK and exit.
    #[arg(long, env = "DRAIN_SECONDS", default_value = "30", value_parser = seconds)]
    drain: Duration,
    /// Port of the `/health` and `/ready` probes (0: any free port).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
}

fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|e| format!("{text:?} is not a number of seconds: {e}"))?;
    Duration::try_from_secs_f64(value).map_err(|e| format!("{text:?} is not a number of seconds: {e}"))
}

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    // Listen for the signal before anything else, so an early one is not lost.
    let stop = stop_on_signal()?;

    let client = async_nats::ConnectOptions::new()
        .name("reference-worker")
        .connect(&args.nats_url)
        .await?;
    let consumer: PullConsumer = jetstream::new(client.clone())
        .get_consumer_from_stream(&args.consumer, &args.stream)
        .await?;
    serve_probes(args.port, stop.clone()).await?;
    info!(stream = %args.stream, consumer = %args.consumer, concurrency = args.concurrency, "working");

    let (give_up, given_up) = watch::channel(false);
    let mut held = run(&consumer, &args, stop.clone(), &given_up).await;

    // Stopping: no more fetching. Held messages have until `drain` after the
    // signal to finish.
    let signalled = stop.borrow().expect("run returns only once signalled");
    info!(held = held.len(), "stopping: fetching no more, finishing what is held");
    let finish = async { while held.join_next().await.is_some() {} };
    if tokio::time::timeout_at((signalled + args.drain).into(), finish)
        .await
        .is_err()
    {
        let _ = give_up.send(true);
        while held.join_next().await.is_some() {}
    }
    // Acks and NAKs are buffered: they must reach the server before we exit.
    client.flush().await?;
    info!("exiting: every message settled");
    Ok(())
}

/// Fetches and starts messages until told to stop; returns the work in hand.
async fn run(
    consumer: &PullConsumer,
    args: &Args,
    mut stop: watch::Receiver<Option<Instant>>,
    given_up: &watch::Receiver<bool>,
) -> JoinSet<()> {
    let slots = Arc::new(Semaphore::new(args.concurrency as usize));
    let mut held = JoinSet::new();
    loop {
        // Reap finished work so the set does not grow.
        while held.try_join_next().is_some() {}
        // Wait for one free slot, then take every free slot: the request asks
        // for exactly as many messages as this worker may still hold.
        let first = tokio::select! {
            biased;
            _ = stop.wait_for(Option::is_some) => return held,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let mut free = vec![first];
        while let Ok(slot) = slots.clone().try_acquire_owned() {
            free.push(slot);
        }
        let mut batch = match consumer
            .batch()
            .max_messages(free.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                warn!(error = %e, "pull request failed; trying again");
                drop(free);
                tokio::select! {
                    _ = stop.wait_for(Option::is_some) => return held,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Read the request to its end even when told to stop meanwhile.
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    warn!(error = %e, "pull request ended with an error");
                    break;
                }
            };
            // Never started (stopping, or more than asked for): hand it straight back.
            let slot = if stop.borrow().is_some() { None } else { free.pop() };
            match slot {
                Some(slot) => {
                    held.spawn(work(message, args.work, given_up.clone(), slot));
                }
                None => settle(&message, AckKind::Nak(None), "nacked").await,
            }
        }
    }
}

/// One message: `work` long, then acked; NAKed if the drain time runs out first.
async fn work(
    message: jetstream::Message,
    work: Duration,
    mut given_up: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let (kind, done) = tokio::select! {
        _ = tokio::time::sleep(work) => (AckKind::Ack, "acked"),
        _ = given_up.wait_for(|g| *g) => (AckKind::Nak(None), "nacked"),
    };
    settle(&message, kind, done).await;
}

async fn settle(message: &jetstream::Message, kind: AckKind, done: &str) {
    let stream_sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
    match message.ack_with(kind).await {
        Ok(()) => info!(stream_sequence, "{done}"),
        Err(e) => warn!(stream_sequence, error = %e, "could not settle a message; it comes back after ack_wait"),
    }
}

/// When the first SIGTERM or SIGINT came; `None` until then.
fn stop_on_signal() -> std::io::Result<watch::Receiver<Option<Instant>>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM"),
            _ = interrupt.recv() => info!("SIGINT"),
        }
        let _ = tx.send(Some(Instant::now()));
    });
    Ok(rx)
}

/// `/health` answers 200 while the process runs; `/ready` 503 once stopping,
/// so no new traffic is routed to a replica on its way out.
async fn serve_probes(port: u16, stop: watch::Receiver<Option<Instant>>) -> std::io::Result<()> {
    let ready = move || {
        let stopping = stop.borrow().is_some();
        async move {
            if stopping {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }
    };
    let app = Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/ready", get(ready));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    info!(port = listener.local_addr()?.port(), "serving /health and /ready");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "probe server stopped");
        }
    });
    Ok(())
}
