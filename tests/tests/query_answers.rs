//! `p11trace-query` answers what the users' own tools answer: `analyze` agrees with DuckDB on a
//! dataset's per-function counts; its JSON passes the integration guide's jq checks for datasets,
//! spy logs and observe JSON lines (and its CSV, events, Markdown and text forms hold what they
//! should); `sql` agrees with DuckDB on an imported file and straight on the log.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::{Value, json};

/// `key` → `count` of each row.
fn key_counts(rows: &[Value], key: &str, count: &str) -> BTreeMap<String, i64> {
    rows.iter()
        .map(|r| {
            (
                r[key].as_str().unwrap_or("").to_owned(),
                r[count].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// `p11trace-query analyze ARGS… --format json`: the report.
fn analyze_json(args: &[&str]) -> Result<Vec<u8>> {
    Ok(query(&[&["analyze"], args, &["--format", "json"]].concat())?.stdout)
}

/// `p11trace-query sql QUERY INPUT --format FORMAT`.
fn sql_on(query_text: &str, input: &Path, format: &str) -> Result<Output> {
    query(&[
        "sql",
        query_text,
        input.to_str().unwrap_or_default(),
        "--format",
        format,
    ])
}

fn jq(filter: &str, input: &[u8]) -> Result<String> {
    let dir = temp();
    let file = dir.path().join("in.json");
    std::fs::write(&file, input)?;
    let output = run_ok(
        Command::new("jq").arg(filter).arg(&file),
        Duration::from_secs(30),
    )
    .with_context(|| format!("jq {filter}"))?;
    Ok(text(&output.stdout).trim().to_owned())
}

#[test]
fn duckdb_and_analyze_agree_on_per_function_counts() -> Result<()> {
    let traced = Traced::pkcs11_tool_test("oracle")?;
    let dataset = traced.recorder.dataset.display().to_string();
    let rows = duckdb(&format!(
        "SELECT func, count(*) AS n FROM read_parquet('{dataset}/calls/**/*.parquet', hive_partitioning=true) GROUP BY 1"
    ))?;
    let duck = key_counts(&rows, "func", "n");
    let report: serde_json::Value = serde_json::from_slice(&analyze_json(&[&dataset])?)?;
    let ours: BTreeMap<String, i64> = report["performance"]
        .as_object()
        .map(|p| {
            p.iter()
                .map(|(f, s)| (f.clone(), s["count"].as_i64().unwrap_or(-1)))
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        duck.len() > 10 && duck == ours,
        "DuckDB {duck:?}\nanalyze {ours:?}"
    );
    let total: i64 = duck.values().sum();
    ensure!(report["summary"]["total_operations"] == total);
    ensure!(report["summary"]["failed_operations"].is_number());
    ensure!(
        report["operations"]
            .as_array()
            .is_some_and(|o| o.len() as i64 == total && o.iter().all(|e| e["func"].is_string()))
    );
    Ok(())
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
    let report = analyze_json(&[observe.to_str().unwrap_or_default()])?;
    ensure!(jq(".summary.failed_operations == 1", &report)? == "true");
    ensure!(jq(".summary.total_operations", &report)? == "5");
    ensure!(jq(".operations | group_by(.func) | length", &report)? == "5");
    ensure!(jq(".performance.C_Sign.p50_ms", &report)? == "3.25");
    ensure!(jq(".summary.total_duration_ms", &report)? == "7.05");
    let imported = import_as(&observe, dir.path(), "observe.parquet", &[])?;
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
    let log = corpus("pt-err-wrong-pin.log");
    let report = analyze_json(&["--log-file", log.to_str().unwrap_or_default()])?;
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
    let traced = Traced::pkcs11_tool_test("jq")?;
    let dataset = traced.recorder.dataset.display().to_string();
    let report = analyze_json(&[&dataset, "--max-operations", "10"])?;
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
    let log = corpus("p11tool-list-mechanisms.log");
    import(&log, &out, &[])?;
    let duck = counts(&format!(
        "SELECT func AS k, count(*) AS n FROM '{}' GROUP BY 1",
        out.display()
    ))?;
    let sql = sql_on(
        "SELECT func AS k, count(*) AS n FROM calls GROUP BY 1",
        &out,
        "json",
    )?;
    let rows: Vec<Value> = serde_json::from_slice(&sql.stdout)?;
    let ours = key_counts(&rows, "k", "n");
    ensure!(duck.len() > 3 && duck == ours, "{duck:?} vs {ours:?}");
    // sql straight on the log gives the same.
    let direct = sql_on("SELECT count(*) AS n FROM calls", &log, "csv")?;
    ensure!(
        text(&direct.stdout).lines().nth(1) == Some(&duck.values().sum::<i64>().to_string()),
        "{}",
        text(&direct.stdout)
    );
    Ok(())
}
