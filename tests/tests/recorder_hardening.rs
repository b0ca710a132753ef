//! Faults an independent review found in the recorder, each proven fixed against the real
//! recorder process with real shimmed clients: a second recorder started on a live dataset, and
//! a dataset written under a permissive umask, a peer whose counters overflow, an actor that dies. (RELIABILITY.md lists each fault, its promise and
//! the test.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;

fn every_entry(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            found.push(path);
        }
    }
    Ok(found)
}

#[test]
fn a_second_recorder_on_a_live_dataset_changes_nothing_and_says_who_holds_it() -> Result<()> {
    let token = Token::new("second")?;
    let dir = temp();
    let dataset = dir.path().join("ds");
    let socket = dir.path().join("sock").join("r.sock");
    let mut first = Launch::at(temp(), dataset.clone(), socket.clone())
        .args(&["--roll-secs", "1"])
        .start()?;
    let clients = spawn_clients(&token, &socket, 2, &["paced", "1500", "1"])?;
    std::thread::sleep(Duration::from_millis(600));
    let second_socket = dir.path().join("sock2").join("r.sock");
    let output = run(
        Command::new(recorder_bin())
            .arg("--dataset")
            .arg(&dataset)
            .arg("--socket")
            .arg(&second_socket),
        Duration::from_secs(30),
    )?;
    let stderr = text(&output.stderr);
    ensure!(
        output.status.code() == Some(1)
            && stderr.contains(&format!("is in use by pid {}", first.pid())),
        "the second recorder must refuse, naming the first: {:?} {stderr}",
        output.status
    );
    // It touched nothing: the first recorder's log and files are intact, so every call of the
    // clients is still a row (or counted), none twice — on the old code the second one replayed
    // the live log into duplicate rows and deleted it.
    let reports = clients
        .into_iter()
        .map(report)
        .collect::<Result<Vec<_>>>()?;
    let (status, stderr) = first.stop()?;
    ensure!(status.success(), "the first recorder failed: {stderr}");
    check_invariant(&dataset, &reports)?;
    Ok(())
}

#[test]
fn a_dataset_is_private_to_its_user_whatever_the_umask() -> Result<()> {
    let token = Token::new("umask")?;
    let dir = temp();
    let dataset = dir.path().join("ds");
    let socket = dir.path().join("sock").join("r.sock");
    // The recorder inherits this test's umask unless it sets its own: make it permissive.
    // SAFETY: umask(2) only sets this process's creation mask (the tests' files are in private
    // temporary folders, so the permissive value exposes nothing).
    let previous = unsafe { libc::umask(0o022) };
    let recorder = Launch::at(temp(), dataset.clone(), socket.clone()).start();
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(previous) };
    let mut recorder = recorder?;
    for child in spawn_clients(&token, &socket, 1, &["paced", "200", "1"])? {
        report(child)?;
    }
    recorder.stop()?;
    let entries = every_entry(&dataset)?;
    ensure!(
        entries
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "parquet")),
        "no data written"
    );
    for path in entries.iter().chain([&dataset]) {
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        let wanted = if path.is_dir() { 0o700 } else { 0o600 };
        ensure!(
            mode & 0o077 == 0,
            "{} is {mode:o}, wanted {wanted:o}",
            path.display()
        );
    }
    Ok(())
}

#[test]
fn a_peer_whose_counters_would_overflow_is_dropped_and_its_rows_stay_sane() -> Result<()> {
    let token = Token::new("counters")?;
    let mut recorder = Recorder::start(&[])?;
    let clients = spawn_clients(&token, &recorder.socket, 2, &["paced", "1500", "1"])?;
    run_rogue(&recorder.socket, &["counters"])?;
    let reports = clients
        .into_iter()
        .map(report)
        .collect::<Result<Vec<_>>>()?;
    // On the old recorder the second connection's lost count (2^64 − 2 + 5) overflowed: the
    // batcher panicked (debug) and the recorder failed; in release it wrapped, and the third
    // connection's 2^64 − 1 became -1 in `seq_end`.
    let (status, stderr) = recorder.stop()?;
    ensure!(status.success(), "the recorder failed: {stderr}");
    check_invariant(&recorder.dataset, &reports)?;
    let errors = recorder
        .summary()
        .context("summary line")?
        .get("protocol_errors");
    ensure!(
        errors >= 2,
        "the implausible hello and batch must be refused, got {errors}: {stderr}"
    );
    let bad = count_of(&format!(
        "SELECT count(*) AS n FROM {} WHERE records < 0 OR seq_start < 0 OR seq_end < 0 \
         OR dropped < 0 OR lost < 0 OR lost > 1000000",
        table(&recorder.dataset, "clients")
    ))?;
    ensure!(bad == 0, "{bad} client rows with nonsense counters");
    Ok(())
}

#[test]
fn a_dead_acceptor_stops_the_recorder_with_a_clear_error() -> Result<()> {
    let dir = temp();
    let output = run(
        Command::new(recorder_bin())
            .arg("--dataset")
            .arg(dir.path().join("ds"))
            .arg("--socket")
            .arg(dir.path().join("sock").join("r.sock"))
            .env("P11TRACE_RECORDER_CRASH_AT", "acceptor"),
        Duration::from_secs(15),
    )?;
    // The old recorder swallowed the acceptor's end and kept running, accepting no one (this
    // timed out).
    let stderr = text(&output.stderr);
    ensure!(
        output.status.code() == Some(1) && stderr.contains("the acceptor actor stopped"),
        "a recorder whose acceptor died must exit 1 saying so: {:?} {stderr}",
        output.status
    );
    Ok(())
}
