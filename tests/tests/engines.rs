//! Engines other than ours read the dataset as it is written, and count what `analyze` counts:
//! pyarrow reads it in place in S3 (a real `moto_server`, the dataset uploaded file for file),
//! Apache Spark (pyspark, local mode) reads the dataset folder with its own hive partition
//! discovery. Both must see the `date` partition column and the same calls per function as
//! `p11trace-query analyze --format json`. The scripts they run are `tests/scripts/*_counts.py`,
//! shown as they are in the README's "Reading datasets with other engines".

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use p11trace_tests::s3::S3Server;
use p11trace_tests::*;
use serde_json::Value;

const PYARROW: &str = "pyarrow==26.0.1";
const PYSPARK: &str = "pyspark==4.3.0";
const TIMEOUT: Duration = Duration::from_secs(120);
/// An engine's script: Spark's JVM takes ~20 s to start on two idle cores, more under the suite.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(300);

/// Calls by function name.
type Counts = BTreeMap<String, i64>;

/// A dataset of real traced work (an EC key pair made, a signature, the objects listed) and
/// what `analyze` counts per function in it.
fn traced_dataset(label: &str) -> Result<(Traced, Counts)> {
    let mut traced = Traced::new(label)?;
    let keygen = ["--keypairgen", "--key-type", "EC:prime256v1", "--id", "01"];
    run_ok(&mut traced.pkcs11_tool(&login(&keygen)), TIMEOUT)?;
    traced.sign_ecdsa("01", TIMEOUT)?;
    run_ok(
        &mut traced.pkcs11_tool(&login(&["--list-objects"])),
        TIMEOUT,
    )?;
    traced.recorder.stop()?;
    let dataset = traced.recorder.dataset.to_str().context("dataset path")?;
    let report: Value =
        serde_json::from_slice(&query(&["analyze", dataset, "--format", "json"])?.stdout)?;
    let counts: Counts = report["performance"]
        .as_object()
        .context("analyze's `performance`")?
        .iter()
        .map(|(func, row)| (func.clone(), row["count"].as_i64().unwrap_or(-1)))
        .collect();
    for func in ["C_GenerateKeyPair", "C_Sign", "C_FindObjects", "C_Login"] {
        ensure!(counts.contains_key(func), "no {func} in {counts:?}");
    }
    Ok((traced, counts))
}

/// The dates of the `calls/date=…` folders of a dataset.
fn date_partitions(dataset: &Path) -> Result<BTreeSet<String>> {
    std::fs::read_dir(dataset.join("calls"))?
        .map(|entry| {
            let name = entry?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("date=")
                .map(str::to_owned)
                .with_context(|| format!("not a date partition: calls/{name}"))
        })
        .collect()
}

/// Fails, naming the pip package, unless python3 imports `module`.
fn require_python(module: &str, package: &str) -> Result<()> {
    let output = run(
        Command::new("python3").args(["-c", &format!("import {module}")]),
        TIMEOUT,
    )?;
    ensure!(
        output.status.success(),
        "python3 cannot import {module}: `pip install {package}` (.ci/run and `just deps` do): {}",
        text(&output.stderr)
    );
    Ok(())
}

/// Runs `tests/scripts/SCRIPT ARG` in `envs`; the JSON it printed, and how long it took.
fn engine(script: &str, arg: &str, envs: Vec<(String, String)>) -> Result<(Value, Duration)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let dir = temp();
    let started = Instant::now();
    let output = run_ok(
        Command::new("python3")
            .arg(&path)
            .arg(arg)
            .envs(envs)
            .current_dir(dir.path()),
        ENGINE_TIMEOUT,
    )?;
    let elapsed = started.elapsed();
    let stdout = text(&output.stdout);
    let value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("{script} printed no JSON: {stdout}"))?;
    Ok((value, elapsed))
}

/// A `{name: count}` object of an engine's answer.
fn counts_of(answer: &Value, key: &str) -> Result<Counts> {
    answer[key]
        .as_object()
        .with_context(|| format!("no `{key}` in {answer}"))?
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_i64().context("a count")?)))
        .collect()
}

