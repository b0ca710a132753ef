//! `p11trace-recorder run -- COMMAND`: one command traced like `strace -c`. A real pkcs11-tool on
//! SoftHSM2 keeps its output and exit status and its calls land in the dataset; the command's
//! exit status (and 128+N for a signal) is `run`'s; SIGINT sent to `run` reaches the command and
//! the dataset is still complete; a terminal's Ctrl-C reaches the command but not the recorder;
//! a missing command is 127, a non-executable one 126; without p11trace-query beside it, `run`
//! says the analysis was skipped and why.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;

const TIMEOUT: Duration = Duration::from_secs(120);

/// `p11trace-recorder run --dataset DATASET [--module SOFTHSM] -- COMMAND...`, with the token's
/// configuration and none of the shim's variables in its environment.
fn run_under(token: &Token, dataset: &Path, module: bool, command: &[&str]) -> Command {
    let mut run = token.command(recorder_bin());
    run.env_remove("P11TRACE_SOCKET")
        .env_remove("P11TRACE_MODULE")
        .env_remove("PKCS11SPY")
        .arg("run")
        .arg("--dataset")
        .arg(dataset);
    if module {
        run.arg("--module").arg(SOFTHSM);
    }
    run.arg("--").args(command);
    run
}

fn funcs_in_order(dataset: &Path) -> Result<Vec<String>> {
    Ok(duckdb(&format!(
        "SELECT func FROM {} ORDER BY seq",
        table(dataset, "calls")
    ))?
    .iter()
    .map(|row| row["func"].as_str().unwrap_or("").to_owned())
    .collect())
}

/// Whether `wanted` appears in `calls` in this order (other calls may come between).
fn in_order(calls: &[String], wanted: &[&str]) -> bool {
    let mut rest = calls.iter();
    wanted.iter().all(|w| rest.any(|c| c == w))
}

#[test]
fn pkcs11_tool_under_run_keeps_its_output_and_status_and_records_its_calls() -> Result<()> {
    let token = Token::new("run-list")?;
    token.add_key_pairs(&[("rsa:2048", "runkey", "31")])?;
    let args = login(&["--list-objects"]);

    let direct = run_ok(&mut token.pkcs11_tool(Path::new(SOFTHSM), &args), TIMEOUT)?;
    token.restore()?;

    let dir = temp();
    let dataset = dir.path().join("ds");
    let shim = shim().display().to_string();
    let mut command: Vec<&str> = vec![
        "pkcs11-tool",
        "--module",
        &shim,
        "--token-label",
        &token.label,
    ];
    command.extend(args.iter().copied());
    let traced = run(&mut run_under(&token, &dataset, true, &command), TIMEOUT)?;
    let stderr = text(&traced.stderr);

    ensure!(
        traced.status.code() == direct.status.code() && traced.status.success(),
        "run exited {} (direct: {}): {stderr}",
        traced.status,
        direct.status
    );
    ensure!(
        traced.stdout == direct.stdout,
        "stdout changed under run:\n--- direct\n{}\n--- run\n{}",
        text(&direct.stdout),
        text(&traced.stdout)
    );
    ensure!(
        text(&traced.stdout).contains("runkey"),
        "the listing lacks the key: {}",
        text(&traced.stdout)
    );

    // The calls of a logged-in listing (pkcs11-tool reads each object's attributes inside its
    // C_FindObjects loop), in order, and nothing lost.
    let calls = funcs_in_order(&dataset)?;
    ensure!(
        in_order(
            &calls,
            &[
                "C_Initialize",
                "C_GetSlotList",
                "C_OpenSession",
                "C_Login",
                "C_FindObjectsInit",
                "C_FindObjects",
                "C_GetAttributeValue",
                "C_FindObjectsFinal",
                "C_CloseSession",
                "C_Finalize",
            ]
        ),
        "calls out of order or missing: {calls:?}"
    );
    // pkcs11-tool finds one object at a time: the key pair's two halves, then none.
    let finds = calls.iter().filter(|c| *c == "C_FindObjects").count();
    ensure!(
        finds == 3,
        "{finds} C_FindObjects for two objects: {calls:?}"
    );
    let logins = duckdb(&format!(
        "SELECT rv_name, user_type FROM {} WHERE func = 'C_Login'",
        table(&dataset, "calls")
    ))?;
    ensure!(
        logins.len() == 1
            && logins[0]["rv_name"] == "CKR_OK"
            && logins[0]["user_type"] == "CKU_USER",
        "one successful user login expected: {logins:?}"
    );
    let clients = duckdb(&format!(
        "SELECT process, records, dropped, lost, disconnect_reason FROM {}",
        table(&dataset, "clients")
    ))?;
    ensure!(
        clients.len() == 1
            && clients[0]["process"] == "pkcs11-tool"
            && clients[0]["records"].as_i64() == Some(calls.len() as i64)
            && clients[0]["dropped"] == 0
            && clients[0]["lost"] == 0
            && clients[0]["disconnect_reason"] == "finalize",
        "one complete pkcs11-tool client expected: {clients:?} ({} calls)",
        calls.len()
    );

    // The analysis on stderr, then where the data is; the PIN nowhere.
    ensure!(
        stderr.contains("PKCS#11 Operation Analysis") && stderr.contains("C_FindObjectsInit"),
        "no analysis on stderr: {stderr}"
    );
    ensure!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l == format!("dataset: {}", dataset.display())),
        "stderr does not end with the dataset's path: {stderr}"
    );
    ensure!(!stderr.contains(USER_PIN), "the PIN appears on stderr");
    Ok(())
}

