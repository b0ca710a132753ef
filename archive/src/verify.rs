//! `verify`: every digest parsed and linked to the one before it (from the newest back to the
//! first), each one's Merkle root and signature, every listed file's size, SHA-256, row count and
//! schema version, and no file in the tables that no digest lists. Problems are collected, each
//! naming the file or digest; an error is only for an archive that cannot be read at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use ed25519_dalek::VerifyingKey;
use p11trace_dataset::layout::{CALLS, CLIENTS};
use p11trace_dataset::schema::SCHEMA_VERSION_KEY;
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::chain::{self, Link};
use crate::digest::{Digest, FileEntry};
use crate::keys;
use crate::seal::{self, Paths};

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub public_key: Option<VerifyingKey>,
    /// The head hash stored elsewhere: the newest digest must be this one.
    pub expect_head: Option<String>,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    /// (what: a path relative to the archive, what is wrong).
    pub problems: Vec<(String, String)>,
    pub digests: usize,
    pub periods: usize,
    pub backfills: usize,
    pub empty: usize,
    pub first_period: Option<String>,
    pub last_period: Option<String>,
    pub files: usize,
    pub bytes: u64,
    pub calls_rows: u64,
    pub clients_rows: u64,
    /// Public keys that signed (hex); `unsigned` counts digests without a signature.
    pub signers: BTreeSet<String>,
    pub unsigned: usize,
    pub head: Option<String>,
    /// Digests of an interrupted `archive` run (their files checked; sealed by the next run).
    pub pending: Vec<String>,
}

/// Footer facts of one Parquet file: rows and the schema version in its metadata.
fn footer(path: &Path) -> Result<(u64, Option<String>), String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let reader =
        SerializedFileReader::new(file).map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let meta = reader.metadata().file_metadata();
    let version = meta
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == SCHEMA_VERSION_KEY))
        .and_then(|e| e.value.clone());
    Ok((meta.num_rows().max(0) as u64, version))
}

/// What is wrong with one listed file, if anything.
fn check_file(path: &Path, entry: &FileEntry) -> Option<String> {
    let (sha256, bytes) = match seal::hash_file(path) {
        Ok(found) => found,
        Err(_) if !path.exists() => return Some("missing (listed by a digest)".to_owned()),
        Err(error) => return Some(format!("{error:#}")),
    };
    if bytes != entry.bytes {
        return Some(format!(
            "size {bytes} B, the digest lists {} B (changed)",
            entry.bytes
        ));
    }
    if sha256 != entry.sha256 {
        return Some(format!(
            "hash mismatch: SHA-256 {sha256}, the digest lists {} (changed)",
            entry.sha256
        ));
    }
    match footer(path) {
        Err(problem) => Some(problem),
        Ok((rows, _)) if rows != entry.rows => {
            Some(format!("{rows} rows, the digest lists {}", entry.rows))
        }
        Ok((_, version)) if version != Some(entry.schema_version.to_string()) => Some(format!(
            "schema version {}, the digest lists {}",
            version.as_deref().unwrap_or("none"),
            entry.schema_version
        )),
        Ok(_) => None,
    }
}

/// Hashes every listed file on two threads; returns the problems by path.
fn check_files(jobs: &[(PathBuf, String, FileEntry)]) -> Vec<(String, String)> {
    let found = crate::par_map(jobs, |(path, what, entry)| {
        check_file(path, entry).map(|problem| (what.clone(), problem))
    });
    let mut problems: Vec<_> = found.into_iter().flatten().collect();
    problems.sort();
    problems
}

fn check_digest(link: &Link, options: &VerifyOptions, report: &mut VerifyReport) {
    let what = format!("digests/{}", link.name);
    let digest = &link.digest;
    match Digest::compute_merkle_root(&digest.files) {
        Some(root) if root == digest.merkle_root => {}
        Some(root) => report.problems.push((
            what.clone(),
            format!(
                "merkle_root {} does not match its files (their root is {root}): edited",
                digest.merkle_root
            ),
        )),
        None => report.problems.push((
            what.clone(),
            "a file's sha256 is not 32 bytes of hex".to_owned(),
        )),
    }
    let rows: u64 = digest.files.iter().map(|f| f.rows).sum();
    if rows != digest.rows {
        report.problems.push((
            what.clone(),
            format!("rows {} but its files hold {rows}", digest.rows),
        ));
    }
    match keys::check(digest, options.public_key.as_ref()) {
        Ok(Some(signer)) => {
            report.signers.insert(signer);
        }
        Ok(None) => report.unsigned += 1,
        Err(problem) => report.problems.push((what.clone(), problem)),
    }
    for file in &digest.files {
        let date = format!("{}/date=", file.table);
        let in_place = (file.table == CALLS || file.table == CLIENTS)
            && file.path.starts_with(&date)
            && file.path[date.len()..].starts_with(&digest.period[..digest.period.len().min(10)]);
        if !in_place {
            report.problems.push((
                what.clone(),
                format!(
                    "lists {} outside its table's partition for {}",
                    file.path, digest.period
                ),
            ));
        }
    }
}

