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

/// `DIR/p11trace.conf` naming SoftHSM2 and `recorder`'s socket, then `more` lines.
fn config_file(
    dir: &std::path::Path,
    recorder: &Recorder,
    more: &str,
) -> Result<std::path::PathBuf> {
    let config = dir.join("p11trace.conf");
    std::fs::write(
        &config,
        format!(
            "# p11trace\nmodule = {SOFTHSM}\nsocket = {}\n{more}",
            recorder.socket.display()
        ),
    )?;
    Ok(config)
}

#[test]
fn configuration_comes_from_a_file_when_the_host_cannot_set_variables() -> Result<()> {
    let mut traced = Traced::new("config")?;
    let recorder = &mut traced.recorder;
    let dir = temp();
    let config = config_file(dir.path(), recorder, "redact = labels\n")?;
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

/// An empty variable is an unset one (`P11TRACE_MODULE= app`, a service file's `Environment=`
/// left blank): the file's settings apply, as `p11trace-recorder doctor` reports them.
#[test]
fn an_empty_variable_is_unset() -> Result<()> {
    let mut traced = Traced::new("empty")?;
    let recorder = &mut traced.recorder;
    let dir = temp();
    let config = config_file(dir.path(), recorder, "")?;
    let mut command = traced
        .token
        .pkcs11_tool(&shim(), &login(&["--list-objects"]));
    command
        .env("P11TRACE_CONFIG", &config)
        .env("P11TRACE_MODULE", "")
        .env("P11TRACE_SOCKET", "")
        .env_remove("PKCS11SPY");
    run_ok(&mut command, Duration::from_secs(60))?;
    recorder.stop()?;
    let logins = duckdb(&format!(
        "SELECT count(*) AS n FROM {} WHERE func = 'C_Login' AND rv = 0",
        recorder.table("calls")
    ))?;
    ensure!(logins[0]["n"] == 1, "{logins:?}");
    Ok(())
}

/// A configuration file names the module the host loads: one that another user owns, or that
/// anyone but its owner can write, is ignored with a warning (and so is the module it names).
#[test]
fn a_configuration_file_others_could_write_is_ignored() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut traced = Traced::new("config-trust")?;
    let recorder = &mut traced.recorder;
    let dir = temp();
    let text = format!(
        "module = {SOFTHSM}\nsocket = {}\n",
        recorder.socket.display()
    );
    let attempt =
        |name: &str, prepare: &dyn Fn(&std::path::Path) -> Result<()>| -> Result<String> {
            let config = dir.path().join(name);
            std::fs::write(&config, &text)?;
            prepare(&config)?;
            let mut command = traced.token.pkcs11_tool(&shim(), &["--list-slots"]);
            command
                .env("P11TRACE_CONFIG", &config)
                .env_remove("P11TRACE_MODULE")
                .env_remove("PKCS11SPY");
            let output = run(&mut command, Duration::from_secs(60))?;
            ensure!(
                !output.status.success(),
                "{name}: the module it names was loaded"
            );
            Ok(text_of(&output.stderr))
        };
    let world = attempt("world-writable.conf", &|path| {
        Ok(std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(0o666),
        )?)
    })?;
    ensure!(
        world.contains("ignoring") && world.contains("writable by everyone"),
        "{world}"
    );
    let group = attempt("group-writable.conf", &|path| {
        Ok(std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(0o664),
        )?)
    })?;
    ensure!(group.contains("writable by its group"), "{group}");
    let foreign = attempt("foreign.conf", &|path| {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: a valid path; chown to nobody (the tests run as root, as CI does).
        let rc = unsafe { libc::chown(c.as_ptr(), 65534, 65534) };
        ensure!(rc == 0, "chown: {}", std::io::Error::last_os_error());
        Ok(())
    })?;
    ensure!(foreign.contains("owned by uid 65534"), "{foreign}");
    recorder.stop()?;
    let written: Vec<_> = all_files(&recorder.dataset)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .collect();
    ensure!(
        written.is_empty(),
        "calls were traced through an untrusted configuration: {written:?}"
    );
    Ok(())
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The record queue is allocated at once: an absurd `P11TRACE_QUEUE_CAPACITY` is capped with a
/// warning instead of exhausting (or aborting) the host, and the calls are still recorded.
#[test]
fn an_absurd_queue_capacity_is_capped_and_the_host_works() -> Result<()> {
    let mut traced = Traced::new("queue-cap")?;
    let mut command = traced.pkcs11_tool(&["--list-slots"]);
    command.env("P11TRACE_QUEUE_CAPACITY", "1000000000000");
    let output = run(&mut command, Duration::from_secs(60))?;
    let stderr = text_of(&output.stderr);
    ensure!(output.status.success(), "the host failed: {stderr}");
    ensure!(
        stderr.contains("P11TRACE_QUEUE_CAPACITY 1000000000000 is above"),
        "{stderr}"
    );
    traced.recorder.stop()?;
    ensure!(
        count_of(&format!(
            "SELECT count(*) AS n FROM {}",
            traced.recorder.table("calls")
        ))? > 0,
        "nothing recorded"
    );
    Ok(())
}