/// The engine's counts equal analyze's per function, its per-date counts are the dataset's
/// date folders and add up to the same total.
fn check_counts(engine: &str, answer: &Value, analyzed: &Counts, dataset: &Path) -> Result<()> {
    let functions = counts_of(answer, "functions")?;
    ensure!(
        &functions == analyzed,
        "{engine} counts per function differ from analyze's:\n{engine}: {functions:?}\nanalyze: {analyzed:?}"
    );
    let dates = counts_of(answer, "dates")?;
    let folders = date_partitions(dataset)?;
    ensure!(
        dates.keys().cloned().collect::<BTreeSet<_>>() == folders,
        "{engine}'s date column {dates:?}, the folders {folders:?}"
    );
    let total: i64 = analyzed.values().sum();
    ensure!(dates.values().sum::<i64>() == total, "{dates:?} != {total}");
    Ok(())
}

#[test]
fn pyarrow_reads_the_dataset_in_s3_in_place_and_counts_what_analyze_counts() -> Result<()> {
    require_python("pyarrow.fs", PYARROW)?;
    let (traced, analyzed) = traced_dataset("pyarrow-s3")?;
    let dataset = &traced.recorder.dataset;
    let server = S3Server::start()?;
    server.create_bucket("fleet", false)?;
    server.upload_dir(dataset, "fleet", "site-a/")?;
    let uploaded = server.objects("fleet", "site-a/")?;
    ensure!(
        uploaded
            .iter()
            .any(|o| o.key.starts_with("site-a/calls/date="))
            && uploaded
                .iter()
                .any(|o| o.key.starts_with("site-a/clients/date=")),
        "uploaded: {uploaded:?}"
    );
    let (answer, took) = engine("pyarrow_s3_counts.py", "fleet/site-a", server.env())?;
    eprintln!("pyarrow over S3 ({took:?}): {answer}");
    check_counts("pyarrow", &answer, &analyzed, dataset)?;
    let columns = answer["columns"].to_string();
    for column in ["\"func\"", "\"start\"", "\"attrs\"", "\"date\""] {
        ensure!(columns.contains(column), "no {column} in {columns}");
    }
    Ok(())
}

/// `JAVA_HOME` as set, or the JDK of the `java` on PATH (Spark needs one).
fn java_home() -> Result<String> {
    if let Ok(home) = std::env::var("JAVA_HOME") {
        return Ok(home);
    }
    let java = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("java"))
        .find(|java| java.exists())
        .context("no java on PATH: apt-get install openjdk-17-jdk-headless (.ci/run does)")?;
    let real = std::fs::canonicalize(&java)?;
    let home = real.parent().and_then(Path::parent).context("JDK folder")?;
    Ok(home.to_str().context("JDK path")?.to_owned())
}

#[test]
fn spark_reads_the_dataset_folder_and_counts_what_analyze_counts() -> Result<()> {
    require_python("pyspark", PYSPARK)?;
    let (traced, analyzed) = traced_dataset("spark")?;
    let dataset = &traced.recorder.dataset;
    let envs = vec![
        ("JAVA_HOME".to_owned(), java_home()?),
        // Local mode on loopback only, whatever the host name resolves to.
        ("SPARK_LOCAL_IP".to_owned(), "127.0.0.1".to_owned()),
    ];
    let (answer, took) = engine(
        "spark_counts.py",
        dataset.to_str().context("dataset")?,
        envs,
    )?;
    eprintln!("spark over the folder ({took:?}): {answer}");
    check_counts("spark", &answer, &analyzed, dataset)?;
    // Every column of every row decoded (`collect`), with the types our schema promises.
    let total: i64 = analyzed.values().sum();
    ensure!(answer["rows"] == total, "{answer}");
    let columns = &answer["columns"];
    for (column, spark_type) in [
        ("start", "timestamp"),
        ("func", "string"),
        ("seq", "bigint"),
        ("out_objects", "array<bigint>"),
        ("date", "date"),
    ] {
        ensure!(columns[column] == spark_type, "{column}: {columns}");
    }
    ensure!(
        columns["attrs"]
            .as_str()
            .is_some_and(|t| t.starts_with("array<struct<")),
        "attrs: {columns}"
    );
    Ok(())
}

#[test]
fn the_readme_shows_the_engine_scripts_as_they_are() -> Result<()> {
    let readme = std::fs::read_to_string(workspace().join("README.md"))?;
    for script in ["pyarrow_s3_counts.py", "spark_counts.py"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(script);
        let code = std::fs::read_to_string(&path)?;
        ensure!(
            readme.contains(&code),
            "README.md does not show tests/scripts/{script} as it is"
        );
    }
    Ok(())
}
