//! python-pkcs11 (PyPI, 0.10.1) through the shim on SoftHSM2: `tests/fixtures/python/threads.py`
//! signs from several threads, each with its own session, and prints its own count of the
//! PKCS#11 calls it made, per function, and each thread's kernel tid. Traced, it ends as it
//! does direct; the dataset's rows equal the script's count function for function (nothing
//! lost, nothing extra); each thread's signatures are under the tid the thread reported, in a
//! session of its own.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, ensure};
use p11trace_tests::clients::*;
use p11trace_tests::*;
use serde_json::Value;

const THREADS: i64 = 4;
const EACH: i64 = 5;

/// The script's JSON line, without what differs between runs or modules: the threads' tids,
/// and the two `C_GetInterface` calls python-pkcs11 makes only when the module exports it
/// (the shim does, SoftHSM2 2.6 does not; through the shim both are answered with an error and
/// python-pkcs11 goes on with the 2.40 function list, as it does direct).
/// Compared as values: with serde_json's `preserve_order` (which another crate of the
/// workspace turns on in a `--workspace` build) `remove` reorders the keys left, so their text
/// would differ where the values do not.
fn comparable(stdout: &str) -> Result<Value> {
    let mut report: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("threads.py printed no JSON line: {stdout}"))?;
    if let Some(calls) = report["calls"].as_object_mut() {
        calls.remove("C_GetInterface");
    }
    if let Some(threads) = report["threads"].as_object_mut() {
        for tid in threads.values_mut() {
            *tid = Value::from(0);
        }
    }
    Ok(report)
}

#[test]
fn python_pkcs11_threads_are_recorded_call_for_call_under_their_own_tids() -> Result<()> {
    let mut traced = traced_with_keys("python")?;
    let script = fixtures().join("python/threads.py");
    let mut reports = Vec::new();
    for through_shim in [false, true] {
        traced.token.restore()?;
        let module = if through_shim { shim() } else { SOFTHSM.into() };
        let mut command = traced.token.command("python3");
        command
            .arg(&script)
            .arg(&module)
            .args([traced.token.label.as_str(), EC])
            .args([THREADS.to_string(), EACH.to_string()])
            .env("P11_PIN", USER_PIN);
        if through_shim {
            traced.trace(&mut command);
        }
        let output = run(&mut command, std::time::Duration::from_secs(120))?;
        ensure!(
            output.status.success(),
            "threads.py (through the shim: {through_shim}) failed: {}",
            text(&output.stderr)
        );
        ensure!(
            output.stderr.is_empty(),
            "threads.py wrote to stderr: {}",
            text(&output.stderr)
        );
        reports.push(text(&output.stdout));
    }
    ensure!(
        comparable(&reports[0])? == comparable(&reports[1])?,
        "direct and traced reports differ:\n{}\n{}",
        reports[0],
        reports[1]
    );
    let report: Value = serde_json::from_str(reports[1].trim()).context("threads.py's report")?;
    ensure!(
        report["signatures"] == THREADS * EACH,
        "signatures: {report}"
    );

    stop_clean(&mut traced.recorder)?;
    let recorder = &traced.recorder;
    let calls = recorder.table("calls");
    let pid = one_pid(recorder, "process LIKE 'python%'")?;
    let recorded = calls_by_function(recorder, &format!("pid = {pid}"))?;
    let counted: BTreeMap<String, i64> = report["calls"]
        .as_object()
        .context("calls")?
        .iter()
        .map(|(f, n)| (f.clone(), n.as_i64().unwrap_or(-1)))
        .collect();
    ensure!(
        recorded == counted,
        "rows per function differ from the script's count:\nrows   {recorded:?}\nscript {counted:?}"
    );
    ensure!(
        counted.get("C_Sign") == Some(&(2 * THREADS * EACH)),
        "C_Sign: {counted:?}"
    );

    // Each worker's calls are under the tid it reported, in a session of its own.
    let reported: BTreeSet<i64> = report["threads"]
        .as_object()
        .context("threads")?
        .values()
        .filter_map(Value::as_i64)
        .collect();
    ensure!(reported.len() == THREADS as usize, "tids: {report}");
    let signing = duckdb(&format!(
        "SELECT tid, count(*) AS n, count(DISTINCT session) AS sessions FROM {calls} WHERE pid = {pid} AND func = 'C_Sign' AND rv = 0 GROUP BY 1"
    ))?;
    let signing_tids: BTreeSet<i64> = signing.iter().filter_map(|r| r["tid"].as_i64()).collect();
    ensure!(
        signing_tids == reported,
        "C_Sign tids {signing_tids:?}, the threads reported {reported:?}"
    );
    ensure!(
        signing
            .iter()
            .all(|r| r["n"] == 2 * EACH && r["sessions"] == 1),
        "per thread, 2 × {EACH} C_Sign in one session: {signing:?}"
    );
    let sessions = count_of(&format!(
        "SELECT count(DISTINCT session) AS n FROM {calls} WHERE pid = {pid} AND func = 'C_Sign'"
    ))?;
    ensure!(sessions == THREADS, "{sessions} signing sessions");
    let mechanisms = duckdb(&format!(
        "SELECT DISTINCT func, mechanism FROM {calls} WHERE pid = {pid} AND func IN ('C_SignInit', 'C_VerifyInit') ORDER BY 1"
    ))?;
    ensure!(
        mechanisms.len() == 2 && mechanisms.iter().all(|r| r["mechanism"] == "CKM_ECDSA"),
        "mechanisms: {mechanisms:?}"
    );
    // A SHA-256 digest in; the size query and the signature both report 64 bytes (r ‖ s).
    let sizes = duckdb(&format!(
        "SELECT DISTINCT in_len, out_len FROM {calls} WHERE pid = {pid} AND func = 'C_Sign'"
    ))?;
    ensure!(
        sizes.len() == 1 && sizes[0]["in_len"] == 32 && sizes[0]["out_len"] == 64,
        "C_Sign sizes: {sizes:?}"
    );
    Ok(())
}
