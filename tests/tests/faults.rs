//! What goes wrong in tracing never hurts the host: a missing real module is one clear line and a
//! clean failure; a recorder that starts late, dies and comes back costs the host nothing; a panic
//! while recording stays inside the shim, and the records it cost are counted.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

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
    let ours = shim_lines(&output.stderr);
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

#[test]
fn a_recorder_started_late_killed_and_restarted_never_hurts_the_host() -> Result<()> {
    let token = Token::new("lifecycle")?;
    let dir = temp();
    let socket = dir.path().join("sock").join("r.sock");
    std::fs::create_dir_all(socket.parent().context("folder")?)?;
    std::fs::set_permissions(
        socket.parent().context("folder")?,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    // 600 calls 10 ms apart: about 6 s of traffic.
    let client = spawn_client(&token, &socket, &["paced", "600", "10"])?;
    std::thread::sleep(Duration::from_millis(1200));
    let dataset = dir.path().join("ds");
    let mut first = Recorder::start_at(temp(), dataset.clone(), socket.clone(), &[])?;
    std::thread::sleep(Duration::from_millis(1500));
    first.kill()?;
    std::thread::sleep(Duration::from_millis(1000));
    let mut second = Recorder::start_at(temp(), dataset.clone(), socket.clone(), &[])?;
    let output = client.wait_with_output()?;
    ensure!(
        output.status.success(),
        "the host failed: {}",
        text(&output.stderr)
    );
    let report: Value = serde_json::from_str(text(&output.stdout).trim())?;
    second.stop()?;
    let pid = report["pid"].as_i64().context("pid")?;
    let calls = duckdb(&format!(
        "SELECT count(*) AS n, count(*) FILTER (internal) AS internal, count(DISTINCT seq) AS distinct_seq FROM {} WHERE pid = {pid}",
        second.table("calls")
    ))?;
    let n = calls[0]["n"].as_i64().unwrap_or(-1);
    ensure!(
        calls[0]["distinct_seq"].as_i64() == Some(n),
        "a seq was recorded twice: {calls:?}"
    );
    let connections = duckdb(&format!(
        "SELECT connection, records, dropped, lost, disconnect_reason FROM {} WHERE pid = {pid} ORDER BY connection",
        second.table("clients")
    ))?;
    // The first recorder died before writing its clients row; the second saw the reconnection.
    ensure!(
        connections
            .iter()
            .any(|c| c["connection"].as_i64().unwrap_or(0) >= 1),
        "no reconnection recorded: {connections:?}"
    );
    ensure!(
        n > 100 && n < 600,
        "rows from both recorders expected, got {n}"
    );
    Ok(())
}

#[test]
fn a_panic_while_recording_never_reaches_the_host() -> Result<()> {
    let traced = Traced::new("panic")?.run_client(
        &["burst", "100"],
        &[("P11TRACE_TEST_PANIC", "C_GetSessionInfo")],
        Duration::from_secs(60),
    )?;
    let (report, t) = (traced.report(), traced.tally);
    let ours: Vec<String> = text(&traced.output.stderr)
        .lines()
        .map(String::from)
        .collect();
    ensure!(
        ours.len() == 1
            && ours[0].starts_with("p11trace: internal error while recording C_GetSessionInfo"),
        "{ours:?}"
    );
    // The 100 calls went through; their records were lost to the panic and counted as dropped.
    ensure!(
        t.dropped == 100 && t.rows + t.dropped - t.internal == traced.calls(),
        "rows {} dropped {} {report}",
        t.rows,
        t.dropped
    );
    Ok(())
}
