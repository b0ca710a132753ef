//! Every libpkcs11shim log imports to what is really in it, through the real `p11trace-query
//! import` and DuckDB: each log of `tests/fixtures/libpkcs11shim/` (real runs of pkcs11-tool and
//! p11client against SoftHSM2, consistency modes 0, 1 and 2) to its independently counted ground
//! truth — per-function counts and return values, sessions, processes, pid and tid on every row,
//! calls per thread, durations from `[lap]` — with no PIN surviving even where the log has one;
//! told apart from spy logs by content; a damaged log refused by `--strict` with its file:line and
//! no output, a truncated one keeping the call that never returned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

fn shim_logs() -> Vec<PathBuf> {
    let folder = fixtures().join("libpkcs11shim");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

fn shim_log(name: &str) -> PathBuf {
    fixtures().join("libpkcs11shim").join(name)
}

fn expected(log: &Path) -> Result<Value> {
    let path = log.with_extension("expected.json");
    Ok(serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?,
    )?)
}

/// A ground-truth map (name → count).
fn counted(value: &Value) -> BTreeMap<String, i64> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
                .collect()
        })
        .unwrap_or_default()
}

/// The number after `label` in the import's summary line (`…, 3 ambiguous return pairing(s)`).
fn summary_count(stderr: &str, label: &str) -> Option<i64> {
    let line = stderr.lines().find(|l| l.contains("imported "))?;
    let before = &line[..line.find(label)?];
    before.trim_end().rsplit([' ', '(']).next()?.parse().ok()
}

/// Every value of every row of a Parquet file, decompressed (written out by DuckDB as CSV).
fn decompressed(file: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let csv = scratch.join(format!(
        "{}.csv",
        file.file_stem().and_then(|s| s.to_str()).unwrap_or("x")
    ));
    duckdb(&format!(
        "COPY (SELECT * FROM read_parquet('{}')) TO '{}' (FORMAT csv, HEADER)",
        file.display(),
        csv.display()
    ))?;
    Ok(std::fs::read(csv)?)
}

