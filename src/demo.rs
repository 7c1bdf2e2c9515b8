//! `eds demo`: the scaler against a local nats-server and a bursty workload.
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args) -> Result<()> {
    Err(crate::Error::Config("the demo is not built yet".into()))
}