#[test]
fn the_exit_status_is_the_command_s_and_128_plus_a_signal() -> Result<()> {
    let token = Token::new("run-status")?;
    let dir = temp();
    let not_executable = dir.path().join("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n")?;
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644))?;
    let not_executable = not_executable.display().to_string();
    let cases: [(&[&str], i32, &str); 4] = [
        (&["sh", "-c", "exit 7"], 7, ""),
        (&["sh", "-c", "kill -TERM $$"], 143, ""),
        (
            &["p11trace-no-such-command-x"],
            127,
            "p11trace-no-such-command-x: command not found",
        ),
        (
            &[&not_executable],
            126,
            "permission denied (not executable)",
        ),
    ];
    for (index, (command, status, message)) in cases.iter().enumerate() {
        let dataset = dir.path().join(format!("ds{index}"));
        let output = run(&mut run_under(&token, &dataset, false, command), TIMEOUT)?;
        let stderr = text(&output.stderr);
        ensure!(
            output.status.code() == Some(*status),
            "{command:?}: run exited {} (want {status}): {stderr}",
            output.status
        );
        ensure!(
            stderr.contains(message),
            "{command:?}: stderr lacks `{message}`: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn without_dataset_run_names_a_fresh_private_folder() -> Result<()> {
    let token = Token::new("run-fresh")?;
    let dir = temp();
    let mut command = token.command(recorder_bin());
    command
        .current_dir(dir.path())
        .env_remove("P11TRACE_SOCKET")
        .args(["run", "--module", SOFTHSM, "--"])
        .arg("pkcs11-tool")
        .arg("--module")
        .arg(shim())
        .args(["--list-slots"]);
    let output = run_ok(&mut command, TIMEOUT)?;
    let stderr = text(&output.stderr);
    let named = stderr
        .lines()
        .find_map(|l| l.strip_prefix("dataset: "))
        .with_context(|| format!("no `dataset: PATH` line: {stderr}"))?;
    let named = PathBuf::from(named);
    ensure!(
        named.parent() == Some(dir.path())
            && named
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("p11trace-run-")),
        "the dataset {} is not a fresh folder in the current directory {}",
        named.display(),
        dir.path().display()
    );
    let mode = std::fs::metadata(&named)?.permissions().mode() & 0o777;
    ensure!(mode == 0o700, "the fresh dataset has mode {mode:o}");
    let calls = funcs_in_order(&named)?;
    ensure!(
        in_order(&calls, &["C_Initialize", "C_GetSlotList", "C_Finalize"]),
        "pkcs11-tool --list-slots calls expected: {calls:?}"
    );
    Ok(())
}

