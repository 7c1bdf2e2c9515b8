//! The command line: every flag of every subcommand, turned into the plain
//! config structs the components take, and the dispatch.
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::controller::{ControllerConfig, LeaderConfig};
use crate::function::FunctionConfig;
use crate::lag::cache::{CacheLimits, DEFAULT_MAX_ENTRIES};
use crate::lag::limit::MissLimit;
use crate::lag::{ConsumerKey, JetStreamLag};
use crate::nats::{ConnectionSettings, Connections, DEFAULT_CONNECTION, NatsConfig, TlsSettings};
use crate::render::{DEFAULT_SCALER_ADDRESS, Platform};
use crate::scaler::{GrpcTls, ScalerConfig, Tuning};
use crate::telemetry::{self, LogFormat};
use crate::tenancy::Patterns;
use crate::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "eds",
    version,
    about = "NATS JetStream workers on Kubernetes, autoscaled on their backlog"
)]
pub struct Args {
    /// Log format.
    #[arg(long, env = "EDS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve KEDA's external scaler gRPC API from JetStream consumer lag.
    Scaler(ScalerArgs),
    /// Reconcile EventDrivenService resources into their children.
    Controller(ControllerArgs),
    /// Print the children a claim renders to, as multi-document YAML.
    Render(RenderArgs),
    /// Print a consumer's current lag breakdown.
    Lag(LagArgs),
    /// Print the EventDrivenService CustomResourceDefinition.
    Crd,
    /// Serve a Crossplane composition function that composes
    /// EventDrivenService composites into the same children.
    Function(FunctionArgs),
    /// Print the Crossplane CompositeResourceDefinition for EventDrivenService.
    Xrd,
}

/// Parses the command line, runs the subcommand and maps failure to exit 1.
pub fn main() -> ExitCode {
    let args = Args::parse();
    // The servers log what they do; a one-shot command prints its answer
    // or one error, and logs only what RUST_LOG asks for.
    let level = match &args.command {
        Command::Function(function) if function.debug => "debug",
        Command::Scaler(_) | Command::Controller(_) | Command::Function(_) => "info",
        Command::Render(_) | Command::Lag(_) | Command::Crd | Command::Xrd => "off",
    };
    telemetry::init_logging(args.log_format, level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eds: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eds: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Scaler(args) => crate::runtime::run_scaler(args.into()).await,
        Command::Controller(args) => crate::runtime::run_controller(args.into()).await,
        Command::Render(args) => render(args),
        Command::Lag(args) => lag(args).await,
        Command::Crd => {
            print!("{}", crate::api::crd_yaml()?);
            Ok(())
        }
        Command::Function(args) => crate::runtime::run_function(args.try_into()?).await,
        Command::Xrd => {
            print!("{}", crate::function::xrd::xrd_yaml()?);
            Ok(())
        }
    }
}

/// The `--nats-*` flags shared by every subcommand that talks to NATS.
#[derive(clap::Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL(s) of the default connection, comma separated.
    #[arg(long, env = "EDS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Credentials file (JWT + nkey seed) for the default connection.
    #[arg(long, env = "EDS_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// File holding an nkey seed (`SU...`) for the default connection.
    #[arg(long, env = "EDS_NATS_NKEY_SEED_FILE")]
    pub nats_nkey_seed_file: Option<PathBuf>,
    /// Token for the default connection.
    #[arg(long, env = "EDS_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// User name for the default connection (with --nats-password).
    #[arg(long, env = "EDS_NATS_USER")]
    pub nats_user: Option<String>,
    /// Password for the default connection.
    #[arg(long, env = "EDS_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// CA bundle (PEM) that signs the NATS servers' certificates.
    #[arg(long, env = "EDS_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS mutual TLS.
    #[arg(long, env = "EDS_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for NATS mutual TLS.
    #[arg(long, env = "EDS_NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// Namespaces (names or `*` globs, comma separated) that may use the
    /// default connection. Not set: none may. `*`: every namespace.
    #[arg(long, env = "EDS_NATS_NAMESPACES", value_parser = parse_patterns)]
    pub nats_namespaces: Option<Patterns>,
    /// YAML file of named connections (see docs/scaler.md). A connection named
    /// `default` there replaces the one built from the flags above.
    #[arg(long, env = "EDS_NATS_CONFIG")]
    pub nats_config: Option<PathBuf>,
    /// How long one NATS request may take before it counts as failed.
    #[arg(long, env = "EDS_NATS_REQUEST_TIMEOUT", default_value = "1500ms", value_parser = parse_duration)]
    pub nats_request_timeout: Duration,
}

