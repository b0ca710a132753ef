//! Nothing the recorder accepted is lost or written twice, whatever stops it: kill -9 under load
//! and crashes injected at each step of the write path (then a restart that replays the log), the
//! SIGTERM drain, a second signal, a full disk; and `--once` exits after the last client with
//! everything written. Real recorder processes, real shimmed clients against SoftHSM2, DuckDB.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use p11trace_tests::*;
use serde_json::Value;

/// Runs `clients` paced clients, crashes the first recorder with `crash` (None: kill -9 after
/// 1.2 s), restarts it on the same dataset, and checks the invariant.
fn crash_and_restart(crash: Option<&str>) -> Result<()> {
    let token = Token::new("crash")?;
    let dir = temp();
    let dataset = dir.path().join("ds");
    let socket = dir.path().join("sock").join("r.sock");
    let roll = ["--roll-secs", "1"];
    let mut launch = Launch::at(temp(), dataset.clone(), socket.clone()).args(&roll);
    if let Some(point) = crash {
        launch = launch.env("P11TRACE_RECORDER_CRASH_AT", point);
    }
    let mut first = launch.start()?;
    let clients: Vec<Child> = spawn_clients(&token, &socket, 3, &["paced", "2500", "1"])?;
    match crash {
        Some(point) => {
            let (status, stderr) = first.wait()?;
            ensure!(
                !status.success()
                    && stderr.contains(&format!(
                        "crash injected at {}",
                        point.split(':').next().unwrap_or(point)
                    )),
                "the recorder should have crashed at {point}: {status} {stderr}"
            );
        }
        None => {
            std::thread::sleep(Duration::from_millis(1200));
            first.kill()?;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let (keep, dataset, socket) = first.into_parts();
    let mut second = Recorder::start_at(keep, dataset.clone(), socket, &[])?;
    let reports: Vec<Value> = clients.into_iter().map(report).collect::<Result<_>>()?;
    let (status, stderr) = second.stop()?;
    ensure!(status.success(), "{stderr}");
    ensure!(
        stderr.contains("recovered"),
        "the restart should have replayed the log: {stderr}"
    );
    check_invariant(&dataset, &reports)?;
    // The replayed connections were closed as crashed, and each client came back.
    let reasons = duckdb(&format!(
        "SELECT count(*) FILTER (disconnect_reason = 'recorder_crash') AS crashed, max(connection) AS reconnections FROM read_parquet('{}/clients/**/*.parquet')",
        dataset.display()
    ))?;
    ensure!(
        reasons[0]["reconnections"].as_i64().unwrap_or(0) >= 1,
        "{reasons:?}"
    );
    Ok(())
}

/// One test per crash point, each [`crash_and_restart`].
macro_rules! crash_tests {
    ($($name:ident: $crash:expr;)*) => {$(
        #[test]
        fn $name() -> Result<()> {
            crash_and_restart($crash)
        }
    )*};
}

crash_tests! {
    kill_dash_nine_under_load_then_restart_loses_and_duplicates_nothing: None;
    an_injected_crash_after_a_log_append_loses_nothing: Some("after-wal-append:100");
    an_injected_crash_before_a_rename_loses_nothing: Some("before-rename");
    an_injected_crash_after_a_rename_duplicates_nothing: Some("after-rename");
    an_injected_crash_before_log_truncation_duplicates_nothing: Some("before-wal-truncate:2");
}

#[test]
fn sigterm_drains_every_message_already_sent() -> Result<()> {
    let token = Token::new("drain")?;
    let mut recorder = Recorder::start(&[])?;
    let clients: Vec<Child> = spawn_clients(&token, &recorder.socket, 3, &["paced", "300", "4"])?;
    // Once connected, the recorder stalls: the rest of the clients' messages wait in their
    // sockets (they fit in the buffers), goodbyes included, and the clients exit.
    std::thread::sleep(Duration::from_millis(400));
    recorder.signal(libc::SIGSTOP);
    let reports: Vec<Value> = clients.into_iter().map(report).collect::<Result<_>>()?;
    recorder.signal(libc::SIGCONT);
    let (status, stderr) = recorder.stop()?;
    ensure!(status.success(), "{stderr}");
    ensure!(
        stderr.contains("stopped: clients=3"),
        "summary line missing: {stderr}"
    );
    check_invariant(&recorder.dataset, &reports)?;
    let rows = duckdb(&format!(
        "SELECT count(*) FILTER (NOT internal) AS n FROM {}",
        recorder.table("calls")
    ))?;
    let made: i64 = reports
        .iter()
        .map(|r| r["calls"].as_i64().unwrap_or(0))
        .sum();
    ensure!(
        rows[0]["n"] == made,
        "nothing may be dropped: {} rows for {made} calls",
        rows[0]["n"]
    );
    Ok(())
}

#[test]
fn a_second_signal_exits_at_once_and_the_log_is_replayed_next_time() -> Result<()> {
    let token = Token::new("twice")?;
    let recorder = Recorder::start(&[])?;
    let client = spawn_client(&token, &recorder.socket, &["burst", "5000"])?;
    report(client)?;
    let (dir, dataset, socket) = {
        let mut recorder = recorder;
        recorder.signal(libc::SIGSTOP);
        recorder.signal(libc::SIGTERM);
        recorder.signal(libc::SIGTERM);
        recorder.signal(libc::SIGCONT);
        let started = Instant::now();
        let (status, stderr) = recorder.wait()?;
        ensure!(
            status.code() == Some(1) || stderr.contains("stopped"),
            "{status} {stderr}"
        );
        ensure!(started.elapsed() < Duration::from_secs(5));
        recorder.into_parts()
    };
    let mut again = Recorder::start_at(dir, dataset.clone(), socket, &[])?;
    again.stop()?;
    let rows = count_of(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}/calls/**/*.parquet')",
        dataset.display()
    ))?;
    ensure!(
        rows > 0,
        "the data received before the exit must be recovered"
    );
    Ok(())
}