/// Waits for `path` to exist.
fn wait_for_file(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn sigint_sent_to_run_reaches_the_command_and_the_dataset_is_complete() -> Result<()> {
    let token = Token::new("run-sigint")?;
    let dir = temp();
    let dataset = dir.path().join("ds");
    let ready = dir.path().join("ready");
    let socket_file = dir.path().join("socket");
    // The command makes its PKCS#11 calls, says which socket it was given, then waits for
    // SIGINT and exits 3.
    let script = format!(
        "pkcs11-tool --module '{}' --list-slots >/dev/null || exit 9; \
         printf %s \"$P11TRACE_SOCKET\" > '{}'; \
         trap 'exit 3' INT; touch '{}'; while :; do sleep 0.05; done",
        shim().display(),
        socket_file.display(),
        ready.display()
    );
    let mut child = run_under(&token, &dataset, true, &["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let waited = wait_for_file(&ready, Duration::from_secs(60));
    let socket = PathBuf::from(std::fs::read_to_string(&socket_file).unwrap_or_default());
    let folder = socket.parent().map(Path::to_path_buf).unwrap_or_default();
    let folder_mode = std::fs::metadata(&folder)
        .map(|m| m.permissions().mode() & 0o777)
        .ok();
    // SAFETY: signals our own child, not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("run did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output: Output = child.wait_with_output()?;
    let stderr = text(&output.stderr);
    waited?;
    ensure!(
        status.code() == Some(3),
        "run exited {status}, not the command's 3: {stderr}"
    );
    // A private socket: its own 0700 folder, not the default one, gone afterwards.
    let default =
        p11trace_record::socket::default_socket_path(p11trace_record::socket::current_uid());
    ensure!(
        socket.is_absolute() && socket != default && folder_mode == Some(0o700),
        "the command's socket {} (folder mode {folder_mode:?}) is not private",
        socket.display()
    );
    ensure!(
        !folder.exists(),
        "the private socket folder {} is left behind",
        folder.display()
    );
    let calls = funcs_in_order(&dataset)?;
    ensure!(
        in_order(&calls, &["C_Initialize", "C_GetSlotList", "C_Finalize"]),
        "the calls made before SIGINT are missing: {calls:?}"
    );
    let clients = duckdb(&format!(
        "SELECT records, lost, disconnect_reason FROM {}",
        table(&dataset, "clients")
    ))?;
    ensure!(
        clients.len() == 1
            && clients[0]["records"].as_i64() == Some(calls.len() as i64)
            && clients[0]["lost"] == 0
            && clients[0]["disconnect_reason"] == "finalize",
        "the client row is incomplete: {clients:?}"
    );
    ensure!(
        stderr.contains("PKCS#11 Operation Analysis"),
        "no analysis after SIGINT: {stderr}"
    );
    Ok(())
}

#[test]
fn without_p11trace_query_beside_it_run_says_the_analysis_was_skipped() -> Result<()> {
    let token = Token::new("run-alone")?;
    let dir = temp();
    let alone = dir.path().join("bin");
    std::fs::create_dir(&alone)?;
    let copy = alone.join("p11trace-recorder");
    if std::fs::hard_link(recorder_bin(), &copy).is_err() {
        std::fs::copy(recorder_bin(), &copy)?;
    }
    let dataset = dir.path().join("ds");
    let mut command = token.command(&copy);
    command
        .env_remove("P11TRACE_SOCKET")
        .arg("run")
        .arg("--dataset")
        .arg(&dataset)
        .args(["--module", SOFTHSM, "--", "pkcs11-tool", "--module"])
        .arg(shim())
        .arg("--list-slots");
    let output = run_ok(&mut command, TIMEOUT)?;
    let stderr = text(&output.stderr);
    ensure!(
        stderr.contains("p11trace-recorder: stopped: clients=1 records=")
            && stderr.contains("analysis skipped: p11trace-query is not installed beside"),
        "no summary and reason: {stderr}"
    );
    ensure!(
        !stderr.contains("PKCS#11 Operation Analysis"),
        "an analysis without p11trace-query: {stderr}"
    );
    ensure!(
        in_order(&funcs_in_order(&dataset)?, &["C_Initialize", "C_Finalize"]),
        "nothing recorded"
    );
    Ok(())
}

/// Runs `argv` on a new pseudo-terminal (its controlling terminal, `run` in the foreground
/// process group), types Ctrl-C once the output holds `ready`, and prints what the terminal
/// showed and then `status=N`.
const CTRL_C_ON_A_TERMINAL: &str = r#"
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out, sent, deadline = b"", False, time.time() + 60
while time.time() < deadline:
    try:
        data = os.read(fd, 4096)
    except OSError:
        break
    if not data:
        break
    out += data
    if b"ready" in out and not sent:
        time.sleep(0.2)
        os.write(fd, b"\x03")
        sent = True
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
print("status=%d" % os.waitstatus_to_exitcode(status))
"#;

#[test]
fn a_terminal_s_ctrl_c_reaches_the_command_and_not_the_recorder() -> Result<()> {
    let token = Token::new("run-ctrl-c")?;
    let dir = temp();
    let dataset = dir.path().join("ds");
    // The command counts its SIGINTs, and makes its PKCS#11 calls only after Ctrl-C: had the
    // terminal's signal reached the recorder too, it would have stopped before them. (`run`
    // does not pass a terminal's signal on again, but a shell merges two SIGINTs that arrive
    // together, so `sigints=1` alone would not catch it.)
    let script = format!(
        "n=0; trap 'n=$((n+1))' INT; echo ready; i=0; \
         while [ $i -lt 40 ] && [ $n -eq 0 ]; do sleep 0.05; i=$((i+1)); done; sleep 0.3; \
         echo sigints=$n; pkcs11-tool --module '{}' --list-slots >/dev/null; exit 4",
        shim().display()
    );
    let recorder = recorder_bin().display().to_string();
    let dataset_arg = dataset.display().to_string();
    let output = run_ok(
        token
            .command("python3")
            .env_remove("P11TRACE_SOCKET")
            .args(["-c", CTRL_C_ON_A_TERMINAL, &recorder, "run"])
            .args(["--dataset", &dataset_arg, "--module", SOFTHSM, "--"])
            .args(["sh", "-c", &script]),
        TIMEOUT,
    )?;
    let shown = text(&output.stdout);
    ensure!(
        shown.contains("sigints=1") && shown.trim_end().ends_with("status=4"),
        "the command did not get exactly one SIGINT, or run's status is not its 4: {shown}"
    );
    ensure!(
        !shown.contains("second signal") && !shown.contains("the recorder ended with"),
        "the recorder was interrupted: {shown}"
    );
    let calls = funcs_in_order(&dataset)?;
    ensure!(
        in_order(&calls, &["C_Initialize", "C_GetSlotList", "C_Finalize"]),
        "the calls made after Ctrl-C are missing: {calls:?}\n{shown}"
    );
    Ok(())
}
