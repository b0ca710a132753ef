//! Uploader: for a dataset in object storage (`--dataset s3://…`), moves the finished Parquet
//! files from the spool (a local dataset folder: the WAL, the files being written, the files
//! written) into the store, oldest first, under the same dataset-relative names.
//!
//! A file is removed from the spool only once [`p11trace_store::Remote::upload`] proved it
//! arrived (size, and MD5 ETag or bytes read back). A crash between the two leaves the file in
//! the spool, and the next start uploads it again under the same name: the object is replaced
//! by the same bytes, so each file lands exactly once. While the store cannot be reached,
//! uploads are retried with exponential backoff and jitter, and files accumulate in the spool;
//! the writer refuses to store more than `--spool-max-bytes` there (its files then wait in
//! memory, then in the write-ahead log, whose cap makes the shims drop and count).
//!
//! The spool is rescanned at every round, so files a previous run left, files the replay of the
//! log wrote, and files the writer stores now are found alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use p11trace_dataset::layout::Layout;
use p11trace_store::Remote;

use crate::crash::Crash;
use crate::stats::Stats;

/// How often an idle uploader looks for new files.
const IDLE_SCAN: Duration = Duration::from_millis(250);

pub struct Uploader {
    pub remote: Remote,
    pub spool: Layout,
    pub stats: Arc<Stats>,
    /// Set once the writer has stored its last file: upload what is left, then stop.
    pub finished: Arc<AtomicBool>,
    /// How long to keep uploading after `finished`.
    pub shutdown_timeout: Duration,
    pub part_bytes: usize,
    pub crash: Crash,
}

/// What the uploader left behind.
#[derive(Debug, Default)]
pub struct Left {
    pub files: u64,
    pub bytes: u64,
}

/// A finished file in the spool.
struct Spooled {
    path: PathBuf,
    relative: String,
    bytes: u64,
    modified: SystemTime,
}

/// The finished files in the spool, oldest first.
fn scan(spool: &Layout) -> Vec<Spooled> {
    let mut files = Vec::new();
    for table in ["calls", "clients"] {
        let Ok(paths) = p11trace_dataset::layout::parquet_files(&spool.table(table)) else {
            continue;
        };
        for path in paths {
            let (Ok(meta), Ok(relative)) =
                (std::fs::metadata(&path), path.strip_prefix(&spool.root))
            else {
                continue;
            };
            files.push(Spooled {
                relative: relative.to_string_lossy().into_owned(),
                bytes: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                path,
            });
        }
    }
    files.sort_by(|a, b| (a.modified, &a.relative).cmp(&(b.modified, &b.relative)));
    files
}

/// Sleeps `pause`, or less if `deadline` comes first.
fn pause_until(pause: Duration, deadline: Option<Instant>) {
    let pause = match deadline {
        Some(deadline) => pause.min(deadline.saturating_duration_since(Instant::now())),
        None => pause,
    };
    std::thread::sleep(pause);
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(30))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

impl Uploader {
    fn publish(&self, files: &[Spooled]) {
        let bytes = files.iter().map(|f| f.bytes).sum();
        self.stats.spool_bytes.store(bytes, Ordering::Relaxed);
        self.stats
            .upload_backlog
            .store(files.len() as u64, Ordering::Relaxed);
    }

    pub fn run(self) -> Left {
        let mut delays = backoff();
        let mut deadline: Option<Instant> = None;
        let mut failing = false;
        loop {
            if deadline.is_none() && self.finished.load(Ordering::Acquire) {
                deadline = Some(Instant::now() + self.shutdown_timeout);
            }
            let files = scan(&self.spool);
            self.publish(&files);
            if files.is_empty() {
                if deadline.is_some() {
                    return Left::default();
                }
                std::thread::sleep(IDLE_SCAN);
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Left {
                    files: files.len() as u64,
                    bytes: files.iter().map(|f| f.bytes).sum(),
                };
            }
            for file in &files {
                match self
                    .remote
                    .upload(&file.path, &file.relative, self.part_bytes, deadline)
                {
                    Ok(_) => {
                        self.crash.at("after-upload");
                        if failing {
                            eprintln!(
                                "p11trace-recorder: uploading again to {}",
                                self.remote.url()
                            );
                            failing = false;
                        }
                        delays = backoff();
                        self.uploaded(&file.path, file.bytes);
                    }
                    Err(e) => {
                        self.stats.upload_failures.fetch_add(1, Ordering::Relaxed);
                        let pause = delays.next().unwrap_or(Duration::from_secs(30));
                        eprintln!(
                            "p11trace-recorder: {e}; {} file(s) wait in the spool; next try in {:.1} s",
                            files.len(),
                            pause.as_secs_f64()
                        );
                        failing = true;
                        pause_until(pause, deadline);
                        break;
                    }
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }

    fn uploaded(&self, path: &Path, bytes: u64) {
        if let Err(e) = std::fs::remove_file(path) {
            // Uploaded and verified: a file that cannot be removed is uploaded again (the same
            // bytes under the same name) at the next round.
            eprintln!(
                "p11trace-recorder: uploaded {} but cannot remove it from the spool: {e}",
                path.display()
            );
            return;
        }
        self.stats.files_uploaded.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_uploaded
            .fetch_add(bytes, Ordering::Relaxed);
    }
}
