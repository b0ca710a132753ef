//! Real pkcs11-tool workloads (--test, --test-ec, RSA and AES key generation, sign, verify,
//! encrypt, decrypt, a vendor-defined mechanism) on SoftHSM2 (2.40) and Kryoptic (3.2): traced,
//! they end exactly as they do direct; the recording equals an independent oracle's log call for
//! call (pkcs11-spy, or the counting module `tests/p11count`); and the rows carry what the calls
//! carried — templates, mechanism parameters, handles, `op_id`, the interface version, the info
//! calls' fields.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

/// The workloads, in order; they keep state (keys, signature, ciphertext) between them as a real
/// user would.
fn workloads<'a>(message: &'a str, signature: &'a str, cipher: &'a str) -> Vec<Vec<&'a str>> {
    let rsa = ["-m", "SHA256-RSA-PKCS", "--id", "01", "-i", message];
    let aes = [
        "-m",
        "AES-CBC-PAD",
        "--id",
        "02",
        "--iv",
        "000102030405060708090a0b0c0d0e0f",
    ];
    [
        vec!["--test"],
        vec!["--test-ec", "--id", "77", "--key-type", "EC:prime256v1"],
        vec![
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--id",
            "01",
            "--label",
            "rsa1",
        ],
        [&["--sign"][..], &rsa, &["-o", signature]].concat(),
        [&["--verify"][..], &rsa, &["--signature-file", signature]].concat(),
        vec![
            "--keygen",
            "--key-type",
            "AES:32",
            "--id",
            "02",
            "--label",
            "aes1",
        ],
        [&["--encrypt"][..], &aes, &["-i", message, "-o", cipher]].concat(),
        [&["--decrypt"][..], &aes, &["-i", cipher]].concat(),
        vec![
            "--sign",
            "-m",
            "0x80001234",
            "--id",
            "01",
            "-i",
            message,
            "-o",
            "/dev/null",
        ],
    ]
    .iter()
    .map(|args| login(args))
    .collect()
}

/// Runs every workload against `module` (direct or traced, as `configure` sets up), restoring the
/// token first.
fn run_workloads(
    token: &Token,
    module: &Path,
    dir: &Path,
    configure: &dyn Fn(&mut Command),
) -> Result<Vec<RunResult>> {
    token.restore()?;
    let message = dir.join("message.txt");
    std::fs::write(&message, b"the message p11trace signs and encrypts\n")?;
    let signature = dir.join("sig.bin");
    let cipher = dir.join("cipher.bin");
    let _ = std::fs::remove_file(&signature);
    let _ = std::fs::remove_file(&cipher);
    let [message, signature, cipher] =
        [message, signature, cipher].map(|p| p.display().to_string());
    let mut results = Vec::new();
    for args in workloads(&message, &signature, &cipher) {
        let mut command = token.pkcs11_tool(module, &args);
        configure(&mut command);
        // The keys are generated in the run, so signatures differ between runs; --verify checks them.
        results.push(outcome(&mut command, None)?);
    }
    Ok(results)
}

fn recorded(recorder: &Recorder, columns: &str, filter: &str) -> Result<Vec<Value>> {
    duckdb(&format!(
        "SELECT {columns} FROM {} {filter} ORDER BY start, client_id, seq",
        recorder.table("calls")
    ))
}

/// The `(type, value)` pairs of the attributes of the first call matching `filter`.
fn info_fields(recorder: &Recorder, filter: &str) -> Result<Vec<Value>> {
    duckdb(&format!(
        "WITH one AS (SELECT attrs FROM {} WHERE {filter} AND rv = 0 LIMIT 1) SELECT a.type AS t, a.value AS v FROM (SELECT unnest(attrs) AS a FROM one)",
        recorder.table("calls")
    ))
}