/// Runs `test` with a tmpfs of `size` mounted at `dir/small` (we are root in the test
/// container), unmounted afterwards whatever the outcome.
fn on_tmpfs(
    dir: &tempfile::TempDir,
    size: &str,
    test: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount)?;
    let mounted = run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}")])
            .arg("tmpfs")
            .arg(&mount),
        Duration::from_secs(30),
    )?;
    ensure!(
        mounted.status.success(),
        "this test mounts a {size} tmpfs and needs root: {}",
        text(&mounted.stderr)
    );
    let result = test(&mount);
    let _ = run(Command::new("umount").arg(&mount), Duration::from_secs(30));
    result
}

/// Bytes free on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Result<u64> {
    let output = run(
        Command::new("df")
            .arg("--output=avail")
            .arg("-B1")
            .arg(path),
        Duration::from_secs(10),
    )?;
    text(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("df")
}

#[test]
fn a_full_disk_is_a_clear_error_with_no_corrupt_file_and_nothing_lost() -> Result<()> {
    let token = Token::new("diskfull")?;
    let dir = temp();
    on_tmpfs(&dir, "4m", |mount| {
        let dataset = mount.join("ds");
        let socket = dir.path().join("sock").join("r.sock");
        let mut recorder = Recorder::start_at(
            temp(),
            dataset.clone(),
            socket.clone(),
            &["--roll-secs", "1", "--wal-max-bytes", "1000000"],
        )?;
        // Leave little room: the first Parquet files fit, then the disk is full.
        let filler = mount.join("filler");
        let available = free_bytes(mount)?;
        std::fs::write(
            &filler,
            vec![0u8; available.saturating_sub(300_000) as usize],
        )?;
        let normal: Vec<Child> = spawn_clients(&token, &socket, 2, &["paced", "4000", "1"])?;
        std::thread::sleep(Duration::from_secs(3));
        // Once the log is stuck, an audit-mode client is refused.
        let mut audit = token.pkcs11_tool(&shim(), &login(&["--test"]));
        shim_to(&mut audit, SOFTHSM, &socket)
            .env("P11TRACE_MODE", "audit")
            .env("P11TRACE_QUEUE_CAPACITY", "64");
        let audited = run(&mut audit, Duration::from_secs(60))?;
        let reports: Vec<Value> = normal.into_iter().map(report).collect::<Result<_>>()?;
        // Free the disk, stop, restart: the log is replayed and nothing the recorder read is lost.
        std::fs::remove_file(&filler)?;
        let (_, stderr) = recorder.stop()?;
        ensure!(
            stderr.contains("No space left on device"),
            "the error must say why: {stderr}"
        );
        ensure!(
            stderr.contains("not taking new records"),
            "the recorder must say it stopped taking records: {stderr}"
        );
        ensure!(
            !audited.status.success() && text(&audited.stderr).contains("audit mode"),
            "audit client: {}",
            text(&audited.stderr)
        );
        let (keep, dataset, socket) = recorder.into_parts();
        let mut again = Recorder::start_at(keep, dataset.clone(), socket, &[])?;
        let (_, replayed) = again.stop()?;
        ensure!(
            replayed.contains("recovered"),
            "the log kept while the disk was full must be replayed: {replayed}"
        );
        // No file looks complete without being complete: DuckDB reads every one.
        for file in all_files(&dataset.join("calls"))
            .into_iter()
            .chain(all_files(&dataset.join("clients")))
        {
            duckdb(&format!(
                "SELECT count(*) FROM read_parquet('{}')",
                file.display()
            ))
            .with_context(|| format!("corrupt {}", file.display()))?;
        }
        // Nothing invented, nothing twice. (Drops a shim makes after its last message got
        // through cannot be reported; they show as a gap in `seq`.)
        let calls = format!("read_parquet('{}/calls/**/*.parquet')", dataset.display());
        for report in &reports {
            let pid = report["pid"].as_i64().context("pid")?;
            let rows = duckdb(&format!(
                "SELECT count(*) FILTER (NOT internal) AS n, count(DISTINCT seq) = count(*) AS distinct_seq FROM {calls} WHERE pid = {pid}"
            ))?;
            ensure!(rows[0]["distinct_seq"] == true, "duplicates for pid {pid}");
            ensure!(
                rows[0]["n"].as_i64().unwrap_or(i64::MAX) <= report["calls"].as_i64().unwrap_or(0),
                "{rows:?} vs {report}"
            );
            ensure!(
                rows[0]["n"].as_i64().unwrap_or(0) > 0,
                "the records received before the disk filled are kept"
            );
        }
        Ok(())
    })
}

