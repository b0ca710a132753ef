//! What the batcher counts for the metrics endpoint: calls by function and return value, a
//! latency histogram per function, and the drops and losses of each client as its `clients`
//! rows record them.
//!
//! The batcher owns a [`Tally`] (plain arrays indexed by the wire function code, no lock, no
//! string hashed per row) and publishes a copy of it to the HTTP thread once per flush
//! ([`Tally::publish`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use p11trace_record::functions::FUNCTIONS;
use p11trace_record::wire::CallRecord;

/// Upper bounds of the latency buckets, in nanoseconds: 1, 1.78, 3.16 and 5.62 times each power
/// of ten (10^(k/4) to three digits) from 1 µs to 10 s; above them only `+Inf`.
pub const BOUNDS_NS: [u64; 29] = bounds();

const fn bounds() -> [u64; 29] {
    const STEPS: [u64; 4] = [1000, 1780, 3160, 5620];
    let mut out = [0u64; 29];
    let mut k = 0;
    let mut decade = 1u64;
    while k < 29 {
        out[k] = STEPS[k % 4] * decade;
        if k % 4 == 3 {
            decade *= 10;
        }
        k += 1;
    }
    out
}

/// Buckets per histogram: the finite bounds and `+Inf`.
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// Index of the function code no PKCS#11 function has (the dataset's `func = 'unknown'`).
pub const UNKNOWN: usize = FUNCTIONS.len();

/// Distinct return values kept apart per function; a peer sending more (vendor codes made up
/// per call) has the rest counted under [`OTHER_RV`].
pub const MAX_RVS: usize = 64;

/// The `rv` label of the return values past [`MAX_RVS`] of one function.
pub const OTHER_RV: &str = "other";

/// Clients with drops or losses kept apart; past them, one series with [`OTHER_CLIENT`].
pub const MAX_CLIENTS: usize = 1000;

/// The `client_id` (and `process`) label of the clients past [`MAX_CLIENTS`].
pub const OTHER_CLIENT: &str = "other";

/// One function's counts.
#[derive(Debug, Clone, Default)]
pub struct FuncTally {
    /// Calls (the histogram's `_count`).
    pub count: u64,
    /// Σ dur_ns (negative durations count as 0).
    pub sum_ns: u64,
    /// Per bucket, the calls whose duration falls in it (not cumulative).
    pub buckets: [u64; BUCKETS],
    /// (rv, calls) in the order first seen.
    pub rvs: Vec<(u64, u64)>,
    /// Calls whose rv was past [`MAX_RVS`].
    pub other_rvs: u64,
}

/// A client's drops and losses, summed over its connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTally {
    pub pid: i64,
    pub process: String,
    pub dropped: u64,
    pub lost: u64,
}

/// What the HTTP thread encodes.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Indexed by wire function code; [`UNKNOWN`] last.
    pub funcs: Vec<FuncTally>,
    /// By client id: only clients with drops or losses.
    pub clients: BTreeMap<String, ClientTally>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            funcs: vec![FuncTally::default(); UNKNOWN + 1],
            clients: BTreeMap::new(),
        }
    }
}

/// The copy the HTTP thread reads, replaced once per batcher flush.
pub type Shared = Arc<Mutex<Snapshot>>;

/// The batcher's own counts and where it publishes them.
#[derive(Debug)]
pub struct Tally {
    own: Snapshot,
    shared: Shared,
    changed: bool,
}

/// The bucket of a duration: the first bound it does not exceed (`le` is inclusive).
fn bucket(dur_ns: u64) -> usize {
    BOUNDS_NS.partition_point(|&bound| bound < dur_ns)
}

impl Tally {
    pub fn new(shared: Shared) -> Tally {
        Tally {
            own: Snapshot::default(),
            shared,
            changed: false,
        }
    }

    /// Counts the records of one batch (each is a row).
    pub fn calls(&mut self, records: &[CallRecord]) {
        for record in records {
            let func = &mut self.own.funcs[usize::from(record.func).min(UNKNOWN)];
            let dur = u64::try_from(record.dur_ns).unwrap_or(0);
            func.count += 1;
            func.sum_ns = func.sum_ns.saturating_add(dur);
            func.buckets[bucket(dur)] += 1;
            if let Some((_, calls)) = func.rvs.iter_mut().find(|(rv, _)| *rv == record.rv) {
                *calls += 1;
            } else if func.rvs.len() < MAX_RVS {
                func.rvs.push((record.rv, 1));
            } else {
                func.other_rvs += 1;
            }
        }
        self.changed |= !records.is_empty();
    }

