//! What the analysis keeps of ten million calls: one [`Cell`] per distinct (client, process,
//! provider, function, return code, returned) — counts, the duration sum and maximum, the
//! durations themselves (for exact percentiles) and the ten slowest calls — plus the few rows
//! the order-dependent parts need (session lifecycle, size queries). Every table of the report
//! is a roll-up of the cells; nothing is kept per call but its duration.

use std::collections::hash_map::Entry;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::direct::names::{NONE, NULL, Names};

/// The slowest calls a cell remembers (the report's evidence lists ten).
pub const SLOWEST: usize = 10;

/// What the calls of a cell share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub client: u32,
    pub func: u32,
    pub rv_name: u32,
    pub provider: u32,
    pub process: u32,
    pub pid: i64,
    pub rv: i64,
    pub returned: bool,
}

impl Key {
    /// `rv` is not `CKR_OK` (and the call returned a code).
    pub fn not_ok(&self) -> bool {
        self.rv != NULL && self.rv != 0
    }
}

/// The first block of durations (most cells are small) and the largest (1 M durations, 4 MiB).
const FIRST_BLOCK: usize = 64;
const LAST_BLOCK: usize = 1 << 20;

/// Durations (ns) as they were read: 4 bytes each where they fit (a call under 4.29 s; every
/// call but a stall), in blocks that double in size and are never reallocated (a growing vector
/// copied itself into fresh pages at every doubling: `perf`, 8 % of an `analyze`), merged
/// across files by moving blocks; the few that do not fit (longer, or negative in a foreign
/// file) apart.
#[derive(Debug, Default)]
pub struct Durations {
    parts: Vec<Vec<u32>>,
    wide: Vec<i64>,
}

impl Durations {
    #[inline]
    fn push(&mut self, ns: i64) {
        match u32::try_from(ns) {
            Ok(narrow) => match self.parts.last_mut() {
                Some(part) if part.len() < part.capacity() => part.push(narrow),
                full => {
                    let size = full.map_or(FIRST_BLOCK, |part| part.capacity() * 2);
                    let mut part = Vec::with_capacity(size.min(LAST_BLOCK));
                    part.push(narrow);
                    self.parts.push(part);
                }
            },
            Err(_) => self.wide.push(ns),
        }
    }

    /// Gives back the room the last block has left (at a file's end: measured at 30 M calls,
    /// blocks held 29 % more room than durations without it).
    pub fn settle(&mut self) {
        if let Some(last) = self.parts.last_mut() {
            *last = exact(last);
        }
    }

    fn absorb(&mut self, other: Durations) {
        self.parts.extend(other.parts);
        self.wide.extend(other.wide);
    }
}

/// The calls of one key.
#[derive(Debug, Default)]
pub struct Cell {
    pub count: u64,
    /// Calls with a duration.
    pub timed: u64,
    pub sum_ns: i128,
    pub max_ns: Option<i64>,
    /// Every duration (ns), in no order.
    pub durations: Durations,
    /// The slowest calls as (duration, seq), at most [`SLOWEST`].
    pub slowest: Vec<(i64, i64)>,
    /// The least of `slowest` once it is full (what a call must beat to enter).
    least: (i64, i64),
    /// Size queries retried (`expected::is_retry`): expected although not a probe.
    pub retried: u64,
}

impl Cell {
    /// Adds one call (`dur` is `NULL` when the call has no duration).
    #[inline]
    pub fn add(&mut self, dur: i64, seq: i64) {
        self.count += 1;
        if dur == NULL {
            return;
        }
        self.timed += 1;
        self.sum_ns += i128::from(dur);
        self.max_ns = max(self.max_ns, Some(dur));
        self.durations.push(dur);
        self.remember((dur, seq));
    }

    /// Keeps `slow` among the slowest if it is one of them.
    #[inline]
    fn remember(&mut self, slow: (i64, i64)) {
        if self.slowest.len() < SLOWEST {
            self.slowest.push(slow);
        } else if slow > self.least {
            if let Some(least) = self.slowest.iter_mut().find(|s| **s == self.least) {
                *least = slow;
            }
        } else {
            return;
        }
        if self.slowest.len() == SLOWEST {
            self.least = self.slowest.iter().copied().min().unwrap_or(slow);
        }
    }

    /// Folds `other` (a later file's calls) in.
    pub fn absorb(&mut self, other: Cell) {
        self.count += other.count;
        self.timed += other.timed;
        self.sum_ns += other.sum_ns;
        self.max_ns = max(self.max_ns, other.max_ns);
        self.durations.absorb(other.durations);
        for slow in other.slowest {
            self.remember(slow);
        }
        self.retried += other.retried;
    }
}

