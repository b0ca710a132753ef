//! `p11trace-query`: a thin binary over the `p11trace_query` library.

use std::process::ExitCode;

use clap::Parser;
use p11trace_query::cli::{Cli, Command};
use p11trace_query::{commands, trail};

// Polars allocates and frees column-sized buffers (tens of MB) all the time; glibc serves those
// with fresh mmaps, so the kernel zeroes every page again (half the time of `analyze` on 10 M
// calls went to page faults). mimalloc keeps and reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return p11trace_cli::usage("p11trace-query", &error),
    };
    // `compare` and `diff` follow diff(1): an input error is exit 2, and exit 1 means `diff`
    // found what `--fail-on` names.
    let (result, error_status) = match &cli.command {
        Command::Import(args) => (commands::import(args).map(|()| false), 1),
        Command::Analyze(args) => (commands::analyze(args).map(|()| false), 1),
        Command::Sql(args) => (commands::sql(args).map(|()| false), 1),
        Command::Compare(args) => (commands::compare(args).map(|()| false), 2),
        Command::Diff(args) => (commands::diff(args), 2),
        Command::Audit(args) => (commands::audit(args).map(|()| false), 1),
        Command::Report(args) => (p11trace_query::html::report(args).map(|()| false), 1),
        Command::Archive(args) => (trail::archive(args).map(|()| false), 1),
        Command::ArchiveKey(args) => (trail::archive_key(args).map(|()| false), 1),
        Command::Verify(args) => (trail::verify(args), 2),
    };
    match result {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(1),
        Err(error) => {
            eprintln!(
                "p11trace-query: error: {}",
                p11trace_cli::one_line(&format!("{error:#}"))
            );
            ExitCode::from(error_status)
        }
    }
}
