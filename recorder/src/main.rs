//! `p11trace-recorder`: a thin binary over the `p11trace_recorder` library.

use std::process::ExitCode;

use clap::Parser;
use p11trace_recorder::options::{Cli, Command};
use p11trace_recorder::{doctor, oneshot, run};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return p11trace_cli::usage("p11trace-recorder", &error),
    };
    match &cli.command {
        Some(Command::Run(args)) => return oneshot::main(args),
        Some(Command::Doctor(args)) => return doctor::main(args),
        None => {}
    }
    // clap requires --dataset when no subcommand is given.
    let Some(options) = cli.options() else {
        eprintln!("p11trace-recorder: error: --dataset DIR is required (see --help)");
        return ExitCode::from(2);
    };
    if let Some(flag) = cli.store_option_without_store() {
        eprintln!(
            "p11trace-recorder: error: {flag} applies to a dataset in object storage \
             (--dataset s3://BUCKET/PREFIX, gs://, az://, file://), not to a dataset folder (see --help)"
        );
        return ExitCode::from(2);
    }
    match run(options) {
        Ok(summary) => {
            eprintln!("p11trace-recorder: {}", summary.line);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("p11trace-recorder: error: {error:#}");
            ExitCode::from(1)
        }
    }
}
