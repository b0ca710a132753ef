//! Benchmark 4: query speed. A synthetic 10 M-call dataset, `p11trace-query analyze` and `sql`
//! against DuckDB running the equivalent SQL on the same files in the same run; `compare` and
//! `diff` of the dataset against itself (both sides read and reduced: the whole cost); spy
//! import speed against `wc -l` (the read-speed floor) on a ≥ 100 MB log; `archive` of the
//! dataset into a fresh archive and `verify` of it, in MB/s of Parquet read.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use serde::Serialize;

use crate::Ctx;
use crate::measure::{self, Spread};
use crate::report::{Line, bytes};
use crate::synth;

pub const ANALYZE_TARGET_S: f64 = 2.0;
/// Issue 13, target 3: `analyze` (text) within 2× DuckDB's per-function query on the same files
/// in the same run, in at most 600 MiB; `sql`'s group-by within 1.2× of DuckDB's.
pub const ANALYZE_DUCKDB_RATIO: f64 = 2.0;
pub const ANALYZE_RSS_TARGET: u64 = 600 << 20;
pub const SQL_DUCKDB_RATIO: f64 = 1.2;
pub const COMPARE_TARGET_S: f64 = 2.0;
pub const IMPORT_TARGET_MB_S: f64 = 400.0;
pub const ARCHIVE_TARGET_MB_S: f64 = 100.0;
pub const VERIFY_TARGET_MB_S: f64 = 500.0;

/// Bytes of every Parquet file below `folder`.
fn parquet_bytes(folder: &Path) -> Result<u64> {
    let mut total = 0;
    for file in p11trace_dataset::layout::parquet_files(folder)? {
        total += std::fs::metadata(file)?.len();
    }
    Ok(total)
}

/// Wall time and CPU time (user + system; median, min–max over repetitions) and peak RSS (max)
/// of one command.
#[derive(Debug, Clone, Serialize)]
pub struct Timed {
    pub name: String,
    pub seconds: Spread,
    pub cpu_seconds: Spread,
    pub max_rss: u64,
}

pub fn timed(
    ctx: &Ctx,
    name: &str,
    repetitions: u32,
    command: impl Fn() -> Command,
) -> Result<Timed> {
    let (mut seconds, mut cpu) = (Vec::new(), Vec::new());
    let mut max_rss = 0;
    for _ in 0..repetitions {
        let cost = measure::run(&mut command(), None, &ctx.scratch)?;
        seconds.push(cost.wall.as_secs_f64());
        cpu.push(cost.cpu.as_secs_f64());
        max_rss = max_rss.max(cost.max_rss);
    }
    Ok(Timed {
        name: name.to_owned(),
        seconds: Spread::of(&seconds),
        cpu_seconds: Spread::of(&cpu),
        max_rss,
    })
}

pub const GROUP_BY: &str = "SELECT func, count(*) AS calls, sum(dur_ns) AS total_ns FROM calls \
                        GROUP BY func ORDER BY calls DESC";

/// DuckDB's nearest equivalent of `analyze`'s heaviest part: per-function counts, failures, total
/// time and latency percentiles.
pub const DUCKDB_PERFORMANCE: &str = "SELECT func, count(*) AS calls, count(*) FILTER (WHERE rv <> 0) AS failed, \
     sum(dur_ns) AS total_ns, quantile_cont(dur_ns, [0.5, 0.95, 0.99]) AS p, max(dur_ns) AS max_ns \
     FROM calls GROUP BY func ORDER BY total_ns DESC";

/// DuckDB running `sql` over the dataset's `calls` files.
pub fn duckdb(dataset: &Path, sql: &str) -> Command {
    let from = format!(
        "read_parquet('{}/calls/**/*.parquet', hive_partitioning = true)",
        dataset.display()
    );
    let mut command = Command::new("duckdb");
    command.args(["-c", &sql.replace("FROM calls", &format!("FROM {from}"))]);
    command
}

