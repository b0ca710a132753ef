//! `p11trace-query`: a thin binary over the `p11trace_query` library.

use std::process::ExitCode;

use clap::Parser;
use p11trace_query::cli::{Cli, Command};
use p11trace_query::commands;

// Polars allocates and frees column-sized buffers (tens of MB) all the time; glibc serves those
// with fresh mmaps, so the kernel zeroes every page again (half the time of `analyze` on 10 M
// calls went to page faults). mimalloc keeps and reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Import(args) => commands::import(args),
        Command::Analyze(args) => commands::analyze(args),
        Command::Sql(args) => commands::sql(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("p11trace-query: error: {error:#}");
            ExitCode::from(1)
        }
    }
}
