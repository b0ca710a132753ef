//! `p11trace-bench --quick`: every benchmark runs end to end, tiny, against the real binaries, so
//! the bench code cannot rot. Timings are not asserted (this machine is shared and noisy); what
//! the benchmarks measure is: every cell exists, every figure is a real number, no call is lost.

use std::process::Command;

use anyhow::{Context, Result};
use p11trace_bench::client::Op;
use serde_json::Value;

fn quick_run() -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("figures.json");
    let output = Command::new(env!("CARGO_BIN_EXE_p11trace-bench"))
        .arg("--quick")
        .arg("--json")
        .arg(&json)
        .output()
        .context("cannot run p11trace-bench")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "p11trace-bench --quick failed:\n{stderr}"
    );
    let table = String::from_utf8_lossy(&output.stdout);
    for bench in [
        "1 overhead",
        "2 throughput",
        "3 bytes/call",
        "4 query",
        "6 instructions",
        "7 import",
        "8 upload",
    ] {
        assert!(
            table.contains(bench),
            "the table has no `{bench}` rows:\n{table}"
        );
    }
    let text = std::fs::read_to_string(&json).with_context(|| {
        format!(
            "no {} after a successful run; stderr:\n{stderr}",
            json.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON:\n{text}", json.display()))
}

fn number(value: &Value, what: &str) -> f64 {
    let n = value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"));
    assert!(n.is_finite(), "{what} = {n}");
    n
}

#[test]
fn quick_mode_runs_every_benchmark_against_the_real_binaries() -> Result<()> {
    let figures = quick_run()?["figures"].clone();

    // 1: every operation through every route, on both tokens.
    let cells = figures["overhead"].as_array().context("overhead cells")?;
    assert_eq!(
        cells.len(),
        Op::ALL.len() * 4 * 2,
        "ops × routes × providers: {cells:#?}"
    );
    for cell in cells {
        assert!(number(&cell["median_ns"], "median_ns") > 0.0, "{cell}");
    }

    // 2: 1, 4 and 16 paced clients, then one unpaced; at quick sizes every call is written.
    let runs = figures["throughput"]
        .as_array()
        .context("throughput runs")?;
    let clients: Vec<u64> = runs.iter().filter_map(|r| r["clients"].as_u64()).collect();
    assert_eq!(clients, [1, 4, 16, 1], "1, 4, 16 paced, then 1 unpaced");
    for run in runs {
        let calls = run["calls"].as_u64().context("calls")?;
        let rows = run["rows_written"].as_u64().context("rows")?;
        assert!(rows >= calls, "fewer rows than calls made: {run}");
        assert_eq!(run["dropped"], 0, "{run}");
        assert!(number(&run["recorder_max_rss"], "rss") > 0.0);
    }

    // 3: both records of the same calls exist.
    let size = &figures["size"];
    assert!(size["calls"].as_u64().context("calls")? > 100, "{size}");
    assert!(size["calls_bytes"].as_u64().context("bytes")? > 0, "{size}");
    assert!(
        size["spy_bytes"].as_u64().context("spy bytes")? > 0,
        "{size}"
    );

    // 4: the synthetic dataset and every timed command.
    let query = &figures["query"];
    assert!(query["dataset_calls"].as_u64().context("dataset calls")? >= 20_000);
    let commands = query["commands"].as_array().context("commands")?;
    assert_eq!(commands.len(), 12, "{commands:#?}");
    for name in ["compare", "diff", "archive", "verify"] {
        assert!(
            commands
                .iter()
                .any(|c| c["name"].as_str().is_some_and(|n| n.contains(name))),
            "{name}: {commands:#?}"
        );
    }
    for rate in ["archive_mb_s", "verify_mb_s"] {
        assert!(number(&query[rate], rate) > 0.0, "{rate}: {query}");
    }
    for command in commands {
        assert!(
            number(&command["seconds"]["median"], "seconds") > 0.0,
            "{command}"
        );
    }

    // 6: callgrind counted the shim's extra work on the calling thread.
    let budget = &figures["budget"];
    assert!(number(&budget["added_per_call"], "added") > 0.0, "{budget}");

    // 7: every log format imported, at a real rate.
    let formats = figures["import"]["formats"]
        .as_array()
        .context("import formats")?;
    assert!(formats.len() >= 3, "{formats:#?}");
    for format in formats {
        assert!(
            number(&format["import_mb_s"], "import MB/s") > 0.0,
            "{format}"
        );
        assert!(number(&format["log_bytes"], "log bytes") >= 1e6, "{format}");
    }

    // 8: both workloads, each written locally and uploaded to moto: every call in the bucket,
    // everything uploaded at the exit, the same bytes give or take the files' own metadata.
    let uploads = figures["upload"].as_array().context("upload workloads")?;
    assert_eq!(uploads.len(), 2, "{uploads:#?}");
    for workload in uploads {
        let (local, upload) = (&workload["local"], &workload["upload"]);
        for side in [local, upload] {
            assert_eq!(side["dropped"], 0, "{workload}");
            assert!(side["rows"].as_u64().context("rows")? > 1000, "{workload}");
            assert_eq!(side["rows"], side["records"], "{workload}");
            assert!(number(&side["recorder_max_rss"], "rss") > 0.0, "{workload}");
        }
        assert_eq!(upload["left_in_spool"], 0, "{workload}");
        assert!(
            upload["uploaded"].as_u64().context("uploaded")? >= 2,
            "{workload}"
        );
        assert_eq!(upload["uploaded"], upload["files"], "{workload}");
        let ratio = number(&workload["uploaded_bytes_per_million"], "uploaded")
            / number(&workload["local_bytes_per_million"], "local");
        assert!((0.9..1.1).contains(&ratio), "{workload}");
        assert!(
            number(&workload["cpu_ratio"], "cpu ratio") > 0.0,
            "{workload}"
        );
    }
    Ok(())
}
