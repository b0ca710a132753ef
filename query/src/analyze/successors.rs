//! Whether a `CKR_BUFFER_TOO_SMALL` was retried: its thread's next call decides
//! (`expected::is_retry`), and that call may sit anywhere in the files. The first read proves it
//! where it can ([`Awaited`]: the client's next call, later in the same file, on the same thread —
//! nothing fits in between); for the size queries it could not, a second read of their threads'
//! calls ([`retries`]) finds each one's successor.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use rustc_hash::{FxHashMap, FxHashSet};

use super::expected::{self, CKR_BUFFER_TOO_SMALL};
use super::interned::Shared;
use super::tally::{SizeQuery, Successor, Tally};
use crate::direct::columns::ints;
use crate::direct::names::Names;
use crate::direct::{Mapper, Projected};
use crate::filters::{Criteria, RowFilter};

/// The size queries of a file waiting for their client's next call (`seq` + 1): found later in
/// the same file (as a recorder writes calls), on the same thread, it is proven their thread's
/// next call, and no second read is needed for them.
#[derive(Default)]
pub struct Awaited {
    /// (client, seq) awaited → the size query's index in the file's tally.
    calls: FxHashMap<(u32, i64), usize>,
    /// Per client id, how many are awaited (a plain index test per row).
    pub clients: Vec<u32>,
}

impl Awaited {
    pub fn expect(&mut self, client: u32, seq: i64, query: usize) {
        let Some(next) = seq.checked_add(1) else {
            return;
        };
        if self.calls.insert((client, next), query).is_none() {
            let at = client as usize;
            if self.clients.len() <= at {
                self.clients.resize(at + 1, 0);
            }
            self.clients[at] += 1;
        }
    }

    pub fn arrived(&mut self, queries: &mut [SizeQuery], client: u32, tid: i64, call: Successor) {
        if let Some(index) = self.calls.remove(&(client, call.0)) {
            self.clients[client as usize] -= 1;
            if let Some(query) = queries.get_mut(index)
                && query.tid == tid
            {
                query.next = Some(call);
            }
        }
    }
}

/// A thread: (client, tid).
type Thread = (u32, i64);

/// The calls after each size query (by `(client, tid, seq)`): of every kept call on a thread
/// with size queries, the size query just before it learns of it, and keeps the earliest.
fn successors_in(
    path: &Path,
    criteria: &Criteria,
    shared: &Shared,
    threads: &FxHashMap<Thread, Vec<i64>>,
) -> Result<FxHashMap<(Thread, i64), Successor>> {
    let mut clients: Vec<bool> = Vec::new();
    for &(client, _) in threads.keys() {
        let at = client as usize;
        if clients.len() <= at {
            clients.resize(at + 1, false);
        }
        clients[at] = true;
    }
    let mut filter = RowFilter::new(criteria);
    let columns = [
        "client_id",
        "func",
        "tid",
        "seq",
        "session",
        "rv",
        "pid",
        "start",
        filter.run_column(),
    ];
    let mut file = Projected::open(path, &columns, &["client_id", "func", "run_id"])?;
    let mut client_mapper = Mapper::new(&shared.clients);
    let mut func_mapper = Mapper::new(&shared.funcs);
    let run_names = Mutex::new(Names::default());
    let mut run_mapper = Mapper::new(&run_names);
    let (mut client, mut func, mut run_ids) = (Vec::new(), Vec::new(), Vec::new());
    let mut numbers: [Vec<i64>; 6] = Default::default();
    let mut found: FxHashMap<(Thread, i64), Successor> = FxHashMap::default();
    while let Some(batch) = file.next_batch(path)? {
        let rows = batch.rows();
        let context = |index: usize| format!("{}: column {}", path.display(), columns[index]);
        client_mapper
            .ids(batch.column(0), rows, &mut client)
            .with_context(|| context(0))?;
        func_mapper
            .ids(batch.column(1), rows, &mut func)
            .with_context(|| context(1))?;
        for (offset, out) in numbers.iter_mut().enumerate() {
            ints(batch.column(2 + offset), rows, out).with_context(|| context(2 + offset))?;
        }
        run_mapper
            .ids(batch.column(8), rows, &mut run_ids)
            .with_context(|| context(8))?;
        filter.update(&shared.funcs, &run_names);
        let [tid, seq, session, rv, pid, start] = &numbers;
        for row in 0..rows {
            if !clients.get(client[row] as usize).copied().unwrap_or(false) {
                continue;
            }
            let thread = (client[row], tid[row]);
            let Some(queries) = threads.get(&thread) else {
                continue;
            };
            let kept = filter.keeps(func[row], run_ids[row], pid[row], start[row], rv[row]);
            // The size query just before this call (an earlier one has a closer successor:
            // the size query in between).
            let before = queries.partition_point(|&q| q < seq[row]);
            if !kept || before == 0 {
                continue;
            }
            let call = (seq[row], func[row], session[row], rv[row]);
            keep_earliest(&mut found, (thread, queries[before - 1]), call);
        }
    }
    Ok(found)
}

/// Keeps `call` as `query`'s successor if it is the earliest seen.
fn keep_earliest(
    found: &mut FxHashMap<(Thread, i64), Successor>,
    query: (Thread, i64),
    call: Successor,
) {
    found
        .entry(query)
        .and_modify(|known| {
            if call.0 < known.0 {
                *known = call;
            }
        })
        .or_insert(call);
}

/// Counts, on each size query's cell, the size queries that the next call of their thread
/// retried (`expected::is_retry`).
pub fn retries(
    files: &[PathBuf],
    criteria: &Criteria,
    shared: &Shared,
    tally: &mut Tally,
) -> Result<FxHashSet<(u32, i64)>> {
    let is_code = |query: &&SizeQuery| query.key.rv == CKR_BUFFER_TOO_SMALL;
    // The threads with a size query whose successor the first read did not prove.
    let unproven: FxHashSet<Thread> = tally
        .size_queries
        .iter()
        .filter(is_code)
        .filter(|query| query.next.is_none())
        .map(|query| (query.key.client, query.tid))
        .collect();
    let mut threads: FxHashMap<Thread, Vec<i64>> = FxHashMap::default();
    for query in tally.size_queries.iter().filter(is_code) {
        let thread = (query.key.client, query.tid);
        if unproven.contains(&thread) {
            threads.entry(thread).or_default().push(query.seq);
        }
    }
    for queries in threads.values_mut() {
        queries.sort_unstable();
        queries.dedup();
    }
    let mut successors: FxHashMap<(Thread, i64), Successor> = FxHashMap::default();
    let mut retried = FxHashSet::default();
    if !threads.is_empty() {
        let results = p11trace_dataset::parallel::par_map(files, |path| {
            successors_in(path, criteria, shared, &threads)
        });
        for result in results {
            for (query, call) in result? {
                keep_earliest(&mut successors, query, call);
            }
        }
    }
    for query in &tally.size_queries {
        let thread = (query.key.client, query.tid);
        let next = query
            .next
            .or_else(|| successors.get(&(thread, query.seq)).copied());
        let Some((_, func, session, rv)) = next else {
            continue;
        };
        let next = (func, session, rv);
        if query.key.returned
            && expected::is_retry(query.key.rv, query.key.func, query.session, next)
            && let Some(cell) = tally.cells.get_mut(&query.key)
        {
            cell.retried += 1;
            retried.insert((query.key.client, query.seq));
        }
    }
    Ok(retried)
}
