//! Reading what was written back, with the tools users query it with: the real DuckDB CLI and
//! `p11trace-query`. Plus the accounting every capture test checks: per process, each call the
//! client made is a row, or counted as dropped or lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::process::{run, text};
use crate::query_bin;

/// Runs SQL in the real DuckDB CLI; rows as JSON objects.
pub fn duckdb(sql: &str) -> Result<Vec<Value>> {
    let output = run(
        Command::new("duckdb").args(["-json", "-c", sql]),
        Duration::from_secs(120),
    )?;
    if !output.status.success() {
        bail!("duckdb failed on `{sql}`: {}", text(&output.stderr));
    }
    let stdout = text(&output.stdout);
    if stdout.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&stdout).with_context(|| format!("duckdb output is not JSON: {stdout}"))
}

/// The `n` of the first row of `SELECT count(*) AS n …` (0 if not a number).
pub fn count_of(sql: &str) -> Result<i64> {
    Ok(duckdb(sql)?[0]["n"].as_i64().unwrap_or(0))
}

/// `SELECT k, n …` rows as a map from `k` to `n`.
pub fn counts(sql: &str) -> Result<BTreeMap<String, i64>> {
    Ok(duckdb(sql)?
        .iter()
        .map(|r| {
            (
                r["k"].as_str().unwrap_or("").to_owned(),
                r["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect())
}

/// A name → count map of a ground truth `expected.json` (the corpus's, the pkcs11-logger
/// fixtures'), such as `calls_by_function`.
pub fn expected_counts(expected: &Value, key: &str) -> Result<BTreeMap<String, i64>> {
    Ok(expected[key]
        .as_object()
        .with_context(|| format!("no `{key}` in the ground truth"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
        .collect())
}

/// `read_parquet` glob of a table of a dataset.
pub fn table(dataset: &Path, table: &str) -> String {
    format!(
        "read_parquet('{}/{table}/**/*.parquet', hive_partitioning=true)",
        dataset.display()
    )
}

/// The one row of a Parquet file matching `filter`.
pub fn row(file: &Path, filter: &str) -> Result<Value> {
    let rows = duckdb(&format!(
        "SELECT * FROM '{}' WHERE {filter}",
        file.display()
    ))?;
    ensure!(
        rows.len() == 1,
        "expected one row for {filter}, got {}",
        rows.len()
    );
    Ok(rows.into_iter().next().unwrap_or_default())
}

/// A row's attributes as (template, type, len, value, redacted).
pub fn attrs(row: &Value) -> Vec<(String, String, i64, Value, bool)> {
    row["attrs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["template"].as_str().unwrap_or("").to_owned(),
                        x["type"].as_str().unwrap_or("").to_owned(),
                        x["len"].as_i64().unwrap_or(-9),
                        x["value"].clone(),
                        x["redacted"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `p11trace-query` with arguments, whatever its exit status (tests of failures).
pub fn query_output(args: &[&str]) -> Result<Output> {
    run(
        Command::new(query_bin()).args(args),
        Duration::from_secs(300),
    )
}

/// Runs `p11trace-query` with arguments; fails unless it exits 0.
pub fn query(args: &[&str]) -> Result<Output> {
    let output = query_output(args)?;
    if !output.status.success() {
        bail!("p11trace-query {args:?} failed: {}", text(&output.stderr));
    }
    Ok(output)
}

/// `p11trace-query import INPUT -o OUT EXTRA…`; fails unless it exits 0.
pub fn import(input: &Path, out: &Path, extra: &[&str]) -> Result<Output> {
    let mut args = vec![
        "import",
        input.to_str().unwrap_or_default(),
        "-o",
        out.to_str().unwrap_or_default(),
    ];
    args.extend_from_slice(extra);
    query(&args)
}

/// [`import`] of `input` to `dir/name`, which is returned.
pub fn import_as(input: &Path, dir: &Path, name: &str, extra: &[&str]) -> Result<PathBuf> {
    let out = dir.join(name);
    import(input, &out, extra)?;
    Ok(out)
}

/// What a dataset holds for one process.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Rows of `calls`.
    pub rows: i64,
    /// Of those, the calls the shim made itself.
    pub internal: i64,
    /// Σ `dropped` and Σ `lost` over its `clients` rows (its connections).
    pub dropped: i64,
    pub lost: i64,
}

impl Tally {
    /// The client's calls the dataset accounts for: rows + dropped + lost - the shim's own.
    pub fn accounted(&self) -> i64 {
        self.rows + self.dropped + self.lost - self.internal
    }
}

/// Stores a pid's two sums of one table in its tally.
type SetSums = fn(&mut Tally, i64, i64);

/// Per pid, what the dataset holds.
pub fn tallies(dataset: &Path) -> Result<BTreeMap<i64, Tally>> {
    let mut tallies: BTreeMap<i64, Tally> = BTreeMap::new();
    let int = |row: &Value, key: &str| row[key].as_i64().unwrap_or(0);
    // Per table, two sums by pid (`a`, `b`) and where they go in the tally.
    let sums: [(&str, &str, SetSums); 2] = [
        (
            "calls",
            "count(*) AS a, count(*) FILTER (internal) AS b",
            |t, a, b| (t.rows, t.internal) = (a, b),
        ),
        (
            "clients",
            "sum(dropped)::BIGINT AS a, sum(lost)::BIGINT AS b",
            |t, a, b| (t.dropped, t.lost) = (a, b),
        ),
    ];
    for (table_name, columns, set) in sums {
        for r in duckdb(&format!(
            "SELECT pid, {columns} FROM {} GROUP BY 1",
            table(dataset, table_name)
        ))? {
            set(
                tallies.entry(int(&r, "pid")).or_default(),
                int(&r, "a"),
                int(&r, "b"),
            );
        }
    }
    Ok(tallies)
}

/// Per client report (by pid): rows + Σdropped + Σlost = calls made + the shim's own calls, and
/// no `(client_id, seq)` twice.
pub fn check_invariant(dataset: &Path, reports: &[Value]) -> Result<()> {
    let tallies = tallies(dataset)?;
    for report in reports {
        let pid = report["pid"].as_i64().context("pid")?;
        let made = report["calls"].as_i64().context("calls")?;
        let t = tallies.get(&pid).copied().unwrap_or_default();
        ensure!(
            t.accounted() == made,
            "pid {pid}: rows {} + dropped {} + lost {} != calls {made} + internal {}",
            t.rows,
            t.dropped,
            t.lost,
            t.internal
        );
    }
    let duplicates = duckdb(&format!(
        "SELECT client_id, seq, count(*) AS n FROM {} GROUP BY 1, 2 HAVING count(*) > 1 LIMIT 5",
        table(dataset, "calls")
    ))?;
    ensure!(duplicates.is_empty(), "duplicated rows: {duplicates:?}");
    Ok(())
}

/// Every key path of a JSON value (`a`, `a.b`, `list[].c`), over every element of every array;
/// the objects named in `maps` hold data as keys (counts by function) and stop at their path.
pub fn json_paths(value: &Value, maps: &[&str]) -> std::collections::BTreeSet<String> {
    fn walk(
        value: &Value,
        path: &str,
        maps: &[&str],
        out: &mut std::collections::BTreeSet<String>,
    ) {
        match value {
            Value::Object(object) if !maps.contains(&path) => {
                for (key, child) in object {
                    let child_path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    out.insert(child_path.clone());
                    walk(child, &child_path, maps, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    walk(item, &format!("{path}[]"), maps, out);
                }
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(value, "", maps, &mut out);
    out
}

/// The key paths a document under `schemas/` lists in its tables (rows `| \`path\` | … |`).
pub fn documented_paths(document: &str) -> Result<std::collections::BTreeSet<String>> {
    let path = crate::workspace().join("schemas").join(document);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |"))
        .map(|(key, _)| key.to_owned())
        .collect())
}