#[test]
fn every_shim_log_imports_to_its_counted_ground_truth() -> Result<()> {
    let dir = temp();
    let logs = shim_logs();
    ensure!(logs.len() >= 11, "fixtures missing: {logs:?}");
    let mut revealed = 0;
    for log in logs {
        let want = expected(&log)?;
        let name = log.display().to_string();
        let stem = log.file_stem().and_then(|s| s.to_str()).unwrap_or("x");
        let out = dir.path().join(format!("{stem}.parquet"));
        // No --input-format: the content says what it is.
        let output = import(&log, &out, &["--tz", "UTC"])?;
        let stderr = text(&output.stderr);
        let file = format!("'{}'", out.display());
        let agrees = |what: &str, sql: String, truth: &Value| -> Result<()> {
            let ours = counts(&sql)?;
            let truth = counted(truth);
            ensure!(ours == truth, "{name}: {what} {ours:?} vs {truth:?}");
            Ok(())
        };
        agrees(
            "per-function counts",
            format!("SELECT func AS k, count(*) AS n FROM {file} GROUP BY 1"),
            &want["calls_by_function"],
        )?;
        agrees(
            "non-OK returns",
            format!("SELECT rv_name AS k, count(*) AS n FROM {file} WHERE rv <> 0 GROUP BY 1"),
            &want["non_ok_returns"],
        )?;
        agrees(
            "calls per thread",
            format!("SELECT tid::VARCHAR AS k, count(*) AS n FROM {file} GROUP BY 1"),
            &want["calls_by_thread"],
        )?;
        if let Some(by_function) = want["non_ok_by_function"].as_array() {
            let ours = duckdb(&format!(
                "SELECT func AS function, rv_name AS rv, rv AS code, count(*) AS count FROM {file} \
                 WHERE rv <> 0 GROUP BY ALL ORDER BY 1, 2"
            ))?;
            ensure!(&ours == by_function, "{name}: non-OK by function {ours:?}");
        }
        let s = &duckdb(&format!(
            "SELECT count(*) AS total, count(*) FILTER (NOT returned) AS unreturned, \
             count(*) FILTER (pid IS NULL OR tid IS NULL) AS unplaced, count(DISTINCT client_id) AS clients, \
             count(DISTINCT pid) AS pids, count(*) FILTER (source <> 'libpkcs11shim') AS foreign, \
             count(*) FILTER (start IS NULL OR NOT start_local) AS unstamped, \
             count(dur_ns) AS timed, sum(dur_ns)::BIGINT AS dur, \
             count(*) FILTER (func = 'C_OpenSession' AND rv = 0) AS opened, \
             count(*) FILTER (func = 'C_CloseSession' AND rv = 0) AS closed, \
             count(*) FILTER (func = 'C_CloseAllSessions' AND rv = 0) AS close_all FROM {file}"
        ))?[0];
        ensure!(
            s["total"] == want["total_calls"] && s["unreturned"] == want["calls_without_ret"],
            "{name}: {s}"
        );
        ensure!(
            s["unplaced"] == 0 && s["foreign"] == 0 && s["unstamped"] == 0,
            "{name}: {s}"
        );
        ensure!(
            s["clients"] == want["processes"] && s["pids"] == want["processes"],
            "{name}: processes {s}"
        );
        ensure!(
            summary_count(&stderr, "process(es)") == want["processes"].as_i64(),
            "{name}: {stderr}"
        );
        // Every [lap] of these runs is at least 1 µs: each is a row's duration.
        let laps = &want["laps"];
        ensure!(
            s["timed"] == laps["count"]
                && s["dur"].as_i64() == laps["total_us"].as_i64().map(|us| us * 1000),
            "{name}: durations {s} vs {laps}"
        );
        if let Some(sessions) = want.get("sessions") {
            ensure!(
                s["opened"] == sessions["opened_ok"]
                    && s["closed"] == sessions["closed_ok"]
                    && s["close_all"] == sessions["close_all_sessions_ok"],
                "{name}: sessions {s}"
            );
        }
        let ambiguous = summary_count(&stderr, "ambiguous").context("summary line")?;
        ensure!(
            summary_count(&stderr, "unreadable") == Some(0),
            "{name}: {stderr}"
        );
        let interleaved = want["records_interleave"].as_bool() == Some(true);
        let total = want["total_calls"].as_i64().unwrap_or(0);
        // Where records interleave (mode 0, threads at once) a line's call is sometimes a guess:
        // the importer says so, and at most one row in fifty gets another thread's function or
        // session (the counts per thread stay exact, above).
        let tolerance = if interleaved { total / 50 } else { 0 };
        if interleaved {
            ensure!(
                ambiguous > 0,
                "{name}: interleaved, yet nothing counted as ambiguous"
            );
        } else {
            ensure!(ambiguous == 0, "{name}: {ambiguous} ambiguous pairings");
        }
        if let Some(truth) = want["calls_by_thread_and_function"].as_object() {
            let ours = duckdb(&format!(
                "SELECT tid::VARCHAR AS t, func AS f, count(*) AS n FROM {file} GROUP BY ALL"
            ))?;
            let mut off = 0;
            let mut seen: BTreeMap<(String, String), i64> = BTreeMap::new();
            for row in &ours {
                let key = (
                    row["t"].as_str().unwrap_or("").to_owned(),
                    row["f"].as_str().unwrap_or("").to_owned(),
                );
                seen.insert(key, row["n"].as_i64().unwrap_or(0));
            }
            for (tid, funcs) in truth {
                for (func, n) in counted(funcs) {
                    let ours = seen.remove(&(tid.clone(), func.clone())).unwrap_or(0);
                    off += (ours - n).abs();
                }
            }
            off += seen.values().sum::<i64>();
            ensure!(
                off / 2 <= tolerance,
                "{name}: {} rows with another thread's function (at most {tolerance})",
                off / 2
            );
        }
        if let Some(sessions) = want["session_by_thread"].as_object() {
            let rows = duckdb(&format!(
                "SELECT tid::VARCHAR AS t, session FROM {file} \
                 WHERE func IN ('C_OpenSession', 'C_GetSessionInfo', 'C_CloseSession')"
            ))?;
            let wrong = rows
                .iter()
                .filter(|r| sessions.get(r["t"].as_str().unwrap_or("")) != Some(&r["session"]))
                .count() as i64;
            ensure!(
                wrong <= tolerance,
                "{name}: {wrong} rows with another thread's session (at most {tolerance})"
            );
        }
        // No PIN in the output, as stored or as values once decompressed, even where the log
        // shows it (PKCS11SHIM_REVEALPIN).
        let log_text = std::fs::read(&log)?;
        if want["reveal_pin"] == true {
            ensure!(
                contains_secret(&log_text, USER_PIN.as_bytes()),
                "{name}: the REVEALPIN log does not show the PIN: the check below proves nothing"
            );
            revealed += 1;
        }
        for pin in [USER_PIN, SO_PIN] {
            ensure!(
                !contains_secret(&std::fs::read(&out)?, pin.as_bytes())
                    && !contains_secret(&decompressed(&out, dir.path())?, pin.as_bytes()),
                "{name}: a PIN in the import"
            );
        }
    }
    ensure!(
        revealed == 1,
        "one fixture must reveal its PIN, {revealed} do"
    );
    Ok(())
}

