//! Hostile logs against the real `p11trace-query import` (#12.17): every input is bounded — a
//! line's length, the work a line costs, the records held open — numbers that overflow are
//! refused rather than wrapped, and an import that fails part-way leaves nothing that looks
//! complete. Each test failed on the importer before these bounds.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use p11trace_tests::*;

/// A real pkcs11-spy log of the corpus, as text.
fn real_log() -> Result<String> {
    Ok(std::fs::read_to_string(corpus("pt-sign-rsa-pkcs.log"))?)
}

/// `import INPUT -o OUT`, whatever its exit status, within `limit`.
fn import_within(input: &Path, out: &Path, limit: Duration) -> Result<Output> {
    run(
        Command::new(query_bin())
            .arg("import")
            .arg(input)
            .arg("-o")
            .arg(out),
        limit,
    )
}

fn parquet_files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_line_past_the_limit_is_refused_naming_its_line_and_nothing_is_written() -> Result<()> {
    let dir = temp();
    let log = dir.path().join("long.log");
    let mut text = real_log()?;
    let line = text.lines().count() + 1;
    text.push_str(&"A".repeat(17 << 20));
    text.push('\n');
    std::fs::write(&log, text)?;
    let out = dir.path().join("out.parquet");
    let output = import_within(&log, &out, Duration::from_secs(120))?;
    let stderr = text_of(&output);
    ensure!(
        output.status.code() == Some(1)
            && stderr.contains(&format!("long.log:{line}: a line longer")),
        "a 17 MiB line must be refused naming line {line}: {:?} {stderr}",
        output.status
    );
    ensure!(
        parquet_files_below(dir.path()).is_empty(),
        "nothing may be left behind"
    );
    Ok(())
}

#[test]
fn a_line_full_of_stamp_markers_costs_linear_time() -> Result<()> {
    let dir = temp();
    let log = dir.path().join("markers.log");
    let mut text = real_log()?;
    // 2 MiB of `P:`: the old importer tried a stamp at each one and scanned the rest of the
    // line each time (10^12 byte comparisons; it did not finish in the limit).
    text.push_str(&"P:".repeat(1 << 20));
    text.push('\n');
    std::fs::write(&log, text)?;
    let out = dir.path().join("out.parquet");
    let started = Instant::now();
    let output = import_within(&log, &out, Duration::from_secs(60))?;
    ensure!(
        output.status.success(),
        "import failed after {:?}: {}",
        started.elapsed(),
        text_of(&output)
    );
    Ok(())
}

#[test]
fn calls_that_never_return_are_held_open_in_bounded_number() -> Result<()> {
    let dir = temp();
    let log = dir.path().join("open.log");
    let mut text = String::from("*************** OpenSC PKCS#11 spy *****************\n");
    text.push_str("Loaded: \"/usr/lib/softhsm/libsofthsm2.so\"\n\n");
    // 150,000 calls, none returned, each with a line nobody knows: the old importer held all
    // open and searched them all for every such line (10^10 steps).
    let calls = 150_000;
    for n in 0..calls {
        let _ = write!(
            text,
            "{n}: C_GetSlotList\n2026-11-25 16:21:36.108\n[in] tokenPresent = 0x0\nnoise\n"
        );
    }
    std::fs::write(&log, text)?;
    let out = dir.path().join("out.parquet");
    let output = import_within(&log, &out, Duration::from_secs(90))?;
    ensure!(output.status.success(), "{}", text_of(&output));
    let rows = count_of(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}') WHERE NOT returned",
        out.display()
    ))?;
    ensure!(rows == calls, "{rows} unreturned rows, wanted {calls}");
    Ok(())
}

#[test]
fn a_number_past_i64_min_is_not_an_overflow() -> Result<()> {
    let dir = temp();
    let log = dir.path().join("number.log");
    let text = real_log()?.replace("Object 0x2 matches", "Object --9223372036854775808 matches");
    ensure!(
        text.contains("--9223372036854775808"),
        "the corpus log changed"
    );
    std::fs::write(&log, text)?;
    let out = dir.path().join("out.parquet");
    let output = import_within(&log, &out, Duration::from_secs(60))?;
    // The old importer negated i64::MIN: a panic (exit 101) in the debug build the tests run.
    ensure!(
        output.status.success(),
        "{:?} {}",
        output.status,
        text_of(&output)
    );
    Ok(())
}

#[test]
fn an_import_failing_at_its_last_partition_leaves_no_partition_in_place() -> Result<()> {
    let dir = temp();
    let log = dir.path().join("two-days.log");
    let day = real_log()?;
    let next = day.replace("2026-11-25 ", "2026-11-26 ");
    std::fs::write(&log, format!("{day}{next}"))?;
    let out = dir.path().join("ds");
    // The second day's partition cannot be created: a file holds its name.
    std::fs::create_dir_all(out.join("calls"))?;
    let blocker = out.join("calls").join("date=2026-11-26");
    std::fs::write(&blocker, "not a folder")?;
    let output = import_within(&log, &out, Duration::from_secs(60))?;
    ensure!(
        output.status.code() == Some(1),
        "the import must fail: {:?} {}",
        output.status,
        text_of(&output)
    );
    // The old importer had moved the first day's file into place before the second failed.
    let left = parquet_files_below(&out);
    ensure!(left.is_empty(), "a partial import was left: {left:?}");
    Ok(())
}

fn text_of(output: &Output) -> String {
    text(&output.stderr)
}