#[test]
fn pkcs11_tool_workloads_match_direct_runs_and_the_oracles_on_both_providers() -> Result<()> {
    for provider in [Provider::SoftHsm, Provider::Kryoptic] {
        let mut traced = Traced::on(provider, "workloads")?;
        let token = &traced.token;
        let dir = temp();
        let direct = run_workloads(token, &token.module(), dir.path(), &|_| {})?;
        ensure!(
            direct[0].0 == Some(0),
            "{provider:?}: --test failed directly: {}",
            direct[0].2
        );
        ensure!(
            direct[3].0 == Some(0) && direct[4].0 == Some(0),
            "{provider:?}: sign/verify failed directly: {:?}",
            &direct[3..5]
        );

        let log = dir.path().join("oracle.log");
        // The oracle sits between the shim and the token: pkcs11-spy for SoftHSM2, our counting
        // module for Kryoptic (OpenSC 0.23's spy loses every call of a 3.2 interface).
        let oracle = match provider {
            Provider::SoftHsm => Oracle::Spy,
            Provider::Kryoptic => Oracle::Count,
        };
        let through_oracle = |command: &mut Command| {
            traced.behind(command, oracle, &log);
        };
        let traced_runs = run_workloads(token, &shim(), dir.path(), &through_oracle)?;
        for (index, (a, b)) in direct.iter().zip(&traced_runs).enumerate() {
            ensure!(
                a == b,
                "{provider:?} workload {index}: direct and traced differ:\n{a:?}\n{b:?}"
            );
        }
        traced.recorder.stop()?;
        let recorder = &traced.recorder;

        // pkcs11-spy prints names; the counting module prints numbers.
        let rows = recorded(recorder, "func, rv, rv_name", "")?;
        let (ours, theirs) = (func_rv(&rows, oracle.rv_column()), oracle.sequence(&log)?);
        ensure!(
            ours.len() > 500,
            "{provider:?}: too few calls recorded: {}",
            ours.len()
        );
        ensure!(
            ours == theirs,
            "{provider:?}: recorded {} calls, oracle {}; first difference {:?}",
            ours.len(),
            theirs.len(),
            first_difference(&ours, &theirs)
        );

        // Vendor-defined mechanisms are forwarded and recorded by number.
        let vendor = recorded(
            recorder,
            "mechanism, mech_code, rv_name",
            "WHERE func = 'C_SignInit' AND mech_code = 2147488308",
        )?;
        ensure!(
            vendor.len() == 1 && vendor[0]["mechanism"] == "0x80001234",
            "{provider:?}: {vendor:?}"
        );
        // Kryoptic is asked for its 3.2 interface: every call of it carries 3.2.
        if provider == Provider::Kryoptic {
            let versions = duckdb(&format!(
                "SELECT DISTINCT interface_version AS v FROM {} WHERE func = 'C_Sign'",
                recorder.table("calls")
            ))?;
            ensure!(
                versions.len() == 1 && versions[0]["v"] == "3.2",
                "{versions:?}"
            );
        }
        // Templates, mechanism parameters, handles and op_id are filled.
        let keygen = recorded(
            recorder,
            "out_objects, attrs, mechanism",
            "WHERE func = 'C_GenerateKeyPair' AND rv = 0 AND mechanism = 'CKM_RSA_PKCS_KEY_PAIR_GEN'",
        )?;
        ensure!(keygen.len() == 1, "{provider:?}: {keygen:?}");
        ensure!(
            keygen[0]["out_objects"]
                .as_array()
                .is_some_and(|o| o.len() == 2),
            "{keygen:?}"
        );
        let attrs = keygen[0]["attrs"].as_array().context("attrs")?;
        ensure!(
            attrs.iter().any(|a| a["template"] == "public"
                && a["type"] == "CKA_MODULUS_BITS"
                && a["value"] == "2048"),
            "{attrs:?}"
        );
        ensure!(
            attrs.iter().any(|a| a["template"] == "private"
                && a["type"] == "CKA_LABEL"
                && a["value"] == "rsa1"),
            "{attrs:?}"
        );
        let ops = recorded(
            recorder,
            "func, op_id, session",
            "WHERE func IN ('C_SignInit', 'C_Sign') AND rv = 0",
        )?;
        ensure!(
            ops.len() >= 2 && ops.iter().all(|r| r["op_id"].is_number()),
            "{provider:?} op_id: {ops:?}"
        );
        ensure!(
            ops[0]["op_id"] == ops[1]["op_id"],
            "{provider:?}: C_SignInit and C_Sign must share op_id: {ops:?}"
        );
        let cbc = recorded(
            recorder,
            "mech_params",
            "WHERE func = 'C_EncryptInit' AND mechanism = 'CKM_AES_CBC_PAD'",
        )?;
        ensure!(
            cbc.first().is_some_and(|r| r["mech_params"] == "iv_len=16"),
            "{provider:?}: {cbc:?}"
        );
        // Info calls keep their useful fields.
        let info = info_fields(recorder, "func = 'C_GetTokenInfo'")?;
        let field = |name: &str| info.iter().find(|r| r["t"] == name).map(|r| r["v"].clone());
        ensure!(
            field("label") == Some(Value::from("workloads")),
            "{provider:?} token info: {info:?}"
        );
        ensure!(
            field("serialNumber").is_some() && field("model").is_some(),
            "{provider:?} token info: {info:?}"
        );
        let mechanism_info = info_fields(
            recorder,
            "func = 'C_GetMechanismInfo' AND mechanism = 'CKM_RSA_PKCS_KEY_PAIR_GEN'",
        )?;
        ensure!(
            mechanism_info.iter().any(|r| r["t"] == "ulMaxKeySize"
                && r["v"]
                    .as_str()
                    .is_some_and(|v| v.parse::<u64>().is_ok_and(|n| n >= 4096))),
            "{provider:?}: {mechanism_info:?}"
        );
    }
    Ok(())
}
