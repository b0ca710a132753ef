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

#[test]
fn a_panic_while_building_the_client_neither_hangs_nor_reaches_the_host() -> Result<()> {
    // The client is built on the process's first call (here C_GetFunctionList); the injected
    // panic there must leave every call working, unrecorded, with one line saying so. 60 s:
    // the run takes about a second; a stuck build flag would hang it.
    let mut traced = Traced::new("panic-build")?;
    let mut command = traced.client(&["burst", "100"]);
    command.env("P11TRACE_TEST_PANIC", "client");
    let output = run(&mut command, Duration::from_secs(60))?;
    let report = client_reports(&output)?.remove(0);
    let ours = shim_lines(&output.stderr);
    ensure!(
        ours.len() == 1 && ours[0].starts_with("p11trace: internal error while starting to record"),
        "{ours:?}"
    );
    ensure!(report["calls"].as_i64() > Some(100), "{report}");
    traced.recorder.stop()?;
    // Nothing was recorded: the process never became a client.
    let summary = traced.recorder.summary().context("recorder summary")?;
    ensure!(
        summary.get("clients") == 0 && summary.get("records") == 0,
        "{summary:?}"
    );
    Ok(())
}

#[test]
fn a_panic_in_the_sender_thread_hands_sending_to_the_calling_threads() -> Result<()> {
    // The sender thread panics as it starts (`P11TRACE_TEST_PANIC=sender`). The old shim lost
    // the thread silently: the records stayed queued, C_Finalize waited for a thread that was
    // gone, and nothing was recorded.
    let mut traced = Traced::new("panic-sender")?;
    let mut command = traced.client(&["burst", "3000"]);
    command.env("P11TRACE_TEST_PANIC", "sender");
    let output = run(&mut command, Duration::from_secs(60))?;
    let report = client_reports(&output)?.remove(0);
    let ours = shim_lines(&output.stderr);
    ensure!(
        ours.len() == 1 && ours[0].contains("internal error in the sender thread"),
        "{ours:?}"
    );
    traced.recorder.stop()?;
    let pid = report["pid"].as_i64().context("pid")?;
    let t = tallies(&traced.recorder.dataset)?
        .get(&pid)
        .copied()
        .unwrap_or_default();
    let made = report["calls"].as_i64().context("calls")?;
    ensure!(
        t.accounted() == made && t.rows - t.internal == made,
        "every call must be a row, sent from the calling thread: {t:?} vs {report}"
    );
    Ok(())
}

#[test]
fn a_recorder_naming_a_server_with_a_nul_byte_cannot_abort_the_host() -> Result<()> {
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicBool, Ordering};

    let token = Token::new("nul-welcome")?;
    let dir = temp();
    let folder = dir.path().join("sock");
    std::fs::create_dir_all(&folder)?;
    std::fs::set_permissions(&folder, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let socket = folder.join("r.sock");
    // A fake recorder: a welcome whose one-shot server name holds a NUL byte, to every shim that
    // connects (ipc-channel's `CString::new(name).unwrap()` would panic on it).
    let listener = UnixListener::bind(&socket)?;
    listener.set_nonblocking(true)?;
    let stop = AtomicBool::new(false);
    let (output, welcomes) = std::thread::scope(|scope| -> Result<_> {
        let fake = scope.spawn(|| {
            let mut welcomes = 0u32;
            let mut streams = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let welcome = p11trace_record::wire::Welcome {
                            protocol_version: p11trace_record::wire::PROTOCOL_VERSION,
                            server_name: "/tmp/p11t-rogue\0server".into(),
                            token: [7; 16],
                            label_key: [0; 32],
                            run_id: "rogue".into(),
                        };
                        if p11trace_record::wire::write_welcome(&mut stream, &welcome).is_ok() {
                            welcomes += 1;
                        }
                        streams.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            welcomes
        });
        // No sender thread (the host forbids threads) and a queue of 8: the calling thread
        // connects and sends, inside the host's calls.
        let mut client = token.client(&shim(), &["nothreads", "200"]);
        shim_to(&mut client, token.module(), &socket).env("P11TRACE_QUEUE_CAPACITY", "8");
        // 60 s: the run takes about a second here.
        let output = run(&mut client, Duration::from_secs(60));
        stop.store(true, Ordering::Relaxed);
        let welcomes = fake.join().unwrap_or(0);
        Ok((output?, welcomes))
    })?;
    ensure!(
        output.status.success(),
        "the host failed ({}): {}",
        output.status,
        text(&output.stderr)
    );
    ensure!(welcomes >= 1, "the shim never asked the fake recorder");
    let ours = shim_lines(&output.stderr);
    ensure!(
        ours.len() == 1 && ours[0].contains("NUL byte"),
        "one handshake line expected: {ours:?}"
    );
    let report = client_reports(&output)?.remove(0);
    ensure!(report["calls"].as_i64() > Some(200), "{report}");
    Ok(())
}

#[test]
fn in_audit_mode_a_client_that_cannot_be_built_refuses_calls_rather_than_run_them_unrecorded()
-> Result<()> {
    let token = Token::new("panic-audit")?;
    let dir = temp();
    let mut command = token.client(&shim(), &["burst", "10"]);
    shim_to(&mut command, SOFTHSM, &dir.path().join("absent.sock"))
        .env("P11TRACE_MODE", "audit")
        .env("P11TRACE_TEST_PANIC", "client");
    let output = run(&mut command, Duration::from_secs(60))?;
    // The first call (C_GetFunctionList) is refused: the client stops, by its own exit, not a
    // signal.
    ensure!(
        !output.status.success() && output.status.code().is_some(),
        "{:?}: {}",
        output.status,
        text(&output.stderr)
    );
    let ours = shim_lines(&output.stderr);
    ensure!(
        ours.len() == 2
            && ours[0].starts_with("p11trace: internal error while starting to record")
            && ours[1].contains("audit mode: refusing"),
        "{ours:?}"
    );
    Ok(())
}
