//! The recording is the calls, exactly: pkcs11-spy between the shim and SoftHSM2 logs the same
//! calls with the same return values, in the same order, for one client and for three at once;
//! its log imported by `p11trace-query` agrees with the recording field by field — handles,
//! mechanisms, templates, lengths — for pkcs11-tool and p11tool runs alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Result, ensure};
use p11trace_record::functions::{FUNCTIONS, Role};
use p11trace_tests::*;

const TIMEOUT: Duration = Duration::from_secs(120);

/// (func, rv_name) per recorded call of one client (or all), in call order.
fn recorded_sequence(recorder: &Recorder, pid: Option<u32>) -> Result<Sequence> {
    let filter = pid.map_or(String::new(), |pid| format!("WHERE pid = {pid}"));
    let rows = duckdb(&format!(
        "SELECT func, rv_name FROM {} {filter} ORDER BY client_id, seq",
        recorder.table("calls")
    ))?;
    Ok(func_rv(&rows, "rv_name"))
}

#[test]
fn the_recorded_sequence_equals_pkcs11_spys_call_for_call() -> Result<()> {
    let mut traced = Traced::new("oracle")?;
    let dir = temp();
    let log = dir.path().join("spy.log");
    let mut command = traced.pkcs11_tool(&login(&["--test"]));
    traced.behind(&mut command, Oracle::Spy, &log);
    run_ok(&mut command, TIMEOUT)?;
    let recorder = &mut traced.recorder;
    recorder.stop()?;
    let spy = Oracle::Spy.sequence(&log)?;
    let recorded = recorded_sequence(recorder, None)?;
    ensure!(spy.len() > 100, "spy logged too little: {}", spy.len());
    ensure!(
        recorded == spy,
        "sequences differ:\nrecorded {} calls, spy {} calls\nfirst difference: {:?}",
        recorded.len(),
        spy.len(),
        first_difference(&recorded, &spy)
    );

    // Handles too: the spy log imported by p11trace-query gives session and object per call.
    let imported = import_as(&log, dir.path(), "spy.parquet", &[])?;
    let columns = "func, rv, session, object, object2, slot_id, out_len";
    let ours = duckdb(&format!(
        "SELECT {columns} FROM {} ORDER BY seq",
        recorder.table("calls")
    ))?;
    let theirs = duckdb(&format!(
        "SELECT {columns} FROM '{}' ORDER BY seq",
        imported.display()
    ))?;
    ensure!(ours.len() == theirs.len(), "row counts differ");
    let columns = ["func", "rv", "session", "object", "object2", "slot_id"];
    // Per column: calls where both sides know the value, and where only one does.
    let mut both = [0usize; 6];
    let mut one = [0usize; 6];
    for (index, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        for (c, column) in columns.iter().enumerate() {
            // Where both sides know a value, they must agree.
            match (a[column].is_null(), b[column].is_null()) {
                (false, false) => {
                    both[c] += 1;
                    ensure!(
                        a[column] == b[column],
                        "call {index} {column}: recorded {} vs spy {}",
                        a[column],
                        b[column]
                    );
                }
                (true, true) => {}
                _ => one[c] += 1,
            }
        }
    }
    // The comparison must have happened: every call has a func and an rv, and the session and
    // slot columns (this workload passes no object handles) were compared on most calls that
    // carry one — an importer that stopped filling a column would pass the loop above without
    // comparing anything.
    eprintln!("compared per column {columns:?}: both {both:?}, one side only {one:?}");
    ensure!(
        both[0] == ours.len() && both[1] == ours.len(),
        "func/rv not compared on every call: {both:?}"
    );
    for c in [2, 5] {
        ensure!(
            both[c] >= 10 && both[c] >= 9 * (both[c] + one[c]) / 10,
            "{}: compared on {} calls, known on one side only on {}",
            columns[c],
            both[c],
            one[c]
        );
    }
    // The shim's own C_GetInfo is marked internal, and the spy saw it too.
    let internal = duckdb(&format!(
        "SELECT func FROM {} WHERE internal",
        recorder.table("calls")
    ))?;
    ensure!(
        internal.iter().any(|r| r["func"] == "C_GetInfo"),
        "internal C_GetInfo missing: {internal:?}"
    );
    Ok(())
}

#[test]
fn three_clients_at_once_each_match_their_own_spy_log() -> Result<()> {
    // One recorder for the three; a token each: SoftHSM2's file store loses the token now and
    // then when processes start on it at once ("No slot with token named …").
    let mut recorder = Recorder::start(&[])?;
    let dir = temp();
    let tokens: Vec<Token> = (0..3)
        .map(|_| Token::new("oracle"))
        .collect::<Result<_>>()?;
    let mut children = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        let log = dir.path().join(format!("spy-{index}.log"));
        let mut command = token.pkcs11_tool(&shim(), &login(&["--test"]));
        recorder.shim_env(&mut command, Oracle::Spy.module());
        Oracle::Spy
            .env(&mut command, &token.module(), &log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        children.push((command.spawn()?, log));
    }
    let mut by_pid = BTreeMap::new();
    for (child, log) in children {
        let pid = child.id();
        let output = child.wait_with_output()?;
        ensure!(
            output.status.success(),
            "client {pid} failed: {}",
            text(&output.stderr)
        );
        by_pid.insert(pid, log);
    }
    recorder.stop()?;
    for (pid, log) in by_pid {
        let spy = Oracle::Spy.sequence(&log)?;
        let recorded = recorded_sequence(&recorder, Some(pid))?;
        ensure!(
            !spy.is_empty() && recorded == spy,
            "client {pid}: recorded {} calls, spy {}",
            recorded.len(),
            spy.len()
        );
    }
    Ok(())
}

