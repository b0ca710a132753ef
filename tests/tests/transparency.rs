//! The host sees what it would see without the shim: real pkcs11-tool jobs on SoftHSM2, direct and
//! traced, end with the same exit code, output and signature file while the recorder gets every
//! run; and with no recorder listening the shim changes nothing, not even stderr.

use std::time::Duration;

use anyhow::{Result, ensure};
use p11trace_tests::*;

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn pkcs11_tool_through_the_shim_behaves_exactly_like_softhsm() -> Result<()> {
    let mut traced = Traced::new("skeleton")?;
    let dir = temp();
    let message = dir.path().join("msg.txt");
    std::fs::write(&message, b"p11trace skeleton message\n")?;
    let message = message.display().to_string();
    // `SIG` becomes the run's own signature file.
    let workloads = [
        ("test", login(&["--test"])),
        (
            "sign",
            login(&[
                "--sign",
                "-m",
                "SHA256-RSA-PKCS",
                "--id",
                "01",
                "-i",
                &message,
                "-o",
                "SIG",
            ]),
        ),
        (
            "keygen",
            login(&[
                "--keypairgen",
                "--key-type",
                "rsa:2048",
                "--id",
                "09",
                "--label",
                "k9",
            ]),
        ),
    ];
    for (name, args) in &workloads {
        if *name == "sign" {
            // The RSA key the sign and keygen runs need joins the snapshot now: pkcs11-tool
            // --test on SoftHSM2 fails on RSA-OAEP with a label when a key exists.
            traced.token.add_key_pairs(&[("rsa:2048", "k1", "01")])?;
        }
        let mut results = Vec::new();
        for through_shim in [false, true] {
            traced.token.restore()?;
            let signature = dir.path().join(format!("{name}-{through_shim}.sig"));
            let signature_arg = signature.display().to_string();
            let args: Vec<&str> = args
                .iter()
                .map(|&a| if a == "SIG" { &signature_arg } else { a })
                .collect();
            let mut command = if through_shim {
                traced.pkcs11_tool(&args)
            } else {
                traced.token.pkcs11_tool(SOFTHSM.as_ref(), &args)
            };
            results.push(outcome(&mut command, Some(&signature))?);
        }
        ensure!(
            results[0] == results[1],
            "{name}: direct and traced runs differ:\n{:?}\n{:?}",
            results[0],
            results[1]
        );
        ensure!(
            results[0].0 == Some(0),
            "{name}: pkcs11-tool failed: {}",
            results[0].2
        );
    }
    let recorder = &mut traced.recorder;
    let (status, stderr) = recorder.stop()?;
    ensure!(status.success(), "recorder exit {status}: {stderr}");
    let rows = duckdb(&format!(
        "SELECT count(*) AS n, count(DISTINCT client_id) AS clients FROM {}",
        recorder.table("calls")
    ))?;
    ensure!(
        rows[0]["n"].as_i64().unwrap_or(0) > 100,
        "dataset too small: {rows:?}"
    );
    ensure!(
        rows[0]["clients"] == 3,
        "one client per traced run expected: {rows:?}"
    );
    let signs = count_of(&format!(
        "SELECT count(*) AS n FROM {} WHERE func = 'C_Sign' AND rv = 0",
        recorder.table("calls")
    ))?;
    ensure!(signs >= 1, "no successful C_Sign recorded");
    Ok(())
}

#[test]
fn without_a_recorder_the_shim_changes_nothing() -> Result<()> {
    let token = Token::new("norecorder")?;
    let dir = temp();
    let socket_folder = dir.path().join("sock");
    std::fs::create_dir(&socket_folder)?;
    std::fs::set_permissions(
        &socket_folder,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let list_slots = |module: &std::path::Path| {
        let mut command = token.command("pkcs11-tool");
        command.arg("--module").arg(module).arg("--list-slots");
        command
    };
    let direct = run(&mut list_slots(SOFTHSM.as_ref()), TIMEOUT)?;
    let mut traced = list_slots(&shim());
    shim_to(&mut traced, SOFTHSM, &socket_folder.join("absent.sock"));
    let traced = run(&mut traced, TIMEOUT)?;
    ensure!(direct.status.success() && traced.status.success());
    ensure!(
        direct.stdout == traced.stdout,
        "stdout differs:\n{}\n---\n{}",
        text(&direct.stdout),
        text(&traced.stdout)
    );
    ensure!(
        traced.stderr.is_empty(),
        "the shim wrote to stderr: {}",
        text(&traced.stderr)
    );
    Ok(())
}
