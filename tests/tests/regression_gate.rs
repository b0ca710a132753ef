//! `diff`, the regression gate, on real recordings: a signing workload (`p11workload sign`) from
//! several processes, through the shim, into a real recorder, against SoftHSM2. The same
//! workload recorded again never fails the gate on this noisy machine; a slowdown (1 ms more
//! per `C_Digest`) or a failure rate (1 `C_Sign` in 20) injected by `p11count` between the shim
//! and SoftHSM2 fails it and is named exactly.
//!
//! The tests of this file run one at a time (a lock): a neighbour's workload is noise.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const PROCESSES: usize = 4;
const ROUNDS: &str = "60";
/// The application's own work after each round, µs (see `p11workload`).
const THINK_US: &str = "0";

/// The lock of this file's tests (see above), then a fresh SoftHSM2 token labelled `label`.
fn one_at_a_time(label: &str) -> Result<(MutexGuard<'static, ()>, Token)> {
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    Ok((one, Token::new(label)?))
}

/// Records `PROCESSES` runs of `p11workload sign ROUNDS` into a fresh recorder and stops it.
/// With `faults`, `p11count` sits between the shim and the token with those variables set (the
/// baseline of a fault test passes `Some(&[])`: the same chain, no fault).
fn record(token: &Token, faults: Option<&[(&str, &str)]>) -> Result<Recorder> {
    let mut recorder = Recorder::start(&[])?;
    let logs = temp();
    for process in 0..PROCESSES {
        let mut command = token.command(target_dir().join("p11workload"));
        command
            .arg(shim())
            .args([USER_PIN, "sign", ROUNDS, THINK_US]);
        match faults {
            None => {
                recorder.shim_env(&mut command, token.module());
            }
            Some(env) => {
                recorder.shim_env(&mut command, p11count());
                let log = logs.path().join(format!("count-{process}.log"));
                Oracle::Count.env(&mut command, &token.module(), &log);
                command.envs(env.iter().copied());
            }
        }
        let output = run_ok(&mut command, Duration::from_secs(120))?;
        ensure!(
            text(&output.stdout).contains("\"failures\""),
            "workload output: {}",
            text(&output.stdout)
        );
    }
    recorder.stop()?;
    Ok(recorder)
}

/// A baseline (`p11count` in the chain, no fault), then a recording with `faults` injected.
fn baseline_and(token: &Token, faults: &[(&str, &str)]) -> Result<(Recorder, Recorder)> {
    let baseline = record(token, Some(&[]))?;
    Ok((baseline, record(token, Some(faults))?))
}

/// `p11trace-query diff BASELINE CURRENT --format json ARGS…`: (exit status, report).
fn diff(baseline: &Path, current: &Path, args: &[&str]) -> Result<(i32, Value)> {
    let output = gate(baseline, current, &[&["--format", "json"], args].concat())?;
    let status = output.status.code().unwrap_or(-1);
    ensure!(
        status == 0 || status == 1,
        "diff failed ({status}): {}",
        text(&output.stderr)
    );
    Ok((status, serde_json::from_slice(&output.stdout)?))
}

fn gate(baseline: &Path, current: &Path, args: &[&str]) -> Result<Output> {
    run(
        Command::new(query_bin())
            .arg("diff")
            .arg(baseline)
            .arg(current)
            .args(args),
        Duration::from_secs(120),
    )
}

/// `C_Sign/CKM_ECDSA`-style labels of the entries whose `key` verdict is `word`.
fn named(report: &Value, key: &str, word: &str) -> Vec<String> {
    report["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e[key] == word)
        .map(|e| match e["mechanism"].as_str() {
            Some(mechanism) => format!("{}/{mechanism}", e["func"].as_str().unwrap_or("")),
            None => e["func"].as_str().unwrap_or("").to_owned(),
        })
        .collect()
}

/// The drift and every tested row's medians and interval, for an assertion's message.
fn explain(report: &Value) -> String {
    let rows: Vec<String> = report["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["verdict"] != "insufficient_data")
        .map(|e| {
            format!(
                "{} {}: {} {} -> {} {}",
                e["func"],
                e["mechanism"],
                e["verdict"],
                e["baseline"]["p50_ns"],
                e["current"]["p50_ns"],
                e["median_change"]
            )
        })
        .collect();
    format!("drift {}\n{}", report["drift"], rows.join("\n"))
}

fn entry<'r>(report: &'r Value, func: &str, mechanism: Option<&str>) -> Option<&'r Value> {
    report["entries"]
        .as_array()?
        .iter()
        .find(|e| e["func"] == func && e["mechanism"].as_str() == mechanism)
}

