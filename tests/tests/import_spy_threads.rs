//! A real threaded pkcs11-spy log of OpenSC 0.27 (`tests/fixtures/spy-0.27-threads.log`: four
//! threads of 50 ECDSA signatures each through the spy in front of SoftHSM; its
//! `.expected.json` says how it was made and how its ground truth was counted), in which headers
//! and their `P:<pid>; T:0x<tid>` stamp lines come apart: other threads' lines between them, a
//! stamp glued after another record's partial line. Imported through the real binary, every call
//! keeps its pid, tid and start, and the calls per thread and per function are the ground truth's.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

/// Whether `line` is a whole 0.24+ stamp line (`P:<pid>; T:0x<tid> YYYY-MM-DD HH:MM:SS.mmm`).
fn is_stamp_line(line: &str) -> bool {
    let Some((pid, rest)) = line.strip_prefix("P:").and_then(|l| l.split_once("; T:")) else {
        return false;
    };
    let Some((tid, time)) = rest.split_once(' ') else {
        return false;
    };
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && tid.starts_with("0x")
        && time.len() == 23
        && time.as_bytes()[10] == b' '
}

/// Whether `line` is a record header (`N: C_Function`).
fn is_header(line: &str) -> bool {
    line.split_once(": C_").is_some_and(|(n, f)| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !f.contains(' ')
    })
}

#[test]
fn every_call_of_a_threaded_log_gets_its_pid_tid_and_start() -> Result<()> {
    let log = fixtures().join("spy-0.27-threads.log");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(
        log.with_extension("expected.json"),
    )?)?;
    let content = std::fs::read_to_string(&log)?;

    // The fixture really has the separations this is about, as its ground truth counted them.
    let lines: Vec<&str> = content.lines().collect();
    let unfollowed = lines
        .windows(2)
        .filter(|w| is_header(w[0]) && !is_stamp_line(w[1]))
        .count();
    let glued = lines
        .iter()
        .filter(|l| {
            l.find("P:")
                .is_some_and(|at| at > 0 && is_stamp_line(&l[at..]))
        })
        .count();
    let separation = &expected["separation"];
    ensure!(
        unfollowed > 0
            && separation["of_which_followed_by_no_stamp_line"] == unfollowed
            && glued > 0
            && separation["stamps_glued_mid_line"] == glued,
        "headers without their stamp next: {unfollowed}, glued stamps: {glued}, vs {separation}"
    );

    let dir = temp();
    let out = dir.path().join("threads.parquet");
    let output = import(&log, &out, &["--tz", "UTC"])?;
    let file = format!("'{}'", out.display());

    let totals = &duckdb(&format!(
        "SELECT count(*) AS total, count(*) FILTER (pid IS NULL) AS no_pid, \
         count(*) FILTER (tid IS NULL) AS no_tid, count(*) FILTER (start IS NULL) AS no_start, \
         count(DISTINCT pid) AS pids, min(pid) AS pid, count(DISTINCT client_id) AS clients, \
         count(*) FILTER (NOT returned) AS unreturned FROM {file}"
    ))?[0];
    ensure!(
        totals["total"] == expected["total_calls"]
            && totals["no_pid"] == 0
            && totals["no_tid"] == 0
            && totals["no_start"] == 0
            && totals["pids"] == 1
            && totals["pid"] == expected["pid"]
            && totals["clients"] == 1
            && totals["unreturned"] == expected["calls_without_returned"],
        "{totals}"
    );

    // The summary counts the calls that had no stamp line at all (none here).
    let summary = text(&output.stderr);
    ensure!(
        summary.contains(&format!(
            "{} call(s) without a stamp line",
            expected["calls_without_stamp"]
        )),
        "{summary}"
    );
    let by_function = counts(&format!(
        "SELECT func AS k, count(*) AS n FROM {file} GROUP BY 1"
    ))?;
    let want_by_function: BTreeMap<String, i64> = expected["calls_by_function"]
        .as_object()
        .context("calls_by_function")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
        .collect();
    ensure!(
        by_function == want_by_function,
        "per function {by_function:?} vs {want_by_function:?}"
    );

    // Per thread: the spy prints pthread_self, which the client recorded for each of its calls.
    let by_thread = counts(&format!(
        "SELECT CAST(tid AS VARCHAR) AS k, count(*) AS n FROM {file} GROUP BY 1"
    ))?;
    let want_by_thread: BTreeMap<String, i64> = expected["threads"]
        .as_array()
        .context("threads")?
        .iter()
        .map(|t| (t["tid"].to_string(), t["calls"].as_i64().unwrap_or(-1)))
        .collect();
    ensure!(
        want_by_thread.len() == 5 && by_thread == want_by_thread,
        "per thread {by_thread:?} vs {want_by_thread:?}"
    );

    // The spy printed the user PIN; the import keeps only its length.
    ensure!(
        !contains_secret(&std::fs::read(&out)?, b"Thr3ad-Pin-5150"),
        "the user PIN is in the import"
    );
    Ok(())
}
