//! `p11trace-bench`: a thin binary over the `p11trace_bench` library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use p11trace_bench::report::{self, Verdict};
use p11trace_bench::{Bench, Ctx, client, setup};

/// Benchmarks p11trace against the direct module and pkcs11-spy; prints one table.
///
/// Runs, by default, all of: per-call overhead (SoftHSM2 and Kryoptic), recorder throughput,
/// bytes per call, query speed (vs DuckDB; spy import vs wc -l), the callgrind instruction
/// budget, import speed, the cost of uploading to object storage (vs a local dataset, against
/// moto_server), and cost against size (1 M, 10 M, 100 M calls). Uses the shim, recorder and query binaries built beside this one (same profile:
/// `just bench` builds release; a debug build runs too, its CPU figures labelled as such). Needs
/// softhsm2, opensc (pkcs11-tool, pkcs11-spy), valgrind, the duckdb CLI and moto_server.
///
/// Exit status: 0 when every target was met (or --quick), 1 when one was missed or a benchmark
/// failed, 2 on a usage error.
#[derive(Debug, Parser)]
#[command(
    name = "p11trace-bench",
    version,
    after_help = "Examples:\n  \
        p11trace-bench                                    # everything\n  \
        p11trace-bench --only upload --no-kryoptic        # object storage upload vs local dataset\n  \
        p11trace-bench --only scaling --plots docs        # 1 M–100 M calls, docs/scaling.svg\n  \
        p11trace-bench --quick --json /tmp/figures.json   # the smoke run\n  \
        P11TRACE_BENCH_KEEP_CALLGRIND=/tmp/cg p11trace-bench --only budget   # keeps callgrind's files"
)]
struct Options {
    #[command(subcommand)]
    command: Option<Command>,

    /// Only these benchmarks (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Bench>,

    /// Smoke mode: every benchmark, tiny, one round; checks the code runs, judges no target.
    #[arg(long)]
    quick: bool,

    /// Rounds of the overhead benchmark (at least 5 for the reported min–max).
    #[arg(long, default_value_t = 5)]
    rounds: u32,

    /// Skip Kryoptic in the overhead benchmark (default: use it; `just kryoptic` builds it).
    #[arg(long)]
    no_kryoptic: bool,

    /// The shim to measure [default: libp11trace_shim.so beside this executable].
    #[arg(long, value_name = "PATH")]
    shim: Option<PathBuf>,

    /// Also write every figure as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Write the charts benchmarks draw (scaling.svg) into this folder.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The benchmark client: times PKCS#11 operations through one module (used by the benchmarks).
    Client(client::ClientArgs),
    /// Writes the synthetic dataset the query benchmark uses (to try queries at scale).
    Synth {
        /// Dataset folder to create.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Calls to generate (whole sessions: a few more, never fewer).
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
    },
}

fn main() -> ExitCode {
    let options = Options::parse();
    let result = match &options.command {
        Some(Command::Client(args)) => client::run(args).map(|()| true),
        Some(Command::Synth { out, rows }) => {
            p11trace_bench::synth::dataset(out, *rows).map(|made| {
                eprintln!("p11trace-bench: wrote {made} calls to {}", out.display());
                true
            })
        }
        None => benchmarks(&options),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("p11trace-bench: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the chosen benchmarks; true when no target was missed.
fn benchmarks(options: &Options) -> Result<bool> {
    let scratch = tempfile::Builder::new()
        .prefix("p11b-")
        .tempdir_in("/tmp")
        .context("cannot create a scratch folder")?;
    let kryoptic = p11trace_tests::kryoptic_path().exists();
    if !kryoptic && !options.no_kryoptic {
        anyhow::bail!("Kryoptic is not built: run `just kryoptic`, or pass --no-kryoptic");
    }
    let ctx = Ctx {
        bins: setup::Bins::beside_me(options.shim.clone())?,
        quick: options.quick,
        rounds: if options.quick {
            1
        } else {
            options.rounds.max(1)
        },
        with_kryoptic: !options.no_kryoptic,
        scratch: scratch.path().to_owned(),
        plots: options.plots.clone(),
    };
    let chosen = if options.only.is_empty() {
        Bench::ALL.to_vec()
    } else {
        options.only.clone()
    };
    let mut lines = Vec::new();
    let mut figures = serde_json::Map::new();
    for bench in chosen {
        eprintln!("p11trace-bench: running {bench:?}…");
        let (mut found, json) = bench
            .run(&ctx)
            .with_context(|| format!("benchmark {bench:?}"))?;
        if ctx.quick {
            for line in &mut found {
                line.verdict = Verdict::Info;
            }
        }
        lines.extend(found);
        figures.insert(format!("{bench:?}").to_lowercase(), json);
    }
    println!("{}", report::render(&lines));
    if let Some(path) = &options.json {
        let document =
            serde_json::json!({ "quick": ctx.quick, "lines": lines, "figures": figures });
        std::fs::write(path, serde_json::to_string_pretty(&document)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(!lines.iter().any(|line| line.verdict == Verdict::Missed))
}
