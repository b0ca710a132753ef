//! Sealing one period, in an order a crash at any point cannot turn into a broken archive:
//!
//! 1. the period's files are written under `ARCHIVE/.staging/` (hidden: no reader sees them);
//! 2. its digest is written to `ARCHIVE/.pending/<name>.json` (fsynced): the decision point;
//! 3. each file is renamed into place (`calls/date=…/`, `clients/date=…/`);
//! 4. the digest is renamed into `ARCHIVE/digests/`, and the folders fsynced.
//!
//! A crash before 2 leaves only hidden scratch, removed by the next run. A crash between 2 and 4
//! leaves files that only the pending digest lists: `verify` checks them against it and reports
//! the run as interrupted, and the next `archive` finishes steps 3–4 before anything else.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::crash::Crash;
use crate::digest::Digest;

/// The archive's folders.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> Paths {
        Paths {
            root: root.to_owned(),
        }
    }
    pub fn staging(&self) -> PathBuf {
        self.root.join(".staging")
    }
    pub fn pending(&self) -> PathBuf {
        self.root.join(".pending")
    }
    pub fn digests(&self) -> PathBuf {
        self.root.join("digests")
    }
    /// A path the digests list (`/`-separated, relative), checked to stay inside the archive.
    pub fn resolve(&self, relative: &str) -> Option<PathBuf> {
        let safe = !relative.is_empty()
            && !relative.starts_with('/')
            && relative.split('/').all(|part| {
                !part.is_empty() && part != "." && part != ".." && !part.starts_with('.')
            });
        safe.then(|| self.root.join(relative))
    }
}

/// SHA-256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let read = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    Ok((crate::hex(&hasher.finalize()), total))
}

/// Creates a folder (and parents) private to the user.
pub fn private_dir(path: &Path) -> Result<()> {
    p11trace_dataset::layout::private_dir(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync {}", path.display()))
}

fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.display()))?;
    fs::rename(&temp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Steps 2–4 for a digest whose files are complete in the staging folder.
pub fn seal(paths: &Paths, name: &str, digest: &Digest, crash: &Crash) -> Result<()> {
    crash.at("staged");
    private_dir(&paths.pending())?;
    let pending = paths.pending().join(name);
    write_durable(&pending, &digest.to_bytes())?;
    crash.at("pending");
    finish(paths, name, digest, crash)
}

/// Steps 3–4 (also the recovery of an interrupted run).
fn finish(paths: &Paths, name: &str, digest: &Digest, crash: &Crash) -> Result<()> {
    let mut folders = Vec::new();
    for file in &digest.files {
        let Some(target) = paths.resolve(&file.path) else {
            bail!("pending digest {name}: unsafe path {:?}", file.path);
        };
        let staged = paths.staging().join(&file.path);
        if staged.exists() {
            let folder = target.parent().unwrap_or(&paths.root).to_owned();
            private_dir(&folder)?;
            fs::rename(&staged, &target)
                .with_context(|| format!("cannot move {} into place", file.path))?;
            crash.at("file-renamed");
            if !folders.contains(&folder) {
                folders.push(folder);
            }
        } else {
            let (sha256, _) = hash_file(&target).with_context(|| {
                format!(
                    "pending digest {name}: {} is neither staged nor in place",
                    file.path
                )
            })?;
            if sha256 != file.sha256 {
                bail!(
                    "pending digest {name}: {} in place differs from what the digest lists",
                    file.path
                );
            }
        }
    }
    for folder in &folders {
        sync_dir(folder)?;
    }
    private_dir(&paths.digests())?;
    fs::rename(paths.pending().join(name), paths.digests().join(name))
        .with_context(|| format!("cannot move digest {name} into digests/"))?;
    sync_dir(&paths.digests())?;
    crash.at("sealed");
    Ok(())
}

/// Finishes what an interrupted run decided (a digest in `.pending/`) and removes its scratch.
/// Returns the names of the digests it sealed.
pub fn recover(paths: &Paths) -> Result<Vec<String>> {
    let mut sealed = Vec::new();
    if paths.pending().is_dir() {
        let mut names: Vec<String> = fs::read_dir(paths.pending())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        for name in names {
            let (digest, _) = Digest::read(&paths.pending().join(&name))?;
            finish(paths, &name, &digest, &Crash::default())?;
            sealed.push(name);
        }
        fs::remove_dir_all(paths.pending())
            .with_context(|| format!("cannot remove {}", paths.pending().display()))?;
    }
    if paths.staging().exists() {
        fs::remove_dir_all(paths.staging())
            .with_context(|| format!("cannot remove {}", paths.staging().display()))?;
    }
    Ok(sealed)
}
