//! `p11trace-recorder doctor`: a good setup (real recorder, SoftHSM2, our shim) passes every
//! check and leaves the recorder one clean client; each broken part fails its check with what
//! to do (a missing module, SoftHSM given as the shim, a 0777 socket folder, no recorder); no
//! input means skipped checks, not failed ones; a pkcs11-spy environment gets the advice.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

/// `p11trace-recorder doctor --format json ARGS` in an environment holding only PATH, a
/// configuration file path that does not exist, and `env`; its exit code and report.
fn doctor(env: &[(&str, &str)], args: &[&str]) -> Result<(Option<i32>, Value)> {
    let missing_config = temp();
    let mut command = Command::new(recorder_bin());
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "P11TRACE_CONFIG",
            missing_config.path().join("p11trace.conf"),
        )
        .envs(env.iter().copied())
        .args(["doctor", "--format", "json"])
        .args(args);
    let output = run(&mut command, TIMEOUT)?;
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "doctor printed no JSON: {}{}",
            text(&output.stdout),
            text(&output.stderr)
        )
    })?;
    Ok((output.status.code(), report))
}

/// The check named `name` of a report.
fn check<'r>(report: &'r Value, name: &str) -> Result<&'r Value> {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .with_context(|| format!("no `{name}` check in {report:#}"))
}

fn status<'r>(report: &'r Value, name: &str) -> Result<&'r str> {
    Ok(check(report, name)?["status"].as_str().unwrap_or(""))
}

fn summary<'r>(report: &'r Value, name: &str) -> Result<&'r str> {
    Ok(check(report, name)?["summary"].as_str().unwrap_or(""))
}

fn fix<'r>(report: &'r Value, name: &str) -> Result<&'r str> {
    Ok(check(report, name)?["fix"].as_str().unwrap_or(""))
}

#[test]
fn a_good_setup_passes_every_check_and_leaves_one_clean_client() -> Result<()> {
    let token = Token::new("doctor-good")?;
    let mut recorder = Recorder::start(&[])?;
    let conf = token.conf().display().to_string();
    let socket = recorder.socket.display().to_string();
    let dataset = recorder.dataset.display().to_string();
    let shim = shim().display().to_string();
    let (code, report) = doctor(
        &[
            ("SOFTHSM2_CONF", &conf),
            ("P11TRACE_MODULE", SOFTHSM),
            ("P11TRACE_SOCKET", &socket),
        ],
        &["--shim", &shim, "--dataset", &dataset],
    )?;
    ensure!(code == Some(0), "doctor exited {code:?}: {report:#}");
    ensure!(
        report["ok"] == true && report["failed"] == 0 && report["skipped"] == 0,
        "{report:#}"
    );
    for name in [
        "environment",
        "module",
        "shim",
        "socket",
        "recorder",
        "dataset",
    ] {
        ensure!(
            status(&report, name)? == "pass",
            "{name} did not pass: {report:#}"
        );
    }
    let module = &check(&report, "module")?["details"];
    ensure!(
        module["source"] == "P11TRACE_MODULE"
            && module["manufacturer"] == "SoftHSM"
            && module["library_description"] == "Implementation of PKCS11"
            && module["library_version"]
                .as_str()
                .is_some_and(|v| v.starts_with("2."))
            && module["cryptoki_version"]
                .as_str()
                .is_some_and(|v| v.starts_with("2.")),
        "SoftHSM2's C_GetInfo not reported: {module:#}"
    );
    let shim_details = &check(&report, "shim")?["details"];
    ensure!(
        shim_details["version"] == env!("CARGO_PKG_VERSION"),
        "shim version: {shim_details:#}"
    );
    let socket_details = &check(&report, "socket")?["details"];
    ensure!(
        socket_details["path"] == socket.as_str()
            && socket_details["source"] == "P11TRACE_SOCKET"
            && socket_details["folder_mode"] == "700"
            && socket_details["folder_owner_uid"] == p11trace_record::socket::current_uid(),
        "socket details: {socket_details:#}"
    );

    // Every key written is documented, and every documented key is written here but `fix`
    // (no check needs advice in this setup).
    let written = json_paths(&report, &["checks[].details.variables"]);
    let documented = documented_paths("doctor.md")?;
    let undocumented: Vec<_> = written.difference(&documented).collect();
    let unwritten: Vec<_> = documented
        .difference(&written)
        .filter(|k| *k != "checks[].fix")
        .collect();
    ensure!(
        undocumented.is_empty() && unwritten.is_empty(),
        "schemas/doctor.md: undocumented {undocumented:?}, never written {unwritten:?}"
    );

    // The hello was a clean client of no calls: finalized, nothing lost, no protocol error.
    let (_, stderr) = recorder.stop()?;
    let stats = Summary::parse(&stderr).context("no recorder summary")?;
    ensure!(
        stats.get("protocol_errors") == 0 && stats.get("lost") == 0 && stats.get("records") == 0,
        "the recorder counted a problem: {stderr}"
    );
    let clients = duckdb(&format!(
        "SELECT process, records, lost, disconnect_reason FROM {}",
        recorder.table("clients")
    ))?;
    ensure!(
        clients.len() == 1
            && clients[0]["process"] == "p11trace-doctor"
            && clients[0]["records"] == 0
            && clients[0]["lost"] == 0
            && clients[0]["disconnect_reason"] == "finalize",
        "one clean doctor client expected: {clients:?}"
    );
    Ok(())
}

