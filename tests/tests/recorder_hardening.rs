//! Faults an independent review found in the recorder, each proven fixed against the real
//! recorder process with real shimmed clients: a second recorder started on a live dataset, and
//! a dataset written under a permissive umask. (RELIABILITY.md lists each fault, its promise and
//! the test.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
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
