//! OpenSSL 3 through its pkcs11 engine (Debian's libengine-pkcs11-openssl, libp11), the engine's
//! module the shim (`PKCS11_MODULE_PATH`): `openssl pkeyutl -sign` with the token's RSA key and
//! `openssl dgst -sign` with its EC key exit and print as they do direct; the RSA signature
//! (PKCS#1 v1.5, deterministic) is byte for byte the direct one; the EC job again with the module
//! from an openssl.cnf engine section (`MODULE_PATH`); every signature verifies with the public
//! key exported from the token; and the dataset holds each process's login and its one `C_Sign`
//! with the mechanism libp11 uses (CKM_RSA_PKCS over a DigestInfo, CKM_ECDSA over a digest).

use std::path::Path;

use anyhow::{Result, ensure};
use p11trace_tests::clients::*;
use p11trace_tests::*;

fn module(through_shim: bool) -> std::path::PathBuf {
    if through_shim { shim() } else { SOFTHSM.into() }
}

fn verify(args: &[&str], files: &[&Path]) -> Result<String> {
    let mut command = std::process::Command::new("openssl");
    command.args(args);
    for file in files {
        command.arg(file);
    }
    let output = run_ok(&mut command, std::time::Duration::from_secs(60))?;
    Ok(text(&output.stdout))
}

