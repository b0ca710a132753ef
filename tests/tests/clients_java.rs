//! Java's SunPKCS11 provider on SoftHSM2, its `library` the shim: `keytool -list -storetype
//! PKCS11` lists the same entries as direct (keys made beforehand with pkcs11-tool, certificates
//! with OpenSSL's engine), on one thread; and `tests/fixtures/java/ThreadedSign.java` (compiled
//! here with javac) signs from several threads at once: the dataset shows each thread's
//! signatures under a `tid` of its own, with the mechanism SunPKCS11 picks for the algorithm
//! (SHA256withECDSA: CKM_ECDSA over a digest made in Java, single-part `C_Sign`;
//! SHA256withRSA: CKM_SHA256_RSA_PKCS, `C_SignInit`/`C_SignUpdate`/`C_SignFinal`). The JVM never
//! calls `C_Finalize`; nothing is dropped or lost anyway.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, ensure};
use p11trace_tests::clients::*;
use p11trace_tests::*;

/// A SunPKCS11 provider configuration for `library` in `dir`.
fn provider_config(dir: &Path, name: &str, library: &Path) -> Result<String> {
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(
        &path,
        format!(
            "name = SoftHSM\nlibrary = {}\nslotListIndex = 0\n",
            library.display()
        ),
    )?;
    Ok(arg(&path))
}

