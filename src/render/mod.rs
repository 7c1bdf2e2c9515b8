//! Pure functions: a claim in, its desired children out.
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Claim file, or `-` for stdin.
    pub file: String,
}

pub fn run_cli(_args: Args) -> Result<()> {
    Err(crate::Error::Config("render is not built yet".into()))
}
