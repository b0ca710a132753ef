//! Inputs: Parquet files, dataset folders, pkcs11-spy logs and observe JSON lines, told apart by
//! content (not by name), all turned into the one `calls` table (and `clients` where present).
//! Logs are recognised and imported by `p11trace-import`; this module adds Parquet, datasets in
//! object storage ([`remote`]) and loading.

pub mod remote;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Explain;
use anyhow::{Context, Result, bail};
use p11trace_import::{ImportOptions, LogFormat};
use polars::prelude::*;

/// What kind of input a path is (`--input-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// A Parquet file or a p11trace dataset folder.
    Parquet,
    /// A pkcs11-spy plaintext log.
    Spy,
    /// observe-core JSON lines.
    Observe,
    /// p11-kit `log-calls: yes` output.
    #[value(name = "p11-kit")]
    P11kit,
    /// Pkcs11Interop pkcs11-logger.
    Pkcs11Logger,
    /// Mastercard libpkcs11shim.
    #[value(name = "libpkcs11shim")]
    Pkcs11shim,
}

impl InputFormat {
    /// The importer's format of a log; `None` for Parquet, which needs no import.
    pub fn log_format(self) -> Option<LogFormat> {
        match self {
            InputFormat::Parquet => None,
            InputFormat::Spy => Some(LogFormat::Spy),
            InputFormat::Observe => Some(LogFormat::Observe),
            InputFormat::P11kit => Some(LogFormat::P11Kit),
            InputFormat::Pkcs11Logger => Some(LogFormat::Pkcs11Logger),
            InputFormat::Pkcs11shim => Some(LogFormat::Pkcs11Shim),
        }
    }
}

impl From<LogFormat> for InputFormat {
    fn from(format: LogFormat) -> InputFormat {
        match format {
            LogFormat::Spy => InputFormat::Spy,
            LogFormat::Observe => InputFormat::Observe,
            LogFormat::P11Kit => InputFormat::P11kit,
            LogFormat::Pkcs11Logger => InputFormat::Pkcs11Logger,
            LogFormat::Pkcs11Shim => InputFormat::Pkcs11shim,
        }
    }
}

/// Everything the commands read: `calls` and, from datasets, `clients`.
pub struct Loaded {
    pub calls: LazyFrame,
    pub clients: Option<LazyFrame>,
    /// Keeps imported logs' temporary Parquet files alive while the frames are in use.
    pub _scratch: Vec<tempfile::TempDir>,
}

/// Parquet files below `folder`, skipping hidden entries (`.tmp`, `.wal`).
pub fn parquet_files(folder: &Path) -> Result<Vec<PathBuf>> {
    Ok(p11trace_dataset::layout::parquet_files(folder)?)
}

/// Guesses the format of a file from its first bytes.
pub fn detect(path: &Path) -> Result<InputFormat> {
    if path.is_dir() || remote::is_remote(path) {
        return Ok(InputFormat::Parquet);
    }
    let mut head = vec![0u8; p11trace_import::format::SNIFF_LEN];
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let read = file
        .read(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    head.truncate(read);
    if head.starts_with(b"PAR1") {
        return Ok(InputFormat::Parquet);
    }
    if let Some(format) = p11trace_import::sniff(&head) {
        return Ok(format.into());
    }
    bail!(
        "{}: cannot tell its format (not Parquet, not a pkcs11-spy log, not observe JSON lines); \
         use --input-format",
        path.display()
    )
}

/// `files` as one lazy polars frame.
pub fn scan(files: &[PathBuf]) -> Result<LazyFrame> {
    let paths: Vec<PlRefPath> = files
        .iter()
        .map(|p| PlRefPath::try_from_path(p))
        .collect::<PolarsResult<_>>()
        .explain("invalid path")?;
    let args = ScanArgsParquet {
        allow_missing_columns: true,
        ..Default::default()
    };
    LazyFrame::scan_parquet_files(paths.into_iter().collect(), args)
        .explain("cannot scan Parquet files")
}

/// The files behind the inputs: `calls` and `clients` Parquet files, logs imported into
/// temporary ones.
pub struct Located {
    pub calls: Vec<PathBuf>,
    pub clients: Vec<PathBuf>,
    /// Keeps imported logs' temporary Parquet files alive while they are read.
    pub scratch: Vec<tempfile::TempDir>,
}

/// Finds (and for logs, imports) every input's files.
pub fn locate(
    inputs: &[PathBuf],
    format: Option<InputFormat>,
    options: &ImportOptions,
) -> Result<Located> {
    if inputs.is_empty() {
        bail!("no input: give Parquet files, dataset folders or logs");
    }
    let mut calls_files = Vec::new();
    let mut clients_files = Vec::new();
    let mut scratch = Vec::new();
    for input in inputs {
        // A dataset in object storage is read as the dataset folder it is fetched into.
        let fetched;
        let (input, format) = if remote::is_remote(input) {
            let dir = remote::fetch(&input.to_string_lossy())?;
            fetched = dir.path().to_owned();
            scratch.push(dir);
            (fetched.as_path(), InputFormat::Parquet)
        } else {
            let format = match format {
                Some(format) => format,
                None => detect(input)?,
            };
            (input.as_path(), format)
        };
        match format.log_format() {
            Some(log) => {
                let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
                let out = dir.path().join("calls.parquet");
                p11trace_import::import_file(input, log, &out, options)?;
                calls_files.push(out);
                scratch.push(dir);
            }
            // Parquet: a dataset folder, a folder of Parquet files, or one file.
            None if input.is_dir() => {
                let calls = input.join("calls");
                if calls.is_dir() {
                    calls_files.extend(parquet_files(&calls)?);
                    let clients = input.join("clients");
                    if clients.is_dir() {
                        clients_files.extend(parquet_files(&clients)?);
                    }
                } else {
                    calls_files.extend(parquet_files(input)?);
                }
            }
            None => {
                if !input.exists() {
                    bail!("{}: no such file or folder", input.display());
                }
                calls_files.push(input.to_owned());
            }
        }
    }
    if calls_files.is_empty() {
        bail!(
            "no Parquet files found in {}",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(Located {
        calls: calls_files,
        clients: clients_files,
        scratch,
    })
}

/// Loads every input into one `calls` frame (and `clients` when datasets provide it).
pub fn load(
    inputs: &[PathBuf],
    format: Option<InputFormat>,
    options: &ImportOptions,
) -> Result<Loaded> {
    let located = locate(inputs, format, options)?;
    let clients = if located.clients.is_empty() {
        None
    } else {
        Some(scan(&located.clients)?)
    };
    Ok(Loaded {
        calls: scan(&located.calls)?,
        clients,
        _scratch: located.scratch,
    })
}
