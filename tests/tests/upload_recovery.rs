//! The uploader through what a long-running host meets: a store that refuses connections from
//! the start and comes up later (retries with backoff, then uploads — no restart — and the
//! files the spool's cap held in memory go into the spool and up), and a crash right after an
//! uploaded file left the spool's tables (recovery must find its rows in `.uploaded/`, or it
//! writes them twice). Real recorders, SoftHSM2 clients, moto.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use p11trace_tests::fleet::*;
use p11trace_tests::s3::S3Server;
use p11trace_tests::*;

/// The first stderr line with `needle`, printed already or within `timeout`.
fn said(recorder: &mut Recorder, needle: &str, timeout: Duration) -> Result<String> {
    match recorder.stderr_lines.iter().find(|l| l.contains(needle)) {
        Some(line) => Ok(line.clone()),
        None => recorder.wait_for(needle, timeout),
    }
}

/// Waits until the host's spool holds no finished file.
fn wait_empty(host: &Host, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while !host.spooled()?.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "{}: the spool was not emptied",
            host.name
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn a_store_that_comes_up_late_gets_everything_without_a_restart() -> Result<()> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let token = Token::new("late")?;
    // Nothing listens on the port yet: every upload is refused. The one-byte cap keeps all but
    // the first file in memory.
    let host = Host::new("late-1", &["--spool-max-bytes", "1", "--stats-every", "1"]);
    let mut recorder = host.start_at(&endpoint, &[])?;
    let first = reports_of(spawn_clients(
        &token,
        &host.socket(),
        2,
        &["paced", "300", "1"],
    )?)?;
    let failing = said(
        &mut recorder,
        "retrying with backoff",
        Duration::from_secs(30),
    )?;
    ensure!(
        failing.contains("part-late-1-"),
        "the message names the file: {failing}"
    );
    said(&mut recorder, "the spool is full", Duration::from_secs(30))?;
    // The next statistics line counts the failures.
    let stats = recorder.wait_for("upload_failures=", Duration::from_secs(10))?;
    ensure!(!stats.contains("upload_failures=0 "), "{stats}");
    // The store comes up on that port, with the bucket.
    let server = S3Server::start_on(port)?;
    server.create_bucket(BUCKET, true)?;
    said(&mut recorder, "uploading again", Duration::from_secs(60))?;
    wait_empty(&host, Duration::from_secs(30))?;
    // The pipeline runs on: a later client is recorded and uploaded like the first.
    let later = reports_of(spawn_clients(
        &token,
        &host.socket(),
        1,
        &["paced", "200", "1"],
    )?)?;
    stop_uploaded(&mut recorder, &host)?;
    let summary = recorder.summary().context("no summary")?;
    ensure!(
        summary.undelivered() == 0,
        "nothing dropped: {:?}",
        recorder.stderr_lines
    );
    check_objects(&server, &["late-1"])?;
    check_dataset(&server, &[first, later].concat())?;
    Ok(())
}

#[test]
fn a_crash_after_an_upload_left_the_spool_writes_no_row_twice() -> Result<()> {
    let server = S3Server::start()?;
    server.create_bucket(BUCKET, true)?;
    let token = Token::new("moved")?;
    let host = Host::new("moved-1", &[]);
    // Aborts right after the second uploaded file moved to .uploaded/: its rows are in the
    // store, no longer in the spool's tables, and still in the write-ahead log.
    let mut recorder = host.start(&server, &[("P11TRACE_RECORDER_CRASH_AT", "after-move:2")])?;
    let clients = spawn_clients(&token, &host.socket(), 2, &["paced", "2500", "1"])?;
    let (status, stderr) = recorder.wait()?;
    ensure!(
        !status.success() && stderr.contains("crash injected at after-move"),
        "{status}: {stderr}"
    );
    let uploaded = host.spool().join(".uploaded");
    ensure!(
        uploaded.is_dir(),
        "the uploaded files are kept for recovery"
    );
    let mut again = host.start(&server, &[])?;
    let reports = reports_of(clients)?;
    stop_uploaded(&mut again, &host)?;
    ensure!(
        again.stderr_lines.iter().any(|l| l.contains("recovered")),
        "the restart replayed the log: {:?}",
        again.stderr_lines
    );
    check_objects(&server, &["moved-1"])?;
    check_dataset(&server, &reports)?;
    Ok(())
}