#[test]
fn openssl_engine_signs_through_the_shim_and_the_signatures_verify() -> Result<()> {
    assert!(
        Path::new(ENGINE).exists(),
        "{ENGINE} is missing: apt-get install libengine-pkcs11-openssl"
    );
    let mut traced = traced_with_keys("openssl")?;
    let dir = temp();
    let message = dir.path().join("message.txt");
    std::fs::write(&message, b"a file OpenSSL signs with a token key\n")?;
    let digest = dir.path().join("message.sha256");
    run_ok(
        std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-binary", "-out"])
            .arg(&digest)
            .arg(&message),
        std::time::Duration::from_secs(60),
    )?;
    let signature = |kind: &str, run: &str| dir.path().join(format!("{kind}-{run}.sig"));
    let rsa_uri = key_uri(&traced.token, RSA);
    let ec_uri = key_uri(&traced.token, EC);

    same_both_ways(
        &traced.token,
        "openssl pkeyutl -sign (RSA)",
        &mut |through_shim| {
            let mut command = openssl(&traced.token, &module(through_shim));
            command
                .args([
                    "pkeyutl", "-engine", "pkcs11", "-keyform", "engine", "-sign",
                ])
                .args(["-inkey", &rsa_uri, "-pkeyopt", "digest:sha256", "-in"])
                .arg(&digest)
                .arg("-out")
                .arg(signature("rsa", &through_shim.to_string()));
            if through_shim {
                traced.trace(&mut command);
            }
            command
        },
        &|s| s,
    )?;
    same_both_ways(
        &traced.token,
        "openssl dgst -sign (ECDSA)",
        &mut |through_shim| {
            let mut command = openssl(&traced.token, &module(through_shim));
            command
                .args(["dgst", "-engine", "pkcs11", "-keyform", "engine", "-sha256"])
                .args(["-sign", &ec_uri, "-out"])
                .arg(signature("ec", &through_shim.to_string()))
                .arg(&message);
            if through_shim {
                traced.trace(&mut command);
            }
            command
        },
        &|s| s,
    )?;
    let rsa = std::fs::read(signature("rsa", "true"))?;
    ensure!(
        rsa.len() == 256 && rsa == std::fs::read(signature("rsa", "false"))?,
        "the traced RSA signature differs from the direct one"
    );

    let (rsa_pub, ec_pub) = (dir.path().join("rsa.pem"), dir.path().join("ec.pem"));
    export_public_key(&traced.token, "01", &rsa_pub)?;
    export_public_key(&traced.token, "02", &ec_pub)?;
    let rsa_ok = verify(
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-pkeyopt",
            "digest:sha256",
            "-inkey",
        ],
        &[
            &rsa_pub,
            Path::new("-in"),
            &digest,
            Path::new("-sigfile"),
            &signature("rsa", "true"),
        ],
    )?;
    ensure!(
        rsa_ok.contains("Signature Verified Successfully"),
        "{rsa_ok}"
    );
    // The engine's module from an openssl.cnf engine section (`MODULE_PATH`) instead of
    // PKCS11_MODULE_PATH: the same ECDSA signature job, traced.
    let cnf = dir.path().join("openssl.cnf");
    std::fs::write(
        &cnf,
        format!(
            "openssl_conf = openssl_init\n\n[openssl_init]\nengines = engine_section\n\n\
             [engine_section]\npkcs11 = pkcs11_section\n\n[pkcs11_section]\n\
             engine_id = pkcs11\ndynamic_path = {ENGINE}\nMODULE_PATH = {}\ninit = 0\n",
            shim().display()
        ),
    )?;
    traced.token.restore()?;
    let mut from_cnf = traced.token.command("openssl");
    from_cnf
        .args(["dgst", "-engine", "pkcs11", "-keyform", "engine", "-sha256"])
        .args(["-sign", &ec_uri, "-out"])
        .arg(signature("ec", "cnf"))
        .arg(&message)
        .env("OPENSSL_CONF", &cnf)
        .env_remove("PKCS11_MODULE_PATH");
    traced.trace(&mut from_cnf);
    run_ok(&mut from_cnf, std::time::Duration::from_secs(60))?;
    for run in ["false", "true", "cnf"] {
        let ec_ok = verify(
            &["dgst", "-sha256", "-verify"],
            &[
                &ec_pub,
                Path::new("-signature"),
                &signature("ec", run),
                &message,
            ],
        )?;
        ensure!(ec_ok.trim() == "Verified OK", "ECDSA ({run}): {ec_ok}");
    }

    stop_clean(&mut traced.recorder)?;
    let recorder = &traced.recorder;
    let calls = recorder.table("calls");
    // (mechanism, C_Sign's input: a SHA-256 DigestInfo / a SHA-256 digest, its output, the
    // traced processes: pkeyutl; dgst with PKCS11_MODULE_PATH and with openssl.cnf)
    let jobs = [("CKM_RSA_PKCS", 51, 256, 1), ("CKM_ECDSA", 32, 64, 2)];
    let mut pids = Vec::new();
    for (mechanism, in_len, out_len, processes) in jobs {
        let of_mechanism = duckdb(&format!(
            "SELECT DISTINCT pid FROM {calls} WHERE func = 'C_SignInit' AND mechanism = '{mechanism}'"
        ))?;
        ensure!(
            of_mechanism.len() == processes,
            "{mechanism}: {processes} processes expected: {of_mechanism:?}"
        );
        pids.extend(
            of_mechanism
                .iter()
                .map(|r| (mechanism, in_len, out_len, r["pid"].clone())),
        );
    }
    for (mechanism, in_len, out_len, pid) in pids {
        let by_function = calls_by_function(recorder, &format!("pid = {pid}"))?;
        println!("openssl {mechanism}: {by_function:?}");
        expect_counts(
            &format!("openssl {mechanism}"),
            &by_function,
            &[
                ("C_Initialize", 1),
                ("C_OpenSession", 1),
                ("C_Login", 1),
                ("C_SignInit", 1),
                ("C_Sign", 1),
                ("C_SignUpdate", 0),
            ],
        )?;
        let sign = duckdb(&format!(
            "SELECT s.rv_name, s.in_len, s.out_len, s.op_id = i.op_id AS same_op FROM {calls} s JOIN {calls} i USING (pid) WHERE pid = {pid} AND s.func = 'C_Sign' AND i.func = 'C_SignInit'"
        ))?;
        ensure!(
            sign.len() == 1
                && sign[0]["rv_name"] == "CKR_OK"
                && sign[0]["in_len"] == in_len
                && sign[0]["out_len"] == out_len
                && sign[0]["same_op"] == true,
            "{mechanism}: C_Sign {sign:?}"
        );
        let login = duckdb(&format!(
            "SELECT user_type, rv_name FROM {calls} WHERE pid = {pid} AND func = 'C_Login'"
        ))?;
        ensure!(
            login[0]["user_type"] == "CKU_USER" && login[0]["rv_name"] == "CKR_OK",
            "{mechanism}: {login:?}"
        );
        let process = count_where(recorder, &format!("pid = {pid} AND process <> 'openssl'"))?;
        ensure!(process == 0, "rows of pid {pid} not named openssl");
    }
    Ok(())
}