impl From<NatsArgs> for NatsConfig {
    fn from(args: NatsArgs) -> Self {
        let tls = (args.nats_tls_ca.is_some() || args.nats_tls_cert.is_some()).then(|| TlsSettings {
            ca_file: args.nats_tls_ca,
            cert_file: args.nats_tls_cert,
            key_file: args.nats_tls_key,
        });
        NatsConfig {
            default: ConnectionSettings {
                url: args.nats_url,
                creds_file: args.nats_creds,
                nkey_seed_file: args.nats_nkey_seed_file,
                token: args.nats_token,
                user: args.nats_user,
                password: args.nats_password,
                tls,
                namespaces: args.nats_namespaces,
                ..Default::default()
            },
            config_file: args.nats_config,
            request_timeout: args.nats_request_timeout,
        }
    }
}

/// `eds scaler` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct ScalerArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Address of the gRPC server KEDA calls.
    #[arg(long, env = "EDS_GRPC_ADDR", default_value = "0.0.0.0:9090")]
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "EDS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub tls: GrpcTlsArgs,
}

impl From<ScalerArgs> for ScalerConfig {
    fn from(args: ScalerArgs) -> Self {
        ScalerConfig {
            nats: args.nats.into(),
            grpc_addr: args.grpc_addr,
            http_addr: args.http_addr,
            tuning: Tuning {
                cache_ttl: args.tuning.cache_ttl,
                push_active_poll: args.tuning.push_active_poll,
                push_idle_recheck: args.tuning.push_idle_recheck,
                drain_sample_every: args.tuning.drain_sample_every,
                drain_min_interval: args.tuning.drain_min_interval,
                cache_limits: CacheLimits {
                    max_entries: args.tuning.lag_cache_entries as usize,
                    misses: MissLimit {
                        per_second: args.tuning.namespace_reads_per_second,
                        burst: args.tuning.namespace_read_burst,
                    },
                },
            },
            tls: GrpcTls {
                cert: args.tls.grpc_tls_cert,
                key: args.tls.grpc_tls_key,
                client_ca: args.tls.grpc_tls_client_ca,
            },
        }
    }
}

/// How fresh lag must be and how push watchers pace themselves.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct TuningArgs {
    /// Longest a lag value is served from cache. NATS sees at most one
    /// request per consumer per TTL, however often KEDA calls.
    #[arg(long, env = "EDS_CACHE_TTL", default_value = "1s", value_parser = parse_duration)]
    pub cache_ttl: Duration,
    /// Re-read interval for an idle consumer with an open push stream that
    /// no live notifier covers (while it is set up, or when it cannot be).
    #[arg(long, env = "EDS_PUSH_ACTIVE_POLL", default_value = "1s", value_parser = parse_duration)]
    pub push_active_poll: Duration,
    /// Safety re-read interval for a consumer with an open push stream
    /// (idle with a notifier, active, or failing).
    #[arg(long, env = "EDS_PUSH_IDLE_RECHECK", default_value = "15s", value_parser = parse_duration)]
    pub push_idle_recheck: Duration,
    /// How often a `drainWithin` trigger with an open metric spec stream
    /// reads its consumer.
    #[arg(long, env = "EDS_DRAIN_SAMPLE_EVERY", default_value = "5s", value_parser = parse_duration)]
    pub drain_sample_every: Duration,
    /// The least time between two streamed `drainWithin` targets (KEDA
    /// rebuilds the HPA on each).
    #[arg(long, env = "EDS_DRAIN_MIN_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub drain_min_interval: Duration,
    /// Consumers the lag cache holds at most (about 1.5 KiB each). When
    /// full, the namespace holding the most entries loses its least
    /// recently used one, so each namespace keeps a fair share.
    #[arg(long, env = "EDS_LAG_CACHE_ENTRIES", default_value_t = DEFAULT_MAX_ENTRIES as u32,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub lag_cache_entries: u32,
    /// NATS reads (cache misses) each namespace may cause a second; beyond
    /// it a request gets RESOURCE_EXHAUSTED naming the namespace.
    #[arg(long, env = "EDS_NAMESPACE_READS_PER_SECOND", default_value_t = MissLimit::default().per_second,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub namespace_reads_per_second: u32,
    /// NATS reads a namespace may cause at once (KEDA reads every consumer
    /// at once when the scaler restarts).
    #[arg(long, env = "EDS_NAMESPACE_READ_BURST", default_value_t = MissLimit::default().burst,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub namespace_read_burst: u32,
}

