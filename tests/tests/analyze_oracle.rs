//! `analyze` against DuckDB on a dataset DuckDB wrote: every number of the report that SQL can
//! state — per function counts, failures, expected idioms, mean, max and percentiles; return codes;
//! processes; providers (filled per client); the summary; slow outliers; a filtered run — computed
//! both ways from the same files. The dataset is built to catch the folds' hard parts: a thread's
//! calls spread over three files in shuffled order (the size-query rule looks at the next call),
//! size queries retried, answered by another size query, followed by a probe, and retried only on
//! their own thread (its next call is not its client's next); probes; calls
//! that never returned; calls without a duration; a provider known only from a client's third
//! call on. The JSON `operations` list marks each call on its own (`expected`), and must count
//! the same expected calls as the summary.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

/// Rows per client; seven clients.
const PER_CLIENT: i64 = 3_000;

/// The calls, as SQL over `range`: client `i % 7`, its `seq` `i // 7`.
fn calls_sql() -> String {
    let n = 7 * PER_CLIENT;
    format!(
        "WITH r AS (SELECT i, i % 7 AS c, i // 7 AS k FROM range({n}) t(i)),
         f AS (SELECT *, k % 20 AS p,
             CASE WHEN k % 50 = 49 OR (k % 50 = 0 AND (k // 50) % 3 = 0)
               THEN 'C_GetOperationState' ELSE CASE k % 20 WHEN 5 THEN 'C_Sign' WHEN 6 THEN 'C_Sign'
               WHEN 12 THEN 'C_Decrypt' WHEN 13 THEN 'C_Decrypt' WHEN 14 THEN 'C_Decrypt'
               WHEN 15 THEN 'C_Encrypt' WHEN 16 THEN 'C_GetAttributeValue'
               WHEN 17 THEN 'C_GetMechanismInfo' WHEN 19 THEN 'C_Login'
               WHEN 2 THEN 'C_Digest' WHEN 3 THEN 'C_GetAttributeValue'
               ELSE 'C_GetSessionInfo' END END AS func,
             CASE WHEN k % 97 = 0 THEN NULL WHEN k % 50 = 49 THEN 336
               WHEN k % 20 IN (5, 12, 13, 15) THEN 336
               WHEN k % 20 = 16 THEN 18 WHEN k % 20 = 3 AND k % 3 = 0 THEN 17
               WHEN k % 20 = 17 THEN 112 WHEN k % 20 = 19 AND k % 7 < 3 THEN 160
               WHEN k % 20 = 2 AND k % 11 = 0 THEN 5 ELSE 0 END AS rv
           FROM r)
         SELECT
           'client-' || c AS client_id, 4000 + c AS pid,
           c * 10 + (k // 50) % 3 AS tid,
           'app-' || (c % 3) AS process,
           CASE WHEN k < 2 THEN NULL WHEN c < 4 THEN 'SoftHSM2' ELSE 'Kryoptic' END AS provider,
           k AS seq,
           TIMESTAMPTZ '2026-11-25 00:00:00+00' + to_microseconds(i * 13) AS start,
           CASE WHEN k % 101 = 7 OR rv IS NULL THEN NULL
             WHEN k % 499 = 3 THEN 5000000 + k
             ELSE 300 + (hash(i) % 90000)::BIGINT END AS dur_ns,
           func, false AS internal, rv IS NOT NULL AS returned, rv,
           CASE rv WHEN 0 THEN 'CKR_OK' WHEN 336 THEN 'CKR_BUFFER_TOO_SMALL'
             WHEN 18 THEN 'CKR_ATTRIBUTE_TYPE_INVALID' WHEN 17 THEN 'CKR_ATTRIBUTE_SENSITIVE'
             WHEN 112 THEN 'CKR_MECHANISM_INVALID' WHEN 160 THEN 'CKR_PIN_INCORRECT'
             WHEN 5 THEN 'CKR_GENERAL_ERROR' END AS rv_name,
           0 AS slot_id,
           CASE func WHEN 'C_Encrypt' THEN 100 + k // 60 WHEN 'C_GetOperationState' THEN 1
             ELSE 100 + k // 20 END AS session,
           CASE WHEN func IN ('C_Sign', 'C_Decrypt', 'C_Encrypt') THEN 'CKM_RSA_PKCS' END
             AS mechanism, NULL::BIGINT AS object, '/usr/lib/softhsm/libsofthsm2.so' AS module,
           k % 3 AS part, hash(i * 7919) AS shuffle
         FROM f"
    )
}

/// The calls with DuckDB's verdict on each: expected (an idiom) and failed.
fn marked(table: &str) -> String {
    format!(
        "(WITH w AS (SELECT *,
             lead(func) OVER t AS nf, lead(session) OVER t AS ns, lead(rv) OVER t AS nr
           FROM {table} WINDOW t AS (PARTITION BY client_id, tid ORDER BY seq)),
         m AS (SELECT *, coalesce(returned AND (
             (rv = 336 AND nf = func AND ns IS NOT DISTINCT FROM session AND nr = 0)
             OR (func = 'C_GetAttributeValue' AND rv IN (17, 18))
             OR (func = 'C_GetMechanismInfo' AND rv = 112)), false) AS expected FROM w)
         SELECT *, coalesce(rv <> 0, false) AND NOT expected AS failed FROM m)"
    )
}

/// How the dataset's calls are laid out in files.
#[derive(Clone, Copy)]
enum Layout {
    /// One file in call order, as a recorder writes: a size query's successor is found as it is
    /// read (the retried rule's first-read path).
    InOrder,
    /// Three files, each a third of every thread's calls, shuffled: no successor is where it
    /// would be found as read (the second-read path).
    Scattered,
}

fn write_dataset(dir: &Path, layout: Layout) -> Result<std::path::PathBuf> {
    let dataset = dir.join("dataset");
    let calls = dataset.join("calls");
    std::fs::create_dir_all(&calls)?;
    let mut sql = format!("CREATE TABLE c AS {};", calls_sql());
    let copy = |filter: &str, order: &str, name: &str| {
        format!(
            "COPY (SELECT * EXCLUDE (part, shuffle) FROM c WHERE {filter} ORDER BY {order})
             TO '{}/{name}.parquet' (FORMAT parquet);",
            calls.display()
        )
    };
    match layout {
        Layout::InOrder => sql.push_str(&copy("true", "start", "all")),
        Layout::Scattered => {
            for part in 0..3 {
                sql.push_str(&copy(
                    &format!("part = {part}"),
                    "shuffle",
                    &format!("part-{part}"),
                ));
            }
        }
    }
    duckdb(&sql)?;
    Ok(dataset)
}

fn close(a: &Value, b: &Value, what: &str) -> Result<()> {
    let (x, y) = (a.as_f64(), b.as_f64());
    let same = match (x, y) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * x.abs().max(1.0),
        _ => a.is_null() && b.is_null(),
    };
    ensure!(same, "{what}: analyze {a}, DuckDB {b}");
    Ok(())
}