/// Every file below the tables' folders, relative to the archive (hidden ones included).
fn table_files(paths: &Paths) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for table in [CALLS, CLIENTS] {
        let mut stack = vec![paths.root.join(table)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    stack.push(path);
                } else if let Ok(relative) = path.strip_prefix(&paths.root) {
                    found.push(relative.to_string_lossy().into_owned());
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

pub fn verify(root: &Path, options: &VerifyOptions) -> Result<VerifyReport> {
    let paths = Paths::new(root);
    if !paths.digests().is_dir() {
        bail!("{}: not an archive (no digests/ folder)", root.display());
    }
    let listing = chain::list(&paths)?;
    let mut report = VerifyReport {
        digests: listing.links.len(),
        ..VerifyReport::default()
    };
    report.problems.extend(listing.unreadable.iter().cloned());
    for name in &listing.foreign {
        report
            .problems
            .push((name.clone(), "not a digest file (foreign)".to_owned()));
    }
    report.problems.extend(chain::link_problems(&listing.links));
    let mut links = listing.links;
    report.head = links.last().map(|l| l.sha256.clone());

    // An interrupted run's digest continues the chain; its files are checked, not counted.
    let mut pending_files = BTreeSet::new();
    if let Ok(entries) = fs::read_dir(paths.pending()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            match Digest::read(&entry.path()) {
                Ok((digest, _)) => {
                    let continues = digest.prev_digest_sha256 == report.head
                        && digest.sequence == links.len() as u64;
                    if !continues {
                        report.problems.push((
                            format!(".pending/{name}"),
                            "pending digest does not continue the chain".to_owned(),
                        ));
                    }
                    for file in &digest.files {
                        if let Some(path) = paths.resolve(&file.path)
                            && path.exists()
                        {
                            pending_files.insert(file.path.clone());
                            if let Some(problem) = check_file(&path, file) {
                                report.problems.push((file.path.clone(), problem));
                            }
                        }
                    }
                    report.pending.push(name);
                }
                Err(error) => report
                    .problems
                    .push((format!(".pending/{name}"), format!("{error:#}"))),
            }
        }
    }

    let mut listed: BTreeMap<String, String> = BTreeMap::new();
    let mut jobs = Vec::new();
    let mut periods = BTreeSet::new();
    for link in &links {
        check_digest(link, options, &mut report);
        let digest = &link.digest;
        periods.insert(digest.period.clone());
        report.backfills += usize::from(digest.backfill);
        report.empty += usize::from(digest.files.is_empty());
        for file in &digest.files {
            if let Some(earlier) = listed.insert(file.path.clone(), link.name.clone()) {
                report.problems.push((
                    file.path.clone(),
                    format!("listed twice (digests/{earlier}, digests/{})", link.name),
                ));
            }
            report.files += 1;
            report.bytes += file.bytes;
            match file.table.as_str() {
                CLIENTS => report.clients_rows += file.rows,
                _ => report.calls_rows += file.rows,
            }
            match paths.resolve(&file.path) {
                Some(path) => jobs.push((path, file.path.clone(), file.clone())),
                None => report.problems.push((
                    format!("digests/{}", link.name),
                    format!("unsafe path {:?}", file.path),
                )),
            }
        }
    }
    report.periods = periods.len();
    report.first_period = periods.iter().find(|p| *p != "unknown").cloned();
    report.last_period = periods.iter().rev().find(|p| *p != "unknown").cloned();
    report.problems.extend(check_files(&jobs));

    for path in table_files(&paths)? {
        if !listed.contains_key(&path) && !pending_files.contains(&path) {
            report.problems.push((
                path,
                "unlisted: no digest lists this file (added?)".to_owned(),
            ));
        }
    }
    for entry in fs::read_dir(&paths.root)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ![CALLS, CLIENTS, "digests"].contains(&name.as_str()) && !name.starts_with('.') {
            report
                .problems
                .push((name, "not part of an archive (foreign)".to_owned()));
        }
    }
    if let Some(expected) = &options.expect_head {
        let expected = expected
            .trim()
            .trim_start_matches("sha256:")
            .to_ascii_lowercase();
        if report.head.as_deref() != Some(expected.as_str()) {
            let newest = links.pop().map_or("none".to_owned(), |l| l.name);
            report.problems.push((
                format!("digests/{newest}"),
                format!(
                    "head differs from --expect-head: the newest digest hashes to {}, expected {expected} (newest digests deleted, or the chain replaced)",
                    report.head.as_deref().unwrap_or("nothing")
                ),
            ));
        }
    }
    Ok(report)
}