/// `[tag] value` of every line starting with `tag`, in file order (a log whose records do not
/// interleave).
fn tagged<'a>(log: &'a str, tag: &str) -> Vec<&'a str> {
    log.lines().filter_map(|l| l.strip_prefix(tag)).collect()
}

#[test]
fn rows_carry_each_records_tic_lap_and_toc() -> Result<()> {
    let dir = temp();
    let log = shim_log("pt-keygen-rsa2048.log");
    let text_log = std::fs::read_to_string(&log)?;
    let out = import_as(&log, dir.path(), "keygen.parquet", &["--tz", "UTC"])?;
    let rows = duckdb(&format!(
        "SELECT func, strftime(start AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S.%f') AS tic, dur_ns, \
         strftime((start AT TIME ZONE 'UTC') + to_microseconds(dur_ns // 1000), '%Y-%m-%d %H:%M:%S.%f') AS toc, pid, tid \
         FROM '{}' ORDER BY seq",
        out.display()
    ))?;
    let (tics, laps, tocs) = (
        tagged(&text_log, "[tic] "),
        tagged(&text_log, "[lap] "),
        tagged(&text_log, "[toc] "),
    );
    let funcs: Vec<&str> = tagged(&text_log, "[cnt] ")
        .iter()
        .filter_map(|l| l.split(" - ").nth(1))
        .collect();
    ensure!(
        rows.len() == tics.len() && rows.len() == laps.len(),
        "{} rows",
        rows.len()
    );
    let pid: i64 = tagged(&text_log, "[pid] ")[0].parse()?;
    for (i, row) in rows.iter().enumerate() {
        let (seconds, micros) = laps[i].split_once('.').context("lap")?;
        let lap_ns = (seconds.parse::<i64>()? * 1_000_000 + micros.parse::<i64>()?) * 1000;
        ensure!(
            row["func"] == funcs[i]
                && row["tic"] == tics[i]
                && row["dur_ns"] == lap_ns
                && row["toc"] == tocs[i]
                && row["pid"] == pid,
            "row {i}: {row} vs [tic] {} [lap] {} [toc] {}",
            tics[i],
            laps[i],
            tocs[i]
        );
    }
    // Another zone moves every start by its offset, durations not at all.
    let berlin = import_as(
        &log,
        dir.path(),
        "berlin.parquet",
        &["--tz", "Europe/Berlin"],
    )?;
    let shift = duckdb(&format!(
        "SELECT count(*) FILTER (u.start - b.start = INTERVAL 1 HOUR AND u.dur_ns = b.dur_ns) AS n, count(*) AS total \
         FROM '{}' u JOIN '{}' b USING (seq)",
        out.display(),
        berlin.display()
    ))?;
    ensure!(shift[0]["n"] == shift[0]["total"], "{}", shift[0]);
    Ok(())
}

fn query_run(args: &[&str]) -> Result<std::process::Output> {
    run(
        Command::new(query_bin()).args(args),
        Duration::from_secs(120),
    )
}

#[test]
fn shim_and_spy_logs_are_told_apart() -> Result<()> {
    let dir = temp();
    let shim = shim_log("pt-sign-revealpin.log");
    let spy = corpus("pt-sign-rsa-pkcs.log");
    let auto = import_as(&shim, dir.path(), "auto.parquet", &[])?;
    let forced = import_as(
        &shim,
        dir.path(),
        "forced.parquet",
        &["--input-format", "libpkcs11shim"],
    )?;
    let spy_out = import_as(&spy, dir.path(), "spy.parquet", &[])?;
    let sources = duckdb(&format!(
        "SELECT (SELECT list(DISTINCT source) FROM '{}') AS auto, (SELECT count(*) FROM '{}') AS forced, \
         (SELECT count(*) FROM '{}') AS auto_rows, (SELECT list(DISTINCT source) FROM '{}') AS spy",
        auto.display(),
        forced.display(),
        auto.display(),
        spy_out.display()
    ))?;
    let s = &sources[0];
    ensure!(
        s["auto"] == serde_json::json!(["libpkcs11shim"])
            && s["spy"] == serde_json::json!(["pkcs11-spy"])
            && s["forced"] == s["auto_rows"],
        "{s}"
    );
    // Each parser finds no call in the other's log: a clean refusal, exit 1.
    for (log, format) in [(&shim, "spy"), (&spy, "libpkcs11shim")] {
        let out = dir.path().join(format!("wrong-{format}.parquet"));
        let output = query_run(&[
            "import",
            log.to_str().unwrap_or_default(),
            "-o",
            out.to_str().unwrap_or_default(),
            "--input-format",
            format,
        ])?;
        ensure!(
            output.status.code() == Some(1)
                && text(&output.stderr).contains("no PKCS#11 call found")
                && !out.exists(),
            "{format}: {}",
            text(&output.stderr)
        );
    }
    Ok(())
}

