//! A fleet's parts for the object-storage tests: hosts with their own spool, socket and host
//! name, recording into one bucket of an [`S3Server`]; and the checks every such test makes —
//! nothing left in a spool, every object a known host's part file never overwritten with other
//! bytes, every call accounted for, and `analyze s3://…` equal to `analyze` of a copy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::s3::{S3Server, files_below};
use crate::{Launch, Recorder, check_invariant, query, report, temp};

pub const BUCKET: &str = "fleet";
pub const PREFIX: &str = "ds";

pub fn url() -> String {
    format!("s3://{BUCKET}/{PREFIX}")
}

/// One host: its own spool and socket (kept across restarts) and the recorder's arguments.
pub struct Host {
    pub name: String,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Host {
    pub fn new(name: &str, extra: &[&str]) -> Host {
        Host {
            name: name.to_owned(),
            dir: temp(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock").join("r.sock")
    }

    /// Starts (or restarts) this host's recorder against `server`, with `env` besides.
    pub fn start(&self, server: &S3Server, env: &[(&str, &str)]) -> Result<Recorder> {
        self.start_at(&server.endpoint, env)
    }

    /// [`Host::start`] against a server at `endpoint`, running or not.
    pub fn start_at(&self, endpoint: &str, env: &[(&str, &str)]) -> Result<Recorder> {
        let spool = self.spool();
        let mut args = vec![
            "--spool",
            spool.to_str().context("spool path")?,
            "--host",
            &self.name,
            "--roll-secs",
            "1",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let mut launch = Launch::at(temp(), PathBuf::from(url()), self.socket()).args(&args);
        for (key, value) in S3Server::env_at(endpoint) {
            launch = launch.env(&key, &value);
        }
        for (key, value) in env {
            launch = launch.env(key, value);
        }
        launch.start()
    }

    /// The finished files still in the spool.
    pub fn spooled(&self) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for table in ["calls", "clients"] {
            let folder = self.spool().join(table);
            if folder.is_dir() {
                files.extend(files_below(&folder)?);
            }
        }
        Ok(files)
    }
}

/// Stops a recorder with SIGTERM; it must exit 0 with nothing left in its spool.
pub fn stop_uploaded(recorder: &mut Recorder, host: &Host) -> Result<()> {
    let (status, stderr) = recorder.stop()?;
    ensure!(status.success(), "{}: {status}: {stderr}", host.name);
    let summary = recorder.summary().context("no summary line")?;
    ensure!(
        summary.get("left_in_spool") == 0 && summary.get("uploaded") > 0,
        "{}: {stderr}",
        host.name
    );
    ensure!(
        host.spooled()?.is_empty(),
        "{}: files left in the spool",
        host.name
    );
    Ok(())
}

/// Every object is a part file of a known host in the layout's folders, and every version of
/// a key holds the same bytes (a retry replaced an object with itself, never with others).
pub fn check_objects(server: &S3Server, hosts: &[&str]) -> Result<BTreeMap<String, usize>> {
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    let mut etags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for version in server.versions(BUCKET, &format!("{PREFIX}/"))? {
        etags
            .entry(version.key.clone())
            .or_default()
            .push(version.etag);
    }
    for object in server.objects(BUCKET, &format!("{PREFIX}/"))? {
        let parts: Vec<&str> = object.key.split('/').collect();
        let [prefix, table, date, name] = parts.as_slice() else {
            anyhow::bail!("unexpected key {}", object.key);
        };
        ensure!(
            *prefix == PREFIX && ["calls", "clients"].contains(table),
            "{}",
            object.key
        );
        ensure!(
            date.starts_with("date=") && date.len() == 15,
            "{}",
            object.key
        );
        let host = hosts
            .iter()
            .find(|h| name.starts_with(&format!("part-{h}-")))
            .with_context(|| format!("{}: no host's name", object.key))?;
        *per_host.entry(host.to_string()).or_default() += 1;
        let versions = &etags[&object.key];
        ensure!(
            versions.iter().all(|e| *e == versions[0]),
            "{} was overwritten with other bytes: {versions:?}",
            object.key
        );
    }
    Ok(per_host)
}

/// Downloads the bucket's dataset into a local folder and checks the accounting on it; then
/// `analyze s3://…` must equal `analyze` of that copy.
pub fn check_dataset(server: &S3Server, reports: &[Value]) -> Result<tempfile::TempDir> {
    let copy = temp();
    server.download_dir(BUCKET, &format!("{PREFIX}/"), copy.path())?;
    check_invariant(copy.path(), reports)?;
    let remote = server.query(&["analyze", &url(), "--format", "json"])?;
    let local = query(&[
        "analyze",
        copy.path().to_str().context("path")?,
        "--format",
        "json",
    ])?;
    let remote: Value = serde_json::from_slice(&remote.stdout)?;
    let local: Value = serde_json::from_slice(&local.stdout)?;
    let differing: Vec<&String> = local
        .as_object()
        .context("analysis")?
        .iter()
        .filter(|(key, value)| remote.get(key.as_str()) != Some(value))
        .map(|(key, _)| key)
        .collect();
    ensure!(
        differing.is_empty(),
        "analyze s3:// differs from analyze of a copy in {differing:?}: {} vs {}",
        remote[differing[0]],
        local[differing[0]]
    );
    let made: i64 = reports.iter().filter_map(|r| r["calls"].as_i64()).sum();
    let total = remote["summary"]["total_operations"]
        .as_i64()
        .context("total")?;
    ensure!(
        total > 0 && total <= made + 64 * reports.len() as i64,
        "{total} of {made}"
    );
    Ok(copy)
}

pub fn reports_of(clients: Vec<Child>) -> Result<Vec<Value>> {
    clients.into_iter().map(report).collect()
}