/// `analyze ARGS… --format json`, parsed.
fn report_of(args: &[&str]) -> Result<Value> {
    let output = query(&[&["analyze"], args, &["--format", "json"]].concat())?;
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[test]
fn every_number_of_analyze_is_duckdbs_on_a_dataset_in_call_order() -> Result<()> {
    let dir = temp();
    agrees_with_duckdb(&write_dataset(dir.path(), Layout::InOrder)?)
}

#[test]
fn every_number_of_analyze_is_duckdbs_on_a_dataset_scattered_over_files() -> Result<()> {
    let dir = temp();
    agrees_with_duckdb(&write_dataset(dir.path(), Layout::Scattered)?)
}

fn agrees_with_duckdb(dataset: &Path) -> Result<()> {
    let files = format!("read_parquet('{}/calls/*.parquet')", dataset.display());
    let report = report_of(&[dataset.to_str().unwrap_or_default()])?;
    let m = marked(&files);

    // Per function.
    let rows = duckdb(&format!(
        "SELECT func, count(*) AS count, count(*) FILTER (failed) AS failed,
           count(*) FILTER (expected AND rv <> 0) AS expected,
           sum(dur_ns) / 1e6 AS total_ms, avg(dur_ns) / 1e6 AS mean_ms,
           quantile_cont(dur_ns, 0.5) / 1e6 AS p50_ms, quantile_cont(dur_ns, 0.95) / 1e6 AS p95_ms,
           quantile_cont(dur_ns, 0.99) / 1e6 AS p99_ms, max(dur_ns) / 1e6 AS max_ms
         FROM {m} GROUP BY func"
    ))?;
    let performance = &report["performance"];
    ensure!(performance.as_object().map(|p| p.len()) == Some(rows.len()) && rows.len() == 9);
    for row in &rows {
        let func = row["func"].as_str().unwrap_or_default();
        let ours = &performance[func];
        ensure!(ours["count"] == row["count"], "{func} count {ours}");
        ensure!(
            ours["failed"] == row["failed"],
            "{func} failed {ours} vs {row}"
        );
        ensure!(
            ours["expected_nonok"] == row["expected"],
            "{func} expected {ours} vs {row}"
        );
        for stat in [
            "total_ms", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms",
        ] {
            close(&ours[stat], &row[stat], &format!("{func} {stat}"))?;
        }
    }
    // The rules had something to find: retried size queries, others not, probes.
    ensure!(performance["C_Decrypt"]["expected_nonok"].as_i64() > Some(100));
    ensure!(performance["C_Decrypt"]["failed"].as_i64() > Some(100));
    ensure!(performance["C_Encrypt"]["expected_nonok"] == 0);
    // A thread's next call is not its client's next: where the two differ, one retries and
    // the other does not, both ways.
    ensure!(performance["C_GetOperationState"]["expected_nonok"].as_i64() > Some(10));
    ensure!(performance["C_GetOperationState"]["failed"].as_i64() > Some(10));

    // The summary.
    let totals = &duckdb(&format!(
        "SELECT count(*) AS total, count(*) FILTER (failed) AS failed,
           count(*) FILTER (expected AND rv <> 0) AS expected,
           count(*) FILTER (NOT returned) AS unreturned, sum(dur_ns) / 1e6 AS total_ms,
           count(DISTINCT pid) AS processes, count(DISTINCT client_id) AS clients
         FROM {m}"
    ))?[0];
    let summary = &report["summary"];
    for (ours, theirs) in [
        ("total_operations", "total"),
        ("failed_operations", "failed"),
        ("expected_nonok_operations", "expected"),
        ("unreturned_operations", "unreturned"),
        ("processes", "processes"),
        ("clients", "clients"),
    ] {
        ensure!(
            summary[ours] == totals[theirs],
            "{ours}: {summary} vs {totals}"
        );
    }
    close(
        &summary["total_duration_ms"],
        &totals["total_ms"],
        "total_duration_ms",
    )?;

    // Return codes, expected and failing apart.
    let codes = duckdb(&format!(
        "SELECT rv, rv_name, expected AND rv <> 0 AS expected, count(*) AS n FROM {m}
         GROUP BY ALL"
    ))?;
    let key = |rv: &Value, name: &Value, expected: &Value| format!("{rv}/{name}/{expected}");
    let theirs: BTreeMap<String, Value> = codes
        .iter()
        .map(|r| (key(&r["rv"], &r["rv_name"], &r["expected"]), r["n"].clone()))
        .collect();
    let ours: BTreeMap<String, Value> = report["return_codes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                key(&r["rv"], &r["rv_name"], &r["expected"]),
                r["count"].clone(),
            )
        })
        .collect();
    ensure!(
        ours == theirs,
        "return codes\nanalyze {ours:?}\nDuckDB {theirs:?}"
    );

    // Processes, and providers: a client's calls before its provider is known are its.
    let processes = counts(&format!(
        "SELECT pid || '/' || process AS k, count(*) AS n FROM {m} GROUP BY k"
    ))?;
    let ours: BTreeMap<String, i64> = rows_of(&report["by_process"], |r| {
        (
            format!("{}/{}", r["pid"], r["process"].as_str().unwrap_or_default()),
            r["calls"].as_i64(),
        )
    });
    ensure!(
        ours == processes && ours.len() == 7,
        "{ours:?} vs {processes:?}"
    );
    let providers = duckdb(&format!(
        "WITH p AS (SELECT client_id, any_value(provider) AS filled FROM {files}
           WHERE provider IS NOT NULL GROUP BY client_id)
         SELECT filled AS provider, count(*) AS n, count(*) FILTER (failed) AS failed,
           quantile_cont(dur_ns, 0.5) / 1e6 AS p50_ms, quantile_cont(dur_ns, 0.99) / 1e6 AS p99_ms
         FROM {m} JOIN p USING (client_id) GROUP BY filled"
    ))?;
    let ours = report["by_provider"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(ours.len() == 2 && providers.len() == 2, "{ours:?}");
    for theirs in &providers {
        let Some(row) = ours.iter().find(|r| r["provider"] == theirs["provider"]) else {
            anyhow::bail!("no provider {}", theirs["provider"]);
        };
        ensure!(
            row["calls"] == theirs["n"] && row["failed"] == theirs["failed"],
            "{row}"
        );
        close(&row["p50_ms"], &theirs["p50_ms"], "provider p50")?;
        close(&row["p99_ms"], &theirs["p99_ms"], "provider p99")?;
    }

    // Slow outliers: above max(p99, 10 × p50, 1 ms) of a function of 20 calls or more.
    let outliers = count_of(&format!(
        "WITH l AS (SELECT func, greatest(quantile_cont(dur_ns, 0.99),
             10 * quantile_cont(dur_ns, 0.5), 1e6) AS limit_ns FROM {files}
           GROUP BY func HAVING count(*) >= 20)
         SELECT count(*) AS n FROM {files} JOIN l USING (func) WHERE dur_ns > limit_ns"
    ))?;
    let issue = |kind: &str| {
        report["issues"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["kind"] == kind)
            .cloned()
            .unwrap_or(Value::Null)
    };
    ensure!(outliers > 10 && issue("slow_outliers")["count"] == outliers);
    ensure!(issue("slow_outliers")["evidence"].as_array().map(Vec::len) == Some(10));
    let pins = count_of(&format!("SELECT count(*) AS n FROM {files} WHERE rv = 160"))?;
    ensure!(issue("pin_incorrect_burst")["count"] == pins);
    let storms = count_of(&format!(
        "SELECT sum(n)::BIGINT AS n FROM (SELECT count(*) AS n FROM {files} WHERE rv = 336
           GROUP BY client_id, session, func HAVING count(*) >= 3)"
    ))?;
    ensure!(
        storms > 0 && issue("buffer_too_small_storm")["count"] == storms,
        "storms: DuckDB {storms}, analyze {}",
        issue("buffer_too_small_storm")
    );

    // The per-call listing counts the same expected calls.
    let listed = report["operations"].as_array().cloned().unwrap_or_default();
    let listed_expected = listed.iter().filter(|o| o["expected"] == true).count() as i64;
    ensure!(listed.len() as i64 == totals["total"].as_i64().unwrap_or(-1));
    ensure!(listed_expected == totals["expected"].as_i64().unwrap_or(-1));

    // A shorter list is the first calls in call order, whichever files hold them.
    let first = report_of(&[
        dataset.to_str().unwrap_or_default(),
        "--max-operations",
        "50",
    ])?;
    let ours: Vec<String> = first["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            format!(
                "{}/{}",
                o["client_id"].as_str().unwrap_or_default(),
                o["seq"]
            )
        })
        .collect();
    let theirs: Vec<String> = duckdb(&format!(
        "SELECT client_id || '/' || seq AS k FROM {files} ORDER BY start, client_id, seq LIMIT 50"
    ))?
    .iter()
    .map(|r| r["k"].as_str().unwrap_or_default().to_owned())
    .collect();
    ensure!(
        ours.len() == 50 && ours == theirs,
        "{ours:?}\nvs\n{theirs:?}"
    );
    ensure!(first["summary"]["operations_truncated"] == true);
    Ok(())
}

