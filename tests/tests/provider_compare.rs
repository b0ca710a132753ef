//! `compare` on real recordings of the same script (`p11workload mechanisms`: several digest
//! mechanisms, each tried on every token) against SoftHSM2 and Kryoptic: both providers named,
//! per-function ratios with intervals, and the compatibility differences between the two tokens
//! found — by (function, mechanism) and by aligning the scripts.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

const ROUNDS: &str = "20";

/// Runs the mechanisms script twice against `provider`'s token through the shim into `recorder`.
fn script(recorder: &Recorder, provider: Provider, label: &str) -> Result<Token> {
    let token = Token::of(provider, label)?;
    for _ in 0..2 {
        let mut command = token.command(target_dir().join("p11workload"));
        command.arg(shim()).args([USER_PIN, "mechanisms", ROUNDS]);
        recorder.shim_env(&mut command, token.module());
        run_ok(&mut command, Duration::from_secs(120))?;
    }
    Ok(token)
}

fn compare(args: &[String]) -> Result<(i32, Value)> {
    let output = run(
        Command::new(query_bin())
            .arg("compare")
            .args(args)
            .args(["--format", "json"]),
        Duration::from_secs(120),
    )?;
    let status = output.status.code().unwrap_or(-1);
    ensure!(
        status == 0,
        "compare failed ({status}): {}",
        text(&output.stderr)
    );
    Ok((status, serde_json::from_slice(&output.stdout)?))
}

fn check_softhsm_against_kryoptic(report: &Value) {
    let sides = report["sides"].as_array().expect("sides");
    assert_eq!(sides.len(), 2, "{report:#}");
    assert!(
        sides[0]["name"].as_str().unwrap_or("").contains("SoftHSM"),
        "{report:#}"
    );
    let kryoptic = sides[1]["providers"][0].as_str().unwrap_or("");
    assert!(
        !kryoptic.is_empty() && !kryoptic.contains("SoftHSM"),
        "{report:#}"
    );
    let comparison = &report["comparisons"][0];
    // Per function: C_Digest ran on both, with a ratio and its interval.
    let digest = comparison["functions"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["func"] == "C_Digest"))
        .expect("a C_Digest row");
    let ratio = &digest["median_ratio"];
    let (lo, estimate, hi) = (
        ratio["lo"].as_f64(),
        ratio["estimate"].as_f64(),
        ratio["hi"].as_f64(),
    );
    assert!(
        matches!((lo, estimate, hi), (Some(l), Some(e), Some(h)) if l <= e && e <= h && l > 0.0),
        "{digest}"
    );
    // Per mechanism: C_Digest rows carry their C_DigestInit's mechanism.
    assert!(
        comparison["mechanisms"].as_array().is_some_and(|rows| rows
            .iter()
            .any(|r| r["func"] == "C_Digest" && r["mechanism"] == "CKM_SHA256")),
        "{comparison:#}"
    );
    // The migration answer: a digest one token does and the other refuses.
    let incompatible: Vec<&Value> = comparison["compatibility"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["func"] == "C_DigestInit")
        .collect();
    assert!(!incompatible.is_empty(), "{comparison:#}");
    for c in &incompatible {
        let refused = if c["a"] == "ok" {
            &c["rv_b"]
        } else {
            &c["rv_a"]
        };
        assert!(
            refused
                .as_object()
                .is_some_and(|codes| codes.contains_key("CKR_MECHANISM_INVALID")),
            "{c}"
        );
    }
    // The same script: the alignment finds where the return codes part.
    let alignment = &comparison["alignment"];
    assert!(
        alignment["rv_differences"].as_u64().unwrap_or(0) > 0,
        "{alignment}"
    );
    assert!(
        alignment["differences"][0]["seq_a"].is_number(),
        "{alignment}"
    );
}

#[test]
fn the_same_script_on_softhsm2_and_kryoptic_shows_ratios_and_what_differs() -> Result<()> {
    let mut softhsm = Recorder::start(&[])?;
    let _a = script(&softhsm, Provider::SoftHsm, "cmp-softhsm")?;
    softhsm.stop()?;
    let mut kryoptic = Recorder::start(&[])?;
    let _b = script(&kryoptic, Provider::Kryoptic, "cmp-kryoptic")?;
    kryoptic.stop()?;
    let (_, report) = compare(&[
        softhsm.dataset.display().to_string(),
        kryoptic.dataset.display().to_string(),
    ])?;
    check_softhsm_against_kryoptic(&report);
    assert_eq!(
        report["comparisons"][0]["alignment"]["status"], "diverged",
        "{report:#}"
    );

    // Text: both providers named, the tables there.
    let output = run(
        Command::new(query_bin())
            .arg("compare")
            .arg(&softhsm.dataset)
            .arg(&kryoptic.dataset),
        Duration::from_secs(120),
    )?;
    assert_eq!(output.status.code(), Some(0));
    let shown = text(&output.stdout);
    assert!(
        shown.contains("SoftHSM") && shown.contains("Compatibility"),
        "{shown}"
    );
    assert!(shown.contains("CKR_MECHANISM_INVALID"), "{shown}");
    Ok(())
}

#[test]
fn one_dataset_split_by_provider_compares_its_groups() -> Result<()> {
    let mut recorder = Recorder::start(&[])?;
    let _a = script(&recorder, Provider::SoftHsm, "by-softhsm")?;
    let _b = script(&recorder, Provider::Kryoptic, "by-kryoptic")?;
    recorder.stop()?;
    let dataset = recorder.dataset.display().to_string();
    let (_, report) = compare(&[dataset.clone(), "--by".into(), "provider".into()])?;
    check_softhsm_against_kryoptic(&report);
    // --baseline picks the other group; an unknown one is an input error (exit 2).
    let other = report["sides"][1]["name"].as_str().unwrap_or("").to_owned();
    let (_, swapped) = compare(&[
        dataset.clone(),
        "--by".into(),
        "provider".into(),
        "--baseline".into(),
        other.clone(),
    ])?;
    assert_eq!(swapped["baseline"], other.as_str());
    let output = run(
        Command::new(query_bin()).args([
            "compare",
            &dataset,
            "--by",
            "provider",
            "--baseline",
            "nobody",
        ]),
        Duration::from_secs(60),
    )?;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("nobody"),
        "{}",
        text(&output.stderr)
    );
    Ok(())
}
