//! One `archive` run: recover an interrupted run, read the chain, read and bucket the inputs,
//! then seal each period that gets new rows — late data of sealed periods first (backfill
//! digests, never a rewrite), then every period from the last sealed one to the last holding
//! data, empty ones included, so "nothing happened that day" is provable. Archiving data the
//! archive already holds writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use p11trace_dataset::SCHEMA_VERSION;
use p11trace_dataset::time::rfc3339;
use p11trace_import::ImportOptions;

use crate::chain::{self, Link};
use crate::compact::{self, Seen};
use crate::crash::Crash;
use crate::digest::{DIGEST_VERSION, Digest, FORMAT, FileEntry, sha256_hex};
use crate::keys;
use crate::period::{Period, PeriodKind};
use crate::seal::{self, Paths};
use crate::sources::{self, Input, Table};

#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    pub period: PeriodKind,
    /// About how large each file grows before the next one starts.
    pub target_file_bytes: usize,
    pub signing_key: Option<PathBuf>,
    /// Remove the dataset files read once the new digests verified.
    pub prune_source: bool,
    pub import: ImportOptions,
}

#[derive(Debug, Default)]
pub struct ArchiveSummary {
    pub input_files: usize,
    pub input_bytes: u64,
    pub input_rows: u64,
    /// Rows new to the archive (calls, clients).
    pub new_calls: u64,
    pub new_clients: u64,
    /// Digests written, by file name.
    pub digests: Vec<String>,
    pub files: usize,
    /// Digests of an interrupted run that this run sealed first.
    pub recovered: Vec<String>,
    pub head: Option<String>,
    pub pruned: usize,
    pub seconds: f64,
}

