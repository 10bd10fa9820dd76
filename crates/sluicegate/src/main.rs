//! The `sluicegate` binary: parse the command line, run, map the outcome to an exit code.

mod cli;

#[global_allocator]
static ALLOCATOR: sluicegate::allocator::Mimalloc = sluicegate::allocator::Mimalloc;

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
