//! Arguments of the audit-trail commands: `archive`, `archive-key`, `verify`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::InputArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Period {
    Day,
    Hour,
}

#[derive(Debug, Args)]
#[command(after_help = ARCHIVE_EXAMPLES)]
pub struct ArchiveArgs {
    /// Datasets, Parquet files, tracers' logs (pkcs11-spy, p11-kit, pkcs11-logger, libpkcs11shim) or observe JSON lines.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// The archive folder (created if missing; appended to if it exists).
    #[arg(long, value_name = "ARCHIVE")]
    pub to: PathBuf,

    /// Sign every new digest with this Ed25519 private key (see `archive-key`).
    #[arg(long, value_name = "KEY")]
    pub signing_key: Option<PathBuf>,

    /// How much time one digest seals.
    #[arg(long, value_enum, default_value_t = Period::Day)]
    pub period: Period,

    /// About how large each archived Parquet file grows.
    #[arg(long, default_value_t = 128, value_name = "MB")]
    pub target_file_mb: u64,

    /// Remove the archived files from the input datasets, once the new digests verified.
    #[arg(long)]
    pub prune_source: bool,

    #[command(flatten)]
    pub input: InputArgs,
}

const ARCHIVE_EXAMPLES: &str = "\
Examples:
  p11trace-query archive-key --out archive.key          # archive.key (0600) + archive.key.pub
  p11trace-query archive dataset/ --to audit/ --signing-key archive.key
  p11trace-query archive old-spy.log --to audit/ --signing-key archive.key --period hour
  p11trace-query archive dataset/ --to audit/ --signing-key archive.key --prune-source

Re-archiving data the archive holds changes nothing; late data of a sealed period gets a
backfill digest. Layout and digest format: schemas/archive.md.";

const ARCHIVE_KEY_EXAMPLES: &str = "\
Examples:
  p11trace-query archive-key --out archive.key    # and archive.key.pub
  p11trace-query archive dataset/ --to audit/ --signing-key archive.key
  p11trace-query verify audit/ --public-key archive.key.pub

An existing file is never overwritten. Exit status: 0 written, 1 runtime error, 2 usage error.";

#[derive(Debug, Args)]
#[command(after_help = ARCHIVE_KEY_EXAMPLES)]
pub struct ArchiveKeyArgs {
    /// The private key file to write (mode 0600); the public key goes to OUT.pub.
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = VERIFY_EXAMPLES)]
pub struct VerifyArgs {
    /// The archive folder.
    #[arg(value_name = "ARCHIVE")]
    pub archive: PathBuf,

    /// Every digest must carry a valid signature by this key (SPKI PEM, or 64 hex digits).
    #[arg(long, value_name = "PUB")]
    pub public_key: Option<PathBuf>,

    /// The head hash printed by an earlier verify or archive, kept elsewhere: catches the
    /// deletion of the newest digests.
    #[arg(long, value_name = "SHA256")]
    pub expect_head: Option<String>,
}

const VERIFY_EXAMPLES: &str = "\
Examples:
  p11trace-query verify audit/
  p11trace-query verify audit/ --public-key archive.key.pub --expect-head 3f1c…

Exit status (as diff(1)): 0 intact, 1 a problem found (each named on stderr), 2 usage or
input error.";
