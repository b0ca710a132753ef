//! Issue 5: the query tool. Every corpus log against its counted ground truth; fresh pkcs11-spy
//! logs of real pkcs11-tool and p11tool runs against the same runs' shim recordings, call for
//! call; golden rows checked field by field; every spy format; observe JSON lines; the guide's jq
//! checks; DuckDB against `sql`; bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::{Value, json};

fn corpus() -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(shared().join("corpus"))
        .expect("../shared/corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

fn import(input: &Path, out: &Path, extra: &[&str]) -> Result<std::process::Output> {
    let mut args = vec![
        "import",
        input.to_str().unwrap_or_default(),
        "-o",
        out.to_str().unwrap_or_default(),
    ];
    args.extend_from_slice(extra);
    query(&args)
}

fn counts(sql: &str) -> Result<BTreeMap<String, i64>> {
    Ok(duckdb(sql)?
        .iter()
        .map(|r| {
            (
                r["k"].as_str().unwrap_or("").to_owned(),
                r["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect())
}

#[test]
fn every_corpus_log_imports_to_its_counted_ground_truth() -> Result<()> {
    let dir = temp();
    let logs = corpus();
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
        let by_function = counts(&format!(
            "SELECT func AS k, count(*) AS n FROM {file} GROUP BY 1"
        ))?;
        let want: BTreeMap<String, i64> = expected["calls_by_function"]
            .as_object()
            .context("calls_by_function")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
            .collect();
        ensure!(
            by_function == want,
            "{name}: per-function counts {by_function:?} vs {want:?}"
        );
        let non_ok = counts(&format!(
            "SELECT rv_name AS k, count(*) AS n FROM {file} WHERE rv <> 0 GROUP BY 1"
        ))?;
        let want_non_ok: BTreeMap<String, i64> = expected["non_ok_returns"]
            .as_object()
            .context("non_ok_returns")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
            .collect();
        ensure!(
            non_ok == want_non_ok,
            "{name}: non-OK returns {non_ok:?} vs {want_non_ok:?}"
        );
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
        let failed: i64 = want_non_ok.values().sum();
        ensure!(
            report["summary"]["failed_operations"] == failed,
            "{name}: analyze failed"
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

/// Runs clients through shim → pkcs11-spy → SoftHSM2 and returns (recorder, spy log).
fn traced_with_spy(token: &Token, dir: &Path) -> Result<(Recorder, PathBuf)> {
    let mut recorder = Recorder::start(&[])?;
    let log = dir.join("spy.log");
    let env = |command: &mut Command, recorder: &Recorder| {
        recorder.shim_env(command, SPY);
        command
            .env("PKCS11SPY", SOFTHSM)
            .env("PKCS11SPY_OUTPUT", &log);
    };
    let message = dir.join("message.txt");
    std::fs::write(&message, b"golden message")?;
    let pin = ["--login", "--pin", USER_PIN];
    let runs: Vec<Vec<String>> = vec![
        pin.iter()
            .chain(&["--test"])
            .map(|s| s.to_string())
            .collect(),
        pin.iter()
            .chain(&[
                "--keypairgen",
                "--key-type",
                "rsa:2048",
                "--id",
                "21",
                "--label",
                "golden",
            ])
            .map(|s| s.to_string())
            .collect(),
        pin.iter()
            .map(|s| s.to_string())
            .chain(["--sign", "-m", "SHA256-RSA-PKCS-PSS", "--id", "21", "-i"].map(String::from))
            .chain([
                message.display().to_string(),
                "-o".into(),
                dir.join("sig").display().to_string(),
            ])
            .collect(),
        ["--login", "--pin", "Wrong-Pin-7777", "--list-objects"]
            .map(String::from)
            .to_vec(),
    ];
    for args in &runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = token.pkcs11_tool(&shim(), &args);
        env(&mut command, &recorder);
        run(&mut command, Duration::from_secs(120))?;
    }
    for args in [
        vec![
            "--list-mechanisms".to_owned(),
            format!("pkcs11:token={}", token.label),
        ],
        vec![
            "--login".into(),
            "--set-pin".into(),
            USER_PIN.into(),
            "--list-all".into(),
            format!("pkcs11:token={}", token.label),
        ],
    ] {
        let mut command = token.command("p11tool");
        command.arg("--provider").arg(shim()).args(&args);
        env(&mut command, &recorder);
        let output = run(&mut command, Duration::from_secs(120))?;
        ensure!(
            output.status.success(),
            "p11tool failed: {}",
            text(&output.stderr)
        );
    }
    recorder.stop()?;
    Ok((recorder, log))
}

#[test]
fn fresh_spy_logs_of_pkcs11_tool_and_p11tool_match_the_shims_recording_call_for_call() -> Result<()>
{
    let token = Token::new("fresh")?;
    let dir = temp();
    let (recorder, log) = traced_with_spy(&token, dir.path())?;
    let imported = dir.path().join("spy.parquet");
    import(&log, &imported, &[])?;
    let columns = [
        "func",
        "rv",
        "slot_id",
        "session",
        "mechanism",
        "mech_params",
        "object",
        "object2",
        "out_objects",
        "user_type",
        "in_len",
        "out_len",
        "ck_flags",
        "attrs",
    ];
    let select = columns.join(", ");
    let ours = duckdb(&format!(
        "SELECT {select}, process FROM {} ORDER BY client_id, seq",
        recorder.table("calls")
    ))?;
    let theirs = duckdb(&format!(
        "SELECT {select} FROM '{}' ORDER BY client_id, seq",
        imported.display()
    ))?;
    ensure!(
        ours.len() == theirs.len() && ours.len() > 1000,
        "recorded {} calls, spy {}",
        ours.len(),
        theirs.len()
    );
    ensure!(
        ours.iter().any(|r| r["process"] == "p11tool")
            && ours.iter().any(|r| r["process"] == "pkcs11-tool")
    );
    let mut compared = 0;
    for (index, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        for column in columns {
            // The spy does not print everything (a size query's output, the returned interface's
            // version): compare where it does.
            if a[column].is_null()
                || b[column].is_null()
                || (column == "attrs" && a["func"] == "C_GetInterface")
            {
                continue;
            }
            ensure!(
                a[column] == b[column],
                "call {index} ({}) {column}: shim {} vs spy {}",
                a["func"],
                a[column],
                b[column]
            );
            compared += 1;
        }
    }
    ensure!(compared > 5000, "too little compared: {compared}");
    for secret in [USER_PIN.as_bytes(), b"Wrong-Pin-7777"] {
        ensure!(
            contains_secret(&std::fs::read(&log)?, secret),
            "control: the spy log must hold the PIN"
        );
        ensure!(
            !contains_secret(&std::fs::read(&imported)?, secret),
            "a PIN survived the import"
        );
    }
    Ok(())
}

fn row(file: &Path, filter: &str) -> Result<Value> {
    let rows = duckdb(&format!(
        "SELECT * FROM '{}' WHERE {filter}",
        file.display()
    ))?;
    ensure!(
        rows.len() == 1,
        "expected one row for {filter}, got {}",
        rows.len()
    );
    Ok(rows.into_iter().next().unwrap_or_default())
}

fn attrs(row: &Value) -> Vec<(String, String, i64, Value, bool)> {
    row["attrs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["template"].as_str().unwrap_or("").to_owned(),
                        x["type"].as_str().unwrap_or("").to_owned(),
                        x["len"].as_i64().unwrap_or(-9),
                        x["value"].clone(),
                        x["redacted"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn golden_rows_match_the_log_field_by_field() -> Result<()> {
    let dir = temp();
    let corpus = shared().join("corpus");
    // C_GenerateKeyPair with both templates (pt-keygen-rsa2048.log, record 80).
    let keygen = dir.path().join("keygen.parquet");
    import(
        &corpus.join("pt-keygen-rsa2048.log"),
        &keygen,
        &["--tz", "Europe/Berlin"],
    )?;
    let r = row(&keygen, "func = 'C_GenerateKeyPair'")?;
    ensure!(
        r["seq"] == 80
            && r["session"] == 1
            && r["mechanism"] == "CKM_RSA_PKCS_KEY_PAIR_GEN"
            && r["mech_code"] == 0,
        "{r}"
    );
    ensure!(
        r["mech_params"].is_null()
            && r["out_objects"] == json!([2, 3])
            && r["rv"] == 0
            && r["rv_name"] == "CKR_OK",
        "{r}"
    );
    // 16:21:42.496 local in Berlin (CET, UTC+1) is 15:21:42.496 UTC.
    ensure!(
        r["start"]
            .as_str()
            .is_some_and(|s| s.starts_with("2026-11-25 15:21:42.496"))
            && r["start_local"] == true,
        "{r}"
    );
    ensure!(
        r["returned"] == true
            && r["source"] == "pkcs11-spy"
            && r["module"] == "/usr/lib/softhsm/libsofthsm2.so"
            && r["dur_ns"].is_null(),
        "{r}"
    );
    let t = |template: &str, kind: &str, len: i64, value: Value| {
        (template.to_owned(), kind.to_owned(), len, value, false)
    };
    let want = vec![
        t("public", "CKA_CLASS", 8, json!("CKO_PUBLIC_KEY")),
        t("public", "CKA_TOKEN", 1, json!("true")),
        t("public", "CKA_MODULUS_BITS", 8, json!("2048")),
        t("public", "CKA_PUBLIC_EXPONENT", 3, json!("010001")),
        t("public", "CKA_VERIFY", 1, json!("true")),
        t("public", "CKA_ENCRYPT", 1, json!("true")),
        t("public", "CKA_KEY_TYPE", 8, json!("CKK_RSA")),
        t("public", "CKA_LABEL", 7, json!("rsa2048")),
        t("public", "CKA_ID", 1, json!("01")),
        t("public", "CKA_PRIVATE", 1, json!("false")),
        t("private", "CKA_CLASS", 8, json!("CKO_PRIVATE_KEY")),
        t("private", "CKA_TOKEN", 1, json!("true")),
        t("private", "CKA_PRIVATE", 1, json!("true")),
        t("private", "CKA_SENSITIVE", 1, json!("true")),
        t("private", "CKA_SIGN", 1, json!("true")),
        t("private", "CKA_DECRYPT", 1, json!("true")),
        t("private", "CKA_KEY_TYPE", 8, json!("CKK_RSA")),
        t("private", "CKA_LABEL", 7, json!("rsa2048")),
        t("private", "CKA_ID", 1, json!("01")),
    ];
    ensure!(
        attrs(&r) == want,
        "keygen attrs:\n{:?}\nwant\n{want:?}",
        attrs(&r)
    );

    // C_Login with a wrong PIN (pt-err-wrong-pin.log, record 7): the PIN's length only.
    let login = dir.path().join("login.parquet");
    import(
        &corpus.join("pt-err-wrong-pin.log"),
        &login,
        &["--tz", "UTC"],
    )?;
    let r = row(&login, "func = 'C_Login'")?;
    ensure!(
        r["seq"] == 7 && r["session"] == 1 && r["user_type"] == "CKU_USER" && r["in_len"] == 4,
        "{r}"
    );
    ensure!(
        r["rv"] == 160 && r["rv_name"] == "CKR_PIN_INCORRECT" && r["attrs"].is_null(),
        "{r}"
    );
    ensure!(
        r["start"]
            .as_str()
            .is_some_and(|s| s.starts_with("2026-11-25 ")),
        "{r}"
    );

    // C_FindObjects with a found handle (pt-sign-rsa-pkcs.log, record 10).
    let sign = dir.path().join("sign.parquet");
    import(
        &corpus.join("pt-sign-rsa-pkcs.log"),
        &sign,
        &["--tz", "UTC"],
    )?;
    let r = row(&sign, "func = 'C_FindObjects'")?;
    ensure!(
        r["seq"] == 10
            && r["session"] == 1
            && r["out_objects"] == json!([2])
            && r["out_len"] == 1
            && r["rv"] == 0,
        "{r}"
    );
    let r = row(&sign, "func = 'C_FindObjectsInit'")?;
    let want = vec![
        t("in", "CKA_CLASS", 8, json!("CKO_PRIVATE_KEY")),
        t("in", "CKA_ID", 1, json!("01")),
    ];
    ensure!(attrs(&r) == want, "find template {:?}", attrs(&r));
    let r = row(&sign, "func = 'C_Sign'")?;
    ensure!(
        r["in_len"] == 44 && r["out_len"] == 256 && r["session"] == 1,
        "{r}"
    );

    // Two threads' C_Sign records interleaved, a Returned: glued to a hex dump (0.24 format).
    let threads = dir.path().join("threads.parquet");
    let output = import(
        &workspace().join("tests/fixtures/spy-0.24-threads.log"),
        &threads,
        &["--tz", "UTC"],
    )?;
    ensure!(
        text(&output.stderr).contains("1 ambiguous return pairing"),
        "{}",
        text(&output.stderr)
    );
    let first = row(&threads, "func = 'C_Sign' AND session = 1")?;
    let second = row(&threads, "func = 'C_Sign' AND session = 3")?;
    ensure!(
        first["seq"] == 3
            && first["pid"] == 4100
            && first["tid"] == 140002
            && first["in_len"] == 44
            && first["out_len"] == 256,
        "{first}"
    );
    ensure!(
        second["seq"] == 4
            && second["pid"] == 4100
            && second["tid"] == 140003
            && second["in_len"] == 16
            && second["out_len"] == 128,
        "{second}"
    );
    ensure!(
        first["rv"] == 0
            && second["rv"] == 0
            && first["returned"] == true
            && second["returned"] == true
    );
    ensure!(
        first["start"]
            .as_str()
            .is_some_and(|s| s.starts_with("2026-11-25 10:00:00.002")),
        "{first}"
    );
    let init = row(&threads, "func = 'C_SignInit' AND session = 3")?;
    ensure!(
        init["mechanism"] == "CKM_ECDSA" && init["object"] == 4 && init["tid"] == 140003,
        "{init}"
    );
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
    let original = std::fs::read_to_string(shared().join("corpus/pt-keygen-rsa2048.log"))?;
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(
        shared().join("corpus/pt-keygen-rsa2048.expected.json"),
    )?)?;
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

fn jq(filter: &str, input: &[u8]) -> Result<String> {
    let dir = temp();
    let file = dir.path().join("in.json");
    std::fs::write(&file, input)?;
    let output = run(
        Command::new("jq").arg(filter).arg(&file),
        Duration::from_secs(30),
    )?;
    ensure!(
        output.status.success(),
        "jq {filter}: {}",
        text(&output.stderr)
    );
    Ok(text(&output.stdout).trim().to_owned())
}

#[test]
fn analyze_json_answers_the_guides_jq_checks_for_datasets_spy_logs_and_observe_lines() -> Result<()>
{
    let dir = temp();
    // An observe-core JSON-lines file, written as the guide shows it.
    let observe = dir.path().join("events.jsonl");
    let lines = [
        json!({"ts":"2026-11-25T10:00:00.000000000Z","pid":700,"tid":701,"func":"C_Initialize","rv":0,"rv_name":"CKR_OK","dur_ms":1.5}),
        json!({"ts":"2026-11-25T10:00:00.002000000Z","pid":700,"tid":701,"func":"C_OpenSession","rv":0,"rv_name":"CKR_OK","dur_ms":0.1,"slot_id":0,"session":1}),
        json!({"ts":"2026-11-25T10:00:00.003000000Z","pid":700,"tid":701,"func":"C_Login","rv":160,"rv_name":"CKR_PIN_INCORRECT","dur_ms":2.0,"session":1}),
        json!({"ts":"2026-11-25T10:00:00.006000000Z","pid":700,"tid":701,"func":"C_SignInit","rv":0,"rv_name":"CKR_OK","dur_ms":0.2,"session":1,"mech":"CKM_ECDSA","op_id":"op-1","template_summary":{"CKA_CLASS":"CKO_PRIVATE_KEY","CKA_VALUE":"should-not-survive"}}),
        json!({"ts":"2026-11-25T10:00:00.007000000Z","pid":700,"tid":701,"func":"C_Sign","rv":0,"rv_name":"CKR_OK","dur_ms":3.25,"session":1,"op_id":"op-1"}),
    ];
    std::fs::write(
        &observe,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )?;
    let report = query(&[
        "analyze",
        observe.to_str().unwrap_or_default(),
        "--format",
        "json",
    ])?
    .stdout;
    ensure!(jq(".summary.failed_operations == 1", &report)? == "true");
    ensure!(jq(".summary.total_operations", &report)? == "5");
    ensure!(jq(".operations | group_by(.func) | length", &report)? == "5");
    ensure!(jq(".performance.C_Sign.p50_ms", &report)? == "3.25");
    ensure!(jq(".summary.total_duration_ms", &report)? == "7.05");
    let imported = dir.path().join("observe.parquet");
    import(&observe, &imported, &[])?;
    let sign = row(&imported, "func = 'C_Sign'")?;
    let init = row(&imported, "func = 'C_SignInit'")?;
    ensure!(
        sign["op_id"] == init["op_id"]
            && sign["dur_ns"] == 3_250_000
            && sign["source"] == "observe-json"
            && sign["start_local"] == false,
        "{sign}"
    );
    ensure!(
        attrs(&init).iter().any(|a| a.1 == "CKA_VALUE" && a.4),
        "CKA_VALUE must be redacted: {:?}",
        attrs(&init)
    );
    ensure!(!contains_secret(
        &std::fs::read(&imported)?,
        b"should-not-survive"
    ));

    // A spy log, by --log-file as the guide spells it.
    let log = shared().join("corpus/pt-err-wrong-pin.log");
    let report = query(&[
        "analyze",
        "--log-file",
        log.to_str().unwrap_or_default(),
        "--format",
        "json",
    ])?
    .stdout;
    ensure!(jq(".summary.failed_operations == 0", &report)? == "false");
    ensure!(
        jq(
            ".issues | map(.kind) | index(\"failed_calls\") != null",
            &report
        )? == "true"
    );
    ensure!(
        jq(
            "[.operations[] | select(.func == \"C_Login\")] | length",
            &report
        )? == "1"
    );

    // A dataset.
    let token = Token::new("jq")?;
    let mut recorder = Recorder::start(&[])?;
    let mut command = token.pkcs11_tool(&shim(), &["--login", "--pin", USER_PIN, "--test"]);
    recorder.shim_env(&mut command, SOFTHSM);
    run(&mut command, Duration::from_secs(120))?;
    recorder.stop()?;
    let dataset = recorder.dataset.display().to_string();
    let report = query(&[
        "analyze",
        &dataset,
        "--format",
        "json",
        "--max-operations",
        "10",
    ])?
    .stdout;
    ensure!(jq(".summary.operations_truncated", &report)? == "true");
    ensure!(jq(".operations | length", &report)? == "10");
    ensure!(jq(".sessions.opened >= 1", &report)? == "true");
    ensure!(
        jq(
            ".by_provider[0].provider | startswith(\"SoftHSM\")",
            &report
        )? == "true"
    );
    // Other formats and filters.
    let csv = text(&query(&["analyze", &dataset, "--format", "csv"])?.stdout);
    ensure!(
        csv.starts_with("func,count,failed,") && csv.lines().count() > 10,
        "{csv}"
    );
    let events = text(
        &query(&[
            "analyze", &dataset, "--format", "events", "--func", "C_Login",
        ])?
        .stdout,
    );
    let events: Vec<Value> = events
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(
        events.len() == 1 && events[0]["func"] == "C_Login" && events[0]["user_type"] == "CKU_USER",
        "{events:?}"
    );
    let failed = text(&query(&["analyze", &dataset, "--format", "events", "--failed"])?.stdout);
    ensure!(failed.lines().all(|l| !l.contains("\"rv\":0,")), "{failed}");
    let markdown = text(&query(&["analyze", &dataset, "--format", "markdown"])?.stdout);
    ensure!(
        markdown.contains("# PKCS#11 Operation Analysis") && markdown.contains("| C_Login"),
        "{markdown}"
    );
    let text_report = text(&query(&["analyze", &dataset])?.stdout);
    ensure!(
        !text_report.contains('\u{1b}'),
        "no colour when stdout is not a terminal"
    );
    Ok(())
}

#[test]
fn duckdb_and_sql_agree_on_an_imported_file() -> Result<()> {
    let dir = temp();
    let out = dir.path().join("imported.parquet");
    import(
        &shared().join("corpus/p11tool-list-mechanisms.log"),
        &out,
        &[],
    )?;
    let duck = counts(&format!(
        "SELECT func AS k, count(*) AS n FROM '{}' GROUP BY 1",
        out.display()
    ))?;
    let sql = query(&[
        "sql",
        "SELECT func AS k, count(*) AS n FROM calls GROUP BY 1",
        out.to_str().unwrap_or_default(),
        "--format",
        "json",
    ])?;
    let rows: Vec<Value> = serde_json::from_slice(&sql.stdout)?;
    let ours: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r["k"].as_str().unwrap_or("").to_owned(),
                r["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    ensure!(duck.len() > 3 && duck == ours, "{duck:?} vs {ours:?}");
    // sql straight on the log gives the same.
    let direct = query(&[
        "sql",
        "SELECT count(*) AS n FROM calls",
        shared()
            .join("corpus/p11tool-list-mechanisms.log")
            .to_str()
            .unwrap_or_default(),
        "--format",
        "csv",
    ])?;
    ensure!(
        text(&direct.stdout).lines().nth(1) == Some(&duck.values().sum::<i64>().to_string()),
        "{}",
        text(&direct.stdout)
    );
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
    let query_run = |args: &[&str]| {
        run(
            Command::new(query_bin()).args(args),
            Duration::from_secs(60),
        )
    };
    let output = query_run(&["analyze", garbage.to_str().unwrap_or_default()])?;
    ensure!(
        output.status.code() == Some(1) && text(&output.stderr).contains("cannot tell its format"),
        "{}",
        text(&output.stderr)
    );
    let output = query_run(&[
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
    let log = std::fs::read_to_string(shared().join("corpus/pt-sign-rsa-pkcs.log"))?;
    let cut = log.find("14: C_Sign").context("C_Sign record")? + 80;
    let truncated = dir.path().join("truncated.log");
    std::fs::write(&truncated, &log[..cut])?;
    let lenient = dir.path().join("lenient.parquet");
    import(&truncated, &lenient, &[])?;
    let last = row(&lenient, "func = 'C_Sign'")?;
    ensure!(
        last["returned"] == false && last["rv"].is_null() && last["rv_name"].is_null(),
        "{last}"
    );
    let strict = dir.path().join("strict.parquet");
    let output = query_run(&[
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
    let output = query_run(&["analyze", "/nonexistent/p11trace.log"])?;
    ensure!(
        output.status.code() == Some(1)
            && text(&output.stderr).contains("/nonexistent/p11trace.log"),
        "{}",
        text(&output.stderr)
    );
    let output = query_run(&["analyze", "--format", "nope", "x"])?;
    ensure!(output.status.code() == Some(2), "usage errors exit 2");
    Ok(())
}
