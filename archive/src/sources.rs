//! What `archive` reads: dataset folders (a recorder's, an import's), single Parquet files, and
//! pkcs11-spy / observe logs (imported into a private temporary dataset first). Each becomes a
//! list of Parquet files, each of one table.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use p11trace_dataset::layout::{CALLS, CLIENTS, parquet_files};
use p11trace_dataset::schema::TABLE_KEY;
use p11trace_import::{ImportOptions, LogFormat};
use parquet::file::reader::{FileReader, SerializedFileReader};

/// One input as the caller recognised it.
#[derive(Debug, Clone)]
pub enum Input {
    /// A dataset folder (`calls/`, `clients/`), or a folder of Parquet files.
    Folder(PathBuf),
    /// One Parquet file (its table from its `p11trace.table` metadata; `calls` if absent).
    Parquet(PathBuf),
    /// A log to import first.
    Log(PathBuf, LogFormat),
}

pub use p11trace_dataset::layout::Table;

/// One Parquet file to read.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub table: Table,
    /// Found in a dataset folder given as input: `--prune-source` may remove it.
    pub prunable: bool,
}

/// Every file of every input, and the temporary imports they need alive.
pub struct Sources {
    pub files: Vec<SourceFile>,
    _imports: Vec<tempfile::TempDir>,
}

fn table_of(path: &Path) -> Result<Table> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    let table = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == TABLE_KEY))
        .and_then(|e| e.value.clone());
    Ok(match table.as_deref() {
        Some(CLIENTS) => Table::Clients,
        _ => Table::Calls,
    })
}

fn dataset_files(folder: &Path, prunable: bool, out: &mut Vec<SourceFile>) -> Result<()> {
    let calls = folder.join(CALLS);
    if calls.is_dir() {
        for (table, dir) in [
            (Table::Calls, calls),
            (Table::Clients, folder.join(CLIENTS)),
        ] {
            if dir.is_dir() {
                for path in parquet_files(&dir)? {
                    out.push(SourceFile {
                        path,
                        table,
                        prunable,
                    });
                }
            }
        }
    } else {
        for path in parquet_files(folder)? {
            let table = table_of(&path)?;
            out.push(SourceFile {
                path,
                table,
                prunable,
            });
        }
    }
    Ok(())
}

/// Lists the files of every input (importing logs into temporary datasets).
pub fn collect(inputs: &[Input], import: &ImportOptions) -> Result<Sources> {
    let mut files = Vec::new();
    let mut imports = Vec::new();
    for input in inputs {
        match input {
            Input::Folder(folder) => dataset_files(folder, true, &mut files)?,
            Input::Parquet(path) => {
                if !path.is_file() {
                    bail!("{}: no such file", path.display());
                }
                files.push(SourceFile {
                    path: path.clone(),
                    table: table_of(path)?,
                    prunable: false,
                });
            }
            Input::Log(path, format) => {
                let dir = tempfile::Builder::new()
                    .prefix("p11trace-archive-import")
                    .tempdir()
                    .context("cannot create a temporary folder for an import")?;
                let out = dir.path().join("dataset");
                let (sha256, _) = crate::seal::hash_file(path)?;
                let options = ImportOptions {
                    run_id: Some(format!("import-sha256:{}", &sha256[..32])),
                    ..import.clone()
                };
                p11trace_import::import_file(path, *format, &out, &options)?;
                dataset_files(&out, false, &mut files)?;
                imports.push(dir);
            }
        }
    }
    if files.is_empty() {
        bail!("no Parquet files in the inputs: nothing to archive");
    }
    Ok(Sources {
        files,
        _imports: imports,
    })
}
