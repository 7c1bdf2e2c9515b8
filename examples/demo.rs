//! The demo (`scripts/demo.sh`): the scaler against a local nats-server and
//! a bursty workload, showing live what KEDA would see. No cluster needed.
//!
//! A publisher sends bursts to a stream; a pool of slow workers drains a
//! durable consumer, and the pool is resized to the replica count the HPA
//! would pick, so the backlog visibly pulls the worker count up and down.
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::process::Command;

use clap::Parser;
use eds::cli::parse_duration;
use eds::lag::desired_replicas;
use eds::nats::NatsConfig;
use eds::proto::external_scaler_client::ExternalScalerClient;
use eds::proto::{GetMetricsRequest, ScaledObjectRef};
use eds::scaler::{Scaler, Tuning};
use eds::trigger::{CONSUMER as CONSUMER_KEY, LAG_THRESHOLD, LagThreshold, STREAM as STREAM_KEY};
/// The demo's own errors: each says what failed; the library's keep their type.
type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

const STREAM: &str = "DEMO_ORDERS";
const CONSUMER: &str = "demo-workers";

/// Run the scaler against a local nats-server with a bursty workload.
#[derive(Parser, Debug)]
#[command(name = "eds-demo")]
struct Args {
    /// nats-server binary to start (built by scripts/tools.sh).
    #[arg(long, env = "EDS_DEMO_NATS_SERVER", default_value = ".tools/bin/nats-server")]
    pub nats_server: PathBuf,
    /// How long to run.
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Target lag per replica (the claim's scaling.lagThreshold).
    #[arg(long, default_value_t = LagThreshold::DEFAULT, value_parser = LagThreshold::parse)]
    pub lag_threshold: LagThreshold,
    /// Fewest replicas the HPA keeps (the claim's scaling.minReplicas; 0 scales to zero).
    #[arg(long, default_value_t = 0)]
    pub min_replicas: u32,
    /// Most replicas the HPA asks for (the claim's scaling.maxReplicas).
    #[arg(long, default_value_t = 8)]
    pub max_replicas: u32,
    /// Time one worker spends on one message.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub work_time: Duration,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The demo prints its own table; only problems should interrupt it.
    eds::telemetry::init_logging(eds::telemetry::LogFormat::Plain, "warn");
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eds demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("eds-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|l| l.local_addr())?
        .port();
    let mut server = Command::new(&args.nats_server)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("js"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "starting {} ({e}); run scripts/demo.sh, which builds it",
                args.nats_server.display()
            )
        })?;
    let url = format!("nats://127.0.0.1:{port}");
    let outcome = demo(&args, &url).await;
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn demo(args: &Args, url: &str) -> Result<()> {
    let client = connect_when_up(url).await?;
    let js = jetstream::new(client);
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["demo.orders.>".into()],
            ..Default::default()
        })
        .await?;
    let workers = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;

    // The scaler, exactly as `eds scaler` runs it, on a loopback port.
    let scaler = Scaler::connect(&NatsConfig::for_url(url), Tuning::default()).await?;
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let grpc_addr = grpc.local_addr()?;
    let serving = scaler.clone();
    tokio::spawn(async move { serving.serve(grpc, None, std::future::pending()).await });
    let mut keda = ExternalScalerClient::connect(format!("http://{grpc_addr}")).await?;
    let so = ScaledObjectRef {
        name: "demo".into(),
        namespace: "demo".into(),
        scaler_metadata: [
            (STREAM_KEY, STREAM.to_string()),
            (CONSUMER_KEY, CONSUMER.to_string()),
            (LAG_THRESHOLD, args.lag_threshold.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    };
    let spec = keda.get_metric_spec(so.clone()).await?.into_inner();
    println!(
        "eds demo: nats-server {url}, stream {STREAM}, consumer {CONSUMER}, scaler on {grpc_addr}\nKEDA metric {:?}, target {} per replica, replicas {}..{}\n",
        spec.metric_specs[0].metric_name, args.lag_threshold, args.min_replicas, args.max_replicas
    );

    let started = Instant::now();
    let replicas = Arc::new(AtomicU32::new(args.min_replicas));
    let pool = tokio::spawn(worker_pool(workers, replicas.clone(), args.work_time));
    let publisher = tokio::spawn(publish_bursts(js.clone()));
    let mut pushes = keda.stream_is_active(so.clone()).await?.into_inner();
    tokio::spawn(async move {
        while let Ok(Some(push)) = pushes.message().await {
            println!(
                "{:>6.1}s  push: StreamIsActive -> {}",
                started.elapsed().as_secs_f64(),
                push.result
            );
        }
    });

    println!("  time  pending  ack-pending   lag  active  HPA wants  (what KEDA sees; the pool follows at once)");
    let key = eds::lag::ConsumerKey::new(eds::nats::DEFAULT_CONNECTION, None, STREAM, CONSUMER);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < args.duration {
        tick.tick().await;
        let request = GetMetricsRequest {
            scaled_object_ref: Some(so.clone()),
            metric_name: spec.metric_specs[0].metric_name.clone(),
        };
        let mut metrics = keda.get_metrics(request.clone()).await;
        let served = scaler.cache.peek(&key);
        let active = keda.is_active(so.clone()).await;
        // One row, one reading: if the reading GetMetrics was served from
        // expired before IsActive came, IsActive read anew; ask GetMetrics
        // again so that the row does not show one reading's lag beside the
        // next one's verdict.
        let reading = scaler.cache.peek(&key);
        if reading.as_ref().map(|r| r.at) != served.map(|r| r.at) {
            metrics = keda.get_metrics(request).await;
        }
        let breakdown = reading
            .map(|r| r.result)
            .unwrap_or_else(|| Err(eds::lag::LagError::Internal("no reading yet".into())));
        match (metrics, active, breakdown) {
            (Ok(m), Ok(a), Ok(state)) => {
                let lag = m.into_inner().metric_values[0].metric_value as u64;
                let want = desired_replicas(lag, args.lag_threshold.get(), args.min_replicas, args.max_replicas);
                replicas.store(want, Ordering::Relaxed);
                println!(
                    "{:>6.1}s  {:>7}  {:>11}  {:>4}  {:>6}  {:>9}  {}",
                    started.elapsed().as_secs_f64(),
                    state.pending,
                    state.ack_pending,
                    lag,
                    a.into_inner().result,
                    want,
                    "#".repeat(want as usize)
                );
            }
            (metrics, active, breakdown) => {
                // One line, in words: the first of the errors, as KEDA would log it.
                let why = match (metrics, active, breakdown) {
                    (Err(status), _, _) | (_, Err(status), _) => status.message().to_string(),
                    (_, _, Err(e)) => e.to_string(),
                    _ => unreachable!("the first arm took every success"),
                };
                println!("{:>6.1}s  error: {why}", started.elapsed().as_secs_f64());
            }
        }
    }
    publisher.abort();
    pool.abort();
    // Close the scaler's connections before the server stops, so its end is not a disconnect.
    scaler.connections.close().await;
    println!(
        "\ndone: lag = pending + ack-pending; HPA wants ceil(lag / lagThreshold), clamped to min..max.\n\
         Real KEDA and the HPA scale down later than this pool does: to zero only after the\n\
         ScaledObject's cooldownPeriod without activity, and to fewer replicas after the HPA's\n\
         scale-down stabilization window (300 s each by default)."
    );
    Ok(())
}

async fn connect_when_up(url: &str) -> Result<async_nats::Client> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match async_nats::connect(url).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("nats-server did not come up: {e}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Bursts of 20 to 80 orders every 6 to 10 seconds.
async fn publish_bursts(js: jetstream::Context) {
    let mut seed = 0x2545_f491_u32;
    let mut next = move |below: u32| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed % below
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    loop {
        let burst = 20 + next(60);
        for i in 0..burst {
            if let Ok(ack) = js.publish(format!("demo.orders.{}", i % 3), "order".into()).await {
                let _ = ack.await;
            }
        }
        tokio::time::sleep(Duration::from_secs(6 + u64::from(next(5)))).await;
    }
}

/// A pool whose size follows `replicas`. Worker `i` runs while the replica
/// count is above `i` and, like a pod given SIGTERM, finishes and acknowledges
/// its current message before it stops.
async fn worker_pool(
    consumer: consumer::Consumer<consumer::pull::Config>,
    replicas: Arc<AtomicU32>,
    work_time: Duration,
) {
    let mut running: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        running.retain(|w| !w.is_finished());
        let want = replicas.load(Ordering::Relaxed) as usize;
        for index in running.len()..want {
            let (consumer, replicas) = (consumer.clone(), replicas.clone());
            running.push(tokio::spawn(async move {
                while replicas.load(Ordering::Relaxed) as usize > index {
                    let Ok(mut batch) = consumer
                        .fetch()
                        .max_messages(1)
                        .expires(Duration::from_millis(500))
                        .messages()
                        .await
                    else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    while let Some(Ok(message)) = batch.next().await {
                        tokio::time::sleep(work_time).await;
                        let _ = message.ack().await;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
