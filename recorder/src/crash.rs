//! Test-only fault injection, from `P11TRACE_RECORDER_CRASH_AT=<point>[:<n>][,<point>[:<n>]…]`.
//!
//! - Crash points abort the process (no cleanup, like `kill -9`) the n-th time (default: the
//!   first) execution reaches them: `after-wal-append`, `before-rename`, `after-rename`,
//!   `before-wal-truncate`, `after-wal-truncate` (once covered log segments are deleted). The
//!   crash tests use them to prove that a restart loses nothing and duplicates nothing at each
//!   of those points.
//! - `acceptor` panics the acceptor actor as it starts (a dead actor must stop the recorder, not
//!   leave it running deaf).
//! - Failure points make an operation return an I/O error the first n times (default: once) it
//!   is reached: `wal-rotate` (starting a new log segment, after its file is created and before
//!   its checkpoint is written).
//!
//! - `slow-capture:<ms>` makes every client reader sleep `<ms>` after each message it receives
//!   (a recorder that falls behind its clients, without a crash).
//!
//! Several points may be given at once, separated by commas.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Default)]
pub struct Crash {
    points: Vec<(String, u64)>,
    hits: Arc<Vec<AtomicU64>>,
}

pub const POINTS: &[&str] = &[
    "after-wal-append",
    "before-rename",
    "after-rename",
    "before-wal-truncate",
    "after-wal-truncate",
    "acceptor",
    "wal-rotate",
    "slow-capture",
    "after-upload",
    "after-move",
];

impl Crash {
    pub fn from_env() -> Crash {
        let spec = std::env::var("P11TRACE_RECORDER_CRASH_AT").unwrap_or_default();
        let points: Vec<(String, u64)> = spec
            .split(',')
            .filter_map(|one| {
                let (name, nth) = one.split_once(':').unwrap_or((one, "1"));
                POINTS
                    .contains(&name)
                    .then(|| (name.to_owned(), nth.parse().unwrap_or(1)))
            })
            .collect();
        let hits = points.iter().map(|_| AtomicU64::new(0)).collect();
        Crash {
            points,
            hits: Arc::new(hits),
        }
    }

    /// `point` configured as with `<point>:<nth>` (unit tests).
    #[cfg(test)]
    pub fn with(point: &str, nth: u64) -> Crash {
        Crash {
            points: vec![(point.to_owned(), nth)],
            hits: Arc::new(vec![AtomicU64::new(0)]),
        }
    }

    /// How many times `point` has now been reached, and the configured n (None: not configured).
    fn hit(&self, point: &str) -> Option<(u64, u64)> {
        let index = self.points.iter().position(|(name, _)| name == point)?;
        let hits = self.hits.get(index)?.fetch_add(1, Ordering::AcqRel) + 1;
        Some((hits, self.points[index].1))
    }

    /// Aborts here if this is a configured point and occurrence.
    pub fn at(&self, point: &str) {
        if self.hit(point).is_some_and(|(hits, nth)| hits == nth) {
            eprintln!("p11trace-recorder: crash injected at {point} (P11TRACE_RECORDER_CRASH_AT)");
            std::process::abort();
        }
    }

    /// Panics here (the actor's thread dies, the process lives) if this is a configured point.
    pub fn fail_at(&self, point: &str) {
        if self.hit(point).is_some() {
            panic!("failure injected at {point} (P11TRACE_RECORDER_CRASH_AT)");
        }
    }

    /// An I/O error the first n times a configured failure point is reached.
    pub fn error_at(&self, point: &str) -> std::io::Result<()> {
        match self.hit(point) {
            Some((hits, nth)) if hits <= nth => Err(std::io::Error::other(format!(
                "failure injected at {point} (P11TRACE_RECORDER_CRASH_AT)"
            ))),
            _ => Ok(()),
        }
    }

    /// Sleeps `<n>` milliseconds here if this is a configured point (`slow-capture:<n>`).
    pub fn delay_at(&self, point: &str) {
        if let Some(index) = self.points.iter().position(|(name, _)| name == point) {
            std::thread::sleep(std::time::Duration::from_millis(self.points[index].1));
        }
    }
}