/// TLS for the gRPC server. With a client CA, clients must present a
/// certificate it signed (mutual TLS).
#[derive(clap::Args, Clone, Debug)]
pub struct GrpcTlsArgs {
    /// Server certificate (PEM).
    #[arg(long, env = "EDS_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// Server key (PEM).
    #[arg(long, env = "EDS_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// CA bundle (PEM) for client certificates; enables mutual TLS.
    #[arg(long, env = "EDS_GRPC_TLS_CLIENT_CA", requires = "grpc_tls_cert")]
    pub grpc_tls_client_ca: Option<PathBuf>,
}

/// `eds controller` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// NATS connections for reading each claim's lag into its status. Only
    /// these servers are dialled; a claim can pick a connection by name.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// How often each claim's lag is read (at most one NATS request per
    /// consumer per interval) and each claim is re-checked for drift.
    #[arg(long, env = "EDS_LAG_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub lag_interval: Duration,
    /// How long redeliveries must last, or how recently a MAX_DELIVERIES or
    /// MSG_TERMINATED advisory must have come, for a claim's consumer to be
    /// reported as having poison messages.
    #[arg(long, env = "EDS_POISON_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub poison_window: Duration,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "EDS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Reconcile only this namespace's claims (default: every namespace).
    #[arg(long, env = "EDS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// The KEDA version the platform runs. Before v2.21 KEDA does not open
    /// StreamMetricSpec, and claims with drainWithin say so in their status.
    #[arg(long, env = "EDS_KEDA_VERSION", default_value = "2.21.0", value_parser = crate::trigger::KedaVersion::parse)]
    pub keda_version: crate::trigger::KedaVersion,
}

impl From<ControllerArgs> for ControllerConfig {
    fn from(args: ControllerArgs) -> Self {
        ControllerConfig {
            platform: args.platform.into(),
            nats: args.nats.into(),
            lag_interval: args.lag_interval,
            poison_window: args.poison_window,
            http_addr: args.http_addr,
            watch_namespace: args.watch_namespace,
            leader: args.leader.into(),
            keda_version: args.keda_version,
        }
    }
}

/// Leader election: only the replica holding the Lease reconciles.
#[derive(clap::Args, Clone, Debug)]
pub struct LeaderArgs {
    /// Name of the Lease.
    #[arg(long, env = "EDS_LEASE_NAME", default_value = "eds-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (the controller's own).
    #[arg(long, env = "EDS_LEASE_NAMESPACE", default_value = "eds-system")]
    pub lease_namespace: String,
    /// How long a Lease holds without renewal; a standby takes over this long
    /// after the leader stops renewing.
    #[arg(long, env = "EDS_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// This replica's name in the Lease and in Events (set it to the pod
    /// name). Default: the host name and process id.
    #[arg(long, env = "EDS_POD_NAME")]
    pub identity: Option<String>,
}

impl From<LeaderArgs> for LeaderConfig {
    fn from(args: LeaderArgs) -> Self {
        let identity = args.identity.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "eds-controller".into());
            format!("{host}-{}", std::process::id())
        });
        LeaderConfig {
            lease_name: args.lease_name,
            lease_namespace: args.lease_namespace,
            lease_duration: args.lease_duration,
            identity,
        }
    }
}

/// What the children need to know about the platform rather than the claim.
#[derive(clap::Args, Clone, Debug)]
pub struct PlatformArgs {
    /// host:port of the eds scaler's gRPC Service, written into every
    /// ScaledObject as KEDA's `scalerAddress`.
    #[arg(long, env = "EDS_SCALER_ADDRESS", default_value = DEFAULT_SCALER_ADDRESS)]
    pub scaler_address: String,
    /// A KEDA ClusterTriggerAuthentication holding `caCert` (and, for mutual
    /// TLS, `tlsClientCert` and `tlsClientKey`): set it when the scaler serves
    /// TLS, and every trigger connects with TLS through it.
    #[arg(long, env = "EDS_SCALER_TRIGGER_AUTHENTICATION")]
    pub scaler_trigger_authentication: Option<String>,
}