#[test]
fn a_skipped_check_is_not_a_failure_in_the_text_report() -> Result<()> {
    let token = Token::new("doctor-text")?;
    let mut recorder = Recorder::start(&[])?;
    let missing_config = temp();
    let output = run(
        token
            .command(recorder_bin())
            .env_remove("P11TRACE_MODULE")
            .env_remove("PKCS11SPY")
            .env_remove("P11TRACE_MODE")
            .env("P11TRACE_CONFIG", missing_config.path().join("none.conf"))
            .args(["doctor", "--module", SOFTHSM, "--shim"])
            .arg(shim())
            .arg("--socket")
            .arg(&recorder.socket),
        TIMEOUT,
    )?;
    recorder.stop()?;
    let stdout = text(&output.stdout);
    ensure!(
        output.status.code() == Some(0),
        "exit {}: {stdout}",
        output.status
    );
    ensure!(
        stdout.lines().any(|l| l.starts_with("pass     module ")
            && l.contains("SoftHSM \"Implementation of PKCS11\""))
            && stdout
                .lines()
                .any(|l| l.starts_with("pass     shim ") && l.contains("is the p11trace shim"))
            && stdout
                .lines()
                .any(|l| l.starts_with("skipped  dataset ") && l.contains("no --dataset DIR given")),
        "{stdout}"
    );
    ensure!(
        stdout
            .lines()
            .any(|l| l == "result: 5 passed, 0 failed, 1 skipped — every check that ran passed"),
        "no result line: {stdout}"
    );
    Ok(())
}

#[test]
fn a_module_that_does_not_exist_fails_naming_the_path() -> Result<()> {
    let dir = temp();
    let missing = dir.path().join("libnot-there.so").display().to_string();
    let (code, report) = doctor(&[], &["--module", &missing])?;
    ensure!(code == Some(1), "doctor exited {code:?}: {report:#}");
    ensure!(
        status(&report, "module")? == "fail"
            && summary(&report, "module")?.contains(&format!("{missing} does not exist"))
            && !fix(&report, "module")?.is_empty(),
        "{report:#}"
    );
    Ok(())
}

#[test]
fn softhsm_given_as_the_shim_is_not_ours() -> Result<()> {
    let (code, report) = doctor(&[], &["--shim", SOFTHSM])?;
    ensure!(code == Some(1), "doctor exited {code:?}: {report:#}");
    ensure!(
        status(&report, "shim")? == "fail"
            && summary(&report, "shim")?.contains("is a PKCS#11 module but not the p11trace shim")
            && fix(&report, "shim")?.contains("libp11trace_shim.so"),
        "{report:#}"
    );
    Ok(())
}

