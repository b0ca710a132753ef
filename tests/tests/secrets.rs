//! Secrets never leave the shim (issue 2 #7, issue 3 "Secrets: an allowlist, tested"): a workload
//! with distinctive PINs, an AES key of known value imported with C_CreateObject, known plaintext,
//! RSA and EC key generation and signing, AES encryption and decryption. The scanner looks for each
//! secret raw, as hex and as base64 in every file the recorder wrote (WAL and temporary files
//! included), on its stderr, and in every column read back by DuckDB; a positive control proves the
//! same scanner finds them in pkcs11-spy's log of the same workload.

use std::time::Duration;

use anyhow::{Result, ensure};
use p11trace_tests::*;

const WRONG_PIN: &str = "Wrong-Pin-5550";
const AES_KEY: &[u8; 32] = b"Aes-Key-Value-0123456789abcdef!!";
const PLAINTEXT: &[u8] = b"Plaintext-Secret-7731";
const IV: &str = "00112233445566778899aabbccddeeff";

#[test]
fn no_secret_reaches_any_file_the_recorder_writes() -> Result<()> {
    let token = Token::new("secrets")?;
    let dir = temp();
    let key_file = dir.path().join("aes.key");
    let plain_file = dir.path().join("plain.txt");
    let digest_file = dir.path().join("digest.bin");
    std::fs::write(&key_file, AES_KEY)?;
    std::fs::write(&plain_file, PLAINTEXT)?;
    std::fs::write(&digest_file, [0x5au8; 32])?;
    let log = dir.path().join("spy.log");
    let mut recorder = Recorder::start(&[])?;
    let path = |p: &std::path::Path| p.display().to_string();
    let ciphertext = path(&dir.path().join("cipher.bin"));
    let steps: Vec<Vec<String>> = vec![
        vec![
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            SO_PIN,
            "--init-pin",
            "--new-pin",
            USER_PIN,
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec!["--login", "--pin", WRONG_PIN, "--list-objects"]
            .into_iter()
            .map(String::from)
            .collect(),
        vec![
            "--login".into(),
            "--pin".into(),
            USER_PIN.into(),
            "-w".into(),
            path(&key_file),
            "--type".into(),
            "secrkey".into(),
            "--key-type".into(),
            "AES:32".into(),
            "--id".into(),
            "0a".into(),
            "--label".into(),
            "aeskey".into(),
        ],
        vec![
            "--login".into(),
            "--pin".into(),
            USER_PIN.into(),
            "--encrypt".into(),
            "-m".into(),
            "AES-CBC-PAD".into(),
            "--id".into(),
            "0a".into(),
            "--iv".into(),
            IV.into(),
            "-i".into(),
            path(&plain_file),
            "-o".into(),
            ciphertext.clone(),
        ],
        vec![
            "--login".into(),
            "--pin".into(),
            USER_PIN.into(),
            "--decrypt".into(),
            "-m".into(),
            "AES-CBC-PAD".into(),
            "--id".into(),
            "0a".into(),
            "--iv".into(),
            IV.into(),
            "-i".into(),
            ciphertext.clone(),
        ],
        vec![
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--id",
            "0f",
            "--label",
            "rsa1",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "--login".into(),
            "--pin".into(),
            USER_PIN.into(),
            "--sign".into(),
            "-m".into(),
            "SHA256-RSA-PKCS-PSS".into(),
            "--id".into(),
            "0f".into(),
            "-i".into(),
            path(&plain_file),
            "-o".into(),
            path(&dir.path().join("pss.sig")),
        ],
        vec![
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "0e",
            "--label",
            "ec1",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "--login".into(),
            "--pin".into(),
            USER_PIN.into(),
            "--sign".into(),
            "-m".into(),
            "ECDSA".into(),
            "--id".into(),
            "0e".into(),
            "-i".into(),
            path(&digest_file),
            "-o".into(),
            path(&dir.path().join("ec.sig")),
        ],
    ];
    let mut client_stderr = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let args: Vec<&str> = step.iter().map(String::as_str).collect();
        let mut command = token.pkcs11_tool(&shim(), &args);
        recorder.shim_env(&mut command, SPY);
        command
            .env("PKCS11SPY", SOFTHSM)
            .env("PKCS11SPY_OUTPUT", &log);
        let output = run(&mut command, Duration::from_secs(120))?;
        // Step 1 (wrong PIN) must fail; every other step must succeed.
        ensure!(
            output.status.success() == (index != 1),
            "step {index} {args:?}: {}",
            text(&output.stderr)
        );
        client_stderr.extend_from_slice(&output.stderr);
    }
    let (status, recorder_stderr) = recorder.stop()?;
    ensure!(status.success());

    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("SO PIN", SO_PIN.as_bytes().to_vec()),
        ("user PIN", USER_PIN.as_bytes().to_vec()),
        ("wrong PIN", WRONG_PIN.as_bytes().to_vec()),
        ("AES key", AES_KEY.to_vec()),
        ("plaintext", PLAINTEXT.to_vec()),
    ];
    // Positive control: the same scanner finds every secret in the spy's log of this workload.
    let spy_log = std::fs::read(&log)?;
    for (name, secret) in &secrets {
        ensure!(
            contains_secret(&spy_log, secret),
            "control failed: the scanner cannot find the {name} in the spy log"
        );
    }
    // Every file the recorder wrote, hidden ones included.
    let files = all_files(recorder.dir.path());
    ensure!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "parquet")),
        "no Parquet written"
    );
    for file in &files {
        let bytes = std::fs::read(file)?;
        for (name, secret) in &secrets {
            ensure!(
                !contains_secret(&bytes, secret),
                "the {name} is in {}",
                file.display()
            );
        }
    }
    // Every column of every row, as DuckDB reads it.
    let everything = format!(
        "{}{}",
        serde_json::to_string(&duckdb(&format!(
            "SELECT * FROM {}",
            recorder.table("calls")
        ))?)?,
        serde_json::to_string(&duckdb(&format!(
            "SELECT * FROM {}",
            recorder.table("clients")
        ))?)?
    );
    for (name, secret) in &secrets {
        ensure!(
            !contains_secret(everything.as_bytes(), secret),
            "the {name} is in the data read back by DuckDB"
        );
        ensure!(
            !contains_secret(recorder_stderr.as_bytes(), secret),
            "the {name} is on the recorder's stderr"
        );
        ensure!(
            !contains_secret(&client_stderr, secret),
            "the {name} is on the shim's stderr"
        );
    }
    // Presence: the import's CKA_VALUE is there, typed and sized, and marked redacted.
    let value = duckdb(&format!(
        "SELECT a.len, a.redacted, a.value FROM (SELECT unnest(attrs) AS a FROM {} WHERE func = 'C_CreateObject') WHERE a.type = 'CKA_VALUE'",
        recorder.table("calls")
    ))?;
    ensure!(
        value.len() == 1,
        "expected one CKA_VALUE attribute: {value:?}"
    );
    ensure!(
        value[0]["len"] == 32 && value[0]["redacted"] == true && value[0]["value"].is_null(),
        "{value:?}"
    );
    // Mechanism parameters keep their non-secret fields.
    let pss = duckdb(&format!(
        "SELECT mech_params FROM {} WHERE func = 'C_SignInit' AND mechanism = 'CKM_SHA256_RSA_PKCS_PSS'",
        recorder.table("calls")
    ))?;
    ensure!(
        pss.len() == 1
            && pss[0]["mech_params"] == "hash=CKM_SHA256 mgf=CKG_MGF1_SHA256 salt_len=32",
        "{pss:?}"
    );
    // PIN lengths are kept, PINs are not.
    let logins = duckdb(&format!(
        "SELECT user_type, in_len, rv_name FROM {} WHERE func = 'C_Login' ORDER BY start",
        recorder.table("calls")
    ))?;
    ensure!(
        logins
            .iter()
            .any(|r| r["in_len"] == SO_PIN.len() && r["user_type"] == "CKU_SO"),
        "{logins:?}"
    );
    ensure!(
        logins
            .iter()
            .any(|r| r["in_len"] == WRONG_PIN.len() && r["rv_name"] == "CKR_PIN_INCORRECT"),
        "{logins:?}"
    );
    Ok(())
}
