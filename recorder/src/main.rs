//! `p11trace-recorder`: a thin binary over the `p11trace_recorder` library.

use std::process::ExitCode;

use clap::Parser;
use p11trace_recorder::{Options, run};

fn main() -> ExitCode {
    let options = Options::parse();
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
