//! pkcs11-logger logs import to what is really in them: each real log of
//! `tests/fixtures/pkcs11-logger/` (pkcs11-logger 2.3.0 in front of the shim and SoftHSM2) to its
//! independently counted ground truth — per-function counts, non-OK returns, sessions, pid and
//! thread on every row and calls per thread, mechanism parameters — with `start` and `dur_ns`
//! equal to the log's own `Calling` and `Received response` stamps (found by a scan of the log
//! here, their arithmetic done by DuckDB), and no PIN surviving even from the log that prints
//! them. Threads' interleaved lines are told apart, two processes appended to one file are two
//! clients, detection by content picks the format, and a damaged or truncated log gives what the
//! spy importer gives: a file:line error under `--strict` with nothing written, or the unreturned
//! call kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

fn expected_of(log: &Path) -> Result<Value> {
    let path = log.with_extension("expected.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

/// Each call's stamps as the log prints them (local time, read as UTC under `--tz UTC`): one SQL
/// row `(pid, tid, k, entered, calling, received, returned)` per call, `k` its place in its
/// thread; found by a scan of the log of its own, the times left to DuckDB.
fn log_stamps(log: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(log)?;
    let mut threads: BTreeMap<(i64, i64), Vec<[Option<String>; 4]>> = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, " : ");
        let (Some(pid), Some(tid), Some(rest)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let hex = |f: &str| i64::from_str_radix(f.trim_start_matches("0x"), 16).ok();
        let (Some(pid), Some(tid), Some((stamp, event))) =
            (hex(pid), hex(tid), rest.split_once(" - "))
        else {
            continue;
        };
        let calls = threads.entry((pid, tid)).or_default();
        let slot = match event {
            _ if event.starts_with("Entered ") => {
                calls.push(Default::default());
                0
            }
            _ if event.ends_with(" function") => continue,
            _ if event.starts_with("Calling ") => 1,
            _ if event.starts_with("Received response from ") => 2,
            _ if event.starts_with("Returning ") => 3,
            _ => continue,
        };
        if let Some(call) = calls.last_mut() {
            call[slot] = Some(format!("TIMESTAMP '{stamp}'"));
        }
    }
    let null = || "NULL::TIMESTAMP".to_owned();
    Ok(threads
        .iter()
        .flat_map(|(&(pid, tid), calls)| {
            calls.iter().enumerate().map(move |(k, stamps)| {
                let [entered, calling, received, returning] =
                    stamps.clone().map(|s| s.unwrap_or_else(null));
                format!("({pid}, {tid}, {k}, {entered}, {calling}, {received}, {returning})")
            })
        })
        .collect())
}

#[test]
fn every_logger_log_imports_to_its_counted_ground_truth() -> Result<()> {
    let dir = temp();
    let logs = logger_fixture_logs();
    ensure!(logs.len() >= 8, "fixtures missing: {logs:?}");
    for log in logs {
        let name = log.display().to_string();
        let expected = expected_of(&log)?;
        let out = dir.path().join(format!(
            "{}.parquet",
            log.file_stem().and_then(|s| s.to_str()).unwrap_or("x")
        ));
        // No --input-format: the content tells the format.
        import(&log, &out, &["--tz", "UTC"])?;
        let file = format!("'{}'", out.display());
        let ours = counts(&format!(
            "SELECT func AS k, count(*) AS n FROM {file} GROUP BY 1"
        ))?;
        let want = expected_counts(&expected, "calls_by_function")?;
        ensure!(
            ours == want,
            "{name}: per-function counts {ours:?} vs {want:?}"
        );
        let ours = counts(&format!(
            "SELECT func || ' ' || rv_name || ' ' || rv AS k, count(*) AS n FROM {file} \
             WHERE rv <> 0 GROUP BY 1"
        ))?;
        let want: BTreeMap<String, i64> = expected["non_ok_by_function"]
            .as_array()
            .context("non_ok_by_function")?
            .iter()
            .map(|e| {
                let key = format!(
                    "{} {} {}",
                    e["function"].as_str().unwrap_or(""),
                    e["rv"].as_str().unwrap_or(""),
                    e["code"]
                );
                (key, e["count"].as_i64().unwrap_or(-1))
            })
            .collect();
        ensure!(ours == want, "{name}: non-OK returns {ours:?} vs {want:?}");
        let s = &duckdb(&format!(
            "SELECT count(*) AS total, count(*) FILTER (NOT returned) AS unreturned, \
             count(*) FILTER (func = 'C_OpenSession' AND rv = 0) AS opened, \
             count(*) FILTER (func = 'C_CloseSession' AND rv = 0) AS closed, \
             count(*) FILTER (func = 'C_CloseAllSessions' AND rv = 0) AS close_all, \
             count(*) FILTER (pid IS NULL OR tid IS NULL) AS unidentified, \
             count(DISTINCT pid) AS processes, count(DISTINCT tid) AS threads, \
             string_agg(DISTINCT source) AS sources, string_agg(DISTINCT module) AS modules, \
             bool_and(start_local) AS local, count(start) AS started, count(dur_ns) AS timed, \
             count(*) FILTER (dur_ns < 0) AS negative FROM {file}"
        ))?[0];
        let sessions = &expected["sessions"];
        let threads = &expected["process_thread_info"];
        ensure!(
            s["total"] == expected["total_calls"]
                && s["unreturned"] == expected["calls_without_returning"]
                && s["opened"] == sessions["opened_ok"]
                && s["closed"] == sessions["closed_ok"]
                && s["close_all"] == sessions["close_all_sessions_ok"],
            "{name}: {s}"
        );
        ensure!(
            s["unidentified"] == 0
                && s["processes"] == threads["processes"]
                && s["threads"] == threads["threads"],
            "{name}: pid and tid on every row: {s}"
        );
        ensure!(
            s["sources"] == "pkcs11-logger"
                && s["modules"] == expected["module_loaded_lines"][0]
                && s["local"] == true
                && s["started"] == s["total"],
            "{name}: {s}"
        );
        ensure!(
            s["timed"] == expected["calls_with_calling_and_received"] && s["negative"] == 0,
            "{name}: durations {s}"
        );
        let mut per_thread: Vec<i64> = duckdb(&format!(
            "SELECT count(*) AS n FROM {file} GROUP BY pid, tid"
        ))?
        .iter()
        .map(|r| r["n"].as_i64().unwrap_or(-1))
        .collect();
        per_thread.sort_unstable_by(|a, b| b.cmp(a));
        let want: Vec<i64> = threads["calls_per_thread"]
            .as_array()
            .context("calls_per_thread")?
            .iter()
            .map(|n| n.as_i64().unwrap_or(-1))
            .collect();
        ensure!(
            per_thread == want,
            "{name}: calls per thread {per_thread:?} vs {want:?}"
        );
        let params: BTreeMap<String, Value> = duckdb(&format!(
            "SELECT func, list(DISTINCT mech_params ORDER BY mech_params) AS params FROM {file} \
             WHERE mech_params IS NOT NULL GROUP BY 1"
        ))?
        .into_iter()
        .map(|r| {
            (
                r["func"].as_str().unwrap_or("").to_owned(),
                r["params"].clone(),
            )
        })
        .collect();
        let want: BTreeMap<String, Value> = expected["mech_params_by_function"]
            .as_object()
            .context("mech_params_by_function")?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ensure!(params == want, "{name}: mech_params {params:?} vs {want:?}");
        stamps_agree(&log, &file)?;
        // No PIN survives, not even from the log that prints them (the control: it does).
        let values = decompressed(&out, dir.path())?;
        let logged = std::fs::read(&log)?;
        for pin in [SO_PIN, USER_PIN] {
            ensure!(
                !contains_secret(&values, pin.as_bytes()),
                "{name}: {pin} in the import"
            );
            let in_log = logged.windows(pin.len()).any(|w| w == pin.as_bytes());
            ensure!(
                in_log == (expected["pins"]["logged"] == true),
                "{name}: {pin} in the log: {in_log}"
            );
        }
    }
    Ok(())
}

/// Each row's `start` is its call's `Calling` stamp (`Entered` where there is none), its
/// `dur_ns` runs from `Calling` to `Received response`, never beyond `Entered`→`Returning`.
fn stamps_agree(log: &Path, file: &str) -> Result<()> {
    let name = log.display();
    let calls = log_stamps(log)?;
    let check = &duckdb(&format!(
        "WITH log(pid, tid, k, entered_at, calling_at, received_at, returned_at) AS (VALUES {}), \
         rows AS (SELECT pid, tid, start, dur_ns, \
         row_number() OVER (PARTITION BY pid, tid ORDER BY seq) - 1 AS k FROM {file}), \
         joined AS (SELECT rows.*, log.*, \
         (epoch_us(received_at) - epoch_us(calling_at)) * 1000 AS want, \
         (epoch_us(returned_at) - epoch_us(entered_at)) * 1000 AS span \
         FROM rows FULL JOIN log USING (pid, tid, k)) \
         SELECT count(*) AS n, count(dur_ns) AS timed, \
         count(*) FILTER (epoch_us(start) IS DISTINCT FROM \
         epoch_us(coalesce(calling_at, entered_at))) AS bad_start, \
         count(*) FILTER (dur_ns IS DISTINCT FROM want) AS bad_dur, \
         count(*) FILTER (dur_ns < 0 OR dur_ns > span) AS out_of_span, \
         count(*) FILTER (entered_at IS NULL OR start IS NULL) AS unmatched FROM joined",
        calls.join(", ")
    ))?[0];
    ensure!(
        check["n"] == calls.len()
            && check["bad_start"] == 0
            && check["bad_dur"] == 0
            && check["out_of_span"] == 0
            && check["unmatched"] == 0,
        "{name}: stamps {check}"
    );
    Ok(())
}

#[test]
fn threads_and_processes_of_one_file_are_told_apart() -> Result<()> {
    let dir = temp();
    let log = logger_fixture("pl-threads.log");
    let expected = expected_of(&log)?;
    ensure!(
        expected["process_thread_info"]["calls_overlapping_another_thread"].as_i64() > Some(0),
        "the fixture's threads must interleave"
    );
    let out = import_as(&log, dir.path(), "threads.parquet", &["--tz", "UTC"])?;
    // p11client's six workers each open a session and ask for its info 30 times: grouped by
    // thread, every worker's calls name one session, its own.
    let workers = duckdb(&format!(
        "SELECT tid, count(*) AS infos, count(DISTINCT session) AS sessions, \
         min(session) AS session \
         FROM '{}' WHERE func = 'C_GetSessionInfo' GROUP BY tid",
        out.display()
    ))?;
    ensure!(workers.len() == 6, "{workers:?}");
    ensure!(
        workers
            .iter()
            .all(|w| w["infos"] == 30 && w["sessions"] == 1),
        "{workers:?}"
    );
    let mut sessions: Vec<i64> = workers
        .iter()
        .filter_map(|w| w["session"].as_i64())
        .collect();
    sessions.dedup();
    ensure!(sessions.len() == 6, "{workers:?}");
    // Two processes appending to one file (the logger opens it with "a"): two clients.
    let (first, second) = (
        logger_fixture("pl-list-slots.log"),
        logger_fixture("pl-err-wrong-pin.log"),
    );
    let both = dir.path().join("appended.log");
    std::fs::write(
        &both,
        [std::fs::read(&first)?, std::fs::read(&second)?].concat(),
    )?;
    let out = import_as(&both, dir.path(), "appended.parquet", &["--tz", "UTC"])?;
    let clients = duckdb(&format!(
        "SELECT client_id, pid, count(*) AS n, max(seq) + 1 AS seqs, \
         count(DISTINCT seq) AS distinct_seqs \
         FROM '{}' GROUP BY 1, 2 ORDER BY min(start)",
        out.display()
    ))?;
    let totals = [&first, &second].map(|log| expected_of(log).map(|e| e["total_calls"].clone()));
    ensure!(
        clients.len() == 2 && clients[0]["pid"] != clients[1]["pid"],
        "{clients:?}"
    );
    for (client, total) in clients.iter().zip(totals) {
        let total = total?;
        ensure!(
            client["n"] == total && client["seqs"] == total && client["distinct_seqs"] == total,
            "{client} vs {total}"
        );
    }
    Ok(())
}

fn query_run(args: &[&str]) -> Result<Output> {
    run(
        Command::new(query_bin()).args(args),
        Duration::from_secs(120),
    )
}

#[test]
fn the_format_is_told_by_content_and_asked_for_by_name() -> Result<()> {
    let dir = temp();
    let log = logger_fixture("pl-sign-rsa-sha256.log");
    let total = expected_of(&log)?["total_calls"].clone();
    let named = import_as(
        &log,
        dir.path(),
        "named.parquet",
        &["--input-format", "pkcs11-logger"],
    )?;
    let s = &duckdb(&format!(
        "SELECT count(*) AS n, string_agg(DISTINCT source) AS source FROM '{}'",
        named.display()
    ))?[0];
    ensure!(s["n"] == total && s["source"] == "pkcs11-logger", "{s}");
    // Spy logs stay spy logs, and are no pkcs11-logger logs when asked to be.
    let spy = corpus("pt-sign-rsa-pkcs.log");
    let out = import_as(&spy, dir.path(), "spy.parquet", &[])?;
    let s = &duckdb(&format!(
        "SELECT string_agg(DISTINCT source) AS source FROM '{}'",
        out.display()
    ))?[0];
    ensure!(s["source"] == "pkcs11-spy", "{s}");
    let forced = dir.path().join("forced.parquet");
    let output = query_run(&[
        "import",
        spy.to_str().unwrap_or_default(),
        "-o",
        forced.to_str().unwrap_or_default(),
        "--input-format",
        "pkcs11-logger",
    ])?;
    let stderr = text(&output.stderr);
    ensure!(
        output.status.code() == Some(1)
            && stderr.contains("no PKCS#11 call found")
            && stderr.contains("pkcs11-logger log")
            && !forced.exists(),
        "{stderr}"
    );
    // analyze reads the log directly, to the same count.
    let report: Value = serde_json::from_slice(
        &query(&[
            "analyze",
            log.to_str().unwrap_or_default(),
            "--format",
            "json",
            "--tz",
            "UTC",
        ])?
        .stdout,
    )?;
    ensure!(
        report["summary"]["total_operations"] == total,
        "{}",
        report["summary"]
    );
    Ok(())
}

/// `log` with line `number` (from 1) replaced by what `edit` makes of it.
fn edited(log: &str, number: usize, edit: impl Fn(&str) -> String) -> String {
    log.lines()
        .enumerate()
        .map(|(i, line)| if i + 1 == number { edit(line) } else { line.to_owned() } + "\n")
        .collect()
}

/// Imports `log` with `--strict`: it must fail naming `file:line` with `message`, and leave
/// nothing behind; the same log imports leniently.
fn strict_fails(dir: &Path, log: &Path, line: usize, message: &str) -> Result<PathBuf> {
    let out = dir.join("strict.parquet");
    let output = query_run(&[
        "import",
        log.to_str().unwrap_or_default(),
        "-o",
        out.to_str().unwrap_or_default(),
        "--strict",
    ])?;
    let stderr = text(&output.stderr);
    let file = log.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    ensure!(
        output.status.code() == Some(1),
        "--strict must fail: {stderr}"
    );
    ensure!(
        stderr.contains(&format!("{file}:{line}: ")) && stderr.contains(message),
        "{stderr}"
    );
    ensure!(
        !out.exists() && !dir.join("strict.parquet.tmp").exists(),
        "no partial file may be left"
    );
    let lenient = dir.join(format!("{file}.parquet"));
    import(log, &lenient, &["--tz", "UTC"])?;
    Ok(lenient)
}

#[test]
fn damaged_and_truncated_logs_fail_cleanly_or_keep_what_they_hold() -> Result<()> {
    let dir = temp();
    let original = std::fs::read_to_string(logger_fixture("pl-sign-rsa-sha256.log"))?;
    let line_of = |needle: &str| {
        original
            .lines()
            .position(|l| l.ends_with(needle))
            .map(|i| i + 1)
            .with_context(|| needle.to_owned())
    };
    // An unreadable return value: the call is kept as never returned.
    let received = line_of(" - Received response from C_Sign")?;
    let sign_result = original
        .lines()
        .skip(received)
        .position(|l| l.contains(" - Returning 0 "))
        .map(|i| received + i + 1)
        .context("C_Sign's result")?;
    let damaged = dir.path().join("damaged.log");
    std::fs::write(
        &damaged,
        edited(&original, sign_result, |l| {
            l.replace("Returning 0 ", "Returning zero ")
        }),
    )?;
    let lenient = strict_fails(dir.path(), &damaged, sign_result, "unreadable return value")?;
    let sign = row(&lenient, "func = 'C_Sign'")?;
    ensure!(
        sign["returned"] == false && sign["rv"].is_null() && sign["dur_ns"].as_i64() > Some(0),
        "{sign}"
    );
    // An argument line that lost its pid and thread belongs to no call.
    let session_line = line_of(" - Entered C_SignInit")? + 2;
    let lost = dir.path().join("lost-prefix.log");
    std::fs::write(
        &lost,
        edited(&original, session_line, |l| {
            l.splitn(3, " : ").nth(2).unwrap_or_default().to_owned()
        }),
    )?;
    let lenient = strict_fails(dir.path(), &lost, session_line, "outside any call")?;
    let sign_init = row(&lenient, "func = 'C_SignInit'")?;
    ensure!(
        sign_init["session"].is_null() && sign_init["rv"] == 0,
        "{sign_init}"
    );
    // Truncated between `Calling C_Sign` and its response: C_Sign is kept, never returned,
    // with no duration; --strict wants a complete log.
    let calling = line_of(" - Calling C_Sign")?;
    let truncated = dir.path().join("truncated.log");
    let cut: String = original
        .lines()
        .take(calling)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&truncated, cut)?;
    let entered = line_of(" - Entered C_Sign")?;
    let lenient = strict_fails(dir.path(), &truncated, entered, "C_Sign (line")?;
    let last = row(&lenient, "func = 'C_Sign'")?;
    ensure!(
        last["returned"] == false
            && last["rv"].is_null()
            && last["rv_name"].is_null()
            && last["dur_ns"].is_null(),
        "{last}"
    );
    let s = &duckdb(&format!(
        "SELECT count(*) AS n FROM '{}'",
        lenient.display()
    ))?[0];
    let before = original
        .lines()
        .take(calling)
        .filter(|l| l.contains(" - Entered "))
        .count();
    ensure!(s["n"] == before, "{s} vs {before}");
    Ok(())
}