#[test]
fn the_same_workload_recorded_four_times_never_fails_the_gate() -> Result<()> {
    let (_one, token) = one_at_a_time("gate-same")?;
    let runs = (0..4)
        .map(|_| record(&token, None))
        .collect::<Result<Vec<_>>>()?;
    for current in &runs[1..] {
        let (status, report) = diff(&runs[0].dataset, &current.dataset, &[])?;
        let sign = entry(&report, "C_Sign", Some("CKM_ECDSA")).expect("a C_Sign/CKM_ECDSA entry");
        assert_eq!(
            status,
            0,
            "regressed: {:?}, counts: {:?}\n{}",
            named(&report, "verdict", "regressed"),
            named(&report, "count_verdict", "regressed"),
            explain(&report)
        );
        // The gate really weighed the signatures: enough samples, a test, an interval.
        assert_eq!(sign["basis"], "samples");
        assert_ne!(sign["verdict"], "insufficient_data", "{sign}");
        assert_eq!(sign["baseline"]["calls"], 240);
        assert!(sign["p_value"].is_number() && sign["median_change"]["lo"].is_number());
        assert_eq!(sign["count_verdict"], "unchanged");
        assert_eq!(report["summary"]["rv_regressed"], 0);
    }
    // Filters apply after each operation's mechanism is known: `--func C_Sign` keeps C_Sign
    // keyed by its C_SignInit's mechanism.
    let (_, only) = diff(&runs[0].dataset, &runs[1].dataset, &["--func", "C_Sign"])?;
    let keys: Vec<String> = only["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{}/{}", e["func"].as_str().unwrap_or(""), e["mechanism"]))
        .collect();
    assert_eq!(keys, ["C_Sign/\"CKM_ECDSA\""]);
    Ok(())
}

/// The gate failed (exit 1), naming exactly `want` as regressed.
#[track_caller]
fn assert_fails_naming(status: i32, report: &Value, want: &[&str]) {
    assert_eq!(status, 1, "{report:#}");
    assert_eq!(
        named(report, "verdict", "regressed"),
        want,
        "{}",
        explain(report)
    );
}