#[test]
fn once_exits_after_the_last_client_and_stats_lines_are_printed() -> Result<()> {
    let token = Token::new("once")?;
    let mut recorder = Recorder::start(&["--once", "--stats-every", "1"])?;
    let client = spawn_client(&token, &recorder.socket, &["paced", "300", "5"])?;
    let report = report(client)?;
    let started = Instant::now();
    let (status, stderr) = recorder.wait()?;
    ensure!(
        status.success() && started.elapsed() < Duration::from_secs(15),
        "{status} {stderr}"
    );
    ensure!(
        stderr.contains("rate=") && stderr.contains("wal_bytes="),
        "no stats line: {stderr}"
    );
    check_invariant(&recorder.dataset, &[report])?;
    if !stderr.contains("stopped:") {
        bail!("no summary line: {stderr}");
    }
    Ok(())
}

/// A log rotation that cannot write its new segment's checkpoint (a failure injected at
/// `wal-rotate` for the first 20 attempts) must leave no segment that replays without knowing
/// its connections. The recorder is crashed right after it first deletes covered segments (so
/// replay starts at a segment made after the failures), restarted, and every record the clients
/// made must be a row once, or counted. The old recorder left the new segment without its
/// checkpoint and the replay dropped the records of the connections opened before it.
#[test]
fn a_failed_log_rotation_leaves_no_segment_that_replays_without_its_connections() -> Result<()> {
    let token = Token::new("rotate")?;
    let dir = temp();
    let dataset = dir.path().join("ds");
    let socket = dir.path().join("sock").join("r.sock");
    // 64 KiB segments: a rotation every fraction of a second under this traffic.
    let mut first = Launch::at(temp(), dataset.clone(), socket.clone())
        .args(&["--roll-secs", "1"])
        .env("P11TRACE_RECORDER_SEGMENT_BYTES", "65536")
        .env(
            "P11TRACE_RECORDER_CRASH_AT",
            "wal-rotate:20,after-wal-truncate",
        )
        .start()?;
    // Long-lived connections, all opened before the first rotation.
    let clients: Vec<Child> = spawn_clients(&token, &socket, 3, &["paced", "4000", "2"])?;
    let (status, stderr) = first.wait()?;
    ensure!(
        !status.success() && stderr.contains("crash injected at after-wal-truncate"),
        "the recorder should have crashed after deleting covered segments: {status} {stderr}"
    );
    ensure!(
        stderr.contains("failure injected at wal-rotate"),
        "the rotation failure must be said: {stderr}"
    );
    let (keep, dataset, socket) = first.into_parts();
    let mut second = Recorder::start_at(keep, dataset.clone(), socket, &[])?;
    let reports: Vec<Value> = clients.into_iter().map(report).collect::<Result<_>>()?;
    let (status, stderr) = second.stop()?;
    ensure!(status.success() && stderr.contains("recovered"), "{stderr}");
    check_invariant(&dataset, &reports)
}

