//! Nobody else can hurt the recorder or reach it: rogue clients (garbage, silence, a wrong
//! token, undecodable and oversized messages, a flood) are dropped and counted while legitimate
//! clients finish exactly and in time, within bounded memory; the socket folder must be private,
//! other users are refused by peer credentials, and the shim will not connect to a folder it does
//! not trust.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// Runs the recorder on `dataset` and `socket` (to see it refuse to start).
fn recorder_at(dataset: &Path, socket: &Path) -> Result<Output> {
    run(
        Command::new(recorder_bin())
            .arg("--dataset")
            .arg(dataset)
            .arg("--socket")
            .arg(socket),
        Duration::from_secs(30),
    )
}

#[test]
fn rogue_clients_are_dropped_and_counted_while_the_others_finish_exactly() -> Result<()> {
    let token = Token::new("rogues")?;
    let mut recorder = Recorder::start(&[])?;
    let legit: Vec<Child> = spawn_clients(&token, &recorder.socket, 3, &["paced", "1500", "1"])?;
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
        .map(|kind| spawn_rogue(&recorder.socket, kind))
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
    let errors = recorder
        .summary()
        .context("summary line")?
        .get("protocol_errors");
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
    let output = recorder_at(&dataset, &open.join("s.sock"))?;
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
    let output = recorder_at(&dataset, &foreign.join("s.sock"))?;
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
