//! Issue 2, the walking skeleton: real pkcs11-tool → real shim → real SoftHSM2 (and the real
//! pkcs11-spy as an oracle), the real recorder process, the real DuckDB CLI.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use p11trace_tests::*;

const TIMEOUT: Duration = Duration::from_secs(120);

fn add_key(token: &Token) -> Result<()> {
    token.restore()?;
    let keygen = run(
        &mut token.pkcs11_tool(
            SOFTHSM.as_ref(),
            &[
                "--login",
                "--pin",
                USER_PIN,
                "--keypairgen",
                "--key-type",
                "rsa:2048",
                "--id",
                "01",
                "--label",
                "k1",
            ],
        ),
        TIMEOUT,
    )?;
    ensure!(
        keygen.status.success(),
        "keygen failed: {}",
        text(&keygen.stderr)
    );
    token.snapshot()
}

#[test]
fn pkcs11_tool_through_the_shim_behaves_exactly_like_softhsm() -> Result<()> {
    let token = Token::new("skeleton")?;
    let dir = temp();
    let message = dir.path().join("msg.txt");
    std::fs::write(&message, b"p11trace skeleton message\n")?;
    let mut recorder = Recorder::start(&[])?;
    let workloads: Vec<(&str, Vec<String>)> = vec![
        (
            "test",
            ["--login", "--pin", USER_PIN, "--test"]
                .map(String::from)
                .to_vec(),
        ),
        (
            "sign",
            vec![
                "--login".into(),
                "--pin".into(),
                USER_PIN.into(),
                "--sign".into(),
                "-m".into(),
                "SHA256-RSA-PKCS".into(),
                "--id".into(),
                "01".into(),
                "-i".into(),
                message.display().to_string(),
                "-o".into(),
                "SIG".into(),
            ],
        ),
        (
            "keygen",
            [
                "--login",
                "--pin",
                USER_PIN,
                "--keypairgen",
                "--key-type",
                "rsa:2048",
                "--id",
                "09",
                "--label",
                "k9",
            ]
            .map(String::from)
            .to_vec(),
        ),
    ];
    for (name, args) in &workloads {
        if *name == "sign" {
            // The RSA key the sign and keygen runs need joins the snapshot now: pkcs11-tool
            // --test on SoftHSM2 fails on RSA-OAEP with a label when a key exists.
            add_key(&token)?;
        }
        let mut results = Vec::new();
        for through_shim in [false, true] {
            token.restore()?;
            let signature = dir.path().join(format!("{name}-{through_shim}.sig"));
            let args: Vec<String> = args
                .iter()
                .map(|a| {
                    if a == "SIG" {
                        signature.display().to_string()
                    } else {
                        a.clone()
                    }
                })
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let module = if through_shim { shim() } else { SOFTHSM.into() };
            let mut command = token.pkcs11_tool(&module, &args);
            recorder.shim_env(&mut command, SOFTHSM);
            let output = run(&mut command, TIMEOUT)?;
            results.push((
                output.status.code(),
                normalized(&output.stdout),
                normalized(&output.stderr),
                std::fs::read(&signature).ok(),
            ));
        }
        ensure!(
            results[0] == results[1],
            "{name}: direct and traced runs differ:\n{:?}\n{:?}",
            results[0],
            results[1]
        );
        ensure!(
            results[0].0 == Some(0),
            "{name}: pkcs11-tool failed: {}",
            results[0].2
        );
    }
    let (status, stderr) = recorder.stop()?;
    ensure!(status.success(), "recorder exit {status}: {stderr}");
    let rows = duckdb(&format!(
        "SELECT count(*) AS n, count(DISTINCT client_id) AS clients FROM {}",
        recorder.table("calls")
    ))?;
    ensure!(
        rows[0]["n"].as_i64().unwrap_or(0) > 100,
        "dataset too small: {rows:?}"
    );
    ensure!(
        rows[0]["clients"] == 3,
        "one client per traced run expected: {rows:?}"
    );
    let signs = duckdb(&format!(
        "SELECT count(*) AS n FROM {} WHERE func = 'C_Sign' AND rv = 0",
        recorder.table("calls")
    ))?;
    ensure!(
        signs[0]["n"].as_i64().unwrap_or(0) >= 1,
        "no successful C_Sign recorded"
    );
    Ok(())
}

