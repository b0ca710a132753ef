//! `audit` on a real workload with known keys: three key pairs generated through the shim by
//! `pkcs11-tool` (two RSA, one EC, distinct CKA_IDs), signatures by several `pkcs11-tool`
//! processes, and a login with a wrong PIN. The per-key counts must equal what the workload
//! did; nothing that used a key may vanish from the report.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

const KEYS: [(&str, &str, &str); 3] = [
    ("rsa:2048", "rsa-one", "01"),
    ("rsa:2048", "rsa-two", "02"),
    ("EC:prime256v1", "ec-one", "03"),
];

/// (key id, mechanism) of each signing process, in order.
const SIGNERS: [(&str, &str); 4] = [
    ("01", "SHA256-RSA-PKCS"),
    ("01", "SHA256-RSA-PKCS"),
    ("02", "SHA256-RSA-PKCS"),
    ("03", "ECDSA"),
];

fn key<'r>(report: &'r Value, name: &str) -> Result<&'r Value> {
    report["keys"]
        .as_array()
        .context("keys")?
        .iter()
        .find(|k| k["key"] == name)
        .with_context(|| format!("no key {name} in {report:#}"))
}

fn op_calls(key: &Value, func: &str) -> u64 {
    key["operations"]
        .as_array()
        .map(|ops| {
            ops.iter()
                .filter(|o| o["func"] == func)
                .map(|o| o["calls"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn per_key_usage_equals_what_the_workload_did() -> Result<()> {
    let mut traced = Traced::new("audit")?;
    let minute = Duration::from_secs(120);
    for (key_type, label, id) in KEYS {
        run_ok(
            &mut traced.pkcs11_tool(&login(&[
                "--keypairgen",
                "--key-type",
                key_type,
                "--id",
                id,
                "--label",
                label,
            ])),
            minute,
        )?;
    }
    let data = traced.token.dir.path().join("data.bin");
    std::fs::write(&data, b"what the auditor wants signed")?;
    let mut signer_pids = Vec::new();
    for (n, (id, mechanism)) in SIGNERS.iter().enumerate() {
        let signature = traced.token.dir.path().join(format!("sig-{n}"));
        let mut command = traced.pkcs11_tool(&login(&[
            "--sign",
            "--id",
            id,
            "-m",
            mechanism,
            "-i",
            data.to_str().context("path")?,
            "-o",
            signature.to_str().context("path")?,
        ]));
        let child = command.spawn()?;
        signer_pids.push((child.id(), *id));
        let output = child.wait_with_output()?;
        ensure!(output.status.success(), "signing with {id} failed");
        ensure!(std::fs::metadata(&signature)?.len() > 0, "no signature");
    }
    let wrong = run(
        &mut traced.pkcs11_tool(&["--login", "--pin", "0000", "--list-objects"]),
        minute,
    )?;
    ensure!(!wrong.status.success(), "a wrong PIN must fail");
    traced.recorder.stop()?;

    let dataset = traced.recorder.dataset.to_str().context("path")?.to_owned();
    let output = query(&["audit", &dataset, "--format", "json"])?;
    let report: Value = serde_json::from_slice(&output.stdout)?;

    // One key pair of each id was generated: six objects created.
    ensure!(
        report["objects"]["created"]["C_GenerateKeyPair"] == 6,
        "{:#}",
        report["objects"]
    );
    for (id, label, key_type, signers) in [
        ("01", "rsa-one", "CKK_RSA", 2),
        ("02", "rsa-two", "CKK_RSA", 1),
        ("03", "ec-one", "CKK_EC", 1),
    ] {
        let key = key(&report, &format!("private/id={id}"))?;
        let pids: Vec<u32> = signer_pids
            .iter()
            .filter(|(_, k)| *k == id)
            .map(|(pid, _)| *pid)
            .collect();
        ensure!(pids.len() == signers, "workload bookkeeping");
        ensure!(
            op_calls(key, "C_SignInit") == signers as u64,
            "{id}: C_SignInit {} != {signers}: {key:#}",
            op_calls(key, "C_SignInit")
        );
        // Every successful C_Sign those processes made, and no other process's.
        let signs = count_of(&format!(
            "SELECT count(*) AS n FROM {} WHERE func = 'C_Sign' AND pid IN ({})",
            table(&traced.recorder.dataset, "calls"),
            pids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ))?;
        ensure!(
            signs >= signers as i64 && op_calls(key, "C_Sign") == signs as u64,
            "{id}: C_Sign {} != {signs}",
            op_calls(key, "C_Sign")
        );
        let processes: Vec<u64> = key["processes"]
            .as_array()
            .context("processes")?
            .iter()
            .filter_map(|p| p["pid"].as_u64())
            .collect();
        ensure!(
            processes.len() == signers && pids.iter().all(|p| processes.contains(&u64::from(*p))),
            "{id}: processes {processes:?}, signers {pids:?}"
        );
        ensure!(
            key["label"] == label && key["key_type"] == key_type,
            "{key:#}"
        );
        ensure!(
            key["failed"] == 0 && key["first_use"].is_string(),
            "{key:#}"
        );
        let mechanism = if key_type == "CKK_EC" {
            "CKM_ECDSA"
        } else {
            "CKM_SHA256_RSA_PKCS"
        };
        ensure!(
            key["operations"]
                .as_array()
                .context("operations")?
                .iter()
                .all(|o| o["mechanism"] == mechanism),
            "{id}: every use with {mechanism}: {key:#}"
        );
    }
    // The public halves were never used; nothing was left unresolved.
    ensure!(
        report["keys"].as_array().map(Vec::len) == Some(3),
        "{:#}",
        report["keys"]
    );
    ensure!(
        report["unresolved"]["calls"] == 0,
        "{:#}",
        report["unresolved"]
    );
    // The wrong PIN: one failed user login, by the process that tried it.
    let failed: Vec<&Value> = report["logins"]
        .as_array()
        .context("logins")?
        .iter()
        .filter(|l| l["failed"].as_u64() > Some(0))
        .collect();
    ensure!(
        failed.len() == 1
            && failed[0]["failed"] == 1
            && failed[0]["failures"]["CKR_PIN_INCORRECT"] == 1
            && failed[0]["user_type"] == "CKU_USER"
            && failed[0]["ok"] == 0,
        "{failed:#?}"
    );
    let ok_logins: u64 = report["logins"]
        .as_array()
        .context("logins")?
        .iter()
        .filter_map(|l| l["ok"].as_u64())
        .sum();
    ensure!(
        ok_logins == (KEYS.len() + SIGNERS.len()) as u64,
        "ok logins {ok_logins}"
    );

    // schemas/audit.md documents exactly the keys written.
    let written = json_paths(
        &report,
        &[
            "unresolved.by_function",
            "logins[].failures",
            "objects.created",
        ],
    );
    let documented = documented_paths("audit.md")?;
    ensure!(
        written == documented,
        "written but undocumented: {:?}; documented but not written: {:?}",
        written.difference(&documented).collect::<Vec<_>>(),
        documented.difference(&written).collect::<Vec<_>>()
    );

    // Text and CSV say the same.
    let text_report = text(&query(&["audit", &dataset])?.stdout);
    ensure!(
        text_report.contains("private/id=01") && text_report.contains("CKR_PIN_INCORRECT 1"),
        "{text_report}"
    );
    let csv = text(&query(&["audit", &dataset, "--format", "csv"])?.stdout);
    ensure!(
        csv.lines().any(|l| l.starts_with(
            "private/id=03,CKO_PRIVATE_KEY,CKK_EC,03,ec-one,C_SignInit,CKM_ECDSA,1,0"
        )),
        "{csv}"
    );
    Ok(())
}
