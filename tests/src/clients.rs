//! Real applications traced (`tests/tests/clients_*.rs`): a SoftHSM2 token holding what they look
//! for (an RSA and an EC key pair, each with a self-signed certificate made by OpenSSL's pkcs11
//! engine, and an AES key; all made directly on the token, then snapshotted), the commands that
//! run them direct or traced, and what the dataset says each process called.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::process::{RunResult, normalized, run, run_ok};
use crate::{Recorder, Token, Traced, USER_PIN, count_of, duckdb, login};

/// OpenSSL 3's pkcs11 engine (Debian's libengine-pkcs11-openssl).
pub const ENGINE: &str = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";

/// The RSA key pair (id 01), the EC P-256 key pair (id 02) and the AES key (id 03) on the token.
pub const RSA: &str = "rsa1";
pub const EC: &str = "ec1";
pub const AES: &str = "aes1";

const TIMEOUT: Duration = Duration::from_secs(120);

/// A token labelled `label` holding [`RSA`] and [`EC`] (each with a certificate, CN = its label)
/// and [`AES`], snapshotted; and a recorder.
pub fn traced_with_keys(label: &str) -> Result<Traced> {
    let traced = Traced::new(label)?;
    let token = &traced.token;
    token.add_key_pairs(&[("rsa:2048", RSA, "01"), ("EC:prime256v1", EC, "02")])?;
    let direct = token.module();
    run_ok(
        &mut token.pkcs11_tool(
            &direct,
            &login(&[
                "--keygen",
                "--key-type",
                "AES:32",
                "--id",
                "03",
                "--label",
                AES,
            ]),
        ),
        TIMEOUT,
    )?;
    let dir = crate::temp();
    for (key, id) in [(RSA, "01"), (EC, "02")] {
        let cert = dir.path().join(format!("{key}.der"));
        run_ok(
            openssl(token, &direct)
                .args([
                    "req", "-new", "-x509", "-engine", "pkcs11", "-keyform", "engine",
                ])
                .args(["-key", &key_uri(token, key), "-subj", &format!("/CN={key}")])
                .args(["-days", "3650", "-sha256", "-outform", "DER", "-out"])
                .arg(&cert),
            TIMEOUT,
        )?;
        let cert = cert.display().to_string();
        run_ok(
            &mut token.pkcs11_tool(
                &direct,
                &login(&[
                    "--write-object",
                    &cert,
                    "--type",
                    "cert",
                    "--id",
                    id,
                    "--label",
                    key,
                ]),
            ),
            TIMEOUT,
        )?;
    }
    token.snapshot()?;
    Ok(traced)
}

/// `openssl` with the pkcs11 engine loading `module` (`PKCS11_MODULE_PATH`).
pub fn openssl(token: &Token, module: &Path) -> Command {
    let mut command = token.command("openssl");
    command.env("PKCS11_MODULE_PATH", module);
    command
}

/// The RFC 7512 URI of the private key `object` on `token`, with the user PIN (libp11 reads
/// `pin-value`; the shim never records a PIN).
pub fn key_uri(token: &Token, object: &str) -> String {
    format!(
        "pkcs11:token={};object={object};type=private;pin-value={USER_PIN}",
        token.label
    )
}

/// The public key `id` exported from the token (DER), converted to PEM at `pem`.
pub fn export_public_key(token: &Token, id: &str, pem: &Path) -> Result<()> {
    let der = pem.with_extension("der");
    let der_arg = der.display().to_string();
    run_ok(
        &mut token.pkcs11_tool(
            &token.module(),
            &[
                "--read-object",
                "--type",
                "pubkey",
                "--id",
                id,
                "-o",
                &der_arg,
            ],
        ),
        TIMEOUT,
    )?;
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubin", "-inform", "DER", "-in"])
            .arg(&der)
            .arg("-out")
            .arg(pem),
        TIMEOUT,
    )?;
    Ok(())
}