/// (func, rv_name, session, object) per recorded call of one client, in call order.
fn recorded_sequence(recorder: &Recorder, pid: Option<u32>) -> Result<Vec<(String, String)>> {
    let filter = pid.map_or(String::new(), |pid| format!("WHERE pid = {pid}"));
    let rows = duckdb(&format!(
        "SELECT func, rv_name FROM {} {filter} ORDER BY client_id, seq",
        recorder.table("calls")
    ))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["func"].as_str().unwrap_or("").to_owned(),
                r["rv_name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

/// Runs pkcs11-tool → shim → pkcs11-spy → SoftHSM2 with the spy logging to `log`.
fn chained(token: &Token, recorder: &Recorder, log: &std::path::Path, args: &[&str]) -> Command {
    let mut command = token.pkcs11_tool(&shim(), args);
    recorder.shim_env(&mut command, SPY);
    command
        .env("PKCS11SPY", SOFTHSM)
        .env("PKCS11SPY_OUTPUT", log);
    command
}

#[test]
fn the_recorded_sequence_equals_pkcs11_spys_call_for_call() -> Result<()> {
    let token = Token::new("oracle")?;
    let mut recorder = Recorder::start(&[])?;
    let dir = temp();
    let log = dir.path().join("spy.log");
    let output = run(
        &mut chained(
            &token,
            &recorder,
            &log,
            &["--login", "--pin", USER_PIN, "--test"],
        ),
        TIMEOUT,
    )?;
    ensure!(
        output.status.success(),
        "chained run failed: {}",
        text(&output.stderr)
    );
    recorder.stop()?;
    let spy = spy_sequence(&std::fs::read_to_string(&log)?);
    let recorded = recorded_sequence(&recorder, None)?;
    ensure!(spy.len() > 100, "spy logged too little: {}", spy.len());
    ensure!(
        recorded == spy,
        "sequences differ:\nrecorded {} calls, spy {} calls\nfirst difference: {:?}",
        recorded.len(),
        spy.len(),
        recorded
            .iter()
            .zip(&spy)
            .position(|(a, b)| a != b)
            .map(|i| (&recorded[i], &spy[i]))
    );

    // Handles too: the spy log imported by p11trace-query gives session and object per call.
    let imported = dir.path().join("spy.parquet");
    query(&[
        "import",
        log.to_str().unwrap_or_default(),
        "-o",
        imported.to_str().unwrap_or_default(),
    ])?;
    let columns = "func, rv, session, object, object2, slot_id, out_len";
    let ours = duckdb(&format!(
        "SELECT {columns} FROM {} ORDER BY seq",
        recorder.table("calls")
    ))?;
    let theirs = duckdb(&format!(
        "SELECT {columns} FROM '{}' ORDER BY seq",
        imported.display()
    ))?;
    ensure!(ours.len() == theirs.len(), "row counts differ");
    for (index, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        for column in ["func", "rv", "session", "object", "object2", "slot_id"] {
            // Where both sides know a value, they must agree.
            if !a[column].is_null() && !b[column].is_null() {
                ensure!(
                    a[column] == b[column],
                    "call {index} {column}: recorded {} vs spy {}",
                    a[column],
                    b[column]
                );
            }
        }
    }
    // The shim's own C_GetInfo is marked internal, and the spy saw it too.
    let internal = duckdb(&format!(
        "SELECT func FROM {} WHERE internal",
        recorder.table("calls")
    ))?;
    ensure!(
        internal.iter().any(|r| r["func"] == "C_GetInfo"),
        "internal C_GetInfo missing: {internal:?}"
    );
    Ok(())
}

#[test]
fn three_clients_at_once_each_match_their_own_spy_log() -> Result<()> {
    let token = Token::new("oracle")?;
    let mut recorder = Recorder::start(&[])?;
    let dir = temp();
    let mut children = Vec::new();
    for index in 0..3 {
        let log = dir.path().join(format!("spy-{index}.log"));
        let mut command = chained(
            &token,
            &recorder,
            &log,
            &["--login", "--pin", USER_PIN, "--test"],
        );
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        children.push((command.spawn()?, log));
    }
    let mut by_pid = BTreeMap::new();
    for (mut child, log) in children {
        let pid = child.id();
        ensure!(child.wait()?.success(), "client {pid} failed");
        by_pid.insert(pid, log);
    }
    recorder.stop()?;
    for (pid, log) in by_pid {
        let spy = spy_sequence(&std::fs::read_to_string(&log)?);
        let recorded = recorded_sequence(&recorder, Some(pid))?;
        ensure!(
            !spy.is_empty() && recorded == spy,
            "client {pid}: recorded {} calls, spy {}",
            recorded.len(),
            spy.len()
        );
    }
    Ok(())
}

#[test]
fn duckdb_and_analyze_agree_on_per_function_counts() -> Result<()> {
    let token = Token::new("oracle")?;
    let mut recorder = Recorder::start(&[])?;
    let mut command = token.pkcs11_tool(&shim(), &["--login", "--pin", USER_PIN, "--test"]);
    recorder.shim_env(&mut command, SOFTHSM);
    ensure!(run(&mut command, TIMEOUT)?.status.success());
    recorder.stop()?;
    let dataset = recorder.dataset.display().to_string();
    let rows = duckdb(&format!(
        "SELECT func, count(*) AS n FROM read_parquet('{dataset}/calls/**/*.parquet', hive_partitioning=true) GROUP BY 1"
    ))?;
    let duck: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r["func"].as_str().unwrap_or("").to_owned(),
                r["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let report: serde_json::Value =
        serde_json::from_slice(&query(&["analyze", &dataset, "--format", "json"])?.stdout)?;
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
fn without_a_recorder_the_shim_changes_nothing() -> Result<()> {
    let token = Token::new("norecorder")?;
    let dir = temp();
    let socket_folder = dir.path().join("sock");
    std::fs::create_dir(&socket_folder)?;
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&socket_folder)?.permissions(),
        0o700,
    );
    let direct = run(
        token
            .command("pkcs11-tool")
            .arg("--module")
            .arg(SOFTHSM)
            .arg("--list-slots"),
        TIMEOUT,
    )?;
    let mut traced = token.command("pkcs11-tool");
    traced
        .arg("--module")
        .arg(shim())
        .arg("--list-slots")
        .env("P11TRACE_MODULE", SOFTHSM)
        .env("P11TRACE_SOCKET", socket_folder.join("absent.sock"));
    let traced = run(&mut traced, TIMEOUT)?;
    ensure!(direct.status.success() && traced.status.success());
    ensure!(
        direct.stdout == traced.stdout,
        "stdout differs:\n{}\n---\n{}",
        text(&direct.stdout),
        text(&traced.stdout)
    );
    ensure!(
        traced.stderr.is_empty(),
        "the shim wrote to stderr: {}",
        text(&traced.stderr)
    );
    Ok(())
}

#[test]
fn a_missing_real_module_is_one_clear_line_and_a_clean_failure() -> Result<()> {
    let token = Token::new("missing")?;
    let missing = "/nonexistent/p11trace-test/libmissing.so";
    let mut command = token.command("pkcs11-tool");
    command
        .arg("--module")
        .arg(shim())
        .arg("--list-slots")
        .env("P11TRACE_MODULE", missing)
        .env_remove("PKCS11SPY");
    let output = run(&mut command, Duration::from_secs(30))?;
    ensure!(!output.status.success(), "pkcs11-tool should fail");
    ensure!(
        output.status.code().is_some(),
        "pkcs11-tool crashed: {:?}",
        output.status
    );
    let ours: Vec<String> = text(&output.stderr)
        .lines()
        .filter(|l| l.starts_with("p11trace:"))
        .map(String::from)
        .collect();
    ensure!(
        ours.len() == 1,
        "expected exactly one p11trace line, got {ours:?}"
    );
    ensure!(
        ours[0].contains("P11TRACE_MODULE") && ours[0].contains(missing),
        "line must name the variable and path: {}",
        ours[0]
    );
    ensure!(
        ours[0].contains("No such file"),
        "line must carry the dlopen error: {}",
        ours[0]
    );
    Ok(())
}
