//! A side's calls as `compare` and `diff` hold them: per file, a few plain vectors of interned
//! ids and integers ([`Chunk`]), and the names behind the ids ([`Rows`]). What a vector holds only
//! for some commands (start times for the scripts and `--by`, providers and modules per row for
//! `--by`) is left empty otherwise: every byte per call is paid for ten million times.

use rustc_hash::FxHashSet;

pub use crate::direct::names::{NONE, NULL, Names};

/// Row flags: kept by the filters, returned, failed (`rv` ≠ `CKR_OK`).
pub const KEEP: u8 = 1;
pub const RETURNED: u8 = 2;
pub const FAILED: u8 = 4;

/// One file's rows (its non-internal calls), ids into [`Rows`]' names.
#[derive(Debug, Default)]
pub struct Chunk {
    pub client: Vec<u32>,
    pub func: Vec<u32>,
    pub mech: Vec<u32>,
    pub rv_name: Vec<u32>,
    /// Per row only with `--by` (else counted in `provider_counts`/`module_counts`).
    pub provider: Vec<u32>,
    pub module: Vec<u32>,
    /// The `--by` column's value (empty without `--by`; for `--by provider`, filled after the
    /// read from the client's provider).
    pub group: Vec<u32>,
    pub op: Vec<i64>,
    pub session: Vec<i64>,
    pub seq: Vec<i64>,
    /// µs since the epoch; only when the read keeps order (scripts, `--by`).
    pub start: Vec<i64>,
    pub dur: Vec<i64>,
    pub flags: Vec<u8>,
    /// Kept rows per provider and module id, where they are not kept per row.
    pub provider_counts: Vec<u64>,
    pub module_counts: Vec<u64>,
    /// Clients with `op_id`s in this file.
    pub clients_with_ops: FxHashSet<u32>,
    /// Rows whose operation did not start in this file (resolved across files after the read).
    pub unresolved: Vec<u32>,
}

impl Chunk {
    /// Room for `rows` (from the file's footer: growing the vectors by doubling copied them and
    /// faulted in fresh pages, `perf`: 43 % of a `diff` in the kernel's page clearing).
    pub fn with_capacity(rows: usize, grouped: bool, ordered: bool) -> Chunk {
        let some = |wanted: bool| if wanted { rows } else { 0 };
        Chunk {
            client: Vec::with_capacity(rows),
            func: Vec::with_capacity(rows),
            mech: Vec::with_capacity(rows),
            rv_name: Vec::with_capacity(rows),
            provider: Vec::with_capacity(some(grouped)),
            module: Vec::with_capacity(some(grouped)),
            group: Vec::with_capacity(some(grouped)),
            op: Vec::with_capacity(rows),
            session: Vec::with_capacity(rows),
            seq: Vec::with_capacity(rows),
            start: Vec::with_capacity(some(ordered)),
            dur: Vec::with_capacity(rows),
            flags: Vec::with_capacity(rows),
            ..Chunk::default()
        }
    }

    pub fn len(&self) -> usize {
        self.func.len()
    }

    pub fn is_empty(&self) -> bool {
        self.func.is_empty()
    }
}

/// A side's calls, file by file.
#[derive(Debug, Default)]
pub struct Rows {
    pub chunks: Vec<Chunk>,
    pub clients: Names,
    pub funcs: Names,
    pub mechs: Names,
    pub rv_names: Names,
    pub providers: Names,
    pub modules: Names,
    pub groups: Names,
    /// (client, provider) pairs seen, internal calls included: a client's provider for
    /// `--by provider`.
    pub client_providers: FxHashSet<(u32, u32)>,
    /// Whether the chunks hold start times (the read kept order).
    pub ordered: bool,
}

impl Rows {
    /// Kept rows per provider and per module id, summed over the chunks that count them.
    pub fn counts(&self) -> (Vec<u64>, Vec<u64>) {
        let mut totals = (
            vec![0u64; self.providers.len()],
            vec![0u64; self.modules.len()],
        );
        for chunk in &self.chunks {
            for (total, counts) in [
                (&mut totals.0, &chunk.provider_counts),
                (&mut totals.1, &chunk.module_counts),
            ] {
                for (sum, n) in total.iter_mut().zip(counts) {
                    *sum += n;
                }
            }
        }
        totals
    }
}

/// `counts[id] += 1`, growing `counts` as ids appear.
pub fn count(counts: &mut Vec<u64>, id: u32) {
    if id == NONE {
        return;
    }
    let id = id as usize;
    if counts.len() <= id {
        counts.resize(id + 1, 0);
    }
    counts[id] += 1;
}