/// A copy of `items` in memory of just their size (`shrink_to_fit` may keep the block: mimalloc
/// shrinks in place when half of it is still used, and the rest stays resident).
pub fn exact<T: Copy>(items: &[T]) -> Vec<T> {
    items.to_vec()
}

/// A lifecycle call (`sessions`): opens, closes, logins, finalize (40 bytes: one is kept for
/// every such call, 6 % of a typical workload's).
#[derive(Debug, Clone, Copy)]
pub struct Life {
    pub client: u32,
    /// The function, as its place in `sessions::LIFECYCLE`.
    pub kind: u8,
    /// It returned `CKR_OK`.
    pub ok: bool,
    pub session: i64,
    pub slot: i64,
    pub start: i64,
    pub seq: i64,
}

/// A call's (seq, func, session, rv): what decides whether it retries a size query.
pub type Successor = (i64, u32, i64, i64);

/// A call that answered `CKR_BUFFER_TOO_SMALL` (by code or by name).
#[derive(Debug, Clone, Copy)]
pub struct SizeQuery {
    pub key: Key,
    pub tid: i64,
    pub seq: i64,
    pub session: i64,
    /// The next call of its thread, where the read proved it: its client's next call (`seq`
    /// + 1) on the same thread, kept by the filters, since no call fits in between.
    pub next: Option<Successor>,
}

/// One file's calls (then, merged in file order, all of them).
#[derive(Debug, Default)]
pub struct Tally {
    pub cells: FxHashMap<Key, Cell>,
    /// A client's first call's (pid, process).
    pub client_first: FxHashMap<u32, (i64, u32)>,
    /// A client's first non-null provider.
    pub client_provider: FxHashMap<u32, u32>,
    pub first_start: Option<i64>,
    pub last_start: Option<i64>,
    /// Each file's lifecycle calls (merged by moving, not copying).
    pub life: Vec<Vec<Life>>,
    pub size_queries: Vec<SizeQuery>,
    /// Each file's candidates for the JSON `operations` list (none unless asked for).
    pub listings: Vec<super::listing::Listing>,
}

impl Tally {
    /// Folds `later` (the next file's tally) in; firsts stay this one's.
    pub fn absorb(&mut self, later: Tally) {
        for (key, cell) in later.cells {
            match self.cells.entry(key) {
                // Moved, not copied: most cells are in one file only.
                Entry::Vacant(vacant) => {
                    vacant.insert(cell);
                }
                Entry::Occupied(mut occupied) => occupied.get_mut().absorb(cell),
            }
        }
        for (client, first) in later.client_first {
            self.client_first.entry(client).or_insert(first);
        }
        for (client, provider) in later.client_provider {
            self.client_provider.entry(client).or_insert(provider);
        }
        self.first_start = min(self.first_start, later.first_start);
        self.last_start = max(self.last_start, later.last_start);
        self.life.extend(later.life);
        self.size_queries.extend(later.size_queries);
        self.listings.extend(later.listings);
    }

    /// Notes a call's start time (µs).
    #[inline]
    pub fn saw_start(&mut self, start: i64) {
        if start != NULL {
            self.first_start = min(self.first_start, Some(start));
            self.last_start = max(self.last_start, Some(start));
        }
    }
}

