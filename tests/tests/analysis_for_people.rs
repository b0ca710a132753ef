//! What `analyze` shows a person is what a person would say: latencies in units that fit them
//! (never `0.000`), a slow outlier is a call a person would call slow (an absolute floor, which
//! `--slow-floor` moves), and the protocol's normal idioms — a size query retried, attribute and
//! mechanism probes — are `expected`, not failures, so the guide's CI gate passes on a healthy
//! `pkcs11-tool` run and fails on a wrong PIN. Real SoftHSM2, pkcs11-tool, recorder and shim;
//! one constructed observe log where only a constructed log can say it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::{Value, json};

fn analyze_json(input: &Path, extra: &[&str]) -> Result<Value> {
    let path = input.to_str().context("path")?;
    let output = query(&[&["analyze", path, "--format", "json"], extra].concat())?;
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn analyze_text(input: &Path, extra: &[&str]) -> Result<String> {
    let path = input.to_str().context("path")?;
    let mut command = Command::new(query_bin());
    command
        .args([&["analyze", path], extra].concat())
        .env("NO_COLOR", "1");
    Ok(text(
        &run_ok(&mut command, Duration::from_secs(120))?.stdout,
    ))
}

/// The rows of the text report's table under `title` (up to a blank line or a note in
/// parentheses), header first.
fn section<'a>(report: &'a str, title: &str) -> Vec<&'a str> {
    report
        .lines()
        .skip_while(|line| line.trim() != title)
        .skip(1)
        .take_while(|line| !line.trim().is_empty() && !line.starts_with('('))
        .collect()
}

/// Whether `cell` is a duration as the text report prints it: `850 ns`, `12.3 µs`, `1.24 ms`.
fn is_duration(cell: &str) -> bool {
    let Some((number, unit)) = cell.split_once(' ') else {
        return false;
    };
    let digits = number.replace('.', "");
    ["ns", "µs", "ms", "s"].contains(&unit)
        && number.parse::<f64>().is_ok()
        && (digits.len() == 3 || (unit == "ns" && !digits.is_empty()) || unit == "s")
}

/// `jq -e FILTER` on `report`: its exit status.
fn jq_gate(report: &Value, filter: &str) -> Result<Option<i32>> {
    let dir = temp();
    let file = dir.path().join("report.json");
    std::fs::write(&file, serde_json::to_vec(report)?)?;
    let output = run(
        Command::new("jq").args(["-e", filter]).arg(&file),
        Duration::from_secs(30),
    )?;
    Ok(output.status.code())
}