#[test]
fn a_world_writable_socket_folder_fails_as_the_shim_would_refuse_it() -> Result<()> {
    let dir = temp();
    let open = folder(&dir.path().join("open"), 0o777)?;
    let socket = open.join("r.sock").display().to_string();
    let (code, report) = doctor(&[], &["--socket", &socket])?;
    ensure!(code == Some(1), "doctor exited {code:?}: {report:#}");
    let said = summary(&report, "socket")?;
    ensure!(
        status(&report, "socket")? == "fail"
            && said.contains("the shim would refuse it")
            && said.contains("group- or world-writable (mode 777)")
            && fix(&report, "socket")?.contains(&format!("chmod 700 {}", open.display())),
        "{report:#}"
    );
    ensure!(
        status(&report, "recorder")? == "skipped",
        "the hello ran on a folder the shim refuses: {report:#}"
    );
    Ok(())
}

#[test]
fn no_recorder_listening_fails_and_says_to_start_one() -> Result<()> {
    let dir = temp();
    let private = folder(&dir.path().join("sock"), 0o700)?;
    let socket = private.join("r.sock").display().to_string();
    let (code, report) = doctor(&[("P11TRACE_SOCKET", &socket)], &[])?;
    ensure!(code == Some(1), "doctor exited {code:?}: {report:#}");
    ensure!(
        status(&report, "socket")? == "pass"
            && status(&report, "recorder")? == "fail"
            && summary(&report, "recorder")?.contains(&format!("no recorder listens at {socket}"))
            && fix(&report, "recorder")?.contains(&format!(
                "start one: p11trace-recorder --dataset DIR --socket {socket}"
            )),
        "{report:#}"
    );
    Ok(())
}

#[test]
fn with_nothing_given_and_no_environment_the_checks_are_skipped() -> Result<()> {
    ensure!(
        !Path::new("/etc/p11trace.conf").exists(),
        "this test needs a machine without /etc/p11trace.conf (it names a module)"
    );
    let output = run(
        Command::new(recorder_bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["doctor", "--format", "json"]),
        TIMEOUT,
    )?;
    let report: Value = serde_json::from_slice(&output.stdout)?;
    for name in ["module", "shim", "dataset"] {
        ensure!(
            status(&report, name)? == "skipped" && !summary(&report, name)?.is_empty(),
            "{name} not skipped (with why): {report:#}"
        );
    }
    // As documented: nothing names a real module, which the environment check fails, so 1.
    ensure!(
        status(&report, "environment")? == "fail"
            && summary(&report, "environment")?.contains("no real module is named anywhere")
            && fix(&report, "environment")?.contains("export P11TRACE_MODULE="),
        "{report:#}"
    );
    let variables = &check(&report, "environment")?["details"]["variables"];
    ensure!(
        variables["P11TRACE_MODULE"].is_null() && variables["PKCS11SPY"].is_null(),
        "{variables:#}"
    );
    ensure!(
        output.status.code() == Some(1) && report["ok"] == false,
        "doctor exited {}: {report:#}",
        output.status
    );
    Ok(())
}

#[test]
fn a_pkcs11spy_environment_gets_the_advice() -> Result<()> {
    let token = Token::new("doctor-spy")?;
    let conf = token.conf().display().to_string();
    let (_, report) = doctor(&[("SOFTHSM2_CONF", &conf), ("PKCS11SPY", SOFTHSM)], &[])?;
    ensure!(
        status(&report, "environment")? == "pass"
            && summary(&report, "environment")?.contains("a pkcs11-spy setup"),
        "{report:#}"
    );
    let advice = fix(&report, "environment")?;
    ensure!(
        advice.contains(&format!("export P11TRACE_MODULE={SOFTHSM}"))
            && advice.contains("instead of pkcs11-spy.so")
            && advice.contains("PKCS11SPY_OUTPUT"),
        "advice: {advice}"
    );
    let undocumented: Vec<_> = json_paths(&report, &["checks[].details.variables"])
        .difference(&documented_paths("doctor.md")?)
        .cloned()
        .collect();
    ensure!(
        undocumented.is_empty(),
        "undocumented keys: {undocumented:?}"
    );
    // The shim takes PKCS11SPY as the real module: the module check runs on it.
    ensure!(
        status(&report, "module")? == "pass"
            && check(&report, "module")?["details"]["source"] == "PKCS11SPY",
        "{report:#}"
    );
    Ok(())
}