impl From<PlatformArgs> for Platform {
    fn from(args: PlatformArgs) -> Self {
        Platform {
            scaler_address: args.scaler_address,
            scaler_trigger_authentication: args.scaler_trigger_authentication,
        }
    }
}

/// `eds render` flags.
#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// Claim file (one or more YAML documents), or `-` for stdin.
    pub file: String,

    #[command(flatten)]
    pub platform: PlatformArgs,
}

/// `eds render`: check every claim in the file as the API server would, then
/// print all their children; print every problem and fail if any claim is
/// invalid.
fn render(args: RenderArgs) -> Result<()> {
    let text = read_input(&args.file)?;
    print!("{}", crate::render::render_text(&text, &args.platform.into())?);
    Ok(())
}

/// Reads at most one byte over the limit, so `/dev/zero` or a huge file
/// is refused at once instead of filling memory.
fn read_input(file: &str) -> Result<String> {
    let limit = crate::render::MAX_INPUT_BYTES;
    let (name, reader): (&str, Box<dyn Read>) = if file == "-" {
        ("stdin", Box::new(std::io::stdin()))
    } else {
        (
            file,
            Box::new(std::fs::File::open(file).map_err(|e| Error::io(file, e))?),
        )
    };
    let mut bytes = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(name, e))?;
    if bytes.len() > limit {
        return Err(crate::render::over_size(bytes.len()));
    }
    String::from_utf8(bytes).map_err(|e| Error::io(name, std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// `eds lag` flags.
#[derive(clap::Args, Debug)]
pub struct LagArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Stream name.
    #[arg(long)]
    pub stream: String,
    /// Durable consumer name.
    #[arg(long)]
    pub consumer: String,
    /// Named connection from --nats-config.
    #[arg(long)]
    pub connection: Option<String>,
    /// JetStream domain.
    #[arg(long)]
    pub js_domain: Option<String>,
    /// Target lag per replica (the trigger's lagThreshold), to show the
    /// metric KEDA gets.
    #[arg(long, default_value = "5", value_parser = crate::trigger::LagThreshold::parse)]
    pub lag_threshold: crate::trigger::LagThreshold,
    /// Un-acknowledged messages one replica holds (the trigger's
    /// concurrency), to show the replica cap.
    #[arg(long, default_value = "1", value_parser = crate::trigger::parse_concurrency)]
    pub concurrency: std::num::NonZeroU32,
    /// The trigger's drainWithin: read the consumer twice, `--window` apart,
    /// and show the arrival rate λ, a replica's capacity μ and the target.
    #[arg(long, value_parser = crate::trigger::parse_drain_within)]
    pub drain_within: Option<Duration>,
    /// Time between the two readings of `--drain-within`.
    #[arg(long, default_value = "10s", value_parser = parse_duration, requires = "drain_within")]
    pub window: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `eds lag`: prints one consumer's lag breakdown.
async fn lag(args: LagArgs) -> Result<()> {
    let name = args.connection.as_deref().unwrap_or(DEFAULT_CONNECTION);
    // Only the connection asked for: the request waits for its first connect.
    let connections = Connections::connect_only(&args.nats.into(), "eds-lag", name).await?;
    let key = ConsumerKey::new(name, args.js_domain.as_deref(), &args.stream, &args.consumer);
    let reader = JetStreamLag::new(connections);
    let mut state = reader.consumer_state(&key).await?;
    let mut metric = crate::trigger::scale_metric(&state, args.lag_threshold.get(), args.concurrency);
    // drainWithin: the scaler's estimate from two readings (it smooths over
    // many; one window is what this command can show).
    let mut drain = None;
    if let Some(within) = args.drain_within {
        let mut estimator = crate::drain::Estimator::new(Default::default(), args.concurrency);
        estimator.observe(state.sample(0.0));
        tokio::time::sleep(args.window).await;
        state = reader.consumer_state(&key).await?;
        estimator.observe(state.sample(args.window.as_secs_f64()));
        let rates = estimator.rates();
        let target = crate::drain::drain_target(rates, within).map(crate::drain::quantize);
        metric = match target {
            Some(target) => crate::trigger::scale_metric_of(
                &state,
                crate::drain::drain_metric(state.lag(), rates, within),
                target,
                args.concurrency,
            ),
            None => crate::trigger::scale_metric(&state, args.lag_threshold.get(), args.concurrency),
        };
        drain = Some((within, rates, target));
    }
    let target = match drain {
        Some((_, _, Some(target))) => target,
        _ => args.lag_threshold.get(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "stream": args.stream, "consumer": args.consumer,
                "pending": state.pending, "ackPending": state.ack_pending,
                "redelivered": state.redelivered, "waiting": state.waiting,
                "lag": state.lag(), "filterSubjects": state.filter_subjects,
                "maxAckPending": state.max_ack_pending, "concurrency": args.concurrency.get(),
                "replicaCap": metric.replica_cap, "metric": metric.value, "target": target,
                "arrivalsPerSecond": drain.and_then(|(_, rates, _)| rates.arrivals),
                "replicaCapacityPerSecond": drain.and_then(|(_, rates, _)| rates.capacity),
            })
        );
    } else {
        println!("stream       {}", args.stream);
        println!("consumer     {}", args.consumer);
        println!("pending      {}", state.pending);
        println!("ack-pending  {}", state.ack_pending);
        println!("redelivered  {}", state.redelivered);
        println!("waiting      {}", state.waiting);
        println!("lag          {}  (pending + ack-pending)", state.lag());
        match (state.max_ack_pending, metric.replica_cap) {
            (Some(limit), Some(cap)) => {
                println!("max-ack-pending {limit}");
                println!(
                    "replica cap  {cap}  (ceil(max-ack-pending {limit} / concurrency {}))",
                    args.concurrency
                );
            }
            _ => println!("max-ack-pending unlimited: no replica cap"),
        }
        if let Some((within, rates, measured)) = drain {
            let rate = |r: Option<f64>| r.map_or("unknown".to_string(), |r| format!("{r:.3}/s"));
            println!("λ arrivals   {}  (over {:?})", rate(rates.arrivals), args.window);
            match measured {
                Some(_) => println!("μ per replica {}", rate(rates.capacity)),
                None => println!("μ per replica unknown: no work waiting at both readings (target: lagThreshold)"),
            }
            println!("drainWithin  {within:?}");
        }
        if metric.is_capped() {
            println!(
                "metric       {}  (capped: {} replicas x target {target}; the true lag is above)",
                metric.value,
                metric.replica_cap.unwrap_or_default(),
            );
        } else if metric.wanted != metric.lag as f64 {
            println!("metric       {}  (lag + λ·drainWithin)", metric.value);
        } else {
            println!("metric       {}  (the lag)", metric.value);
        }
        println!("target       {target}  (replicas = ceil(metric / target))");
    }
    Ok(())
}

