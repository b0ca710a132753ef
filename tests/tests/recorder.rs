//! Issue 4: the recorder as a production capture service — many clients, kill -9 and injected
//! crashes, the SIGTERM drain, rogue clients, socket permissions, a full disk, `--once` and
//! `--stats-every`. Real recorder processes, real shimmed clients against SoftHSM2, DuckDB.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use p11trace_tests::*;
use serde_json::Value;

fn spawn_client(
    token: &Token,
    recorder_socket: &Path,
    args: &[&str],
    extra_env: &[(&str, &str)],
) -> Result<Child> {
    let mut command = token.client(&shim(), args);
    command
        .env("P11TRACE_MODULE", SOFTHSM)
        .env("P11TRACE_SOCKET", recorder_socket)
        .envs(extra_env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(command.spawn()?)
}

/// Waits for a client and returns its JSON report.
fn report(child: Child) -> Result<Value> {
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "client failed: {}",
        text(&output.stderr)
    );
    let stdout = text(&output.stdout);
    let line = stdout.lines().last().context("no report")?;
    Ok(serde_json::from_str(line)?)
}

/// Per client (by pid): rows + Σdropped + Σlost = calls made + the shim's own calls, and no
/// `(client_id, seq)` twice.
fn check_invariant(dataset: &Path, reports: &[Value]) -> Result<()> {
    let calls = format!(
        "read_parquet('{}/calls/**/*.parquet', hive_partitioning=true)",
        dataset.display()
    );
    let clients = format!(
        "read_parquet('{}/clients/**/*.parquet', hive_partitioning=true)",
        dataset.display()
    );
    let rows = duckdb(&format!(
        "SELECT pid, count(*) AS n, count(*) FILTER (internal) AS i FROM {calls} GROUP BY 1"
    ))?;
    let rows: BTreeMap<i64, (i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["pid"].as_i64().unwrap_or(-1),
                (r["n"].as_i64().unwrap_or(0), r["i"].as_i64().unwrap_or(0)),
            )
        })
        .collect();
    let accounting = duckdb(&format!(
        "SELECT pid, sum(dropped)::BIGINT AS d, sum(lost)::BIGINT AS l FROM {clients} GROUP BY 1"
    ))?;
    let accounting: BTreeMap<i64, (i64, i64)> = accounting
        .iter()
        .map(|r| {
            (
                r["pid"].as_i64().unwrap_or(-1),
                (r["d"].as_i64().unwrap_or(0), r["l"].as_i64().unwrap_or(0)),
            )
        })
        .collect();
    for report in reports {
        let pid = report["pid"].as_i64().context("pid")?;
        let made = report["calls"].as_i64().context("calls")?;
        let (n, internal) = rows.get(&pid).copied().unwrap_or((0, 0));
        let (dropped, lost) = accounting.get(&pid).copied().unwrap_or((0, 0));
        ensure!(
            n + dropped + lost == made + internal,
            "pid {pid}: rows {n} + dropped {dropped} + lost {lost} != calls {made} + internal {internal}"
        );
    }
    let duplicates = duckdb(&format!(
        "SELECT client_id, seq, count(*) AS n FROM {calls} GROUP BY 1, 2 HAVING count(*) > 1 LIMIT 5"
    ))?;
    ensure!(duplicates.is_empty(), "duplicated rows: {duplicates:?}");
    Ok(())
}

fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

#[test]
fn two_hundred_clients_fifty_at_once_are_counted_exactly_and_join_their_clients_rows() -> Result<()>
{
    let token = Token::new("many")?;
    let mut recorder = Recorder::start(&[])?;
    let mut reports = Vec::new();
    for _wave in 0..4 {
        let children: Vec<Child> = (0..50)
            .map(|_| spawn_client(&token, &recorder.socket, &["burst", "40"], &[]))
            .collect::<Result<_>>()?;
        for child in children {
            reports.push(report(child)?);
        }
    }
    recorder.stop()?;
    ensure!(reports.len() == 200);
    check_invariant(&recorder.dataset, &reports)?;
    let connections = duckdb(&format!(
        "SELECT count(*) AS n, count(*) FILTER (disconnect_reason = 'finalize') AS clean, sum(dropped)::BIGINT AS d FROM {}",
        recorder.table("clients")
    ))?;
    ensure!(
        connections[0]["n"] == 200 && connections[0]["clean"] == 200 && connections[0]["d"] == 0,
        "{connections:?}"
    );
    // Every call joins exactly one clients row on client_id.
    let joined = duckdb(&format!(
        "SELECT count(*) AS n, count(DISTINCT c.process) AS processes FROM {} AS calls JOIN {} AS c USING (client_id)",
        recorder.table("calls"),
        recorder.table("clients")
    ))?;
    let total = duckdb(&format!(
        "SELECT count(*) AS n FROM {}",
        recorder.table("calls")
    ))?;
    ensure!(
        joined[0]["n"] == total[0]["n"] && joined[0]["processes"] == 1,
        "{joined:?} vs {total:?}"
    );
    Ok(())
}