fn min(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The names behind a tally's ids.
#[derive(Debug, Default)]
pub struct Dictionaries {
    pub clients: Names,
    pub funcs: Names,
    pub rv_names: Names,
    pub providers: Names,
    pub processes: Names,
    pub mechanisms: Names,
}

impl Dictionaries {
    /// A name, `None` for `NONE`.
    pub fn of(names: &Names, id: u32) -> Option<&str> {
        if id == NONE { None } else { names.name(id) }
    }
}

/// Everything the report needs: the tally and its names.
#[derive(Debug, Default)]
pub struct Calls {
    pub tally: Tally,
    pub names: Dictionaries,
    /// (client, seq) of the size queries their next call retried.
    pub retried: FxHashSet<(u32, i64)>,
}

impl Calls {
    pub fn func(&self, id: u32) -> Option<&str> {
        Dictionaries::of(&self.names.funcs, id)
    }

    pub fn client(&self, id: u32) -> Option<&str> {
        Dictionaries::of(&self.names.clients, id)
    }

    pub fn rv_name(&self, id: u32) -> Option<&str> {
        Dictionaries::of(&self.names.rv_names, id)
    }

    pub fn provider(&self, id: u32) -> Option<&str> {
        Dictionaries::of(&self.names.providers, id)
    }

    pub fn process(&self, id: u32) -> Option<&str> {
        Dictionaries::of(&self.names.processes, id)
    }

    pub fn mechanism(&self, id: u32) -> Option<&str> {
        Dictionaries::of(&self.names.mechanisms, id)
    }

    /// Whether the call `(client, seq)` of `func` answering `rv` is an expected idiom (the
    /// per-call form of [`Calls::expected`], for the calls a listing shows).
    pub fn is_expected(&self, client: u32, seq: i64, func: Option<&str>, rv: i64) -> bool {
        super::expected::is_probe(func, rv) || self.retried.contains(&(client, seq))
    }

    /// (client_id, seq) of the size queries retried, in order.
    pub fn retried_calls(&self) -> Vec<(String, i64)> {
        let mut calls: Vec<(String, i64)> = self
            .retried
            .iter()
            .map(|&(client, seq)| (self.client(client).unwrap_or_default().to_owned(), seq))
            .collect();
        calls.sort();
        calls
    }

    /// Calls of a cell that are expected idioms (`expected`).
    pub fn expected(&self, key: &Key, cell: &Cell) -> u64 {
        if !key.returned {
            0
        } else if super::expected::is_probe(self.func(key.func), key.rv) {
            cell.count
        } else {
            cell.retried.min(cell.count)
        }
    }

    /// Calls of a cell that failed: not `CKR_OK` and not expected.
    pub fn failed(&self, key: &Key, cell: &Cell) -> u64 {
        if key.not_ok() {
            cell.count - self.expected(key, cell)
        } else {
            0
        }
    }
}

/// Latency and counts of a group of cells (a function, a provider): the cells' durations are
/// read where they are (`ranks`), never copied.
#[derive(Debug, Default)]
pub struct Latency<'c> {
    pub count: u64,
    pub failed: u64,
    pub expected: u64,
    pub timed: u64,
    pub sum_ns: i128,
    pub max_ns: Option<i64>,
    /// The cells' blocks of durations that fit 4 bytes.
    narrow: Vec<&'c [u32]>,
    narrow_len: usize,
    /// The others, ascending once [`Latency::finish`] ran.
    wide: Vec<i64>,
}

impl<'c> Latency<'c> {
    pub fn add(&mut self, calls: &Calls, key: &Key, cell: &'c Cell) {
        self.count += cell.count;
        self.failed += calls.failed(key, cell);
        self.expected += calls.expected(key, cell);
        self.timed += cell.timed;
        self.sum_ns += cell.sum_ns;
        self.max_ns = max(self.max_ns, cell.max_ns);
        for part in &cell.durations.parts {
            self.narrow.push(part);
            self.narrow_len += part.len();
        }
        self.wide.extend_from_slice(&cell.durations.wide);
    }

    /// Sorts the few durations that did not fit 4 bytes.
    pub fn finish(&mut self) {
        self.wide.sort_unstable();
    }

    /// The durations at `ranks` of the ascending order: the negative wide ones, the narrow
    /// ones, the rest.
    fn at(&self, ranks: &[usize]) -> Vec<i64> {
        let negative = self.wide.partition_point(|&d| d < 0);
        let narrow: Vec<usize> = ranks
            .iter()
            .filter(|&&r| (negative..negative + self.narrow_len).contains(&r))
            .map(|&r| r - negative)
            .collect();
        let mut selected = super::ranks::select(&self.narrow, &narrow).into_iter();
        ranks
            .iter()
            .map(|&rank| {
                if rank < negative {
                    self.wide[rank]
                } else if rank < negative + self.narrow_len {
                    selected.next().map_or(0, i64::from)
                } else {
                    self.wide[rank - self.narrow_len]
                }
            })
            .collect()
    }

    /// The linear-interpolation (type 7) quantiles of the durations, exact.
    pub fn quantiles_ns<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        let Some(last) = (self.narrow_len + self.wide.len()).checked_sub(1) else {
            return [None; N];
        };
        let positions = qs.map(|q| q * last as f64);
        let ranks: Vec<usize> = positions
            .iter()
            .flat_map(|p| {
                let lo = p.floor() as usize;
                [lo, (lo + 1).min(last)]
            })
            .collect();
        let values = self.at(&ranks);
        let mut out = [None; N];
        for (index, position) in positions.iter().enumerate() {
            let (low, high) = (values[2 * index] as f64, values[2 * index + 1] as f64);
            out[index] = Some(low + (position - position.floor()) * (high - low));
        }
        out
    }

    /// Durations above `limit` (ns).
    pub fn above(&self, limit: f64) -> usize {
        let narrow: usize = self
            .narrow
            .iter()
            .map(|part| part.iter().filter(|&&d| f64::from(d) > limit).count())
            .sum();
        narrow + self.wide.iter().filter(|&&d| d as f64 > limit).count()
    }
}