/// Parses `1500ms`, `2s`, `1m`, `1m30s` (jiff's friendly format) or a bare
/// number of seconds.
/// A comma-separated list of namespace patterns (`team-*,billing`).
fn parse_patterns(text: &str) -> std::result::Result<Patterns, String> {
    let patterns: Vec<&str> = text.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    Patterns::new(&patterns)
}

pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a duration"))?;
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"));
    }
    let duration: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration such as 1500ms, 2s or 1m: {e}"))?;
    Duration::try_from(duration).map_err(|_| format!("{text:?}: a duration must not be negative"))
}

/// `eds function` flags, named as Crossplane's function runtime passes them.
#[derive(clap::Args, Clone, Debug)]
pub struct FunctionArgs {
    /// Address to serve gRPC on; `:9443` is every interface.
    #[arg(long, default_value = ":9443")]
    pub address: String,
    /// Serve plaintext gRPC, for `crossplane render` on a workstation.
    #[arg(long)]
    pub insecure: bool,
    /// Directory with `tls.crt`, `tls.key` and `ca.crt`: serve mutual TLS and
    /// accept only clients with a certificate that `ca.crt` signed.
    #[arg(long, env = "TLS_SERVER_CERTS_DIR")]
    pub tls_certs_dir: Option<PathBuf>,
    /// Log at debug level.
    #[arg(long, short = 'd')]
    pub debug: bool,
}

impl TryFrom<FunctionArgs> for FunctionConfig {
    type Error = Error;

