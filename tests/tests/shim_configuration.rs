//! The shim does what its configuration says: audit mode refuses calls it cannot record and lets
//! through those it can, off mode records nothing, and a configuration file serves hosts that
//! cannot set environment variables (its redaction setting included).

use std::time::Duration;

use anyhow::{Result, ensure};
use p11trace_tests::*;

#[test]
fn audit_mode_refuses_calls_it_cannot_record_and_off_mode_records_nothing() -> Result<()> {
    let token = Token::new("modes")?;
    let dir = temp();
    // Audit, no recorder: refused, one stderr line, clean failure.
    let mut refused = token.pkcs11_tool(&shim(), &["--list-slots"]);
    shim_to(&mut refused, SOFTHSM, &dir.path().join("absent.sock")).env("P11TRACE_MODE", "audit");
    let output = run(&mut refused, Duration::from_secs(30))?;
    ensure!(
        !output.status.success() && output.status.code().is_some(),
        "audit without recorder must fail cleanly"
    );
    let lines = shim_lines(&output.stderr);
    ensure!(lines.len() == 1 && lines[0].contains("audit"), "{lines:?}");
    // Audit with a recorder: every call runs and is recorded.
    let mut traced = Traced {
        token,
        recorder: Recorder::start(&[])?,
    };
    let mut audited = traced.pkcs11_tool(&login(&["--test"]));
    audited.env("P11TRACE_MODE", "audit");
    ensure!(
        run(&mut audited, Duration::from_secs(120))?
            .status
            .success(),
        "audit with a recorder must work"
    );
    // Off: forwards without recording.
    let mut off = traced.pkcs11_tool(&["--list-slots"]);
    off.env("P11TRACE_MODE", "off");
    run_ok(&mut off, Duration::from_secs(30))?;
    traced.recorder.stop()?;
    let clients = duckdb(&format!(
        "SELECT count(*) AS n, sum(dropped)::BIGINT AS d FROM {}",
        traced.recorder.table("clients")
    ))?;
    ensure!(
        clients[0]["n"] == 1 && clients[0]["d"] == 0,
        "only the audited run connects, with no drop: {clients:?}"
    );
    Ok(())
}

#[test]
fn configuration_comes_from_a_file_when_the_host_cannot_set_variables() -> Result<()> {
    let mut traced = Traced::new("config")?;
    let recorder = &mut traced.recorder;
    let dir = temp();
    let config = dir.path().join("p11trace.conf");
    std::fs::write(
        &config,
        format!(
            "# p11trace\nmodule = {SOFTHSM}\nsocket = {}\nredact = labels\n",
            recorder.socket.display()
        ),
    )?;
    let mut command = traced.token.pkcs11_tool(
        &shim(),
        &login(&[
            "--keygen",
            "--key-type",
            "AES:16",
            "--label",
            "secret-project-x",
        ]),
    );
    command
        .env("P11TRACE_CONFIG", &config)
        .env_remove("P11TRACE_MODULE")
        .env_remove("PKCS11SPY");
    run_ok(&mut command, Duration::from_secs(60))?;
    recorder.stop()?;
    let rows = duckdb(&format!(
        "SELECT a.value AS v FROM (SELECT unnest(attrs) AS a FROM {} WHERE func = 'C_GenerateKey') WHERE a.type = 'CKA_LABEL'",
        recorder.table("calls")
    ))?;
    // redact = labels from the file: the label is a keyed hash, not the text.
    ensure!(
        rows.len() == 1
            && rows[0]["v"]
                .as_str()
                .is_some_and(|v| v.starts_with("hmac:") && v.len() == 37),
        "{rows:?}"
    );
    let policy = duckdb(&format!(
        "SELECT redaction FROM {}",
        recorder.table("clients")
    ))?;
    ensure!(policy[0]["redaction"] == "labels");
    for file in all_files(recorder.dir.path()) {
        ensure!(
            !contains_secret(&std::fs::read(&file)?, b"secret-project-x"),
            "label in clear in {}",
            file.display()
        );
    }
    Ok(())
}