pub fn run(ctx: &Ctx) -> Result<(Vec<Line>, serde_json::Value)> {
    let (rows, spy_bytes, reps) = if ctx.quick {
        (20_000, 1 << 20, 1)
    } else {
        (10_000_000, 100 << 20, 3)
    };
    let dir = tempfile::tempdir_in(&ctx.scratch)?;
    let dataset = dir.path().join("dataset");
    let made = synth::dataset(&dataset, rows)?;
    let query = |args: &[&str]| {
        let mut command = Command::new(&ctx.bins.query);
        command.args(args).arg(&dataset);
        command
    };
    let results = vec![
        timed(ctx, "p11trace-query analyze (text)", reps, || {
            query(&["analyze"])
        })?,
        timed(ctx, "p11trace-query analyze --format json", reps, || {
            query(&["analyze", "--format", "json"])
        })?,
        timed(ctx, "duckdb: per-function percentiles", reps, || {
            duckdb(&dataset, DUCKDB_PERFORMANCE)
        })?,
        timed(ctx, "p11trace-query sql (group by func)", reps, || {
            query(&["sql", GROUP_BY])
        })?,
        timed(ctx, "duckdb: the same group by", reps, || {
            duckdb(&dataset, GROUP_BY)
        })?,
        timed(
            ctx,
            "p11trace-query compare (dataset vs itself)",
            reps,
            || {
                let mut command = query(&["compare", "--format", "json"]);
                command.arg(&dataset);
                command
            },
        )?,
        timed(ctx, "p11trace-query diff (dataset vs itself)", reps, || {
            let mut command = query(&["diff", "--format", "json"]);
            command.arg(&dataset);
            command
        })?,
    ];
    let archive = dir.path().join("archive");
    let archived = timed(
        ctx,
        "p11trace-query archive (into a new archive)",
        reps,
        || {
            let _ = std::fs::remove_dir_all(&archive);
            let mut command = Command::new(&ctx.bins.query);
            command
                .arg("archive")
                .arg(&dataset)
                .arg("--to")
                .arg(&archive);
            command
        },
    )?;
    let duck_copy = dir.path().join("duckdb-compacted.parquet");
    let duck_compacted = timed(
        ctx,
        "duckdb: the same compaction (ORDER BY start, zstd)",
        reps,
        || {
            duckdb(
                &dataset,
                &format!(
                    "COPY (SELECT * FROM calls ORDER BY start, client_id, seq) TO '{}' \
                     (FORMAT parquet, COMPRESSION zstd)",
                    duck_copy.display()
                ),
            )
        },
    )?;
    let verified = timed(ctx, "p11trace-query verify", reps, || {
        let mut command = Command::new(&ctx.bins.query);
        command.arg("verify").arg(&archive);
        command
    })?;
    let (dataset_mb, archive_mb) = (
        parquet_bytes(&dataset)? as f64 / 1e6,
        parquet_bytes(&archive)? as f64 / 1e6,
    );
    let archive_mb_s = dataset_mb / archived.seconds.median;
    let verify_mb_s = archive_mb / verified.seconds.median;
    let log = dir.path().join("big-spy.log");
    let log_bytes = synth::spy_log(&log, spy_bytes)?;
    let out = dir.path().join("imported.parquet");
    let wc = timed(ctx, "wc -l", reps + 1, || {
        let mut command = Command::new("wc");
        command.arg("-l").arg(&log);
        command
    })?;
    let import = timed(ctx, "p11trace-query import", reps, || {
        let _ = std::fs::remove_file(&out);
        let mut command = Command::new(&ctx.bins.query);
        command
            .arg("import")
            .arg(&log)
            .arg("-o")
            .arg(&out)
            .args(["--tz", "UTC"]);
        command
    })?;

    let mut lines = Vec::new();
    let seconds = |t: &Timed| {
        format!(
            "{:.2} s ({:.2}–{:.2}) · peak RSS {}",
            t.seconds.median,
            t.seconds.min,
            t.seconds.max,
            bytes(t.max_rss as f64)
        )
    };
    let subject = |t: &Timed| format!("{} · {made} calls", t.name);
    lines.push(Line::target(
        "4 query",
        subject(&results[0]),
        seconds(&results[0]),
        format!("≤ {ANALYZE_TARGET_S} s"),
        results[0].seconds.median <= ANALYZE_TARGET_S,
    ));
    let ratio = |ours: &Timed, theirs: &Timed| ours.seconds.median / theirs.seconds.median;
    let analyze_ratio = ratio(&results[0], &results[2]);
    lines.push(Line::target(
        "4 query",
        format!("{} ÷ {}", results[0].name, results[2].name),
        format!(
            "{analyze_ratio:.1}× · peak RSS {}",
            bytes(results[0].max_rss as f64)
        ),
        format!(
            "≤ {ANALYZE_DUCKDB_RATIO}×, ≤ {}",
            bytes(ANALYZE_RSS_TARGET as f64)
        ),
        analyze_ratio <= ANALYZE_DUCKDB_RATIO && results[0].max_rss <= ANALYZE_RSS_TARGET,
    ));
    let sql_ratio = ratio(&results[3], &results[4]);
    lines.push(Line::target(
        "4 query",
        format!("{} ÷ {}", results[3].name, results[4].name),
        format!("{sql_ratio:.2}×"),
        format!("≤ {SQL_DUCKDB_RATIO}×"),
        sql_ratio <= SQL_DUCKDB_RATIO,
    ));
    for (ours, theirs) in [(&results[1], &results[2]), (&results[3], &results[4])] {
        lines.push(Line::info("4 query", subject(ours), seconds(ours)));
        lines.push(Line::info(
            "4 query",
            subject(theirs),
            format!(
                "{} · ours/DuckDB {:.1}×",
                seconds(theirs),
                ours.seconds.median / theirs.seconds.median
            ),
        ));
    }
    for compared in &results[5..7] {
        lines.push(Line::target(
            "4 query",
            subject(compared),
            seconds(compared),
            format!("≤ {COMPARE_TARGET_S} s"),
            compared.seconds.median <= COMPARE_TARGET_S,
        ));
    }
    for (timed, mb, rate, target) in [
        (&archived, dataset_mb, archive_mb_s, ARCHIVE_TARGET_MB_S),
        (&verified, archive_mb, verify_mb_s, VERIFY_TARGET_MB_S),
    ] {
        lines.push(Line::target(
            "4 query",
            format!("{} · {mb:.0} MB of Parquet", timed.name),
            format!("{rate:.1} MB/s · {}", seconds(timed)),
            format!("≥ {target} MB/s"),
            rate >= target,
        ));
    }
    lines.push(Line::info(
        "4 query",
        format!("{} · {dataset_mb:.0} MB of Parquet", duck_compacted.name),
        format!(
            "{:.1} MB/s · {} · archive/DuckDB {:.1}×",
            dataset_mb / duck_compacted.seconds.median,
            seconds(&duck_compacted),
            archived.seconds.median / duck_compacted.seconds.median
        ),
    ));
    let mb = log_bytes as f64 / 1e6;
    let rate = |t: &Timed| mb / t.seconds.median;
    lines.push(Line::target(
        "4 query",
        format!("spy import, {mb:.0} MB log"),
        format!(
            "{:.0} MB/s ({:.2} s; {:.0} MB per CPU-s) · peak RSS {} · wc -l {:.0} MB/s",
            rate(&import),
            import.seconds.median,
            mb / import.cpu_seconds.median,
            bytes(import.max_rss as f64),
            rate(&wc)
        ),
        format!("≥ {IMPORT_TARGET_MB_S} MB/s"),
        rate(&import) >= IMPORT_TARGET_MB_S,
    ));
    let mut all = results;
    all.extend([wc, import, archived, duck_compacted, verified]);
    Ok((
        lines,
        serde_json::json!({
            "dataset_calls": made, "spy_log_bytes": log_bytes, "commands": all,
            "archive_mb_s": archive_mb_s, "verify_mb_s": verify_mb_s,
        }),
    ))
}
