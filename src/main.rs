//! The `eds` binary: every subcommand lives in the library.
fn main() -> std::process::ExitCode {
    eds::cli::main()
}
