//! `just demo` is what a newcomer runs first: `scripts/demo.sh`, run here on the binaries under
//! test, must do what it says — every operation succeeds through the shim (two signatures
//! verified, a decryption that gives the same bytes back, one wrong PIN refused), the recorder
//! loses nothing, and the analysis it ends with counts exactly those operations.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use p11trace_tests::{run, shim, target_dir, text, workspace};
use serde_json::Value;

#[test]
fn the_demo_traces_what_it_says_and_ends_with_the_analysis() -> Result<()> {
    let output = run(
        Command::new(workspace().join("scripts/demo.sh"))
            .arg(target_dir())
            .arg(shim())
            .env("NO_COLOR", "1")
            .env_remove("P11TRACE_MODULE")
            .env_remove("P11TRACE_SOCKET"),
        Duration::from_secs(300),
    )?;
    let stdout = text(&output.stdout);
    let all = format!("{stdout}\n{}", text(&output.stderr));
    assert!(output.status.success(), "the demo failed:\n{all}");
    assert_eq!(stdout.matches("Signature is valid").count(), 2, "{all}");
    assert!(stdout.contains("decrypted: the same bytes"), "{all}");
    assert!(stdout.contains("dropped=0 lost=0"), "{all}");
    assert!(stdout.contains("PKCS#11 Operation Analysis"), "{all}");

    // The dataset it names holds what it did.
    let dataset = stdout
        .lines()
        .find_map(|l| l.strip_prefix("== the dataset: "))
        .and_then(|l| l.split_whitespace().next())
        .context("the demo names its dataset")?;
    let json = run(
        Command::new(target_dir().join("p11trace-query")).args(["analyze", dataset, "--format", "json"]),
        Duration::from_secs(120),
    )?;
    let report: Value = serde_json::from_slice(&json.stdout)?;
    let calls = |func: &str| report["performance"][func]["count"].as_u64().unwrap_or(0);
    assert_eq!(calls("C_GenerateKeyPair"), 2, "RSA and EC key pairs");
    assert_eq!(calls("C_Sign"), 2, "an RSA and an ECDSA signature");
    assert_eq!(calls("C_Verify"), 2);
    assert_eq!(calls("C_Decrypt"), 1);
    let rvs = report["return_codes"].to_string();
    assert!(rvs.contains("CKR_PIN_INCORRECT"), "the wrong PIN: {rvs}");
    std::fs::remove_dir_all(std::path::Path::new(dataset).parent().context("demo folder")?)?;
    Ok(())
}
