//! Datasets in object storage (`s3://BUCKET/PREFIX`, `gs://…`, `az://…`, `file:///…`): their
//! `calls` and `clients` files are fetched (eight at a time, streamed to disk, sizes checked) into a private temporary dataset
//! folder, removed when the command ends, and read from there like any local dataset — so a
//! command gives the same answer on the store as on a copy of it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use p11trace_store::Remote;

/// Is this input a store URL rather than a local path?
pub fn is_remote(input: &Path) -> bool {
    input.to_str().is_some_and(p11trace_store::is_url)
}

/// Fetches the dataset at `url` into a new temporary folder (0700; files 0600) laid out as a
/// dataset folder (`calls/` and `clients/` both there), so it is read as one.
pub fn fetch(url: &str) -> Result<tempfile::TempDir> {
    let remote = Remote::open(url)?;
    let dir = tempfile::Builder::new()
        .prefix("p11trace-fetch-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let mut entries = remote.list("calls")?;
    entries.extend(remote.list("clients")?);
    if entries.is_empty() {
        bail!("{url}: no Parquet files under calls/ or clients/ (is the prefix right?)");
    }
    for table in ["calls", "clients"] {
        let folder = dir.path().join(table);
        p11trace_dataset::layout::private_dir(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    remote
        .fetch_all(&entries, dir.path())
        .with_context(|| format!("cannot fetch the dataset {url}"))?;
    Ok(dir)
}