/// Runs `make(through_shim)` direct (false) then traced (true), the token restored before each;
/// fails unless both exit 0 with the same output (long hex runs masked, see [`normalized`]),
/// after `mask` removes what legitimately differs (module paths). Returns the traced run's.
pub fn same_both_ways(
    token: &Token,
    name: &str,
    make: &mut dyn FnMut(bool) -> Command,
    mask: &dyn Fn(String) -> String,
) -> Result<RunResult> {
    let mut results = Vec::new();
    for through_shim in [false, true] {
        token.restore()?;
        let output = run(&mut make(through_shim), TIMEOUT)?;
        results.push((
            output.status.code(),
            mask(normalized(&output.stdout)),
            mask(normalized(&output.stderr)),
            None,
        ));
    }
    ensure!(
        results[0] == results[1],
        "{name}: direct and traced runs differ:\n{:?}\n---\n{:?}",
        results[0],
        results[1]
    );
    ensure!(
        results[0].0 == Some(0),
        "{name}: failed ({:?}): {}\n{}",
        results[0].0,
        results[0].1,
        results[0].2
    );
    Ok(results.remove(1))
}

/// Per function, the calls the application made (the shim's own `internal` calls left out) in
/// the rows matching `filter` (an SQL condition, e.g. `process = 'keytool'`).
pub fn calls_by_function(recorder: &Recorder, filter: &str) -> Result<BTreeMap<String, i64>> {
    crate::counts(&format!(
        "SELECT func AS k, count(*) AS n FROM {} WHERE NOT internal AND ({filter}) GROUP BY 1",
        recorder.table("calls")
    ))
}

/// The one process (pid) whose rows match `filter`; fails unless there is exactly one.
pub fn one_pid(recorder: &Recorder, filter: &str) -> Result<i64> {
    let pids = duckdb(&format!(
        "SELECT DISTINCT pid FROM {} WHERE {filter}",
        recorder.table("calls")
    ))?;
    ensure!(
        pids.len() == 1,
        "one process expected for {filter}: {pids:?}"
    );
    Ok(pids[0]["pid"].as_i64().unwrap_or(-1))
}

/// `SELECT count(*) AS n FROM calls WHERE filter`.
pub fn count_where(recorder: &Recorder, filter: &str) -> Result<i64> {
    count_of(&format!(
        "SELECT count(*) AS n FROM {} WHERE {filter}",
        recorder.table("calls")
    ))
}

/// Fails unless `counts[func] == expected` for each pair, naming every mismatch.
pub fn expect_counts(
    what: &str,
    counts: &BTreeMap<String, i64>,
    expected: &[(&str, i64)],
) -> Result<()> {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(f, n)| counts.get(*f).copied().unwrap_or(0) != *n)
        .map(|(f, n)| {
            format!(
                "{f}: {} (expected {n})",
                counts.get(*f).copied().unwrap_or(0)
            )
        })
        .collect();
    ensure!(
        wrong.is_empty(),
        "{what}: {}; all: {counts:?}",
        wrong.join(", ")
    );
    Ok(())
}

/// The stdout of a finished run, as text.
pub fn stdout_of(result: &RunResult) -> &str {
    &result.1
}

/// A path as text (for command arguments built with `format!`).
pub fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// Stops the clients' recorder, which must end cleanly, and checks that no PIN reached its
/// dataset ([`no_pin_in`]).
pub fn stop_clean(recorder: &mut Recorder) -> Result<()> {
    let (status, stderr) = recorder.stop()?;
    ensure!(status.success(), "recorder: {stderr}");
    no_pin_in(recorder)
}

/// Fails if the user PIN (which every client here sent to `C_Login`) is in any file of the
/// recorder's dataset, raw, hex or base64, or in a Parquet file's decompressed values.
pub fn no_pin_in(recorder: &Recorder) -> Result<()> {
    let scratch = crate::temp();
    let files = crate::all_files(&recorder.dataset);
    ensure!(
        !files.is_empty(),
        "no files in {}",
        recorder.dataset.display()
    );
    for file in files {
        let mut bytes = std::fs::read(&file)?;
        if file.extension().is_some_and(|e| e == "parquet") {
            bytes.extend(crate::decompressed(&file, scratch.path())?);
        }
        ensure!(
            !crate::contains_secret(&bytes, USER_PIN.as_bytes()),
            "the user PIN is in {}",
            file.display()
        );
    }
    Ok(())
}