/// Takes the archive's lock for the run: a second `archive` on it fails instead of interleaving.
fn lock(paths: &Paths) -> Result<File> {
    let path = paths.root.join(".lock");
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => bail!(
            "archive {} is in use by another archive run",
            paths.root.display()
        ),
        Err(fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// The chain as found, checked for order and links (not file contents: that is `verify`).
fn load_chain(paths: &Paths, kind: PeriodKind) -> Result<Vec<Link>> {
    let listing = chain::list(paths)?;
    if let Some((name, error)) = listing.unreadable.first() {
        bail!("{name}: {error}; run verify");
    }
    if let Some((name, problem)) = chain::link_problems(&listing.links).first() {
        bail!("{name}: {problem}; run verify before archiving more");
    }
    if let Some(link) = listing.links.first()
        && link.digest.period_kind != kind.as_str()
    {
        bail!(
            "archive {} seals {} periods: archive into it with --period {}",
            paths.root.display(),
            link.digest.period_kind,
            link.digest.period_kind
        );
    }
    Ok(listing.links)
}

fn parse_period(kind: PeriodKind, name: &str) -> Option<Period> {
    // Names sort and compare as their periods do; find the period by walking from its date.
    if name == "unknown" {
        return Some(kind.of(None));
    }
    let date = name.get(..10)?;
    let mut parts = date.split('-');
    let (y, m, d) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    let day = p11trace_dataset::time::days_from_civil(y, m, d);
    let hour: i64 = match name.get(11..) {
        Some(h) if !h.is_empty() => h.parse().ok()?,
        _ => 0,
    };
    let micros = day
        .checked_mul(86_400_000_000)?
        .checked_add(hour * 3_600_000_000)?;
    Some(kind.of(Some(micros)))
}

/// What to seal, in order: (period, how many digests it already has, backfill?).
fn plan(
    links: &[Link],
    kind: PeriodKind,
    data: &BTreeSet<Period>,
) -> Result<Vec<(Period, u64, bool)>> {
    let mut existing: BTreeMap<Period, u64> = BTreeMap::new();
    let mut last_regular: Option<Period> = None;
    for link in links {
        let period = parse_period(kind, &link.digest.period)
            .with_context(|| format!("digests/{}: unknown period", link.name))?;
        *existing.entry(period).or_default() += 1;
        if !link.digest.backfill && period.index.is_some() {
            last_regular = last_regular.max(Some(period));
        }
    }
    let mut backfills = Vec::new();
    let mut regular = Vec::new();
    for &period in data {
        let count = existing.get(&period).copied().unwrap_or(0);
        let late =
            period.index.is_none() || count > 0 || last_regular.is_some_and(|last| period <= last);
        if late {
            backfills.push((period, count, count > 0 || period.index.is_some()));
        } else {
            regular.push(period);
        }
    }
    let mut out = backfills;
    if let (Some(&first), Some(&last)) = (regular.first(), regular.last()) {
        let mut period = last_regular.and_then(|p| p.next()).unwrap_or(first);
        while period <= last {
            out.push((period, 0, false));
            period = period.next().context("period out of range")?;
        }
    }
    Ok(out)
}

fn archived_files(paths: &Paths, links: &[Link], period: &str, table: Table) -> Vec<PathBuf> {
    links
        .iter()
        .filter(|l| l.digest.period == period)
        .flat_map(|l| &l.digest.files)
        .filter(|f| f.table == table.name())
        .filter_map(|f| paths.resolve(&f.path))
        .collect()
}

pub fn archive(inputs: &[Input], to: &Path, options: &ArchiveOptions) -> Result<ArchiveSummary> {
    let started = Instant::now();
    if to.exists() && !to.is_dir() {
        bail!("{}: exists and is not a folder", to.display());
    }
    let paths = Paths::new(to);
    seal::private_dir(&paths.digests())?;
    let _lock = lock(&paths)?;
    let crash = Crash::from_env();
    let mut summary = ArchiveSummary {
        recovered: seal::recover(&paths)?,
        ..ArchiveSummary::default()
    };
    let mut links = load_chain(&paths, options.period)?;
    let key = match &options.signing_key {
        Some(path) => Some(keys::load_signing(path)?),
        None => None,
    };
    let signer = key
        .as_ref()
        .map(|k| crate::hex(k.verifying_key().as_bytes()));
    if let Some(last) = links.last()
        && last.digest.signer != signer
    {
        match &last.digest.signer {
            Some(public) => bail!(
                "archive {} is signed by {public}: give its --signing-key",
                to.display()
            ),
            None => bail!(
                "archive {} is unsigned: a signed digest after unsigned ones would not verify with --public-key",
                to.display()
            ),
        }
    }

    let sources = sources::collect(inputs, &options.import)?;
    summary.input_files = sources.files.len();
    let mut buckets = compact::read(&sources.files, options.period)?;
    summary.input_bytes = buckets.input_bytes;
    summary.input_rows = buckets.input_rows;
    let data: BTreeSet<Period> = buckets.rows.keys().map(|(_, p)| *p).collect();

    for (period, count, backfill) in plan(&links, options.period, &data)? {
        let name = period.name();
        let sequence = links.len() as u64;
        let mut files = Vec::new();
        let mut rows = 0u64;
        for table in [Table::Calls, Table::Clients] {
            let batches = buckets.rows.remove(&(table, period)).unwrap_or_default();
            if batches.is_empty() {
                continue;
            }
            let mut seen = Seen::default();
            seen.seed(&archived_files(&paths, &links, &name, table), table)?;
            let selected = compact::select(batches, table, &mut seen)?;
            match table {
                Table::Calls => summary.new_calls += selected.rows() as u64,
                Table::Clients => summary.new_clients += selected.rows() as u64,
            }
            let staged = compact::write(
                &selected,
                table,
                &period,
                sequence,
                &paths.staging(),
                options.target_file_bytes,
            )?;
            for file in staged {
                let (sha256, bytes) = seal::hash_file(&paths.staging().join(&file.relative))?;
                rows += file.rows;
                files.push(FileEntry {
                    path: file.relative,
                    table: table.name().to_owned(),
                    sha256,
                    bytes,
                    rows: file.rows,
                    min_start: file.min_time.map(rfc3339),
                    max_start: file.max_time.map(rfc3339),
                    schema_version: SCHEMA_VERSION,
                });
            }
        }
        if files.is_empty() && (backfill || count > 0) {
            continue; // late data that was all archived already
        }
        let bounds = period.bounds();
        let mut digest = Digest {
            format: FORMAT.to_owned(),
            digest_version: DIGEST_VERSION,
            sequence,
            period_kind: options.period.as_str().to_owned(),
            period: name.clone(),
            backfill,
            start: bounds.as_ref().map(|b| b.0.clone()),
            end: bounds.map(|b| b.1),
            merkle_root: Digest::compute_merkle_root(&files).context("bad file hash")?,
            files,
            rows,
            prev_digest_sha256: links.last().map(|l| l.sha256.clone()),
            signer: None,
            signature: None,
        };
        if let Some(key) = &key {
            keys::sign(&mut digest, key);
        }
        let file_name = Digest::file_name(&name, count);
        seal::seal(&paths, &file_name, &digest, &crash)?;
        summary.files += digest.files.len();
        summary.digests.push(file_name.clone());
        links.push(Link {
            name: file_name,
            sha256: sha256_hex(&digest.to_bytes()),
            digest,
        });
    }
    for scratch in [paths.staging(), paths.pending()] {
        if scratch.exists() {
            fs::remove_dir_all(&scratch)
                .with_context(|| format!("cannot remove {}", scratch.display()))?;
        }
    }
    summary.head = links.last().map(|l| l.sha256.clone());

    if options.prune_source {
        let public = key.as_ref().map(|k| k.verifying_key());
        let report = crate::verify::verify(
            to,
            &crate::VerifyOptions {
                public_key: public,
                expect_head: summary.head.clone(),
            },
        )?;
        if !report.problems.is_empty() {
            bail!(
                "the archive did not verify after archiving ({}); nothing was pruned",
                report.problems[0].1
            );
        }
        for file in sources.files.iter().filter(|f| f.prunable) {
            fs::remove_file(&file.path)
                .with_context(|| format!("cannot prune {}", file.path.display()))?;
            summary.pruned += 1;
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
