//! Running a process and measuring it: wall time, peak RSS and CPU time from `wait4(2)` (exact, per
//! child, no polling), and the order statistics the report uses.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

pub use p11trace_tests::Cost;

/// A started process whose cost is collected by [`Running::finish`].
pub struct Running {
    pid: libc::pid_t,
    started: Instant,
    what: String,
    reaped: bool,
    // Reaped by wait4 in `finish` (std's `wait` would take the rusage away).
    _child: std::process::Child,
}

impl Drop for Running {
    /// A process the bench gave up on (an error elsewhere) must not outlive it.
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

impl Running {
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Waits for the exit and reads the process's own resource usage.
    pub fn finish(mut self) -> Result<Cost> {
        let reaped = p11trace_tests::reap(self.pid, self.started, true);
        self.reaped = true;
        let (_, cost) = reaped
            .with_context(|| self.what.clone())?
            .with_context(|| format!("{} has not exited", self.what))?;
        Ok(cost)
    }
}

/// Starts `command` with stdout and stderr going to files (`None`: discarded).
pub fn start(
    command: &mut Command,
    stdout: Option<&Path>,
    stderr: Option<&Path>,
) -> Result<Running> {
    let sink = |path: Option<&Path>| -> Result<Stdio> {
        Ok(match path {
            Some(path) => Stdio::from(
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
            ),
            None => Stdio::null(),
        })
    };
    command
        .stdin(Stdio::null())
        .stdout(sink(stdout)?)
        .stderr(sink(stderr)?);
    let what = format!("{command:?}");
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    Ok(Running {
        pid: child.id() as libc::pid_t,
        started,
        what,
        reaped: false,
        _child: child,
    })
}

/// Runs `command` to completion; fails (with its stderr) unless it exits 0.
pub fn run(command: &mut Command, stdout: Option<&Path>, scratch: &Path) -> Result<Cost> {
    let stderr = scratch.join(format!("stderr-{}", std::process::id()));
    let what = format!("{command:?}");
    let cost = start(command, stdout, Some(&stderr))?.finish()?;
    if !cost.success {
        let message = std::fs::read_to_string(&stderr).unwrap_or_default();
        bail!("{what} failed:\n{}", message.trim_end());
    }
    Ok(cost)
}

/// Median, min and max of a sample.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        Spread {
            median: median(values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// Total size of the Parquet files of a dataset table.
pub fn parquet_bytes(table_dir: &Path) -> u64 {
    parquet_files(table_dir)
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum()
}

fn parquet_files(table_dir: &Path) -> Vec<std::path::PathBuf> {
    p11trace_dataset::layout::parquet_files(table_dir).unwrap_or_default()
}

/// Rows in the Parquet files of a dataset table, from the file footers.
pub fn parquet_rows(table_dir: &Path) -> Result<u64> {
    let mut rows = 0;
    for path in parquet_files(table_dir) {
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let reader = parquet::file::reader::SerializedFileReader::new(file)
            .with_context(|| format!("{} is not Parquet", path.display()))?;
        rows += parquet::file::reader::FileReader::metadata(&reader)
            .file_metadata()
            .num_rows() as u64;
    }
    Ok(rows)
}
