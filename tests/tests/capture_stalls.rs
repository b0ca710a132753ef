//! Capture under stalls and shortages, against the real recorder process and real shimmed
//! clients: a peer stopped in the middle of a message, a malformed fragment header, a recorder
//! that falls behind its clients, and a recorder out of file descriptors. In each, every call of
//! the honest clients is a row or counted, and nothing is read twice. (RELIABILITY.md lists each
//! fault, its promise and the test.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

fn rogue(socket: &Path, args: &[&str]) -> Result<Child> {
    Ok(Command::new(target_dir().join("rogue"))
        .arg(socket)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Every call of each client is a row: none dropped, none lost.
fn every_call_is_a_row(dataset: &Path, reports: &[Value]) -> Result<()> {
    check_invariant(dataset, reports)?;
    let tallies = tallies(dataset)?;
    for report in reports {
        let pid = report["pid"].as_i64().context("pid")?;
        let t = tallies.get(&pid).copied().unwrap_or_default();
        ensure!(
            t.dropped == 0 && t.lost == 0,
            "pid {pid}: {} dropped, {} lost",
            t.dropped,
            t.lost
        );
    }
    Ok(())
}

#[test]
fn a_peer_stalled_mid_message_blocks_only_itself() -> Result<()> {
    let token = Token::new("stall")?;
    let mut recorder = Recorder::start(&[])?;
    // Its first datagram claims 4 KiB and carries 8 bytes, then it holds still for 60 s: the
    // old single capture loop waited for the rest of that message and read nobody else.
    let mut stalled = rogue(&recorder.socket, &["stall", "60"])?;
    // A multi-fragment header without its fragment channel: ipc-channel's receiver panics on
    // it (the old capture actor died with it, and the recorder with the actor).
    let unchannelled = run(
        Command::new(target_dir().join("rogue"))
            .arg(&recorder.socket)
            .arg("unchannelled"),
        Duration::from_secs(30),
    )?;
    ensure!(
        unchannelled.status.success(),
        "{}",
        text(&unchannelled.stderr)
    );
    let started = Instant::now();
    let clients = spawn_clients(&token, &recorder.socket, 3, &["paced", "800", "1"])?;
    let reports: Vec<Value> = clients.into_iter().map(report).collect::<Result<_>>()?;
    ensure!(
        started.elapsed() < Duration::from_secs(40),
        "the honest clients were held up: {:?}",
        started.elapsed()
    );
    // Stopped while the stalled peer still holds its half message: the drain ends it (within
    // the 5 s shutdown drain) instead of waiting for it.
    let (status, stderr) = recorder.stop()?;
    let _ = stalled.kill();
    let _ = stalled.wait();
    ensure!(status.success(), "the recorder failed: {stderr}");
    every_call_is_a_row(&recorder.dataset, &reports)?;
    ensure!(
        recorder
            .summary()
            .context("summary")?
            .get("protocol_errors")
            >= 1,
        "the unchannelled message must be a protocol error: {stderr}"
    );
    let stalled_rows = count_of(&format!(
        "SELECT count(*) AS n FROM {} WHERE process = 'rogue' AND disconnect_reason = 'recorder_shutdown'",
        recorder.table("clients")
    ))?;
    ensure!(
        stalled_rows == 1,
        "the stalled peer is one connection ended by the shutdown, got {stalled_rows}"
    );
    Ok(())
}

#[test]
fn a_backlog_behind_a_slow_capture_is_drained_after_the_client_has_gone() -> Result<()> {
    let token = Token::new("backlog")?;
    // Every message costs capture 50 ms: a client sending a few hundred messages a second leaves
    // a backlog of seconds in its socket when it exits. The old recorder ended a client 2 s after
    // its exit whatever was still unread, and ignored the rest (neither rows nor counted).
    let mut recorder = Launch::in_dir(temp())
        .args(&["--stats-every", "1"])
        .env("P11TRACE_RECORDER_CRASH_AT", "slow-capture:50")
        .exit_timeout(Duration::from_secs(60))
        .start()?;
    let clients = spawn_clients(&token, &recorder.socket, 1, &["paced", "400", "2"])?;
    let reports: Vec<Value> = clients.into_iter().map(report).collect::<Result<_>>()?;
    // Capture is still reading the backlog; wait for the client's goodbye to be taken.
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline && recorder_has_active_clients(&mut recorder)? {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, stderr) = recorder.stop()?;
    ensure!(status.success(), "{stderr}");
    // A full socket makes the shim drop and count: rows + dropped + lost = calls still.
    check_invariant(&recorder.dataset, &reports)?;
    Ok(())
}

/// Whether the recorder's stats line still shows a connected client.
fn recorder_has_active_clients(recorder: &mut Recorder) -> Result<bool> {
    let line = recorder.wait_for("active=", Duration::from_secs(5))?;
    Ok(!line.contains(" active=0 "))
}
