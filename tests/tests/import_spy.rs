//! Every pkcs11-spy log imports to what is really in it: each log of the corpus
//! (`tests/fixtures/corpus/`) to its independently counted ground truth — per-function counts,
//! non-OK returns, sessions, calls that never returned — by `import` and by `analyze` alike, with
//! no PIN surviving; every spy format in use (OpenSC 0.23, 0.24 on Unix and Windows, the
//! integration guide's simplified form) to the same calls; garbage and truncated input to a clean
//! failure, or to what can be read, and never a partial file.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::{Value, json};

#[test]
fn every_corpus_log_imports_to_its_counted_ground_truth() -> Result<()> {
    let dir = temp();
    let logs = corpus_logs();
    ensure!(logs.len() >= 7, "corpus missing: {logs:?}");
    for log in logs {
        let expected: Value = serde_json::from_str(&std::fs::read_to_string(
            log.with_extension("expected.json"),
        )?)?;
        let out = dir.path().join(format!(
            "{}.parquet",
            log.file_stem().and_then(|s| s.to_str()).unwrap_or("x")
        ));
        import(&log, &out, &["--tz", "UTC"])?;
        let file = format!("'{}'", out.display());
        let name = log.display();
        // DuckDB's `k` → `n` counts of `sql` against the ground truth's `key`, which is returned.
        let agrees = |what: &str, sql: String, key: &str| -> Result<BTreeMap<String, i64>> {
            let ours = counts(&sql)?;
            let want = expected_counts(&expected, key)?;
            ensure!(ours == want, "{name}: {what} {ours:?} vs {want:?}");
            Ok(want)
        };
        agrees(
            "per-function counts",
            format!("SELECT func AS k, count(*) AS n FROM {file} GROUP BY 1"),
            "calls_by_function",
        )?;
        let want_non_ok = agrees(
            "non-OK returns",
            format!("SELECT rv_name AS k, count(*) AS n FROM {file} WHERE rv <> 0 GROUP BY 1"),
            "non_ok_returns",
        )?;
        let sessions = duckdb(&format!(
            "SELECT count(*) FILTER (func = 'C_OpenSession' AND rv = 0) AS opened, count(*) FILTER (func = 'C_CloseSession' AND rv = 0) AS closed, \
             count(*) FILTER (func = 'C_CloseAllSessions' AND rv = 0) AS close_all, count(*) FILTER (NOT returned) AS unreturned, count(*) AS total FROM {file}"
        ))?;
        let s = &sessions[0];
        ensure!(
            s["opened"] == expected["sessions"]["opened_ok"]
                && s["closed"] == expected["sessions"]["closed_ok"],
            "{name}: sessions {s}"
        );
        ensure!(
            s["close_all"] == expected["sessions"]["close_all_sessions_ok"],
            "{name}: {s}"
        );
        ensure!(
            s["unreturned"] == expected["calls_without_returned"]
                && s["total"] == expected["total_calls"],
            "{name}: {s}"
        );
        // The same answers straight from the log, through analyze.
        let report: Value = serde_json::from_slice(
            &query(&[
                "analyze",
                log.to_str().unwrap_or_default(),
                "--format",
                "json",
                "--tz",
                "UTC",
            ])?
            .stdout,
        )?;
        ensure!(
            report["summary"]["total_operations"] == expected["total_calls"],
            "{name}: analyze total"
        );
        // Every non-OK call is either failed or one of the protocol's expected idioms.
        let non_ok: i64 = want_non_ok.values().sum();
        let summary = &report["summary"];
        ensure!(
            summary["failed_operations"].as_i64().unwrap_or(-1)
                + summary["expected_nonok_operations"].as_i64().unwrap_or(-1)
                == non_ok,
            "{name}: analyze failed {summary}"
        );
        ensure!(
            report["sessions"]["opened"] == expected["sessions"]["opened_ok"],
            "{name}: analyze sessions"
        );
        // No PIN survives import (the corpus SO PIN is 12345678).
        ensure!(
            !contains_secret(&std::fs::read(&out)?, b"12345678"),
            "{name}: SO PIN in the import"
        );
    }
    Ok(())
}