#[test]
fn an_injected_slowdown_fails_the_gate_and_names_exactly_that_function() -> Result<()> {
    let (_one, token) = one_at_a_time("gate-slow")?;
    let (baseline, slowed) = baseline_and(&token, &[("P11COUNT_SLOW", "C_Digest:1000")])?;
    let (status, report) = diff(&baseline.dataset, &slowed.dataset, &[])?;
    assert_fails_naming(status, &report, &["C_Digest/CKM_SHA256"]);
    assert!(named(&report, "count_verdict", "regressed").is_empty());
    let digest = entry(&report, "C_Digest", Some("CKM_SHA256")).expect("entry");
    assert!(
        digest["median_change_ns"].as_f64().unwrap_or(0.0) > 800_000.0,
        "{digest}"
    );
    assert!(
        digest["median_change"]["lo"].as_f64().unwrap_or(0.0) > 0.1,
        "{digest}"
    );

    // The same verdict from the analysis JSON a pipeline already keeps: percentiles only.
    let reports = temp();
    let mut paths = Vec::new();
    for (name, dataset) in [
        ("base.json", &baseline.dataset),
        ("now.json", &slowed.dataset),
    ] {
        let output = query(&[
            "analyze",
            &dataset.display().to_string(),
            "--format",
            "json",
        ])?;
        let path = reports.path().join(name);
        std::fs::write(&path, &output.stdout)?;
        paths.push(path);
    }
    let (status, report) = diff(&paths[0], &paths[1], &[])?;
    assert_fails_naming(status, &report, &["C_Digest"]);
    assert_eq!(report["entries"][0]["basis"], "percentiles");

    // --fail-on never reports the same and exits 0; markdown is a PR comment.
    let output = gate(
        &baseline.dataset,
        &slowed.dataset,
        &["--fail-on", "never", "--format", "markdown"],
    )?;
    assert_eq!(output.status.code(), Some(0));
    let markdown = text(&output.stdout);
    assert!(
        markdown.starts_with("**PASS: 1 latency regression(s)"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| C_Digest CKM_SHA256") && markdown.contains("regressed"),
        "{markdown}"
    );
    assert!(markdown.contains("pair(s): no change found"), "{markdown}");
    Ok(())
}

#[test]
fn injected_failures_fail_the_errors_gate_and_name_the_function() -> Result<()> {
    let (_one, token) = one_at_a_time("gate-fail")?;
    let (baseline, failing) = baseline_and(&token, &[("P11COUNT_FAIL", "C_Sign:20")])?;
    let (status, report) = diff(
        &baseline.dataset,
        &failing.dataset,
        &["--fail-on", "errors"],
    )?;
    assert_eq!(status, 1, "{report:#}");
    assert_eq!(
        named(&report, "rv_verdict", "regressed"),
        ["C_Sign/CKM_ECDSA"]
    );
    let sign = entry(&report, "C_Sign", Some("CKM_ECDSA")).expect("entry");
    assert_eq!(sign["new_failures"][0]["rv_name"], "CKR_DEVICE_ERROR");
    assert_eq!(
        sign["new_failures"][0]["count"], 12,
        "1 in 20 of 240 signatures"
    );
    assert_eq!(sign["current"]["failed"], 12);
    // The same code, failing more often: no new code, a significant rise in the failure rate.
    let rarer = record(&token, Some(&[("P11COUNT_FAIL", "C_Sign:60")]))?;
    let frequent = record(&token, Some(&[("P11COUNT_FAIL", "C_Sign:4")]))?;
    let (status, report) = diff(&rarer.dataset, &frequent.dataset, &["--fail-on", "errors"])?;
    assert_eq!(status, 1, "{report:#}");
    let sign = entry(&report, "C_Sign", Some("CKM_ECDSA")).expect("entry");
    assert_eq!(
        sign["new_failures"].as_array().map(Vec::len),
        Some(0),
        "{sign}"
    );
    assert_eq!(sign["baseline"]["failed"], 4);
    assert_eq!(sign["rv_verdict"], "regressed", "{sign}");
    assert!(
        sign["rv_p_adjusted"].as_f64().is_some_and(|p| p < 0.01),
        "{sign}"
    );
    Ok(())
}

#[test]
fn logs_without_durations_get_no_made_up_latency_verdict() -> Result<()> {
    let corpus = workspace().join("tests/fixtures/corpus");
    let log = corpus.join("pt-sign-rsa-pkcs.log");
    let (status, report) = diff(&log, &log, &[])?;
    assert_eq!(status, 0);
    let verdicts = named(&report, "verdict", "no_durations");
    assert_eq!(
        verdicts.len(),
        report["entries"].as_array().map_or(0, Vec::len)
    );
    assert!(
        verdicts.contains(&"C_Sign/CKM_RSA_PKCS".to_owned()),
        "{verdicts:?}"
    );
    // A failing login the baseline did not have is a return-code regression.
    let (status, report) = diff(
        &log,
        &corpus.join("pt-err-wrong-pin.log"),
        &["--fail-on", "errors"],
    )?;
    assert_eq!(status, 1);
    assert!(named(&report, "rv_verdict", "regressed").contains(&"C_Login".to_owned()));
    Ok(())
}

/// The gate exited 2 and its stderr says `needle`.
#[track_caller]
fn assert_exit_2_naming(output: &Output, needle: &str) {
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains(needle),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn bad_inputs_exit_2_naming_the_input() -> Result<()> {
    let corpus = workspace().join("tests/fixtures/corpus");
    let log = corpus.join("pt-sign-rsa-pkcs.log");
    let missing = corpus.join("no-such-run");
    let output = gate(&log, &missing, &[])?;
    assert_exit_2_naming(&output, "no-such-run");
    // An empty side: filters that keep nothing.
    let output = gate(&log, &log, &["--func", "C_NoSuchFunction"])?;
    assert_exit_2_naming(&output, "no calls");
    // JSON that is not an analysis report.
    let odd = temp();
    let path = odd.path().join("other.json");
    std::fs::write(&path, br#"{"analysis_version": 7, "performance": {}}"#)?;
    let output = gate(&path, &log, &[])?;
    assert_exit_2_naming(&output, "other.json");
    // A usage error.
    let output = gate(&log, &log, &["--threshold", "lots"])?;
    assert_eq!(output.status.code(), Some(2));
    Ok(())
}