/// Runs `clients` paced clients, crashes the first recorder with `crash` (None: kill -9 after
/// 1.2 s), restarts it on the same dataset, and checks the invariant.
fn crash_and_restart(crash: Option<&str>) -> Result<()> {
    let token = Token::new("crash")?;
    let dir = temp();
    let dataset = dir.path().join("ds");
    let socket = dir.path().join("sock").join("r.sock");
    let roll = ["--roll-secs", "1"];
    let mut first = start_with_env(
        &dataset,
        &socket,
        &roll,
        crash.map(|point| ("P11TRACE_RECORDER_CRASH_AT", point)),
    )?;
    let clients: Vec<Child> = (0..3)
        .map(|_| spawn_client(&token, &socket, &["paced", "2500", "1"], &[]))
        .collect::<Result<_>>()?;
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

fn start_with_env(
    dataset: &Path,
    socket: &Path,
    extra: &[&str],
    env: Option<(&'static str, &str)>,
) -> Result<Recorder> {
    match env {
        Some((key, value)) => {
            // The fixture inherits the test's environment: set the variable for this child only.
            let _guard = EnvGuard::set(key, value);
            Recorder::start_at(temp(), dataset.to_owned(), socket.to_owned(), extra)
        }
        None => Recorder::start_at(temp(), dataset.to_owned(), socket.to_owned(), extra),
    }
}

/// Sets an environment variable until dropped (tests of this file that use it run one at a time
/// behind a lock).
struct EnvGuard(
    &'static str,
    #[allow(dead_code)] std::sync::MutexGuard<'static, ()>,
);

static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl EnvGuard {
    fn set(key: &'static str, value: &str) -> EnvGuard {
        let lock = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: serialised by ENV_LOCK; the variable is only read by the child being spawned.
        unsafe { std::env::set_var(key, value) };
        EnvGuard(key, lock)
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        // SAFETY: as in `set`.
        unsafe { std::env::remove_var(self.0) };
    }
}

#[test]
fn kill_dash_nine_under_load_then_restart_loses_and_duplicates_nothing() -> Result<()> {
    crash_and_restart(None)
}

#[test]
fn an_injected_crash_after_a_log_append_loses_nothing() -> Result<()> {
    crash_and_restart(Some("after-wal-append:300"))
}

#[test]
fn an_injected_crash_before_a_rename_loses_nothing() -> Result<()> {
    crash_and_restart(Some("before-rename"))
}

#[test]
fn an_injected_crash_after_a_rename_duplicates_nothing() -> Result<()> {
    crash_and_restart(Some("after-rename"))
}

#[test]
fn an_injected_crash_before_log_truncation_duplicates_nothing() -> Result<()> {
    crash_and_restart(Some("before-wal-truncate:2"))
}

#[test]
fn sigterm_drains_every_message_already_sent() -> Result<()> {
    let token = Token::new("drain")?;
    let mut recorder = Recorder::start(&[])?;
    let clients: Vec<Child> = (0..3)
        .map(|_| spawn_client(&token, &recorder.socket, &["paced", "300", "4"], &[]))
        .collect::<Result<_>>()?;
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
    let client = spawn_client(&token, &recorder.socket, &["burst", "5000"], &[])?;
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
    let rows = duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}/calls/**/*.parquet')",
        dataset.display()
    ))?;
    ensure!(
        rows[0]["n"].as_i64().unwrap_or(0) > 0,
        "the data received before the exit must be recovered"
    );
    Ok(())
}

#[test]
fn rogue_clients_are_dropped_and_counted_while_the_others_finish_exactly() -> Result<()> {
    let token = Token::new("rogues")?;
    let mut recorder = Recorder::start(&[])?;
    let legit: Vec<Child> = (0..3)
        .map(|_| spawn_client(&token, &recorder.socket, &["paced", "1500", "1"], &[]))
        .collect::<Result<_>>()?;
    let rogue = target_dir().join("rogue");
    let kinds: [&[&str]; 6] = [
        &["garbage"],
        &["silent"],
        &["wrong-token"],
        &["undecodable"],
        &["oversized"],
        &["flood", "20000"],
    ];
    let rogues: Vec<Child> = kinds
        .iter()
        .map(|kind| {
            Command::new(&rogue)
                .arg(&recorder.socket)
                .args(*kind)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(Into::into)
        })
        .collect::<Result<_>>()?;
    let started = Instant::now();
    let reports: Vec<Value> = legit.into_iter().map(report).collect::<Result<_>>()?;
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "legitimate clients were slowed down: {:?}",
        started.elapsed()
    );
    for mut rogue in rogues {
        rogue.wait()?;
    }
    std::thread::sleep(Duration::from_secs(6)); // handshake timeouts of the silent and garbage rogues
    let hwm = vm_hwm_kib(recorder.pid())?;
    let (status, stderr) = recorder.stop()?;
    ensure!(status.success(), "{stderr}");
    check_invariant(&recorder.dataset, &reports)?;
    let errors: u64 = stderr
        .lines()
        .find_map(|l| l.split("protocol_errors=").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .context("summary line")?;
    ensure!(
        errors >= 6,
        "every rogue must be counted, got {errors}: {stderr}"
    );
    ensure!(hwm < 256 * 1024, "recorder peak RSS {hwm} KiB");
    Ok(())
}

