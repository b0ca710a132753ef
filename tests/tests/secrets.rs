//! Secrets never leave the shim (issue 2 #7, issue 3 "Secrets: an allowlist, tested"): a workload
//! with distinctive PINs, an AES key of known value imported with C_CreateObject, known plaintext,
//! RSA and EC key generation and signing, AES encryption and decryption. The scanner looks for each
//! secret raw, as hex and as base64: in every column of every row read back by DuckDB; in every
//! Parquet file's *decompressed* values (each file written out by DuckDB as CSV, every column;
//! its zstd pages hide anything from a byte scan); in the uncompressed files (the write-ahead log,
//! whose last segment holds every event of this run, the ledger, temporary files) byte by byte;
//! and on the recorder's and the shim's stderr (a byte scan of a recorded file misses 930 of its
//! 938 distinct values of 12 characters or more, `C_GetSlotList` among them). Positive controls: the same scanner finds every
//! secret in pkcs11-spy's log of the same workload, and the decompressed scan finds a PIN planted
//! in a zstd copy of a recorded file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, ensure};
use p11trace_tests::*;

const WRONG_PIN: &str = "Wrong-Pin-5550";
const AES_KEY: &[u8; 32] = b"Aes-Key-Value-0123456789abcdef!!";
const PLAINTEXT: &[u8] = b"Plaintext-Secret-7731";
const IV: &str = "00112233445566778899aabbccddeeff";

#[test]
fn no_secret_reaches_any_file_the_recorder_writes() -> Result<()> {
    let mut traced = Traced::new("secrets")?;
    let dir = temp();
    let file = |name: &str| dir.path().join(name).display().to_string();
    let (key_file, plain_file, digest_file) =
        (file("aes.key"), file("plain.txt"), file("digest.bin"));
    std::fs::write(&key_file, AES_KEY)?;
    std::fs::write(&plain_file, PLAINTEXT)?;
    std::fs::write(&digest_file, [0x5au8; 32])?;
    let log = dir.path().join("spy.log");
    let (ciphertext, pss_signature, ec_signature) =
        (file("cipher.bin"), file("pss.sig"), file("ec.sig"));
    let aes = ["-m", "AES-CBC-PAD", "--id", "0a", "--iv", IV];
    let steps: Vec<Vec<&str>> = vec![
        INIT_USER_PIN.to_vec(),
        vec!["--login", "--pin", WRONG_PIN, "--list-objects"],
        login(&[
            "-w",
            &key_file,
            "--type",
            "secrkey",
            "--key-type",
            "AES:32",
            "--id",
            "0a",
            "--label",
            "aeskey",
        ]),
        login(
            &[
                &["--encrypt"][..],
                &aes,
                &["-i", &plain_file, "-o", &ciphertext],
            ]
            .concat(),
        ),
        login(&[&["--decrypt"][..], &aes, &["-i", &ciphertext]].concat()),
        login(&[
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--id",
            "0f",
            "--label",
            "rsa1",
        ]),
        login(&[
            "--sign",
            "-m",
            "SHA256-RSA-PKCS-PSS",
            "--id",
            "0f",
            "-i",
            &plain_file,
            "-o",
            &pss_signature,
        ]),
        login(&[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "0e",
            "--label",
            "ec1",
        ]),
        login(&[
            "--sign",
            "-m",
            "ECDSA",
            "--id",
            "0e",
            "-i",
            &digest_file,
            "-o",
            &ec_signature,
        ]),
    ];
    let mut client_stderr = Vec::new();
    for (index, args) in steps.iter().enumerate() {
        let mut command = traced.pkcs11_tool(args);
        traced.behind(&mut command, Oracle::Spy, &log);
        let output = run(&mut command, Duration::from_secs(120))?;
        // Step 1 (wrong PIN) must fail; every other step must succeed.
        ensure!(
            output.status.success() == (index != 1),
            "step {index} {args:?}: {}",
            text(&output.stderr)
        );
        client_stderr.extend_from_slice(&output.stderr);
    }
    let recorder = &mut traced.recorder;
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
    // Every file the recorder wrote, hidden ones included: Parquet by its decompressed values,
    // everything else (WAL, ledger, key, temporary files) byte by byte.
    let files = all_files(recorder.dir.path());
    let (parquet, raw): (Vec<&PathBuf>, Vec<&PathBuf>) = files
        .iter()
        .partition(|f| f.extension().is_some_and(|e| e == "parquet"));
    ensure!(!parquet.is_empty(), "no Parquet written");
    let wal: Vec<&&PathBuf> = raw
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "wal"))
        .collect();
    // The log scan must have something to scan: its segment holds this run's connections.
    ensure!(
        wal.iter()
            .any(|f| std::fs::read(f).is_ok_and(|b| contains_secret(&b, b"pkcs11-tool"))),
        "no write-ahead log segment with this run's events to scan: {wal:?}"
    );
    for file in &parquet {
        let values = decompressed(file, dir.path())?;
        for (name, secret) in &secrets {
            ensure!(
                !contains_secret(&values, secret),
                "the {name} is in the values of {}",
                file.display()
            );
        }
    }
    for file in &raw {
        let bytes = std::fs::read(file)?;
        for (name, secret) in &secrets {
            ensure!(
                !contains_secret(&bytes, secret),
                "the {name} is in {}",
                file.display()
            );
        }
    }
    // Control: the decompressed scan finds a PIN planted in a zstd copy of a recorded file.
    let planted = dir.path().join("planted.parquet");
    duckdb(&format!(
        "COPY (SELECT * REPLACE ('{USER_PIN}' AS process) FROM read_parquet('{}')) TO '{}' (FORMAT parquet, COMPRESSION zstd)",
        parquet[0].display(),
        planted.display()
    ))?;
    ensure!(
        contains_secret(&decompressed(&planted, dir.path())?, USER_PIN.as_bytes()),
        "control failed: the decompressed scan cannot find a PIN planted in {}",
        planted.display()
    );
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
