//! Test-only crash injection. `P11TRACE_RECORDER_CRASH_AT=<point>[:<n>]` aborts the process (no
//! cleanup, like `kill -9`) the n-th time (default: the first) execution reaches `<point>`:
//! `after-wal-append`, `before-rename`, `after-rename` or `before-wal-truncate`. The crash tests
//! use it to prove that a restart loses nothing and duplicates nothing at each of those points.
//! `P11TRACE_RECORDER_CRASH_AT=acceptor` instead panics the acceptor actor as it starts (a dead
//! actor must stop the recorder, not leave it running deaf).
//! `P11TRACE_RECORDER_CRASH_AT=slow-capture:<ms>` makes every client reader sleep `<ms>` after
//! each message it receives (a recorder that falls behind its clients, without a crash).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Default)]
pub struct Crash {
    point: Option<(String, u64)>,
    hits: Arc<AtomicU64>,
}

pub const POINTS: &[&str] = &[
    "after-wal-append",
    "before-rename",
    "after-rename",
    "before-wal-truncate",
    "acceptor",
    "slow-capture",
];

impl Crash {
    pub fn from_env() -> Crash {
        let point = std::env::var("P11TRACE_RECORDER_CRASH_AT")
            .ok()
            .and_then(|spec| {
                let (name, nth) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
                POINTS
                    .contains(&name)
                    .then(|| (name.to_owned(), nth.parse().unwrap_or(1)))
            });
        Crash {
            point,
            hits: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Aborts here if this is the configured point and occurrence.
    pub fn at(&self, point: &str) {
        if let Some((name, nth)) = &self.point
            && name == point
            && self.hits.fetch_add(1, Ordering::AcqRel) + 1 == *nth
        {
            eprintln!("p11trace-recorder: crash injected at {point} (P11TRACE_RECORDER_CRASH_AT)");
            std::process::abort();
        }
    }

    /// Panics here (the actor's thread dies, the process lives) if this is the configured point.
    pub fn fail_at(&self, point: &str) {
        if let Some((name, _)) = &self.point
            && name == point
        {
            panic!("failure injected at {point} (P11TRACE_RECORDER_CRASH_AT)");
        }
    }

    /// Sleeps `<n>` milliseconds here if this is the configured point (`slow-capture:<n>`).
    pub fn delay_at(&self, point: &str) {
        if let Some((name, ms)) = &self.point
            && name == point
        {
            std::thread::sleep(std::time::Duration::from_millis(*ms));
        }
    }
}
