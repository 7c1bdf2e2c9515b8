//! Command-line entry points. Each subcommand's flags live beside the code
//! that uses them; this file only parses and dispatches.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::{self, LogFormat};

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
    Scaler(crate::scaler::Args),
    /// Reconcile EventDrivenService resources into their children.
    Controller(crate::controller::Args),
    /// Print the children a claim renders to, as multi-document YAML.
    Render(crate::render::Args),
    /// Print a consumer's current lag breakdown.
    Lag(crate::lag::Args),
    /// Print the EventDrivenService CustomResourceDefinition.
    Crd,
    /// Serve a Crossplane composition function that composes
    /// EventDrivenService composites into the same children.
    Function(crate::function::Args),
    /// Print the Crossplane CompositeResourceDefinition for EventDrivenService.
    Xrd,
    /// Run the scaler against a local nats-server with a bursty workload.
    Demo(crate::demo::Args),
}

/// Parses the command line, runs the subcommand and maps failure to exit 1.
pub fn main() -> ExitCode {
    let args = Args::parse();
    // The demo prints its own table; only problems should interrupt it.
    let default_level = match &args.command {
        Command::Demo(_) => "warn",
        Command::Function(function) if function.debug => "debug",
        _ => "info",
    };
    telemetry::init_logging(args.log_format, default_level);
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

async fn run(command: Command) -> crate::Result<()> {
    match command {
        Command::Scaler(args) => crate::scaler::run(args).await,
        Command::Controller(args) => crate::controller::run(args).await,
        Command::Render(args) => crate::render::run_cli(args),
        Command::Lag(args) => crate::lag::run_cli(args).await,
        Command::Crd => crate::api::print_crd(),
        Command::Function(args) => crate::function::run(args).await,
        Command::Xrd => crate::function::xrd::print_xrd(),
        Command::Demo(args) => crate::demo::run(args).await,
    }
}
