//! The `sluicegate` binary: parse the command line, run, map the outcome to an exit code.

mod cli;

/// mimalloc: the proxy allocates and frees small objects per request on every worker thread;
/// measured with bench/compare.py, it costs less CPU per request than glibc malloc here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(cli::Outcome::Ok) => ExitCode::SUCCESS,
        Ok(cli::Outcome::InvalidConfig) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sluicegate: {e:#}");
            ExitCode::from(2)
        }
    }
}
