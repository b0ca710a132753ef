//! Counters shared by the actors (atomics only: no actor waits on another through them) and the
//! periodic statistics line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Stats {
    pub clients_connected: AtomicU64,
    pub clients_active: AtomicU64,
    pub records_received: AtomicU64,
    pub records_written: AtomicU64,
    pub files_written: AtomicU64,
    /// Calls the shims reported they could not deliver (sum over clients, at their last word).
    pub dropped_by_clients: AtomicU64,
    /// Calls clients sent that never arrived (found when they reconnect).
    pub lost: AtomicU64,
    /// Call records received but refused by a full or failing write-ahead log.
    pub dropped_by_recorder: AtomicU64,
    pub wal_bytes: AtomicU64,
    /// The log cannot take records (cap reached or disk full).
    pub wal_stuck: std::sync::atomic::AtomicBool,
    pub rejected: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub capture_queue: AtomicU64,
    /// Handshakes under way (a gauge): a shutdown waits for them to register their client.
    pub handshakes: AtomicU64,
    pub write_queue: AtomicU64,
    /// Bytes of finished Parquet files in the spool, waiting to be uploaded (object-store
    /// datasets only; 0 for a local dataset, whose files are in place once written).
    pub spool_bytes: AtomicU64,
    /// Finished files in the spool not yet uploaded and verified (the upload backlog).
    pub upload_backlog: AtomicU64,
    /// Files uploaded and verified, then removed from the spool.
    pub files_uploaded: AtomicU64,
    /// Bytes of those files.
    pub bytes_uploaded: AtomicU64,
    /// Upload attempts that failed (each is retried with backoff).
    pub upload_failures: AtomicU64,
    /// The dataset is in object storage: the statistics line shows the upload's counters.
    pub remote: std::sync::atomic::AtomicBool,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// One line: the `--stats-every` format.
    pub fn line(&self, records_per_second: f64) -> String {
        let mut line = format!(
            "clients={} active={} records={} rate={:.0}/s written={} files={} queues=capture:{},write:{} wal_bytes={} dropped={} lost={} dropped_by_recorder={} rejected={} protocol_errors={}",
            Self::get(&self.clients_connected),
            Self::get(&self.clients_active),
            Self::get(&self.records_received),
            records_per_second,
            Self::get(&self.records_written),
            Self::get(&self.files_written),
            Self::get(&self.capture_queue),
            Self::get(&self.write_queue),
            Self::get(&self.wal_bytes),
            Self::get(&self.dropped_by_clients),
            Self::get(&self.lost),
            Self::get(&self.dropped_by_recorder),
            Self::get(&self.rejected),
            Self::get(&self.protocol_errors),
        );
        if self.remote.load(Ordering::Relaxed) {
            line.push_str(&format!(
                " spool_bytes={} upload_backlog={} uploaded={} upload_failures={}",
                Self::get(&self.spool_bytes),
                Self::get(&self.upload_backlog),
                Self::get(&self.files_uploaded),
                Self::get(&self.upload_failures),
            ));
        }
        line
    }
}

/// Prints [`Stats::line`] every `every` until `stop` says so.
pub fn report_every(stats: &Stats, every: Duration, stop: &std::sync::atomic::AtomicBool) {
    let mut last = (Instant::now(), Stats::get(&stats.records_received));
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100).min(every));
        if last.0.elapsed() < every {
            continue;
        }
        let now = (Instant::now(), Stats::get(&stats.records_received));
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
        eprintln!("p11trace-recorder: {}", stats.line(rate));
        last = now;
    }
}