/// The corpus log rewritten into another spy format: `stamp` turns a 0.23 stamp line into that
/// format's (None drops it: the integration guide's simplified form).
fn rewrite(log: &str, stamp: impl Fn(&str) -> Option<String>) -> String {
    log.lines()
        .map(|line| {
            let is_stamp =
                line.len() == 23 && line.as_bytes()[4] == b'-' && line.as_bytes()[19] == b'.';
            if is_stamp {
                stamp(line).map(|s| s + "\n").unwrap_or_default()
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

#[test]
fn every_spy_format_in_use_imports_the_same_calls() -> Result<()> {
    let dir = temp();
    let original = std::fs::read_to_string(corpus("pt-keygen-rsa2048.log"))?;
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(corpus(
        "pt-keygen-rsa2048.expected.json",
    ))?)?;
    let formats: Vec<(&str, String, Option<i64>)> = vec![
        ("0.23", original.clone(), None),
        (
            "0.24-unix",
            rewrite(&original, |s| Some(format!("P:31337; T:0x139872223 {s}"))),
            Some(139_872_223),
        ),
        (
            "0.24-windows",
            rewrite(&original, |s| Some(format!("P:31337; T:5678 {s}"))),
            Some(5678),
        ),
        ("guide", rewrite(&original, |_| None), None),
    ];
    for (name, text_log, tid) in formats {
        let log = dir.path().join(format!("{name}.log"));
        std::fs::write(&log, text_log)?;
        let out = dir.path().join(format!("{name}.parquet"));
        import(&log, &out, &["--tz", "UTC"])?;
        let summary = duckdb(&format!(
            "SELECT count(*) AS n, count(*) FILTER (rv <> 0) AS failed, max(pid) AS pid, max(tid) AS tid, count(start) AS stamped FROM '{}'",
            out.display()
        ))?;
        let s = &summary[0];
        ensure!(
            s["n"] == expected["total_calls"] && s["failed"] == 3,
            "{name}: {s}"
        );
        match tid {
            Some(tid) => ensure!(s["pid"] == 31337 && s["tid"] == tid, "{name}: {s}"),
            None => ensure!(s["pid"].is_null() && s["tid"].is_null(), "{name}: {s}"),
        }
        ensure!(
            s["stamped"]
                == if name == "guide" {
                    json!(0)
                } else {
                    expected["total_calls"].clone()
                },
            "{name}: {s}"
        );
    }
    Ok(())
}

#[test]
fn garbage_and_truncated_inputs_fail_cleanly() -> Result<()> {
    let dir = temp();
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(
        &garbage,
        (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )?;
    let output = query_output(&["analyze", garbage.to_str().unwrap_or_default()])?;
    ensure!(
        output.status.code() == Some(1) && text(&output.stderr).contains("cannot tell its format"),
        "{}",
        text(&output.stderr)
    );
    let output = query_output(&[
        "analyze",
        garbage.to_str().unwrap_or_default(),
        "--input-format",
        "spy",
    ])?;
    ensure!(
        output.status.code() == Some(1) && text(&output.stderr).contains("no PKCS#11 call found"),
        "{}",
        text(&output.stderr)
    );
    // Truncated in the middle of a record.
    let log = std::fs::read_to_string(corpus("pt-sign-rsa-pkcs.log"))?;
    let cut = log.find("14: C_Sign").context("C_Sign record")? + 80;
    let truncated = dir.path().join("truncated.log");
    std::fs::write(&truncated, &log[..cut])?;
    let lenient = import_as(&truncated, dir.path(), "lenient.parquet", &[])?;
    let last = row(&lenient, "func = 'C_Sign'")?;
    ensure!(
        last["returned"] == false && last["rv"].is_null() && last["rv_name"].is_null(),
        "{last}"
    );
    let strict = dir.path().join("strict.parquet");
    let output = query_output(&[
        "import",
        truncated.to_str().unwrap_or_default(),
        "-o",
        strict.to_str().unwrap_or_default(),
        "--strict",
    ])?;
    ensure!(output.status.code() == Some(1), "--strict must fail");
    ensure!(
        text(&output.stderr).contains("truncated.log:")
            && text(&output.stderr).contains("never returned"),
        "{}",
        text(&output.stderr)
    );
    ensure!(
        !strict.exists() && !dir.path().join("strict.parquet.tmp").exists(),
        "no partial file may be left"
    );
    // A missing input and a usage error.
    let output = query_output(&["analyze", "/nonexistent/p11trace.log"])?;
    ensure!(
        output.status.code() == Some(1)
            && text(&output.stderr).contains("/nonexistent/p11trace.log"),
        "{}",
        text(&output.stderr)
    );
    let output = query_output(&["analyze", "--format", "nope", "x"])?;
    ensure!(output.status.code() == Some(2), "usage errors exit 2");
    Ok(())
}
