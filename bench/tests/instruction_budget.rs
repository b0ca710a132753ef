//! The instruction budget (benchmark 6) as a test: callgrind counts, on the application's thread,
//! the instructions the release-built shim adds to each `C_GetSessionInfo`, and to each digest
//! operation (`C_DigestInit` + `C_Digest`: the `op_id` path, which must take no lock), and to each
//! `C_FindObjectsInit` with a 4-attribute template (+ `C_FindObjectsFinal`). Counts repeat exactly
//! run to run, so unlike a timing this can fail a build. `just test` builds the release shim first.

use std::process::Command;

use anyhow::{Context, Result};
use p11trace_bench::budget::{
    INSTRUCTION_BUDGET, OP_INSTRUCTION_BUDGET, TEMPLATE_INSTRUCTION_BUDGET,
};

#[test]
fn the_release_shim_stays_within_its_instruction_budget() -> Result<()> {
    let shim = p11trace_tests::target_dir()
        .parent()
        .context("target folder")?
        .join("release/libp11trace_shim.so");
    assert!(
        shim.exists(),
        "{} is missing: `just test` builds it (cargo build --release -p p11trace-shim)",
        shim.display()
    );
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("budget.json");
    let output = Command::new(env!("CARGO_BIN_EXE_p11trace-bench"))
        .args(["--only", "budget", "--no-kryoptic", "--shim"])
        .arg(&shim)
        .arg("--json")
        .arg(&json)
        .output()
        .context("cannot run p11trace-bench")?;
    let figures: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json)
            .with_context(|| String::from_utf8_lossy(&output.stderr).into_owned())?,
    )?;
    let budget = &figures["figures"]["budget"];
    let added = budget["added_per_call"]
        .as_f64()
        .context("added_per_call")?;
    let direct = budget["direct_per_call"]
        .as_f64()
        .context("direct_per_call")?;
    // A shim that did nothing would add ~0: the recording path must really have been measured.
    assert!(added > 50.0, "implausibly few added instructions: {budget}");
    assert!(
        direct > 50.0,
        "implausibly few direct instructions: {budget}"
    );
    assert!(
        added <= INSTRUCTION_BUDGET,
        "the shim adds {added:.0} instructions per C_GetSessionInfo on the calling thread; the \
         budget is {INSTRUCTION_BUDGET:.0} (see BENCHMARKS.md). Profile with \
         `valgrind --tool=callgrind` before raising it."
    );
    let added_per_digest = budget["added_per_digest"]
        .as_f64()
        .context("added_per_digest")?;
    assert!(
        added_per_digest > 2.0 * 50.0,
        "implausibly few added instructions per digest: {budget}"
    );
    assert!(
        added_per_digest <= OP_INSTRUCTION_BUDGET,
        "the shim adds {added_per_digest:.0} instructions per digest operation on the calling \
         thread; the budget is {OP_INSTRUCTION_BUDGET:.0} (see BENCHMARKS.md): the op_id path \
         must take no lock and hash no map. Profile with `valgrind --tool=callgrind`."
    );
    let added_per_find = budget["added_per_find_template"]
        .as_f64()
        .context("added_per_find_template")?;
    assert!(
        added_per_find > 2.0 * 50.0,
        "implausibly few added instructions per template find: {budget}"
    );
    assert!(
        added_per_find <= TEMPLATE_INSTRUCTION_BUDGET,
        "the shim adds {added_per_find:.0} instructions per C_FindObjectsInit (4 attributes) + \
         C_FindObjectsFinal on the calling thread; the budget is \
         {TEMPLATE_INSTRUCTION_BUDGET:.0} (see BENCHMARKS.md): template values must be copied \
         through the allowlist without an allocation per attribute. Profile with \
         `valgrind --tool=callgrind` (P11TRACE_BENCH_KEEP_CALLGRIND=DIR keeps its files)."
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
