//! Benchmark 7: import speed per log format. Each format's real logs (the test fixtures) are
//! repeated into one large file, imported with `p11trace-query import`, and timed against `wc -l`
//! on the same file in the same run (the read-speed floor): MB/s per format and the ratio to
//! `wc -l`, which travels between machines where the MB/s do not.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::Ctx;
use crate::query_speed::{Timed, timed};
use crate::report::{Line, bytes};
use crate::synth;

/// Each format, the `--input-format` it is imported with, and where its real logs are (a folder:
/// every `.log` in it, or one file), below `tests/fixtures/`.
const FORMATS: &[(&str, &str, &str)] = &[
    ("pkcs11-spy 0.23 (corpus)", "spy", "corpus"),
    ("pkcs11-spy 0.24+ threads", "spy", "spy-0.24-threads.log"),
    ("pkcs11-spy guide form", "spy", "guide"),
    (
        "pkcs11-spy 0.27 threads (real)",
        "spy",
        "spy-0.27-threads.log",
    ),
    ("p11-kit log-calls", "p11-kit", "p11kit"),
    ("pkcs11-logger", "pkcs11-logger", "pkcs11-logger"),
    ("libpkcs11shim", "libpkcs11shim", "libpkcs11shim"),
];

fn logs(place: &str) -> Result<Vec<PathBuf>> {
    let place = p11trace_tests::fixtures().join(place);
    if !place.is_dir() {
        return Ok(vec![place]);
    }
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&place)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    Ok(logs)
}

pub fn run(ctx: &Ctx) -> Result<(Vec<Line>, serde_json::Value)> {
    let (size, reps) = if ctx.quick {
        (1 << 20, 1)
    } else {
        (64 << 20, 3)
    };
    let dir = tempfile::tempdir_in(&ctx.scratch)?;
    let mut lines = Vec::new();
    let mut figures = Vec::new();
    for &(name, format, place) in FORMATS {
        let log = dir.path().join("repeated.log");
        let log_bytes = synth::repeated_log(&log, &logs(place)?, size)?;
        let out = dir.path().join("imported.parquet");
        let wc = timed(ctx, "wc -l", reps + 1, || {
            let mut command = Command::new("wc");
            command.arg("-l").arg(&log);
            command
        })?;
        let import = timed(ctx, "p11trace-query import", reps, || {
            let _ = std::fs::remove_file(&out);
            let mut command = Command::new(&ctx.bins.query);
            command.arg("import").arg(&log).arg("-o").arg(&out).args([
                "--input-format",
                format,
                "--tz",
                "UTC",
            ]);
            command
        })?;
        let mb = log_bytes as f64 / 1e6;
        let rate = |t: &Timed| mb / t.seconds.median;
        lines.push(Line::info(
            "7 import",
            format!("{name}, {mb:.0} MB"),
            format!(
                "{:.0} MB/s ({:.0}–{:.0}; {:.0} MB per CPU-s) · peak RSS {} · {:.1}% of wc -l's {:.0} MB/s",
                rate(&import),
                mb / import.seconds.max,
                mb / import.seconds.min,
                mb / import.cpu_seconds.median,
                bytes(import.max_rss as f64),
                100.0 * rate(&import) / rate(&wc),
                rate(&wc)
            ),
        ));
        figures.push(serde_json::json!({
            "format": name, "log_bytes": log_bytes, "import": import, "wc": wc,
            "import_mb_s": rate(&import), "wc_mb_s": rate(&wc),
        }));
    }
    Ok((lines, serde_json::json!({ "formats": figures })))
}
