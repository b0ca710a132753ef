//! The audit-trail commands over `p11trace-archive`: `archive` (compact and seal), `archive-key`
//! (an Ed25519 key pair) and `verify` (check an archive end to end). Arguments and printing
//! only; the archive itself is that crate's.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use p11trace_archive::{self as archive, ArchiveOptions, Input, PeriodKind, VerifyOptions};

use crate::cli::InputArgs;
use crate::cli::trail::{ArchiveArgs, ArchiveKeyArgs, Period, VerifyArgs};
use crate::input::{self, InputFormat};

/// The archive's inputs; datasets in object storage are fetched into temporary folders, kept
/// alive by the second value.
fn inputs(
    paths: &[PathBuf],
    args: &InputArgs,
    prune_source: bool,
) -> Result<(Vec<Input>, Vec<tempfile::TempDir>)> {
    let mut scratch = Vec::new();
    let inputs = paths
        .iter()
        .map(|path| {
            if input::remote::is_remote(path) {
                if prune_source {
                    bail!(
                        "{}: --prune-source removes archived source files, which it cannot do \
                         in object storage; archive without it, then expire the objects with \
                         the store's lifecycle rules",
                        path.display()
                    );
                }
                let dir = input::remote::fetch(&path.to_string_lossy())?;
                let folder = dir.path().to_owned();
                scratch.push(dir);
                return Ok(Input::Folder(folder));
            }
            let format = match args.input_format {
                Some(format) => format,
                None => input::detect(path)?,
            };
            Ok(match format.log_format() {
                Some(log) => Input::Log(path.clone(), log),
                None if path.is_dir() => Input::Folder(path.clone()),
                None if format == InputFormat::Parquet => Input::Parquet(path.clone()),
                None => bail!("{}: not an input", path.display()),
            })
        })
        .collect::<Result<_>>()?;
    Ok((inputs, scratch))
}

pub fn archive(args: &ArchiveArgs) -> Result<()> {
    if args.target_file_mb == 0 {
        bail!("--target-file-mb must be at least 1");
    }
    let options = ArchiveOptions {
        period: match args.period {
            Period::Day => PeriodKind::Day,
            Period::Hour => PeriodKind::Hour,
        },
        target_file_bytes: usize::try_from(args.target_file_mb.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX),
        signing_key: args.signing_key.clone(),
        prune_source: args.prune_source,
        // The spinner below stands for the whole run, logs' import included (two bars at once
        // would overwrite each other).
        import: p11trace_import::ImportOptions {
            progress: false,
            ..args.input.import_options()
        },
    };
    let (inputs, _fetched) = inputs(&args.inputs, &args.input, args.prune_source)?;
    let spinner = crate::progress::spinner("archiving", !args.input.quiet);
    let summary = archive::archive(&inputs, &args.to, &options);
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    let summary = summary?;
    for name in &summary.recovered {
        if !args.input.quiet {
            eprintln!("p11trace-query: sealed digests/{name} of an interrupted run first");
        }
    }
    println!(
        "archived {} new calls and {} client rows from {} files ({}, {} rows) in {:.2} s ({:.0} MB/s)",
        summary.new_calls,
        summary.new_clients,
        summary.input_files,
        size(summary.input_bytes),
        summary.input_rows,
        summary.seconds,
        summary.input_bytes as f64 / 1e6 / summary.seconds.max(1e-9)
    );
    match summary.digests.as_slice() {
        [] => println!("digests   none new: the archive holds all of it already"),
        names => println!(
            "digests   {} new ({} … {}), {} files",
            names.len(),
            names[0],
            names[names.len() - 1],
            summary.files
        ),
    }
    if summary.pruned > 0 {
        println!("pruned    {} source files", summary.pruned);
    }
    if let Some(head) = &summary.head {
        println!("head      {head}");
    }
    Ok(())
}

pub fn archive_key(args: &ArchiveKeyArgs) -> Result<()> {
    let public = archive::keys::generate(&args.out)?;
    println!(
        "wrote {} (private, 0600) and {}\npublic key {public}",
        args.out.display(),
        archive::keys::public_path(&args.out).display()
    );
    Ok(())
}

/// Returns whether a problem was found (exit 1).
pub fn verify(args: &VerifyArgs) -> Result<bool> {
    let public_key = match &args.public_key {
        Some(path) => Some(archive::keys::load_verifying(path)?),
        None => None,
    };
    let report = archive::verify(
        &args.archive,
        &VerifyOptions {
            public_key,
            expect_head: args.expect_head.clone(),
        },
    )
    .with_context(|| format!("cannot verify {}", args.archive.display()))?;
    for (what, problem) in &report.problems {
        eprintln!("p11trace-query: verify: {what}: {problem}");
    }
    let range = match (&report.first_period, &report.last_period) {
        (Some(first), Some(last)) if first != last => format!(" ({first} … {last})"),
        (Some(first), _) => format!(" ({first})"),
        _ => String::new(),
    };
    let signed = if report.signers.is_empty() {
        "unsigned".to_owned()
    } else if report.unsigned > 0 {
        format!(
            "{} unsigned, the rest signed by {}",
            report.unsigned,
            join(&report.signers)
        )
    } else {
        format!("signed by ed25519:{}", join(&report.signers))
    };
    println!(
        "archive   {}: {}",
        args.archive.display(),
        if report.problems.is_empty() {
            "intact".to_owned()
        } else {
            format!("{} problem(s) found", report.problems.len())
        }
    );
    println!(
        "periods   {}{range}, {} empty, {} backfill digest(s)",
        report.periods, report.empty, report.backfills
    );
    println!("digests   {}, {signed}", report.digests);
    println!(
        "files     {} ({}), rows {} calls, {} clients",
        report.files,
        size(report.bytes),
        report.calls_rows,
        report.clients_rows
    );
    for name in &report.pending {
        println!(
            "pending   .pending/{name}: an interrupted archive run; run archive again to seal it"
        );
    }
    if let Some(head) = &report.head {
        println!("head      {head}  (keep it elsewhere; verify --expect-head checks it)");
    }
    Ok(!report.problems.is_empty())
}

/// `812 kB`, `51.3 MB`.
fn size(bytes: u64) -> String {
    if bytes < 1_000_000 {
        format!("{:.1} kB", bytes as f64 / 1e3)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

fn join(keys: &std::collections::BTreeSet<String>) -> String {
    keys.iter().cloned().collect::<Vec<_>>().join(", ")
}
