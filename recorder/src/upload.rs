//! Uploader: for a dataset in object storage (`--dataset s3://…`), moves the finished Parquet
//! files from the spool (a local dataset folder: the WAL, the files being written, the files
//! written) into the store, oldest first, under the same dataset-relative names.
//!
//! A file leaves the spool's tables only once [`p11trace_store::Remote::upload`] proved it
//! arrived (size, and MD5 ETag or bytes read back). A crash between the two leaves the file in
//! place, and the next start uploads it again under the same name: the object is replaced by
//! the same bytes, so each file lands exactly once. An uploaded file moves to `.uploaded/`
//! (hidden: never uploaded again, never read as data) and stays there while the write-ahead log
//! still holds a segment its rows came from: a crash's recovery replays those segments, and
//! reads the keys of the rows already written from these files (`recovery::written_keys`), so
//! it writes none of them twice. Once the log has let go of them, they are deleted.
//!
//! While the store cannot be reached, uploads are retried with exponential backoff and jitter,
//! and files accumulate in the spool; the writer stores no more than `--spool-max-bytes` there
//! (its files then wait in memory, then the writer itself waits, and the shims drop and count).
//!
//! The spool is rescanned at every round, so files a previous run left, files the replay of the
//! log wrote, and files the writer stores now are found alike.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use p11trace_dataset::layout::Layout;
use p11trace_store::Remote;

use crate::crash::Crash;
use crate::events::Lsn;
use crate::recovery;
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

/// An uploaded file kept for recovery, and the last log position of its rows.
struct Kept {
    path: PathBuf,
    wal_last: Option<Lsn>,
}

/// The uploaded files a previous run kept.
fn kept_files(spool: &Layout) -> Vec<Kept> {
    scan(&spool.uploaded())
        .into_iter()
        .map(|file| Kept {
            wal_last: recovery::wal_last(&file.path).ok().flatten(),
            path: file.path,
        })
        .collect()
}

/// The finished files in the spool, oldest first.
fn scan(spool: &Layout) -> Vec<Spooled> {
    scan_noting(spool, &mut |_| {})
}

