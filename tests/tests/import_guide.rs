//! The pkcs11-spy integration guide's own log form — arguments inline in the header
//! (`7: C_Login(6, 0, <pin>, 4)`, templates over several lines), outputs as named lines
//! (`Session: 6`, `Public Key: 4`, `Slot: …`, `Info: Manufacturer = …`) — imports exactly:
//! every call with its function and return value, its arguments in the columns the shim fills,
//! sessions and logins as its calls say, through `import`, `analyze` and jq alike; and no PIN
//! printed inline is ever stored, even one with a comma in it.
//!
//! The logs (`tests/fixtures/guide/`) are written from the form the guide prints; their
//! `expected.json` were counted by a separate pass over the headers and `Returned:` lines.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::{Value, json};

fn guide(name: &str) -> PathBuf {
    fixtures().join("guide").join(name)
}

fn expected(log: &str) -> Result<Value> {
    let path = guide(log).with_extension("expected.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

/// `jq -e FILTER` over `json`: true when jq says so.
fn jq(json: &[u8], filter: &str) -> Result<bool> {
    let mut child = Command::new("jq")
        .args(["-e", filter])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("jq")?;
    std::io::Write::write_all(child.stdin.as_mut().context("jq stdin")?, json)?;
    Ok(child.wait()?.success())
}

#[test]
fn every_guide_log_imports_to_its_counted_calls_through_import_analyze_and_jq() -> Result<()> {
    let dir = temp();
    for log in ["keygen.log", "sign-wrong-pin.log", "pins-inline.log"] {
        let want = expected(log)?;
        let out = dir.path().join(format!("{log}.parquet"));
        let output = import(&guide(log), &out, &[])?;
        let stderr = text(&output.stderr);
        // Only the log with commas inside its PINs and label has anything to say.
        let complaints = stderr.lines().filter(|l| l.contains(".log:")).count();
        ensure!(
            complaints == if log == "pins-inline.log" { 3 } else { 0 },
            "{log}: {stderr}"
        );
        let file = format!("'{}'", out.display());
        let by_function = counts(&format!(
            "SELECT func AS k, count(*) AS n FROM {file} GROUP BY 1"
        ))?;
        ensure!(
            json!(by_function) == want["calls_by_function"],
            "{log}: {by_function:?} vs {}",
            want["calls_by_function"]
        );
        let non_ok = counts(&format!(
            "SELECT rv_name AS k, count(*) AS n FROM {file} WHERE rv <> 0 GROUP BY 1"
        ))?;
        ensure!(json!(non_ok) == want["non_ok_returns"], "{log}: {non_ok:?}");
        let all = &duckdb(&format!(
            "SELECT count(*) AS n, count(*) FILTER (returned AND rv IS NOT NULL) AS returned, \
             count(DISTINCT source) AS sources, min(source) AS source FROM {file}"
        ))?[0];
        ensure!(
            all["n"] == want["total_calls"]
                && all["returned"] == want["total_calls"]
                && all["source"] == "pkcs11-spy",
            "{log}: {all}"
        );

        let report = query(&[
            "analyze",
            guide(log).to_str().unwrap_or_default(),
            "--format",
            "json",
        ])?;
        let sessions = &want["sessions"];
        let logins = &want["logins"];
        let filter = format!(
            ".summary.total_operations == {} and .sessions.opened == {} and .sessions.closed == {} \
             and .sessions.logins == {} and .sessions.failed_logins == {} \
             and .sessions.never_closed == 0 and .summary.unreturned_operations == 0",
            want["total_calls"],
            sessions["opened_ok"],
            sessions["closed_ok"],
            logins["ok"],
            logins["failed"]
        );
        ensure!(
            jq(&report.stdout, &filter)?,
            "{log}: jq -e '{filter}' is false for {}",
            text(&report.stdout)
        );
        let text_report =
            text(&query(&["analyze", guide(log).to_str().unwrap_or_default()])?.stdout);
        for (func, n) in by_function {
            ensure!(
                text_report.lines().any(|l| l
                    .split_whitespace()
                    .take(2)
                    .eq([func.as_str(), &n.to_string()])),
                "{log}: no `{func} {n}` row in the text report:\n{text_report}"
            );
        }
    }
    Ok(())
}

#[test]
fn inline_arguments_and_named_outputs_fill_the_columns_the_shim_fills() -> Result<()> {
    let dir = temp();
    let keygen = import_as(&guide("keygen.log"), dir.path(), "keygen.parquet", &[])?;
    let row = |file: &std::path::Path, filter: &str| data::row(file, filter);
    let list = row(&keygen, "func = 'C_GetSlotList' AND seq = 3")?;
    ensure!(
        list["out_len"] == 2 && list["ck_flags"] == 0,
        "Slot: lines: {list}"
    );
    let open = row(&keygen, "func = 'C_OpenSession'")?;
    ensure!(
        open["session"] == 6 && open["slot_id"] == 1_262_138_880_i64 && open["ck_flags"] == 6,
        "{open}"
    );
    let so = row(&keygen, "func = 'C_Login' AND seq = 7")?;
    ensure!(
        so["user_type"] == "CKU_SO" && so["in_len"] == 8 && so["session"] == 6,
        "{so}"
    );
    let init = row(&keygen, "func = 'C_InitToken'")?;
    ensure!(
        init["in_len"] == 8
            && data::attrs(&init).contains(&(
                "in".into(),
                "CKA_LABEL".into(),
                32,
                json!("MY_LABEL"),
                false
            )),
        "{init}"
    );
    let info = row(&keygen, "func = 'C_GetInfo'")?;
    ensure!(
        info["provider"] == "SoftHSM Implementation of PKCS11 2.6",
        "{info}"
    );
    // The multi-line templates, through the allowlist.
    let pair = row(&keygen, "func = 'C_GenerateKeyPair' AND rv = 0")?;
    let attrs = data::attrs(&pair);
    ensure!(
        pair["mechanism"] == "CKM_RSA_PKCS_KEY_PAIR_GEN" && pair["out_objects"] == json!([4, 3]),
        "{pair}"
    );
    for wanted in [
        ("public", "CKA_MODULUS_BITS", 8, json!("2048")),
        ("public", "CKA_PUBLIC_EXPONENT", 3, json!("010001")),
        ("private", "CKA_LABEL", 9, json!("guide key")),
        ("private", "CKA_ID", 2, json!("0102")),
        ("private", "CKA_SIGN", 1, json!("true")),
    ] {
        let found = attrs.iter().any(|a| {
            (a.0.as_str(), a.1.as_str(), a.2, &a.3) == (wanted.0, wanted.1, wanted.2, &wanted.3)
        });
        ensure!(found, "{wanted:?} not in {attrs:?}");
    }
    let failed = row(&keygen, "func = 'C_GenerateKeyPair' AND rv <> 0")?;
    ensure!(
        failed["rv_name"] == "CKR_MECHANISM_INVALID" && failed["out_objects"].is_null(),
        "a failed call's printed outputs are not handles: {failed}"
    );

    let sign = import_as(
        &guide("sign-wrong-pin.log"),
        dir.path(),
        "sign.parquet",
        &[],
    )?;
    let found = row(&sign, "func = 'C_FindObjects'")?;
    ensure!(
        found["out_objects"] == json!([3]) && found["out_len"] == 1,
        "{found}"
    );
    let find = row(&sign, "func = 'C_FindObjectsInit'")?;
    ensure!(
        data::attrs(&find)
            .iter()
            .any(|a| a.1 == "CKA_CLASS" && a.3 == "CKO_PRIVATE_KEY"),
        "{find}"
    );
    let pss = row(
        &sign,
        "func = 'C_SignInit' AND mechanism = 'CKM_RSA_PKCS_PSS'",
    )?;
    ensure!(
        pss["object"] == 3 && pss["mech_params"] == "param_len=40",
        "{pss}"
    );
    let signed = row(&sign, "func = 'C_Sign' AND seq = 13")?;
    ensure!(
        signed["in_len"] == 32 && signed["out_len"] == 256,
        "{signed}"
    );
    let wrong = duckdb(&format!(
        "SELECT in_len FROM '{}' WHERE func = 'C_Login' AND rv_name = 'CKR_PIN_INCORRECT' ORDER BY seq",
        sign.display()
    ))?;
    ensure!(
        wrong == vec![json!({"in_len": 4}), json!({"in_len": 5})],
        "{wrong:?}"
    );
    let sensitive = row(&sign, "func = 'C_GetAttributeValue' AND rv <> 0")?;
    ensure!(
        data::attrs(&sensitive)
            .iter()
            .any(|a| a.1 == "CKA_VALUE" && a.3.is_null() && a.4),
        "CKA_VALUE is redacted: {sensitive}"
    );
    Ok(())
}

#[test]
fn no_pin_printed_inline_is_ever_stored() -> Result<()> {
    let dir = temp();
    let log = guide("pins-inline.log");
    let out = import_as(&log, dir.path(), "pins.parquet", &[])?;
    let values = decompressed(&out, dir.path())?;
    // Control: the scan sees what the log holds (its label's first word).
    ensure!(contains_secret(&values, b"MY_LABEL") || contains_secret(&values, b"C_Login"));
    for pin in ["87654321", "Sup3r-Secret", "9x,7y,5z", "N3w,P1n,Here"] {
        ensure!(
            !contains_secret(&values, pin.as_bytes()),
            "the PIN `{pin}` reached the import's values"
        );
        ensure!(
            !contains_secret(&std::fs::read(&out)?, pin.as_bytes()),
            "the PIN `{pin}` is in the Parquet file"
        );
    }
    // The pieces a split at the PIN's commas would leave are 2–3 bytes: as hex or inside the
    // compressed file they match random bytes (the run's UUIDv7 `run_id` once did, in CI), so
    // they are looked for as text in every value but the generated run_id.
    let run_id = data::row(&out, "seq = 0")?["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(!run_id.is_empty(), "the import has a run_id");
    let shown = String::from_utf8_lossy(&values).replace(&run_id, "");
    for piece in ["9x", "7y", "5z", "N3w", "P1n", "Here"] {
        ensure!(
            !shown.contains(piece),
            "a piece `{piece}` of a comma PIN reached the import's values"
        );
    }
    // Only lengths are kept; a comma inside a PIN shifts nothing into another column.
    let logins = duckdb(&format!(
        "SELECT func, in_len, user_type, session FROM '{}' WHERE func IN ('C_Login', 'C_InitPIN', 'C_SetPIN') ORDER BY seq",
        out.display()
    ))?;
    let lens: Vec<(String, i64)> = logins
        .iter()
        .map(|r| {
            (
                r["func"].as_str().unwrap_or("").to_owned(),
                r["in_len"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    ensure!(
        lens == [
            ("C_Login".into(), 8),
            ("C_InitPIN".into(), 12),
            ("C_Login".into(), 8),
            ("C_Login".into(), 12),
            ("C_SetPIN".into(), 12)
        ],
        "{logins:?}"
    );
    ensure!(logins.iter().all(|r| r["session"] == 2), "{logins:?}");
    // The label with a comma cannot be told from the PIN: the call keeps only its slot.
    let init = data::row(&out, "func = 'C_InitToken'")?;
    ensure!(
        init["slot_id"] == 1_262_138_880_i64 && init["in_len"].is_null() && init["attrs"].is_null(),
        "{init}"
    );
    // --strict turns the first such header into a failure that names it and leaves nothing.
    let strict = dir.path().join("strict.parquet");
    let output = query_output(&[
        "import",
        log.to_str().unwrap_or_default(),
        "-o",
        strict.to_str().unwrap_or_default(),
        "--strict",
    ])?;
    ensure!(output.status.code() == Some(1), "{output:?}");
    ensure!(
        text(&output.stderr).contains("pins-inline.log:4: C_InitToken"),
        "{}",
        text(&output.stderr)
    );
    ensure!(!strict.exists(), "--strict left a file behind");
    Ok(())
}
