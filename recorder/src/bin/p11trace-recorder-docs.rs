//! `p11trace-recorder-docs completions DIR` / `p11trace-recorder-docs man DIR`: shell
//! completions and man pages (one per subcommand) from the same clap definition as
//! `p11trace-recorder` (`just completions`, `just man`; see `p11trace_cli::docs_main`).

use std::process::ExitCode;

use clap::CommandFactory;

fn main() -> ExitCode {
    p11trace_cli::docs_main(p11trace_recorder::options::Cli::command())
}
