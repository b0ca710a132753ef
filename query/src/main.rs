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

/// `mi_option_purge_delay` in mimalloc.h (v3's sixteenth option; libmimalloc-sys names the
/// options around it, not this one). The test below reads its default (1000) through it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc hands freed memory back to the kernel a second after it is freed; the next allocation
/// then faults fresh pages in, each zeroed again (on this VM 60 % of `analyze`'s samples were
/// the kernel's page clearing, and 8× the page faults). A command lives seconds and frees to
/// allocate again: it keeps what it freed. `MIMALLOC_PURGE_DELAY` still overrides.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set stores one integer in mimalloc's option table; it takes any
        // option number and value, at any time, from any thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: mi_option_get reads one integer from mimalloc's option table.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc v3's default (1000 ms, options.c; the test runs without MIMALLOC_PURGE_DELAY).
        assert_eq!(
            default, 1000,
            "option {MI_OPTION_PURGE_DELAY} is not purge_delay"
        );
        keep_freed_memory();
        // SAFETY: as above.
        let set = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(set, -1);
    }
}