#[test]
fn damaged_and_truncated_logs() -> Result<()> {
    let dir = temp();
    let original = std::fs::read_to_string(shim_log("pt-keygen-rsa2048.log"))?;
    let lines: Vec<&str> = original.lines().collect();
    // The [ret] of C_GenerateKeyPair, damaged.
    let keygen = lines
        .iter()
        .position(|l| l.ends_with(" - C_GenerateKeyPair"))
        .context("C_GenerateKeyPair record")?;
    let ret = keygen
        + lines[keygen..]
            .iter()
            .position(|l| l.starts_with("[ret] "))
            .context("[ret]")?;
    let mut damaged_lines = lines.clone();
    let broken = lines[ret].replace("[ret] 0 ", "[ret] 0x?? ");
    damaged_lines[ret] = &broken;
    let damaged = dir.path().join("damaged.log");
    std::fs::write(&damaged, damaged_lines.join("\n") + "\n")?;
    let strict = dir.path().join("strict.parquet");
    let output = query_run(&[
        "import",
        damaged.to_str().unwrap_or_default(),
        "-o",
        strict.to_str().unwrap_or_default(),
        "--strict",
    ])?;
    let stderr = text(&output.stderr);
    ensure!(
        output.status.code() == Some(1),
        "--strict must fail: {stderr}"
    );
    ensure!(
        stderr.contains(&format!("damaged.log:{}:", ret + 1))
            && stderr.contains("unreadable return value"),
        "{stderr}"
    );
    ensure!(
        !strict.exists() && !dir.path().join("strict.parquet.tmp").exists(),
        "no partial file may be left"
    );
    // Lenient: the problem is reported and counted, the call kept as never returned.
    let lenient = dir.path().join("lenient.parquet");
    let output = import(&damaged, &lenient, &[])?;
    ensure!(
        summary_count(&text(&output.stderr), "unreadable") == Some(1),
        "{}",
        text(&output.stderr)
    );
    let row = row(&lenient, "func = 'C_GenerateKeyPair'")?;
    ensure!(row["returned"] == false && row["rv"].is_null(), "{row}");
    // Truncated inside the same record, after its [tic]: the calls before it, and it, unreturned.
    let tic = keygen
        + lines[keygen..]
            .iter()
            .position(|l| l.starts_with("[tic] "))
            .context("[tic]")?;
    let truncated = dir.path().join("truncated.log");
    std::fs::write(&truncated, lines[..=tic + 2].join("\n") + "\n")?;
    let cut = import_as(&truncated, dir.path(), "cut.parquet", &[])?;
    let before = lines[..keygen]
        .iter()
        .filter(|l| l.starts_with("[cnt] "))
        .count();
    let s = &duckdb(&format!(
        "SELECT count(*) AS n, count(*) FILTER (returned) AS returned, \
         max(seq) FILTER (NOT returned) AS last, any_value(func) FILTER (NOT returned) AS func, \
         any_value(start) FILTER (NOT returned) IS NOT NULL AS started FROM '{}'",
        cut.display()
    ))?[0];
    ensure!(
        s["n"] == before as i64 + 1
            && s["returned"] == before as i64
            && s["last"] == before as i64
            && s["func"] == "C_GenerateKeyPair"
            && s["started"] == true,
        "{s}"
    );
    let output = query_run(&[
        "import",
        truncated.to_str().unwrap_or_default(),
        "-o",
        dir.path()
            .join("strict-cut.parquet")
            .to_str()
            .unwrap_or_default(),
        "--strict",
    ])?;
    ensure!(
        output.status.code() == Some(1)
            && text(&output.stderr).contains(&format!("truncated.log:{}:", keygen + 1))
            && text(&output.stderr).contains("C_GenerateKeyPair never returned"),
        "{}",
        text(&output.stderr)
    );
    Ok(())
}