    /// Counts what one connection's `clients` row says it dropped and lost.
    pub fn client(&mut self, client_id: &str, pid: i64, process: &str, dropped: u64, lost: u64) {
        if dropped == 0 && lost == 0 {
            return;
        }
        let clients = &mut self.own.clients;
        let key = if clients.contains_key(client_id) || clients.len() < MAX_CLIENTS {
            client_id
        } else {
            OTHER_CLIENT
        };
        let entry = clients
            .entry(key.to_owned())
            .or_insert_with(|| ClientTally {
                pid: if key == OTHER_CLIENT { 0 } else { pid },
                process: if key == OTHER_CLIENT {
                    OTHER_CLIENT.to_owned()
                } else {
                    process.to_owned()
                },
                ..ClientTally::default()
            });
        entry.dropped = entry.dropped.saturating_add(dropped);
        entry.lost = entry.lost.saturating_add(lost);
        self.changed = true;
    }

    /// Hands the counts to the HTTP thread (a copy into its buffers, under its lock), if
    /// anything changed since the last time.
    pub fn publish(&mut self) {
        if !self.changed {
            return;
        }
        // A poisoned lock only means an HTTP thread panicked mid-copy: the data is still ours.
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.clone_from(&self.own);
        self.changed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_log_spaced_from_one_microsecond_to_ten_seconds() {
        assert_eq!(BOUNDS_NS[0], 1_000);
        assert_eq!(BOUNDS_NS[1], 1_780);
        assert_eq!(BOUNDS_NS[4], 10_000);
        assert_eq!(BOUNDS_NS[28], 10_000_000_000);
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_duration_lands_in_the_first_bucket_it_does_not_exceed() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1_000), 0);
        assert_eq!(bucket(1_001), 1);
        assert_eq!(bucket(10_000_000_000), 28);
        assert_eq!(bucket(10_000_000_001), 29);
        assert_eq!(bucket(u64::MAX), 29);
    }

    fn record(func: u16, rv: u64, dur_ns: i64) -> CallRecord {
        CallRecord {
            func,
            rv,
            dur_ns,
            ..CallRecord::default()
        }
    }

    #[test]
    fn calls_are_counted_by_function_and_rv_and_published() {
        let shared = Shared::default();
        let mut tally = Tally::new(shared.clone());
        tally.calls(&[
            record(0, 0, 500),
            record(0, 0, 2_000),
            record(0, 0xa0, -5),
            record(u16::MAX, 7, 20_000_000_000),
        ]);
        assert_eq!(
            shared.lock().unwrap().funcs[0].count,
            0,
            "not yet published"
        );
        tally.publish();
        let snapshot = shared.lock().unwrap().clone();
        let first = &snapshot.funcs[0];
        assert_eq!(first.count, 3);
        assert_eq!(first.sum_ns, 2_500);
        assert_eq!(first.rvs, vec![(0, 2), (0xa0, 1)]);
        assert_eq!(first.buckets[0], 2);
        assert_eq!(first.buckets[2], 1);
        let unknown = &snapshot.funcs[UNKNOWN];
        assert_eq!((unknown.count, unknown.buckets[BUCKETS - 1]), (1, 1));
    }

    #[test]
    fn return_values_past_the_cap_are_counted_as_other() {
        let mut tally = Tally::new(Shared::default());
        let records: Vec<CallRecord> = (0..MAX_RVS as u64 + 3).map(|rv| record(1, rv, 1)).collect();
        tally.calls(&records);
        assert_eq!(tally.own.funcs[1].rvs.len(), MAX_RVS);
        assert_eq!(tally.own.funcs[1].other_rvs, 3);
    }

    #[test]
    fn clients_are_summed_over_connections_and_capped() {
        let mut tally = Tally::new(Shared::default());
        tally.client("a", 1, "app", 0, 0);
        assert!(tally.own.clients.is_empty(), "nothing dropped: no series");
        tally.client("a", 1, "app", 3, 1);
        tally.client("a", 1, "app", 2, 0);
        assert_eq!(tally.own.clients["a"].dropped, 5);
        assert_eq!(tally.own.clients["a"].lost, 1);
        for i in 0..MAX_CLIENTS + 5 {
            tally.client(&format!("c{i}"), 2, "app", 1, 0);
        }
        assert_eq!(tally.own.clients.len(), MAX_CLIENTS + 1);
        assert_eq!(tally.own.clients[OTHER_CLIENT].dropped, 6);
    }
}