/// pkcs11-tool and p11tool runs through shim → pkcs11-spy → SoftHSM2, the recorder stopped
/// afterwards; returns the spy's log.
fn traced_with_spy(traced: &mut Traced, dir: &Path) -> Result<PathBuf> {
    let log = dir.join("spy.log");
    let message = dir.join("message.txt");
    std::fs::write(&message, b"golden message")?;
    let (message, signature) = (
        message.display().to_string(),
        dir.join("sig").display().to_string(),
    );
    let runs = [
        login(&["--test"]),
        login(&[
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--id",
            "21",
            "--label",
            "golden",
        ]),
        login(&[
            "--sign",
            "-m",
            "SHA256-RSA-PKCS-PSS",
            "--id",
            "21",
            "-i",
            &message,
            "-o",
            &signature,
        ]),
        vec!["--login", "--pin", "Wrong-Pin-7777", "--list-objects"],
    ];
    for args in &runs {
        let mut command = traced.pkcs11_tool(args);
        traced.behind(&mut command, Oracle::Spy, &log);
        run(&mut command, TIMEOUT)?;
    }
    let uri = format!("pkcs11:token={}", traced.token.label);
    for args in [
        vec!["--list-mechanisms", uri.as_str()],
        vec!["--login", "--set-pin", USER_PIN, "--list-all", uri.as_str()],
    ] {
        let mut command = traced.p11tool(&args);
        traced.behind(&mut command, Oracle::Spy, &log);
        run_ok(&mut command, TIMEOUT)?;
    }
    traced.recorder.stop()?;
    Ok(log)
}

#[test]
fn fresh_spy_logs_of_pkcs11_tool_and_p11tool_match_the_shims_recording_call_for_call() -> Result<()>
{
    let mut traced = Traced::new("fresh")?;
    let dir = temp();
    let log = traced_with_spy(&mut traced, dir.path())?;
    let imported = import_as(&log, dir.path(), "spy.parquet", &[])?;
    let columns = [
        "func",
        "rv",
        "slot_id",
        "session",
        "mechanism",
        "mech_params",
        "object",
        "object2",
        "out_objects",
        "user_type",
        "in_len",
        "out_len",
        "ck_flags",
        "attrs",
    ];
    let select = columns.join(", ");
    let ours = duckdb(&format!(
        "SELECT {select}, process FROM {} ORDER BY client_id, seq",
        traced.recorder.table("calls")
    ))?;
    let theirs = duckdb(&format!(
        "SELECT {select} FROM '{}' ORDER BY client_id, seq",
        imported.display()
    ))?;
    ensure!(
        ours.len() == theirs.len() && ours.len() > 1000,
        "recorded {} calls, spy {}",
        ours.len(),
        theirs.len()
    );
    ensure!(
        ours.iter().any(|r| r["process"] == "p11tool")
            && ours.iter().any(|r| r["process"] == "pkcs11-tool")
    );
    // The handle columns, each with the functions whose calls carry it as an input argument
    // (from the function table, not from either side's data): the spy prints every input
    // handle, so each recorded call of those functions must have that column compared.
    let handles: Vec<(&str, BTreeSet<&str>)> = [
        ("slot_id", Role::Slot),
        ("session", Role::Session),
        ("object", Role::Object),
        ("object2", Role::Object2),
    ]
    .into_iter()
    .map(|(column, role)| {
        let takers = FUNCTIONS
            .iter()
            .filter(|f| f.args.iter().any(|arg| arg.role == role))
            .map(|f| f.func.name())
            .collect();
        (column, takers)
    })
    .collect();
    // Per handle column: recorded calls that carry it, and of those the ones compared.
    let mut carried = vec![0usize; handles.len()];
    let mut handles_compared = vec![0usize; handles.len()];
    let mut compared = 0;
    for (index, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        let func = a["func"].as_str().unwrap_or_default();
        for (h, (_, takers)) in handles.iter().enumerate() {
            if takers.contains(func) {
                carried[h] += 1;
            }
        }
        for column in columns {
            // The spy does not print everything (a size query's output, the returned interface's
            // version): compare where it does.
            if a[column].is_null()
                || b[column].is_null()
                || (column == "attrs" && a["func"] == "C_GetInterface")
            {
                continue;
            }
            ensure!(
                a[column] == b[column],
                "call {index} ({}) {column}: shim {} vs spy {}",
                a["func"],
                a[column],
                b[column]
            );
            compared += 1;
            if let Some(h) = handles.iter().position(|(name, _)| *name == column)
                && handles[h].1.contains(func)
            {
                handles_compared[h] += 1;
            }
        }
    }
    eprintln!("handle columns: carried {carried:?}, compared {handles_compared:?}");
    for (h, (column, _)) in handles.iter().enumerate() {
        ensure!(
            handles_compared[h] == carried[h],
            "{column}: compared on {} of the {} recorded calls that carry it (the importer or the \
             recording left it empty)",
            handles_compared[h],
            carried[h]
        );
    }
    // This workload carries slots, sessions and objects (no wrapping or derivation: object2 may
    // be absent); an empty floor would prove nothing.
    ensure!(
        carried[..3].iter().all(|&n| n >= 10),
        "too few calls carry handles: {carried:?}"
    );
    ensure!(compared > 5000, "too little compared: {compared}");
    for secret in [USER_PIN.as_bytes(), b"Wrong-Pin-7777"] {
        ensure!(
            contains_secret(&std::fs::read(&log)?, secret),
            "control: the spy log must hold the PIN"
        );
        ensure!(
            !contains_secret(&std::fs::read(&imported)?, secret),
            "a PIN survived the import"
        );
    }
    Ok(())
}