    fn try_from(args: FunctionArgs) -> Result<Self> {
        // Crossplane's runtime always sets TLS_SERVER_CERTS_DIR; --insecure
        // (a workstation) wins over it.
        let tls_certs_dir = match (args.tls_certs_dir, args.insecure) {
            (_, true) => None,
            (Some(dir), false) => Some(dir),
            (None, false) => {
                return Err(Error::Config(
                    "eds function needs --tls-certs-dir (or TLS_SERVER_CERTS_DIR), or --insecure".into(),
                ));
            }
        };
        Ok(FunctionConfig {
            address: parse_go_address(&args.address)?,
            tls_certs_dir,
        })
    }
}

/// `:9443` (Go's way of saying every interface, as Crossplane's functions
/// take it) or `host:port`.
fn parse_go_address(address: &str) -> Result<SocketAddr> {
    let full = match address.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => address.to_string(),
    };
    full.parse()
        .map_err(|e| Error::Config(format!("--address {address:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn namespace_flag_lists_patterns() {
        let patterns = parse_patterns("team-*, billing").unwrap();
        assert!(patterns.matches("team-a") && patterns.matches("billing") && !patterns.matches("ops"));
        assert!(parse_patterns("a b").is_err());
        let args = Args::parse_from(["eds", "scaler"]);
        let Command::Scaler(scaler) = args.command else {
            unreachable!()
        };
        assert_eq!(
            NatsConfig::from(scaler.nats).default.namespaces,
            None,
            "no flag: no namespace"
        );
    }

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn every_flag_says_what_it_does() {
        let command = Args::command();
        let mut silent = Vec::new();
        for sub in command.get_subcommands() {
            for arg in sub.get_arguments().filter(|a| a.get_id() != "help") {
                if arg.get_help().is_none() {
                    silent.push(format!("eds {} --{}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(silent.is_empty(), "flags without help text: {silent:?}");
    }

    #[test]
    fn flags_become_plain_config() {
        let args = Args::parse_from([
            "eds",
            "scaler",
            "--nats-url",
            "nats://a:4222",
            "--nats-token",
            "t",
            "--nats-tls-ca",
            "/ca.pem",
            "--cache-ttl",
            "250ms",
            "--grpc-tls-cert",
            "/c.pem",
            "--grpc-tls-key",
            "/k.pem",
        ]);
        let Command::Scaler(scaler) = args.command else {
            panic!("not the scaler")
        };
        let config = ScalerConfig::from(scaler);
        assert_eq!(config.nats.default.url, "nats://a:4222");
        assert_eq!(config.nats.default.token.as_deref(), Some("t"));
        assert_eq!(
            config.nats.default.tls,
            Some(TlsSettings {
                ca_file: Some("/ca.pem".into()),
                ..Default::default()
            })
        );
        assert_eq!(config.nats.request_timeout, crate::nats::DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(config.tuning.cache_ttl, Duration::from_millis(250));
        assert_eq!(config.tuning.push_idle_recheck, Tuning::default().push_idle_recheck);
        assert_eq!(config.tls.cert.as_deref(), Some(std::path::Path::new("/c.pem")));
        assert_eq!(config.tls.client_ca, None);

        let Command::Controller(controller) =
            Args::parse_from(["eds", "controller", "--lease-duration", "30s"]).command
        else {
            panic!("not the controller")
        };
        let config = ControllerConfig::from(controller);
        assert_eq!(config.leader.lease_duration, Duration::from_secs(30));
        assert_eq!(config.platform, Platform::default());
        assert!(!config.leader.identity.is_empty());
    }

    #[test]
    fn function_flags_are_the_ones_crossplane_passes() {
        let config = |argv: &[&str]| {
            let Command::Function(args) = Args::parse_from(argv).command else {
                panic!("not the function")
            };
            FunctionConfig::try_from(args)
        };
        let served = config(&["eds", "function", "--tls-certs-dir", "/tls/server"]).unwrap();
        assert_eq!(served.address, "0.0.0.0:9443".parse().unwrap());
        assert_eq!(
            served.tls_certs_dir.as_deref(),
            Some(std::path::Path::new("/tls/server"))
        );

        let local = config(&["eds", "function", "--insecure", "--address", "127.0.0.1:7443"]).unwrap();
        assert_eq!(local.address, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(local.tls_certs_dir, None);

        let err = config(&["eds", "function", "--insecure", "--address", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("--address \"nowhere\""), "{err}");
    }
}