#[test]
fn the_socket_folder_must_be_private_and_other_users_are_refused() -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = temp();
    let dataset = dir.path().join("ds");
    // A group-writable folder: refuse to start, with a clear message and exit code 1.
    let open = dir.path().join("open");
    std::fs::create_dir(&open)?;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o770))?;
    let output = run(
        Command::new(recorder_bin())
            .arg("--dataset")
            .arg(&dataset)
            .arg("--socket")
            .arg(open.join("s.sock")),
        Duration::from_secs(30),
    )?;
    ensure!(
        output.status.code() == Some(1)
            && text(&output.stderr).contains("group- or world-writable"),
        "{}",
        text(&output.stderr)
    );
    // A folder owned by someone else: refuse too.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign)?;
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534))?;
    let output = run(
        Command::new(recorder_bin())
            .arg("--dataset")
            .arg(&dataset)
            .arg("--socket")
            .arg(foreign.join("s.sock")),
        Duration::from_secs(30),
    )?;
    ensure!(
        output.status.code() == Some(1) && text(&output.stderr).contains("owned by uid 65534"),
        "{}",
        text(&output.stderr)
    );
    // A missing folder is created 0700; the socket is 0600.
    let mut recorder = Recorder::start(&[])?;
    let folder = recorder.socket.parent().context("folder")?;
    ensure!(std::fs::metadata(folder)?.mode() & 0o777 == 0o700);
    ensure!(std::fs::metadata(&recorder.socket)?.mode() & 0o777 == 0o600);
    // Another user who gets through the file permissions is still refused by peer credentials.
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&recorder.socket, std::fs::Permissions::from_mode(0o666))?;
    let output = run(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(target_dir().join("rogue"))
            .arg(&recorder.socket)
            .arg("wrong-token"),
        Duration::from_secs(30),
    )?;
    ensure!(
        !output.status.success(),
        "the other user's handshake must fail"
    );
    // ... and the shim will not even connect to a folder it does not trust.
    let token = Token::new("untrusted")?;
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o777))?;
    let mut command = token.pkcs11_tool(&shim(), &["--list-slots"]);
    recorder.shim_env(&mut command, SOFTHSM);
    let shim_run = run(&mut command, Duration::from_secs(30))?;
    ensure!(
        shim_run.status.success() && text(&shim_run.stderr).contains("not connecting"),
        "{}",
        text(&shim_run.stderr)
    );
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700))?;
    let (_, stderr) = recorder.stop()?;
    ensure!(
        stderr.contains("refused pid")
            && stderr.contains("rejected=1")
            && stderr.contains("clients=0"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_full_disk_is_a_clear_error_with_no_corrupt_file_and_nothing_lost() -> Result<()> {
    let token = Token::new("diskfull")?;
    let dir = temp();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount)?;
    let mounted = run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m"])
            .arg("tmpfs")
            .arg(&mount),
        Duration::from_secs(30),
    )?;
    ensure!(
        mounted.status.success(),
        "this test mounts a 4 MiB tmpfs and needs root: {}",
        text(&mounted.stderr)
    );
    let result = (|| -> Result<()> {
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
        let free = |path: &Path| -> Result<u64> {
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
        };
        let available = free(&mount)?;
        std::fs::write(
            &filler,
            vec![0u8; available.saturating_sub(300_000) as usize],
        )?;
        let normal: Vec<Child> = (0..2)
            .map(|_| spawn_client(&token, &socket, &["paced", "4000", "1"], &[]))
            .collect::<Result<_>>()?;
        std::thread::sleep(Duration::from_secs(3));
        // Once the log is stuck, an audit-mode client is refused.
        let mut audit = token.pkcs11_tool(&shim(), &["--login", "--pin", USER_PIN, "--test"]);
        audit
            .env("P11TRACE_MODULE", SOFTHSM)
            .env("P11TRACE_SOCKET", &socket)
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
    })();
    let _ = run(Command::new("umount").arg(&mount), Duration::from_secs(30));
    result
}

#[test]
fn once_exits_after_the_last_client_and_stats_lines_are_printed() -> Result<()> {
    let token = Token::new("once")?;
    let mut recorder = Recorder::start(&["--once", "--stats-every", "1"])?;
    let client = spawn_client(&token, &recorder.socket, &["paced", "300", "5"], &[])?;
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