#[test]
fn a_bad_format_is_a_usage_error() -> Result<()> {
    let output = run(
        Command::new(recorder_bin()).args(["doctor", "--format", "xml"]),
        TIMEOUT,
    )?;
    ensure!(
        output.status.code() == Some(2) && text(&output.stderr).contains("--format"),
        "exit {}: {}",
        output.status,
        text(&output.stderr)
    );
    Ok(())
}

#[test]
fn the_shim_given_as_the_real_module_fails() -> Result<()> {
    let shim = shim().display().to_string();
    let (code, report) = doctor(&[("P11TRACE_MODULE", &shim)], &[])?;
    ensure!(code == Some(1), "doctor exited {code:?}: {report:#}");
    ensure!(
        status(&report, "module")? == "fail"
            && summary(&report, "module")?
                .contains("is the p11trace shim itself, not the real module")
            && fix(&report, "module")?.contains("set P11TRACE_MODULE to the real module"),
        "{report:#}"
    );
    Ok(())
}

#[test]
fn the_configuration_file_is_read_as_the_shim_reads_it() -> Result<()> {
    let token = Token::new("doctor-conf")?;
    let conf = token.conf().display().to_string();
    let dir = temp();
    let private = folder(&dir.path().join("sock"), 0o700)?;
    let socket = private.join("r.sock");
    let file = dir.path().join("p11trace.conf");
    std::fs::write(
        &file,
        format!(
            "# a host without variables\nmodule = {SOFTHSM}\nsocket = {}\n",
            socket.display()
        ),
    )?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    let file_arg = file.display().to_string();
    let (_, report) = doctor(
        &[("SOFTHSM2_CONF", &conf), ("P11TRACE_CONFIG", &file_arg)],
        &[],
    )?;
    ensure!(
        status(&report, "environment")? == "pass"
            && status(&report, "module")? == "pass"
            && check(&report, "module")?["details"]["source"]
                == format!("`module` in {file_arg}").as_str()
            && check(&report, "socket")?["details"]["path"]
                == socket.display().to_string().as_str()
            && check(&report, "environment")?["details"]["config_file"] == file_arg.as_str(),
        "{report:#}"
    );

    // Writable by others, the shim ignores the file: so does doctor, and it fails saying why.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))?;
    let (code, report) = doctor(
        &[("SOFTHSM2_CONF", &conf), ("P11TRACE_CONFIG", &file_arg)],
        &[],
    )?;
    ensure!(code == Some(1), "doctor exited {code:?}: {report:#}");
    ensure!(
        status(&report, "environment")? == "fail"
            && summary(&report, "environment")?.contains(&format!(
                "the shim would say: ignoring {file_arg}: it is writable by everyone (mode 666)"
            ))
            && fix(&report, "environment")?.contains("not writable by others")
            && status(&report, "module")? == "skipped",
        "{report:#}"
    );

    // A line the shim would warn about is reported; the rest of the file still applies.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    let text = std::fs::read_to_string(&file)?;
    std::fs::write(&file, format!("{text}modul /typo.so\n"))?;
    let (_, report) = doctor(
        &[("SOFTHSM2_CONF", &conf), ("P11TRACE_CONFIG", &file_arg)],
        &[],
    )?;
    ensure!(
        status(&report, "environment")? == "pass"
            && summary(&report, "environment")?.contains(&format!(
                "the shim would warn: {file_arg}:4: expected `key = value`"
            ))
            && status(&report, "module")? == "pass",
        "{report:#}"
    );

    // A file that cannot be opened (here: a path through a regular file) is not a missing one.
    let beyond = format!("{file_arg}/p11trace.conf");
    let (code, report) = doctor(
        &[("SOFTHSM2_CONF", &conf), ("P11TRACE_CONFIG", &beyond)],
        &[],
    )?;
    ensure!(
        code == Some(1)
            && status(&report, "environment")? == "fail"
            && summary(&report, "environment")?.contains(&format!(
                "the shim would say: ignoring {beyond}: Not a directory"
            )),
        "{report:#}"
    );
    Ok(())
}
