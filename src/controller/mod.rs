//! Kubernetes I/O: applies rendered children and reports status.
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args) -> Result<()> {
    Err(crate::Error::Config("the controller is not built yet".into()))
}

pub fn describe_metrics() {}