#[test]
fn a_filtered_analyze_is_duckdbs_where_clause() -> Result<()> {
    let dir = temp();
    let dataset = write_dataset(dir.path(), Layout::Scattered)?;
    let files = format!("read_parquet('{}/calls/*.parquet')", dataset.display());
    let report = report_of(&[
        dataset.to_str().unwrap_or_default(),
        "--pid",
        "4002",
        "--func",
        "Decrypt",
        "--since",
        "2026-11-25T00:00:00.100Z",
    ])?;
    let filtered = format!(
        "(SELECT * FROM {files} WHERE pid = 4002 AND func = 'C_Decrypt'
           AND start >= TIMESTAMPTZ '2026-11-25 00:00:00.1+00')"
    );
    let theirs = &duckdb(&format!(
        "SELECT count(*) AS n, count(*) FILTER (failed) AS failed,
           count(*) FILTER (expected AND rv <> 0) AS expected,
           quantile_cont(dur_ns, 0.5) / 1e6 AS p50_ms FROM {}",
        marked(&filtered)
    ))?[0];
    let ours = &report["performance"]["C_Decrypt"];
    ensure!(report["performance"].as_object().map(|p| p.len()) == Some(1));
    ensure!(
        ours["count"] == theirs["n"] && theirs["n"].as_i64() > Some(100),
        "{ours} {theirs}"
    );
    ensure!(ours["failed"] == theirs["failed"], "{ours} vs {theirs}");
    ensure!(
        ours["expected_nonok"] == theirs["expected"],
        "{ours} vs {theirs}"
    );
    close(&ours["p50_ms"], &theirs["p50_ms"], "filtered p50")
}

fn rows_of(rows: &Value, pick: impl Fn(&Value) -> (String, Option<i64>)) -> BTreeMap<String, i64> {
    rows.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let (k, n) = pick(r);
            (k, n.unwrap_or(-1))
        })
        .collect()
}

#[test]
fn compare_reads_the_files_duckdb_writes() -> Result<()> {
    // DuckDB, pyarrow and Spark write Snappy-compressed Parquet by default: `compare`'s direct
    // reader once knew zstd only.
    let dir = temp();
    let dataset = write_dataset(dir.path(), Layout::Scattered)?;
    let side = dataset.to_str().unwrap_or_default();
    let compared: Value =
        serde_json::from_slice(&query(&["compare", side, side, "--format", "json"])?.stdout)?;
    let rows = compared["comparisons"][0]["functions"]
        .as_array()
        .map_or(0, Vec::len);
    ensure!(rows >= 9, "compare of the dataset with itself: {rows} rows");
    Ok(())
}