/// Fills the filesystem holding `path` to its last byte with the file `path`.
fn fill(path: &Path) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for chunk in [64 * 1024, 4096, 512] {
        let bytes = vec![0u8; chunk];
        loop {
            match file.write(&bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).context("filling the disk"),
            }
        }
    }
    Ok(())
}

/// One transient write failure must not pin the write-ahead log for the rest of the run: the
/// disk fills (Parquet files fail) and is freed again while clients keep calling, with no
/// restart. The failed files' rows are written once, the log shrinks back to a few segments, and
/// a client that starts after the recovery and logs more than `--wal-max-bytes` has every call
/// recorded (nothing refused). The old recorder kept the failed rows' log range for the rest of
/// the run: the log grew to its cap and refused records until a restart.
#[test]
fn a_disk_that_fills_and_frees_again_unpins_the_log_without_a_restart() -> Result<()> {
    const SEGMENT: u64 = 64 * 1024;
    let token = Token::new("diskfree")?;
    let dir = temp();
    on_tmpfs(&dir, "8m", |mount| {
        let dataset = mount.join("ds");
        let socket = dir.path().join("sock").join("r.sock");
        let mut recorder = Launch::at(temp(), dataset.clone(), socket.clone())
            .args(&["--roll-secs", "1", "--wal-max-bytes", "1000000"])
            .args(&["--stats-every", "1"])
            .env("P11TRACE_RECORDER_SEGMENT_BYTES", &SEGMENT.to_string())
            .start()?;
        let before: Vec<Child> = spawn_clients(&token, &socket, 2, &["paced", "3000", "2"])?;
        recorder.wait_for("records=", Duration::from_secs(20))?;
        // Full until a Parquet file has failed (the recorder deleting log segments can free a
        // little room, so the disk is topped up again until then).
        let filler = mount.join("filler");
        let mut failed = false;
        for _ in 0..10 {
            fill(&filler)?;
            if recorder
                .wait_for(
                    "the rows stay in the write-ahead log",
                    Duration::from_secs(3),
                )
                .is_ok()
            {
                failed = true;
                break;
            }
        }
        ensure!(failed, "no Parquet write failed on the full disk");
        std::fs::remove_file(&filler)?;
        // After the recovery, a client logging well past the cap (~8,000 records).
        let after = spawn_client(&token, &socket, &["paced", "8000", "1"])?;
        let mut reports: Vec<Value> = before.into_iter().map(report).collect::<Result<_>>()?;
        let late = report(after)?;
        reports.push(late.clone());
        // The log shrinks again to a few segments. Bound: coverage follows files closed every
        // second and the batcher's 0.5 s flush; 20 s is generous on a loaded 2-core machine.
        let bound = 4 * SEGMENT;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = u64::MAX;
        while last > bound {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "the write-ahead log never shrank after the disk was freed: wal_bytes={last} > {bound}"
            );
            let line = recorder.wait_for("wal_bytes=", left).with_context(|| {
                format!(
                    "the write-ahead log never shrank after the disk was freed (wal_bytes={last})"
                )
            })?;
            last = line
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix("wal_bytes="))
                .and_then(|n| n.parse().ok())
                .context("a stats line without wal_bytes")?;
        }
        let (status, stderr) = recorder.stop()?;
        ensure!(
            status.success(),
            "once the disk is free nothing may be left unwritten: {status} {stderr}"
        );
        ensure!(
            stderr.contains("kept to be written again") && stderr.contains("written now"),
            "the failed file must have been written by the running recorder: {stderr}"
        );
        check_invariant(&dataset, &reports)?;
        // Nothing refused after the recovery: the late client lost and dropped nothing.
        let pid = late["pid"].as_i64().context("pid")?;
        let undelivered = duckdb(&format!(
            "SELECT sum(dropped)::BIGINT AS dropped, sum(lost)::BIGINT AS lost FROM read_parquet('{}/clients/**/*.parquet') WHERE pid = {pid}",
            dataset.display()
        ))?;
        ensure!(
            undelivered
                .first()
                .is_some_and(|r| r["dropped"] == 0 && r["lost"] == 0),
            "a client started after the disk was freed had records refused: {undelivered:?}"
        );
        Ok(())
    })
}
