//! Test-only crash injection. `P11TRACE_ARCHIVE_CRASH_AT=<point>[:<n>]` aborts the process (no
//! cleanup, like `kill -9`) the n-th time (default: the first) `archive` reaches `<point>`:
//! `staged` (a period's files written in `.staging/`), `pending` (its digest written to
//! `.pending/`), `file-renamed` (one file moved into place) or `sealed` (the digest in
//! `digests/`). The archive tests use it to prove an interrupted run leaves a verifiable archive.

use std::cell::Cell;

pub const POINTS: &[&str] = &["staged", "pending", "file-renamed", "sealed"];

#[derive(Debug, Default)]
pub struct Crash {
    point: Option<(String, u64)>,
    hits: Cell<u64>,
}

impl Crash {
    pub fn from_env() -> Crash {
        let point = std::env::var("P11TRACE_ARCHIVE_CRASH_AT")
            .ok()
            .and_then(|spec| {
                let (name, nth) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
                POINTS
                    .contains(&name)
                    .then(|| (name.to_owned(), nth.parse().unwrap_or(1)))
            });
        Crash {
            point,
            hits: Cell::new(0),
        }
    }

    /// Aborts here if this is the configured point and occurrence.
    pub fn at(&self, point: &str) {
        if let Some((name, nth)) = &self.point
            && name == point
        {
            self.hits.set(self.hits.get() + 1);
            if self.hits.get() == *nth {
                eprintln!("p11trace-query: crash injected at {point} (P11TRACE_ARCHIVE_CRASH_AT)");
                std::process::abort();
            }
        }
    }
}
