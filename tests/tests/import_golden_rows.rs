//! Imported rows are the log's calls, field by field: golden rows of real pkcs11-spy logs (a key
//! pair generation with both templates, a wrong PIN, a search and a signature) and of two threads'
//! interleaved records in the 0.24 format — sequence numbers, sessions, mechanisms, handles,
//! lengths, return values, timestamps in the log's time zone, every attribute of every template.

use anyhow::{Result, ensure};
use p11trace_tests::*;
use serde_json::{Value, json};

/// One of the two threads' `C_Sign` rows (process 4100): its `seq`, `tid` and (in, out) lengths.
fn thread_sign(r: &Value, seq: i64, tid: i64, (in_len, out_len): (i64, i64)) -> Result<()> {
    ensure!(
        r["seq"] == seq
            && r["pid"] == 4100
            && r["tid"] == tid
            && r["in_len"] == in_len
            && r["out_len"] == out_len,
        "{r}"
    );
    Ok(())
}

#[test]
fn golden_rows_match_the_log_field_by_field() -> Result<()> {
    let dir = temp();
    // A corpus log imported with `--tz tz` to `dir/name`.
    let corpus_import =
        |log: &str, name: &str, tz: &str| import_as(&corpus(log), dir.path(), name, &["--tz", tz]);
    // C_GenerateKeyPair with both templates (pt-keygen-rsa2048.log, record 80).
    let keygen = corpus_import("pt-keygen-rsa2048.log", "keygen.parquet", "Europe/Berlin")?;
    let r = row(&keygen, "func = 'C_GenerateKeyPair'")?;
    ensure!(
        r["seq"] == 80
            && r["session"] == 1
            && r["mechanism"] == "CKM_RSA_PKCS_KEY_PAIR_GEN"
            && r["mech_code"] == 0,
        "{r}"
    );
    ensure!(
        r["mech_params"].is_null()
            && r["out_objects"] == json!([2, 3])
            && r["rv"] == 0
            && r["rv_name"] == "CKR_OK",
        "{r}"
    );
    // 16:21:42.496 local in Berlin (CET, UTC+1) is 15:21:42.496 UTC.
    ensure!(
        r["start"]
            .as_str()
            .is_some_and(|s| s.starts_with("2026-11-25 15:21:42.496"))
            && r["start_local"] == true,
        "{r}"
    );
    ensure!(
        r["returned"] == true
            && r["source"] == "pkcs11-spy"
            && r["module"] == "/usr/lib/softhsm/libsofthsm2.so"
            && r["dur_ns"].is_null(),
        "{r}"
    );
    let t = |template: &str, kind: &str, len: i64, value: Value| {
        (template.to_owned(), kind.to_owned(), len, value, false)
    };
    let want = vec![
        t("public", "CKA_CLASS", 8, json!("CKO_PUBLIC_KEY")),
        t("public", "CKA_TOKEN", 1, json!("true")),
        t("public", "CKA_MODULUS_BITS", 8, json!("2048")),
        t("public", "CKA_PUBLIC_EXPONENT", 3, json!("010001")),
        t("public", "CKA_VERIFY", 1, json!("true")),
        t("public", "CKA_ENCRYPT", 1, json!("true")),
        t("public", "CKA_KEY_TYPE", 8, json!("CKK_RSA")),
        t("public", "CKA_LABEL", 7, json!("rsa2048")),
        t("public", "CKA_ID", 1, json!("01")),
        t("public", "CKA_PRIVATE", 1, json!("false")),
        t("private", "CKA_CLASS", 8, json!("CKO_PRIVATE_KEY")),
        t("private", "CKA_TOKEN", 1, json!("true")),
        t("private", "CKA_PRIVATE", 1, json!("true")),
        t("private", "CKA_SENSITIVE", 1, json!("true")),
        t("private", "CKA_SIGN", 1, json!("true")),
        t("private", "CKA_DECRYPT", 1, json!("true")),
        t("private", "CKA_KEY_TYPE", 8, json!("CKK_RSA")),
        t("private", "CKA_LABEL", 7, json!("rsa2048")),
        t("private", "CKA_ID", 1, json!("01")),
    ];
    ensure!(
        attrs(&r) == want,
        "keygen attrs:\n{:?}\nwant\n{want:?}",
        attrs(&r)
    );

    // C_Login with a wrong PIN (pt-err-wrong-pin.log, record 7): the PIN's length only.
    let login = corpus_import("pt-err-wrong-pin.log", "login.parquet", "UTC")?;
    let r = row(&login, "func = 'C_Login'")?;
    ensure!(
        r["seq"] == 7 && r["session"] == 1 && r["user_type"] == "CKU_USER" && r["in_len"] == 4,
        "{r}"
    );
    ensure!(
        r["rv"] == 160 && r["rv_name"] == "CKR_PIN_INCORRECT" && r["attrs"].is_null(),
        "{r}"
    );
    ensure!(
        r["start"]
            .as_str()
            .is_some_and(|s| s.starts_with("2026-11-25 ")),
        "{r}"
    );

    // C_FindObjects with a found handle (pt-sign-rsa-pkcs.log, record 10).
    let sign = corpus_import("pt-sign-rsa-pkcs.log", "sign.parquet", "UTC")?;
    let r = row(&sign, "func = 'C_FindObjects'")?;
    ensure!(
        r["seq"] == 10
            && r["session"] == 1
            && r["out_objects"] == json!([2])
            && r["out_len"] == 1
            && r["rv"] == 0,
        "{r}"
    );
    let r = row(&sign, "func = 'C_FindObjectsInit'")?;
    let want = vec![
        t("in", "CKA_CLASS", 8, json!("CKO_PRIVATE_KEY")),
        t("in", "CKA_ID", 1, json!("01")),
    ];
    ensure!(attrs(&r) == want, "find template {:?}", attrs(&r));
    let r = row(&sign, "func = 'C_Sign'")?;
    ensure!(
        r["in_len"] == 44 && r["out_len"] == 256 && r["session"] == 1,
        "{r}"
    );

    // Two threads' C_Sign records interleaved, a Returned: glued to a hex dump (0.24 format).
    let threads = dir.path().join("threads.parquet");
    let output = import(
        &fixtures().join("spy-0.24-threads.log"),
        &threads,
        &["--tz", "UTC"],
    )?;
    ensure!(
        text(&output.stderr).contains("1 ambiguous return pairing"),
        "{}",
        text(&output.stderr)
    );
    let first = row(&threads, "func = 'C_Sign' AND session = 1")?;
    let second = row(&threads, "func = 'C_Sign' AND session = 3")?;
    thread_sign(&first, 3, 140002, (44, 256))?;
    thread_sign(&second, 4, 140003, (16, 128))?;
    ensure!(
        first["rv"] == 0
            && second["rv"] == 0
            && first["returned"] == true
            && second["returned"] == true
    );
    ensure!(
        first["start"]
            .as_str()
            .is_some_and(|s| s.starts_with("2026-11-25 10:00:00.002")),
        "{first}"
    );
    let init = row(&threads, "func = 'C_SignInit' AND session = 3")?;
    ensure!(
        init["mechanism"] == "CKM_ECDSA" && init["object"] == 4 && init["tid"] == 140003,
        "{init}"
    );
    Ok(())
}