/// Entries of `return_codes` named `rv_name`: (expected, count).
fn codes(report: &Value, rv_name: &str) -> Vec<(bool, u64)> {
    report["return_codes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["rv_name"] == rv_name)
        .map(|c| {
            (
                c["expected"].as_bool().unwrap_or(false),
                c["count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_healthy_pkcs11_tool_run_passes_the_ci_gate_and_a_wrong_pin_fails_it() -> Result<()> {
    let mut traced = Traced::new("healthy")?;
    let keygen = login(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "01",
        "--label",
        "healthy-ec",
    ]);
    run_ok(&mut traced.pkcs11_tool(&keygen), Duration::from_secs(120))?;
    run_ok(
        &mut traced.pkcs11_tool(&login(&["--list-objects"])),
        Duration::from_secs(120),
    )?;
    traced.recorder.stop()?;
    let report = analyze_json(&traced.recorder.dataset, &[])?;
    let summary = &report["summary"];
    ensure!(
        report["analysis_version"] == 2,
        "{}",
        report["analysis_version"]
    );
    // pkcs11-tool --list-objects asks every object for attributes it may not have
    // (CKR_ATTRIBUTE_TYPE_INVALID): the protocol's probe, not a failure.
    ensure!(summary["failed_operations"] == 0, "{summary}");
    let probes = codes(&report, "CKR_ATTRIBUTE_TYPE_INVALID");
    ensure!(
        probes.len() == 1 && probes[0].0 && probes[0].1 >= 1,
        "{}",
        report["return_codes"]
    );
    ensure!(
        summary["expected_nonok_operations"] == probes[0].1,
        "{summary}"
    );
    ensure!(
        report["performance"]["C_GetAttributeValue"]["expected_nonok"] == probes[0].1
            && report["performance"]["C_GetAttributeValue"]["failed"] == 0,
        "{}",
        report["performance"]["C_GetAttributeValue"]
    );
    let total = summary["total_operations"].as_u64().unwrap_or(0);
    ensure!(
        summary["successful_operations"].as_u64() == Some(total - probes[0].1),
        "{summary}"
    );
    let marked: Vec<&Value> = report["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["expected"] == true)
        .collect();
    ensure!(
        marked.len() as u64 == probes[0].1
            && marked.iter().all(|o| o["func"] == "C_GetAttributeValue"
                && o["rv_name"] == "CKR_ATTRIBUTE_TYPE_INVALID"),
        "{marked:?}"
    );
    ensure!(
        !report["issues"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["kind"] == "failed_calls")
    );
    // The README's gate, as written.
    ensure!(jq_gate(&report, ".summary.failed_operations == 0")? == Some(0));
    // The text report still shows the probes, marked expected.
    let text = analyze_text(&traced.recorder.dataset, &[])?;
    let codes_table = section(&text, "Return codes");
    ensure!(
        codes_table.iter().any(|row| {
            let cells: Vec<&str> = row.split_whitespace().collect();
            cells.contains(&"CKR_ATTRIBUTE_TYPE_INVALID") && cells.contains(&"yes")
        }),
        "{text}"
    );

    // The same token, a wrong PIN: a real failure, and the gate fails.
    let mut wrong = Traced::new("wrong-pin")?;
    let output = run(
        &mut wrong.pkcs11_tool(&["--login", "--pin", "99999999", "--list-objects"]),
        Duration::from_secs(120),
    )?;
    ensure!(
        !output.status.success(),
        "a wrong PIN must fail pkcs11-tool"
    );
    wrong.recorder.stop()?;
    let report = analyze_json(&wrong.recorder.dataset, &[])?;
    ensure!(
        report["summary"]["failed_operations"] == 1,
        "{}",
        report["summary"]
    );
    ensure!(
        codes(&report, "CKR_PIN_INCORRECT") == [(false, 1)],
        "{}",
        report["return_codes"]
    );
    ensure!(jq_gate(&report, ".summary.failed_operations == 0")? == Some(1));
    Ok(())
}

#[test]
fn a_size_query_retried_by_pkcs11_tool_is_expected() -> Result<()> {
    // `pkcs11-tool --test` digests with a buffer too small first, then retries (OpenSC's
    // test_digest); it also asks for a mechanism SoftHSM2 lacks through C_DigestInit, which is
    // a real failure (an Init, not a probe).
    let traced = Traced::pkcs11_tool_test("retry")?;
    let report = analyze_json(&traced.recorder.dataset, &["--max-operations", "0"])?;
    let operations = report["operations"].as_array().context("operations")?;
    let mut retried = 0;
    for (at, call) in operations.iter().enumerate() {
        if call["rv_name"] != "CKR_BUFFER_TOO_SMALL" {
            continue;
        }
        let next = operations[at + 1..]
            .iter()
            .find(|o| o["client_id"] == call["client_id"] && o["tid"] == call["tid"])
            .context("a call after the size query")?;
        let retry =
            next["func"] == call["func"] && next["session"] == call["session"] && next["rv"] == 0;
        ensure!(call["expected"] == retry, "{call} then {next}");
        retried += u64::from(retry);
    }
    ensure!(
        retried >= 1,
        "no retried size query in {}",
        report["return_codes"]
    );
    let digest = &report["performance"]["C_Digest"];
    ensure!(
        digest["expected_nonok"].as_u64() >= Some(1) && digest["failed"] == 0,
        "{digest}"
    );
    let init = codes(&report, "CKR_MECHANISM_INVALID");
    ensure!(
        init.iter().all(|(expected, _)| !expected) && !init.is_empty(),
        "C_DigestInit's CKR_MECHANISM_INVALID is a failure: {}",
        report["return_codes"]
    );
    Ok(())
}

/// One observe-format call of process 900.
fn call(ms: u64, tid: u64, func: &str, rv: u64, session: Option<u64>, dur_ms: f64) -> Value {
    let rv_name = match rv {
        0 => "CKR_OK",
        0x150 => "CKR_BUFFER_TOO_SMALL",
        0x70 => "CKR_MECHANISM_INVALID",
        _ => "CKR_GENERAL_ERROR",
    };
    let mut line = json!({
        "ts": format!("2026-11-25T10:00:{:02}.{:03}000000Z", ms / 1000, ms % 1000),
        "pid": 900, "tid": tid, "func": func, "rv": rv, "rv_name": rv_name, "dur_ms": dur_ms,
    });
    if let Some(session) = session {
        line["session"] = session.into();
    }
    line
}

#[test]
fn a_buffer_too_small_without_a_successful_retry_stays_failed() -> Result<()> {
    let dir = temp();
    let log = dir.path().join("calls.jsonl");
    let lines = [
        // Thread 1: retried on the same session with another thread's call between: expected.
        call(0, 1, "C_Sign", 0x150, Some(5), 0.01),
        call(1, 2, "C_Digest", 0, Some(6), 0.01),
        call(2, 1, "C_Sign", 0, Some(5), 0.01),
        // Thread 1: the next call is another function: failed.
        call(3, 1, "C_Encrypt", 0x150, Some(5), 0.01),
        call(4, 1, "C_CloseSession", 0, Some(5), 0.01),
        // Thread 2: retried on another session: failed.
        call(5, 2, "C_Digest", 0x150, Some(6), 0.01),
        call(6, 2, "C_Digest", 0, Some(7), 0.01),
        // Thread 2: retried, too small again (failed), then retried with success (expected).
        call(7, 2, "C_Decrypt", 0x150, Some(6), 0.01),
        call(8, 2, "C_Decrypt", 0x150, Some(6), 0.01),
        call(9, 2, "C_Decrypt", 0, Some(6), 0.01),
        // Thread 3: the last call of its thread: failed.
        call(10, 3, "C_GetAttributeValue", 0x150, Some(8), 0.01),
        // A mechanism probe is expected; the same code from an Init is not.
        call(11, 2, "C_GetMechanismInfo", 0x70, None, 0.01),
        call(12, 2, "C_SignInit", 0x70, Some(6), 0.01),
    ];
    std::fs::write(
        &log,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )?;
    let report = analyze_json(&log, &[])?;
    let summary = &report["summary"];
    ensure!(
        summary["failed_operations"] == 5 && summary["expected_nonok_operations"] == 3,
        "{summary}"
    );
    ensure!(
        codes(&report, "CKR_BUFFER_TOO_SMALL") == [(false, 4), (true, 2)]
            || codes(&report, "CKR_BUFFER_TOO_SMALL") == [(true, 2), (false, 4)],
        "{}",
        report["return_codes"]
    );
    let expected: Vec<(String, u64)> = report["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["expected"] == true)
        .map(|o| {
            (
                o["func"].as_str().unwrap_or("").to_owned(),
                o["seq"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    ensure!(
        expected
            == [
                ("C_Sign".to_owned(), 0),
                ("C_Decrypt".to_owned(), 8),
                ("C_GetMechanismInfo".to_owned(), 11)
            ],
        "{expected:?}"
    );

    // `diff` reads reports of version 2 and of version 1 (whose `failed` held every non-OK
    // call) alike: both sides count the same 8 non-OK calls. Another version is refused.
    let v2 = dir.path().join("v2.json");
    std::fs::write(&v2, serde_json::to_vec(&report)?)?;
    let mut old = report.clone();
    old["analysis_version"] = 1.into();
    if let Some(performance) = old["performance"].as_object_mut() {
        for stats in performance.values_mut() {
            let all = stats["failed"].as_u64().unwrap_or(0)
                + stats["expected_nonok"].as_u64().unwrap_or(0);
            stats["failed"] = all.into();
            if let Some(stats) = stats.as_object_mut() {
                stats.remove("expected_nonok");
            }
        }
    }
    let v1 = dir.path().join("v1.json");
    std::fs::write(&v1, serde_json::to_vec(&old)?)?;
    let (v1_path, v2_path) = (v1.to_str().context("path")?, v2.to_str().context("path")?);
    let output = query_output(&[
        "diff",
        v1_path,
        v2_path,
        "--fail-on",
        "errors",
        "--format",
        "json",
    ])?;
    ensure!(output.status.code() == Some(0), "{}", text(&output.stderr));
    let diff: Value = serde_json::from_slice(&output.stdout)?;
    let side = |name: &str| -> u64 {
        diff["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e[name]["failed"].as_u64().unwrap_or(0))
            .sum()
    };
    ensure!(side("baseline") == 8 && side("current") == 8, "{diff}");
    old["analysis_version"] = 3.into();
    std::fs::write(&v1, serde_json::to_vec(&old)?)?;
    let output = query_output(&["diff", v1_path, v2_path])?;
    ensure!(
        output.status.code() == Some(2) && text(&output.stderr).contains("v1.json"),
        "{}",
        text(&output.stderr)
    );
    Ok(())
}

#[test]
fn latencies_print_in_units_that_fit_and_never_as_zero() -> Result<()> {
    let mut traced = Traced::new("units")?;
    run_ok(
        &mut traced.pkcs11_tool(&login(&["--list-objects"])),
        Duration::from_secs(120),
    )?;
    run_ok(
        &mut traced.pkcs11_tool(&["--list-mechanisms"]),
        Duration::from_secs(120),
    )?;
    traced.recorder.stop()?;
    let report = analyze_text(&traced.recorder.dataset, &[])?;
    // No duration prints as 0.000 (timestamps aside: their seconds may).
    ensure!(
        !report
            .lines()
            .filter(|line| !line.contains("first call") && !line.contains("last call"))
            .any(|line| line.contains("0.000")),
        "{report}"
    );
    let latency = section(&report, "Per-function latency");
    let header: Vec<&str> = latency
        .first()
        .context("header")?
        .split_whitespace()
        .collect();
    ensure!(
        header
            == [
                "function", "calls", "failed", "expected", "p50", "p95", "p99", "max"
            ],
        "{header:?}"
    );
    ensure!(
        report.contains("latencies: ns, µs (microseconds), ms, s"),
        "{report}"
    );
    let mut units = std::collections::BTreeSet::new();
    for row in &latency[1..] {
        let cells: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        ensure!(cells.len() == 8, "{row}");
        for cell in &cells[4..] {
            ensure!(is_duration(cell), "`{cell}` in {row}");
            units.insert(cell.split_once(' ').map(|(_, u)| u.to_owned()));
        }
    }
    // C_GetMechanismInfo answers from memory (µs or less); C_Initialize and C_Login take ms.
    ensure!(
        units.contains(&Some("ms".into()))
            && (units.contains(&Some("µs".into())) || units.contains(&Some("ns".into()))),
        "{units:?}\n{report}"
    );
    let row = latency
        .iter()
        .find(|r| r.trim_start().starts_with("C_GetMechanismInfo "))
        .context("C_GetMechanismInfo row")?;
    ensure!(!row.contains(" ms"), "{row}");
    for title in ["Slowest functions (share of total time)", "Providers"] {
        ensure!(section(&report, title).len() > 1, "{title}: {report}");
    }
    // JSON keeps milliseconds, to the nanosecond: a sub-µs percentile is not rounded to 0.
    let json = analyze_json(&traced.recorder.dataset, &[])?;
    let p50 = json["performance"]["C_GetMechanismInfo"]["p50_ms"]
        .as_f64()
        .context("p50_ms")?;
    ensure!(p50 > 0.0 && p50 < 1.0, "{p50}");
    let ns = p50 * 1e6;
    ensure!(
        (ns - ns.round()).abs() < 1e-3,
        "{p50} ms is not a whole number of ns"
    );
    Ok(())
}

/// The `slow_outliers` evidence lines of `report`.
fn outliers(report: &Value) -> Vec<String> {
    report["issues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["kind"] == "slow_outliers")
        .flat_map(|i| i["evidence"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_slow_outlier_is_a_call_a_person_would_call_slow() -> Result<()> {
    // Constructed: 30 C_GetMechanismInfo of 2 µs and one of 40 µs — above max(p99, 10× p50)
    // but far below any floor a person would call slow.
    let dir = temp();
    let log = dir.path().join("fast.jsonl");
    let mut lines: Vec<Value> = (0..30)
        .map(|n| call(n, 1, "C_GetMechanismInfo", 0, None, 0.002))
        .collect();
    lines.push(call(31, 1, "C_GetMechanismInfo", 0, None, 0.040));
    std::fs::write(
        &log,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )?;
    ensure!(
        outliers(&analyze_json(&log, &[])?).is_empty(),
        "fast calls flagged"
    );
    let percentiles_alone = outliers(&analyze_json(&log, &["--slow-floor", "0ns"])?);
    ensure!(
        percentiles_alone.len() == 1
            && percentiles_alone[0].starts_with("C_GetMechanismInfo took 40.0 µs"),
        "{percentiles_alone:?}"
    );

    // Real: 60 rounds of C_Sign on SoftHSM2, then one process whose single C_Sign the
    // fault-injecting module p11count slows by 20 ms.
    let token = Token::new("slow")?;
    let mut recorder = Recorder::start(&[])?;
    let logs = temp();
    for (process, (rounds, slow)) in [("60", "C_Sign:1"), ("1", "C_Sign:20000")]
        .into_iter()
        .enumerate()
    {
        let mut command = token.command(target_dir().join("p11workload"));
        command.arg(shim()).args([USER_PIN, "sign", rounds, "0"]);
        recorder.shim_env(&mut command, p11count());
        let log = logs.path().join(format!("count-{process}.log"));
        Oracle::Count.env(&mut command, &token.module(), &log);
        command.env("P11COUNT_SLOW", slow);
        run_ok(&mut command, Duration::from_secs(120))?;
    }
    recorder.stop()?;
    let report = analyze_json(&recorder.dataset, &[])?;
    let flagged = outliers(&report);
    ensure!(
        flagged
            .iter()
            .any(|e| e.starts_with("C_Sign took ") && e.contains(" ms (limit")),
        "the 20 ms C_Sign is not flagged: {flagged:?}"
    );
    // Every call flagged is slower than the 1 ms floor.
    for evidence in &flagged {
        let took = evidence
            .split(" took ")
            .nth(1)
            .and_then(|rest| rest.split(" (limit").next())
            .context("took")?;
        ensure!(took.ends_with(" ms") || took.ends_with(" s"), "{evidence}");
    }
    // A floor above it: the 20 ms call is not slow.
    let higher = outliers(&analyze_json(&recorder.dataset, &["--slow-floor", "50ms"])?);
    ensure!(
        !higher.iter().any(|e| e.starts_with("C_Sign took ")),
        "{higher:?}"
    );
    // A floor that is not a duration is a usage error naming the flag.
    let output = query_output(&[
        "analyze",
        recorder.dataset.to_str().context("path")?,
        "--slow-floor",
        "fast",
    ])?;
    ensure!(output.status.code() == Some(2), "{:?}", output.status);
    ensure!(
        text(&output.stderr).contains("--slow-floor"),
        "{}",
        text(&output.stderr)
    );
    Ok(())
}