#[test]
fn sunpkcs11_through_the_shim_lists_and_signs_from_several_threads() -> Result<()> {
    let mut traced = traced_with_keys("java")?;
    let dir = temp();
    let direct_cfg = provider_config(dir.path(), "direct", SOFTHSM.as_ref())?;
    let shim_cfg = provider_config(dir.path(), "shim", &shim())?;
    let cfg = |through_shim: bool| {
        if through_shim {
            shim_cfg.clone()
        } else {
            direct_cfg.clone()
        }
    };
    let command = |through_shim: bool, program: &str| {
        let mut command = traced.token.command(program);
        if through_shim {
            traced.trace(&mut command);
        }
        command
    };

    let keytool = same_both_ways(
        &traced.token,
        "keytool -list",
        &mut |through_shim| {
            let mut keytool = command(through_shim, "keytool");
            keytool
                .args(["-list", "-storetype", "PKCS11", "-providerClass"])
                .args([
                    "sun.security.pkcs11.SunPKCS11",
                    "-providerArg",
                    &cfg(through_shim),
                ])
                .args(["-storepass", USER_PIN]);
            keytool
        },
        &|s| s,
    )?;
    for entry in [
        "Your keystore contains 3 entries",
        "aes1, SecretKeyEntry",
        "ec1, PrivateKeyEntry",
        "rsa1, PrivateKeyEntry",
    ] {
        ensure!(
            stdout_of(&keytool).contains(entry),
            "keytool does not list `{entry}`: {}",
            stdout_of(&keytool)
        );
    }

    let classes = dir.path().join("classes");
    run_ok(
        Command::new("javac")
            .arg("-d")
            .arg(&classes)
            .arg(fixtures().join("java/ThreadedSign.java")),
        std::time::Duration::from_secs(120),
    )?;
    // (key, algorithm, threads, signatures each)
    let jobs = [(EC, "SHA256withECDSA", 4, 5), (RSA, "SHA256withRSA", 3, 4)];
    for (key, algorithm, threads, each) in jobs {
        let result = same_both_ways(
            &traced.token,
            &format!("ThreadedSign {algorithm}"),
            &mut |through_shim| {
                let mut java = command(through_shim, "java");
                java.arg("-cp")
                    .arg(&classes)
                    .args(["ThreadedSign", &cfg(through_shim), key, algorithm])
                    .args([threads.to_string(), each.to_string()])
                    .env("P11_PIN", USER_PIN);
                java
            },
            &|s| s,
        )?;
        let expected = format!(
            "{{\"threads\":{threads},\"signatures_each\":{each},\"signed\":{n},\"verified\":{n},\"thread_ids\":{threads}}}",
            n = threads * each
        );
        ensure!(
            stdout_of(&result).trim() == expected,
            "ThreadedSign {algorithm}: {}",
            stdout_of(&result)
        );
    }

    stop_clean(&mut traced.recorder)?;
    let recorder = &traced.recorder;
    let calls = recorder.table("calls");

    // keytool: one login, a walk of the token's objects, all on one thread, no signature.
    let keytool_pid = one_pid(recorder, "process = 'keytool'")?;
    let keytool_calls = calls_by_function(recorder, &format!("pid = {keytool_pid}"))?;
    println!("keytool -list: {keytool_calls:?}");
    expect_counts(
        "keytool -list",
        &keytool_calls,
        &[
            ("C_Initialize", 1),
            ("C_Login", 1),
            ("C_GetMechanismList", 2),
            ("C_SignInit", 0),
        ],
    )?;
    ensure!(
        keytool_calls.get("C_FindObjectsInit").copied().unwrap_or(0) >= 3
            && keytool_calls
                .get("C_GetMechanismInfo")
                .copied()
                .unwrap_or(0)
                >= 60,
        "keytool: {keytool_calls:?}"
    );
    let keytool_tids = count_of(&format!(
        "SELECT count(DISTINCT tid) AS n FROM {calls} WHERE pid = {keytool_pid}"
    ))?;
    ensure!(keytool_tids == 1, "keytool used {keytool_tids} threads");

    // ThreadedSign, per algorithm (one process each): every signature under its thread's tid.
    for (mechanism, func, threads, each) in [
        ("CKM_ECDSA", "C_Sign", 4, 5),
        ("CKM_SHA256_RSA_PKCS", "C_SignFinal", 3, 4),
    ] {
        let pid = one_pid(
            recorder,
            &format!("func = 'C_SignInit' AND mechanism = '{mechanism}'"),
        )?;
        let by_function = calls_by_function(recorder, &format!("pid = {pid}"))?;
        println!("ThreadedSign {mechanism}: {by_function:?}");
        let signatures = threads * each;
        let mut expected = vec![
            ("C_Login", 1),
            ("C_SignInit", signatures),
            (func, signatures),
        ];
        if func == "C_SignFinal" {
            expected.extend([("C_SignUpdate", signatures), ("C_Sign", 0)]);
        } else {
            expected.extend([("C_SignUpdate", 0), ("C_SignFinal", 0)]);
        }
        expect_counts(
            &format!("ThreadedSign {mechanism}"),
            &by_function,
            &expected,
        )?;
        let per_tid: BTreeMap<String, i64> = counts(&format!(
            "SELECT tid::VARCHAR AS k, count(*) AS n FROM {calls} WHERE pid = {pid} AND func = '{func}' AND rv = 0 GROUP BY 1"
        ))?;
        ensure!(
            per_tid.len() == threads as usize && per_tid.values().all(|&n| n == each),
            "{mechanism}: {func} per tid {per_tid:?}, expected {threads} tids with {each} each"
        );
        let inits = count_of(&format!(
            "SELECT count(*) AS n FROM {calls} WHERE pid = {pid} AND func = 'C_SignInit' AND mechanism = '{mechanism}' AND rv = 0"
        ))?;
        ensure!(inits == signatures, "{mechanism}: {inits} C_SignInit");
    }
    // The JVM exits without C_Finalize: the shim's exit handler still delivers every record.
    let finalized = count_where(recorder, "func = 'C_Finalize'")?;
    ensure!(finalized == 0, "{finalized} C_Finalize from a JVM");
    for (pid, tally) in tallies(&recorder.dataset)? {
        ensure!(
            tally.rows > 100 && tally.dropped == 0 && tally.lost == 0,
            "pid {pid}: {tally:?}"
        );
    }
    // ECDSA: a SHA-256 digest in, a P-256 signature (r ‖ s) out.
    let sizes = duckdb(&format!(
        "SELECT DISTINCT in_len, out_len FROM {calls} WHERE func = 'C_Sign' AND process = 'java'"
    ))?;
    ensure!(
        sizes.len() == 1 && sizes[0]["in_len"] == 32 && sizes[0]["out_len"] == 64,
        "C_Sign sizes: {sizes:?}"
    );
    Ok(())
}
