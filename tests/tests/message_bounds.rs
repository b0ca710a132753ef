//! An honest shim never sends a message larger than one ipc-channel fragment: records holding
//! the largest templates it captures (256 attributes, 256-byte labels, two templates per call)
//! arrive whole, and the sender never falls back to ipc-channel's fragmented send, whose
//! follow-up fragments go out on a blocking socket (seen with strace: every follow-up is a
//! `send(2)`, i.e. a `sendto` syscall, and nothing else in the client calls it).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;

#[test]
fn records_with_the_largest_templates_arrive_in_unfragmented_messages() -> Result<()> {
    let mut traced = Traced::new("big-templates")?;
    let dir = temp();
    let trace = dir.path().join("strace.txt");
    let client = traced.client(&["big-templates", "40"]);
    // The same client under strace, which stops only on the two calls it records.
    let mut command = Command::new("strace");
    command
        .args([
            "-f",
            "-qq",
            "--seccomp-bpf",
            "-e",
            "trace=sendto,sendmsg",
            "-o",
        ])
        .arg(&trace)
        .arg(client.get_program())
        .args(client.get_args());
    for (key, value) in client.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let output = run(&mut command, Duration::from_secs(120))?;
    let report = client_reports(&output)?.pop().context("no report")?;
    traced.recorder.stop()?;
    let pid = report["pid"].as_i64().context("pid")?;
    let calls = report["calls"].as_i64().context("calls")?;
    let t = tallies(&traced.recorder.dataset)?
        .get(&pid)
        .copied()
        .unwrap_or_default();
    ensure!(
        t.rows - t.internal == calls && t.dropped == 0 && t.lost == 0,
        "every record must arrive: {t:?} vs {report}"
    );
    let calls_table = traced.recorder.table("calls");
    let find = duckdb(&format!(
        "SELECT count(*) AS n, min(len(attrs)) AS lo, max(len(attrs)) AS hi, \
         bool_and(list_bool_and(list_transform(attrs, lambda a: a.value = repeat('L', 256)))) AS whole \
         FROM {calls_table} WHERE func = 'C_FindObjectsInit'"
    ))?;
    ensure!(
        find[0]["n"] == 40
            && find[0]["lo"] == 256
            && find[0]["hi"] == 256
            && find[0]["whole"] == true,
        "every 256-label template arrives with every value: {find:?}"
    );
    // Two templates of 256 labels that each render as 768 bytes: too big for one fragment, so
    // the record keeps every attribute's type and length and sheds values until it fits.
    let pairs = duckdb(&format!(
        "SELECT count(*) AS n, min(len(attrs)) AS lo, \
         bool_and(list_bool_and(list_transform(attrs, lambda a: a.len = 256))) AS lengths \
         FROM {calls_table} WHERE func = 'C_GenerateKeyPair'"
    ))?;
    ensure!(
        pairs[0]["n"] == 40 && pairs[0]["lo"] == 512 && pairs[0]["lengths"] == true,
        "{pairs:?}"
    );
    let strace = std::fs::read_to_string(&trace)?;
    let follow_ups: Vec<&str> = strace.lines().filter(|l| l.contains("sendto(")).collect();
    ensure!(
        follow_ups.is_empty(),
        "{} fragmented sends (follow-up fragments), e.g. {:?}",
        follow_ups.len(),
        follow_ups.first()
    );
    let messages = strace.lines().filter(|l| l.contains("sendmsg(")).count();
    ensure!(messages > 40, "strace saw only {messages} messages");
    Ok(())
}