/// [`scan`], telling `note` why a folder could not be read (a missing one is no news).
fn scan_noting(spool: &Layout, note: &mut dyn FnMut(String)) -> Vec<Spooled> {
    let mut files = Vec::new();
    for table in ["calls", "clients"] {
        let paths = match p11trace_dataset::layout::parquet_files(&spool.table(table)) {
            Ok(paths) => paths,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    note(e.to_string());
                }
                continue;
            }
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

/// How often a store that keeps failing is reported (the first failure is reported at once).
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// A run of failed uploads: said when it starts, then once a minute, and when it ends.
#[derive(Default)]
struct Failing {
    streak: u64,
    said: Option<Instant>,
}

impl Failing {
    fn say(&mut self, error: &p11trace_store::StoreError, files: &[Spooled], pause: Duration) {
        self.streak += 1;
        if self.said.is_some_and(|said| said.elapsed() < REPORT_EVERY) {
            return;
        }
        self.said = Some(Instant::now());
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        eprintln!(
            "p11trace-recorder: {error}; {} file(s) ({bytes} bytes) wait in the spool; retrying \
             with backoff (next in {:.1} s, {} failed attempt(s) so far; said again every {} s)",
            files.len(),
            pause.as_secs_f64(),
            self.streak,
            REPORT_EVERY.as_secs()
        );
    }
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

    /// When to stop: `shutdown_timeout` after the writer finished (`None` until then).
    fn deadline(&self, deadline: &Cell<Option<Instant>>) -> Option<Instant> {
        if deadline.get().is_none() && self.finished.load(Ordering::Acquire) {
            deadline.set(Some(Instant::now() + self.shutdown_timeout));
        }
        deadline.get()
    }

    fn past(&self, deadline: &Cell<Option<Instant>>) -> bool {
        self.deadline(deadline).is_some_and(|d| Instant::now() >= d)
    }

    pub fn run(self) -> Left {
        let mut delays = backoff();
        let deadline = Cell::new(None);
        let give_up = || self.past(&deadline);
        let mut failing = Failing::default();
        let mut kept = kept_files(&self.spool);
        // Failed attempts per file: a file that keeps failing (refused, unreadable) goes after
        // the others, so it holds up nobody.
        let mut attempts: HashMap<String, u32> = HashMap::new();
        let mut unreadable: Option<String> = None;
        loop {
            self.forget_released(&mut kept);
            let stopping = self.deadline(&deadline).is_some();
            let mut files = scan_noting(&self.spool, &mut |why| {
                // Said once per distinct reason: the files there wait, and the summary would
                // otherwise count them as not there.
                if unreadable.as_deref() != Some(why.as_str()) {
                    eprintln!("p11trace-recorder: cannot look for files to upload: {why}");
                    unreadable = Some(why);
                }
            });
            files.sort_by_key(|f| attempts.get(&f.relative).copied().unwrap_or(0));
            self.publish(&files);
            if files.is_empty() {
                if stopping {
                    return Left::default();
                }
                std::thread::sleep(IDLE_SCAN);
                continue;
            }
            if give_up() {
                return Left {
                    files: files.len() as u64,
                    bytes: files.iter().map(|f| f.bytes).sum(),
                };
            }
            for file in &files {
                match self
                    .remote
                    .upload(&file.path, &file.relative, self.part_bytes, &give_up)
                {
                    Ok(_) => {
                        self.crash.at("after-upload");
                        if failing.streak > 0 {
                            eprintln!(
                                "p11trace-recorder: uploading again to {} (after {} failed \
                                 attempt(s))",
                                self.remote.url(),
                                failing.streak
                            );
                            failing = Failing::default();
                        }
                        delays = backoff();
                        attempts.remove(&file.relative);
                        if let Some(keep) = self.uploaded(file) {
                            self.crash.at("after-move");
                            kept.push(keep);
                        }
                    }
                    Err(e) => {
                        if !give_up() {
                            *attempts.entry(file.relative.clone()).or_default() += 1;
                            self.stats.upload_failures.fetch_add(1, Ordering::Relaxed);
                            let pause = delays.next().unwrap_or(Duration::from_secs(30));
                            failing.say(&e, &files, pause);
                            self.pause(pause, &deadline);
                        }
                        break;
                    }
                }
                if give_up() {
                    break;
                }
            }
        }
    }

    /// Sleeps `pause`, or until the deadline if it comes first (or appears meanwhile).
    fn pause(&self, pause: Duration, deadline: &Cell<Option<Instant>>) {
        let until = Instant::now() + pause;
        while Instant::now() < until && !self.past(deadline) {
            std::thread::sleep(IDLE_SCAN.min(until.saturating_duration_since(Instant::now())));
        }
    }

    /// Moves an uploaded file to `.uploaded/` and counts it.
    fn uploaded(&self, file: &Spooled) -> Option<Kept> {
        let to = self.spool.uploaded().root.join(&file.relative);
        let moved = to
            .parent()
            .map_or(Ok(()), p11trace_dataset::layout::private_dir)
            .and_then(|()| std::fs::rename(&file.path, &to));
        if let Err(e) = moved {
            // Uploaded and verified: a file that cannot be moved is uploaded again (the same
            // bytes under the same name) at the next round.
            eprintln!(
                "p11trace-recorder: uploaded {} but cannot move it out of the spool: {e}",
                file.path.display()
            );
            return None;
        }
        // Out of the spool now (the next scan recounts; until then the writer's cap sees it).
        for (gauge, less) in [
            (&self.stats.spool_bytes, file.bytes),
            (&self.stats.upload_backlog, 1),
        ] {
            let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(less))
            });
        }
        self.stats.files_uploaded.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_uploaded
            .fetch_add(file.bytes, Ordering::Relaxed);
        Some(Kept {
            wal_last: recovery::wal_last(&to).ok().flatten(),
            path: to,
        })
    }

    /// Deletes the uploaded files whose rows the log no longer holds.
    fn forget_released(&self, kept: &mut Vec<Kept>) {
        if kept.is_empty() {
            return;
        }
        let Ok(floor) = recovery::log_floor(&self.spool) else {
            return;
        };
        kept.retain(|file| {
            let needed =
                matches!((file.wal_last, floor), (Some(last), Some(floor)) if last >= floor);
            needed || std::fs::remove_file(&file.path).is_err()
        });
    }
}
