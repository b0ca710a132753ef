//! A module that breaks the PKCS#11 contract on the sizes it reports never makes the shim read
//! past its caller's memory: `tests/p11count` with `P11COUNT_LIE` reports `ulValueLen` 100 bytes
//! past the caller's buffers and 100 more handles than `ulMaxObjectCount`, under valgrind's
//! memcheck, and the recorded lengths, values and counts are the caller's sizes.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;

/// `command` run under memcheck, with the same arguments and environment; its report goes to
/// `log`, and any error memcheck finds (one benign ipc-channel report suppressed, see
/// `fixtures/memcheck.supp`) makes it exit 97.
fn memcheck(command: &Command, log: &std::path::Path) -> Command {
    let mut valgrind = Command::new("valgrind");
    valgrind
        .args([
            "--tool=memcheck",
            "--leak-check=no",
            "--error-exitcode=97",
            "--num-callers=30",
        ])
        .arg(format!(
            "--suppressions={}",
            fixtures().join("memcheck.supp").display()
        ))
        .arg(format!("--log-file={}", log.display()))
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => valgrind.env(key, value),
            None => valgrind.env_remove(key),
        };
    }
    valgrind
}

#[test]
fn a_module_lying_about_sizes_never_makes_the_shim_read_past_the_callers_buffers() -> Result<()> {
    let mut traced = Traced::new("lies")?;
    let dir = temp();
    let mut client = traced.client(&["sizes", USER_PIN]);
    traced.behind(&mut client, Oracle::Count, &dir.path().join("count.log"));
    client.env("P11COUNT_LIE", "C_GetAttributeValue,C_FindObjects");
    let log = dir.path().join("memcheck.log");
    // Generous: memcheck slows the client, SoftHSM2 and the shim some 20-50 times (about 5 s
    // here alone); a loaded 2-core machine can triple that.
    let output = run(&mut memcheck(&client, &log), Duration::from_secs(120))?;
    let memcheck_log = std::fs::read_to_string(&log).context("memcheck log")?;
    let invalid_reads = memcheck_log.matches("Invalid read").count();
    ensure!(
        invalid_reads == 0,
        "{invalid_reads} invalid reads past the caller's buffers:\n{memcheck_log}"
    );
    let report = client_reports(&output)?.remove(0);
    // The lie really reached the caller (else nothing was tested).
    ensure!(
        report["claimed_count"] == 101
            && report["claimed_label_len"] == 111
            && report["claimed_class_len"] == 108
            && report["label"] == "sizes-label",
        "{report}"
    );
    ensure!(
        output.status.success(),
        "the client failed under memcheck ({}): {}\n{memcheck_log}",
        output.status,
        text(&output.stderr)
    );
    traced.recorder.stop()?;
    let calls = traced.recorder.table("calls");
    let pid = report["pid"].as_i64().context("pid")?;
    let found = duckdb(&format!(
        "SELECT out_len, out_objects FROM {calls} WHERE pid = {pid} AND func = 'C_FindObjects'"
    ))?;
    ensure!(
        found.len() == 1
            && found[0]["out_len"] == 1
            && found[0]["out_objects"] == serde_json::json!([report["found"]]),
        "the count must be clamped to ulMaxObjectCount (1): {found:?} vs {report}"
    );
    let read = duckdb(&format!(
        "SELECT attrs FROM {calls} WHERE pid = {pid} AND func = 'C_GetAttributeValue'"
    ))?;
    ensure!(read.len() == 1, "{read:?}");
    let attrs: Vec<(String, i64, serde_json::Value)> = attrs(&read[0])
        .into_iter()
        .map(|(_, kind, len, value, _)| (kind, len, value))
        .collect();
    ensure!(
        attrs.len() == 2
            && attrs[0].0 == "CKA_LABEL"
            && attrs[0].1 == 11
            && attrs[0].2 == "sizes-label"
            && attrs[1].0 == "CKA_CLASS"
            && attrs[1].1 == 8
            && attrs[1].2 == "CKO_DATA",
        "lengths and values must be clamped to the caller's buffers: {attrs:?}"
    );
    Ok(())
}
