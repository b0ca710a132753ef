//! The calls folded into a [`Calls`] tally straight from their Parquet files (`crate::direct`):
//! files decoded in parallel, the filters evaluated as rows are read, one hash lookup per call.
//! Whether a `CKR_BUFFER_TOO_SMALL` was retried depends on the next call of its thread, which
//! may sit anywhere in the files. The read proves it where it can (the client's next call, later
//! in the same file, on the same thread: nothing fits in between); for the size queries it could
//! not, a second read of their threads' calls finds each one's successor.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use rustc_hash::{FxHashMap, FxHashSet};

use super::expected::{self, CKR_BUFFER_TOO_SMALL};
use super::listing::{Listing, Operation};
use super::sessions::LIFECYCLE;
use super::tally::{Calls, Dictionaries, Key, Life, SizeQuery, Successor, Tally, exact};
use crate::direct::columns::{bools, ints};
use crate::direct::names::{NONE, NULL, Names};
use crate::direct::{Mapper, Projected, into_names, lock};
use crate::filters::Criteria;

/// The interners the files read in parallel share.
#[derive(Default)]
struct Shared {
    clients: Mutex<Names>,
    funcs: Mutex<Names>,
    rv_names: Mutex<Names>,
    providers: Mutex<Names>,
    processes: Mutex<Names>,
    mechanisms: Mutex<Names>,
}

/// The columns read: five strings, eight integers, `returned`, `run_id` (for `--run-id`), then
/// what only the `operations` list shows.
const COLUMNS: [&str; 18] = [
    "client_id",
    "func",
    "rv_name",
    "provider",
    "process",
    "pid",
    "tid",
    "seq",
    "start",
    "dur_ns",
    "rv",
    "slot_id",
    "session",
    "returned",
    "run_id",
    "mechanism",
    "object",
    "internal",
];
const STRINGS: [&str; 7] = [
    "client_id",
    "func",
    "rv_name",
    "provider",
    "process",
    "run_id",
    "mechanism",
];

/// A verdict per interned id, worked out as ids appear.
struct Verdicts<T = bool>(Vec<T>);

impl<T> Default for Verdicts<T> {
    fn default() -> Self {
        Verdicts(Vec::new())
    }
}

impl<T: Copy> Verdicts<T> {
    fn update(&mut self, names: &Mutex<Names>, test: impl Fn(&str) -> T) {
        let names = lock(names);
        while self.0.len() < names.len() {
            let name = names.name(self.0.len() as u32).unwrap_or("");
            self.0.push(test(name));
        }
    }

    /// The verdict on `id`; `null` for `NONE`.
    fn of(&self, id: u32, null: T) -> T {
        self.0.get(id as usize).copied().unwrap_or(null)
    }
}

impl Verdicts<Option<u8>> {
    /// The lifecycle function `id` is, by its place in `LIFECYCLE`.
    fn kind(&self, id: u32) -> Option<u8> {
        self.of(id, None)
    }
}

/// The size queries of a file waiting for their client's next call (`seq` + 1): found later in
/// the same file (as a recorder writes calls), on the same thread, it is proven their thread's
/// next call, and no second read is needed for them.
#[derive(Default)]
struct Awaited {
    /// (client, seq) awaited → the size query's index in the file's tally.
    calls: FxHashMap<(u32, i64), usize>,
    /// Per client id, how many are awaited (a plain index test per row).
    clients: Vec<u32>,
}

impl Awaited {
    fn expect(&mut self, client: u32, seq: i64, query: usize) {
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

    fn arrived(&mut self, queries: &mut [SizeQuery], client: u32, tid: i64, call: Successor) {
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

/// The per-id verdicts of one file's read.
#[derive(Default)]
struct Tests {
    funcs_kept: Verdicts,
    runs_kept: Verdicts,
    lifecycle: Verdicts<Option<u8>>,
    too_small: Verdicts,
}

fn fold_file(
    path: &Path,
    criteria: &Criteria,
    shared: &Shared,
    listing: Option<usize>,
) -> Result<Tally> {
    let mut columns = COLUMNS;
    if criteria.run_id.is_none() {
        columns[14] = "";
    }
    if listing.is_none() {
        columns[15..].fill("");
    }
    let mut listed = listing.map(Listing::new);
    let mut mechanism_mapper = Mapper::new(&shared.mechanisms);
    let (mut mechanisms, mut objects) = (Vec::new(), Vec::new());
    let mut file = Projected::open(path, &columns, &STRINGS)?;
    let mut mappers = [
        &shared.clients,
        &shared.funcs,
        &shared.rv_names,
        &shared.providers,
        &shared.processes,
    ]
    .map(Mapper::new);
    let run_names = Mutex::new(Names::default());
    let mut run_mapper = Mapper::new(&run_names);
    let mut tally = Tally::default();
    let mut tests = Tests::default();
    let mut strs: [Vec<u32>; 5] = Default::default();
    let mut numbers: [Vec<i64>; 8] = Default::default();
    let mut run_ids = Vec::new();
    // The last client whose firsts were noted, and the last (client, provider) pair.
    let (mut noted, mut provided) = (None, None);
    let mut awaited = Awaited::default();
    let mut life = Vec::new();
    while let Some(batch) = file.next_batch(path)? {
        let rows = batch.rows();
        let context = |index: usize| format!("{}: column {}", path.display(), COLUMNS[index]);
        for (index, (mapper, out)) in mappers.iter_mut().zip(strs.iter_mut()).enumerate() {
            mapper
                .ids(batch.column(index), rows, out)
                .with_context(|| context(index))?;
        }
        for (offset, out) in numbers.iter_mut().enumerate() {
            ints(batch.column(5 + offset), rows, out).with_context(|| context(5 + offset))?;
        }
        let returned = bools(batch.column(13), rows, true).with_context(|| context(13))?;
        mechanism_mapper
            .ids(batch.column(15), rows, &mut mechanisms)
            .with_context(|| context(15))?;
        ints(batch.column(16), rows, &mut objects).with_context(|| context(16))?;
        let internal = bools(batch.column(17), rows, false).with_context(|| context(17))?;
        run_mapper
            .ids(batch.column(14), rows, &mut run_ids)
            .with_context(|| context(14))?;
        tests
            .funcs_kept
            .update(&shared.funcs, |f| criteria.keeps_func(Some(f)));
        tests.lifecycle.update(&shared.funcs, |f| {
            LIFECYCLE.iter().position(|l| *l == f).map(|p| p as u8)
        });
        tests
            .too_small
            .update(&shared.rv_names, |r| r == "CKR_BUFFER_TOO_SMALL");
        tests
            .runs_kept
            .update(&run_names, |r| criteria.keeps_run(Some(r)));
        let [client, func, rv_name, provider, process] = &strs;
        let [pid, tid, seq, start, dur, rv, slot, session] = &numbers;
        let some = |v: i64| (v != NULL).then_some(v);
        for row in 0..rows {
            let kept = tests.funcs_kept.of(func[row], criteria.keeps_func(None))
                && tests.runs_kept.of(run_ids[row], criteria.keeps_run(None))
                && criteria.keeps_pid(some(pid[row]))
                && criteria.keeps_start(some(start[row]))
                && criteria.keeps_rv(some(rv[row]));
            if !kept {
                continue;
            }
            let key = Key {
                client: client[row],
                func: func[row],
                rv_name: rv_name[row],
                provider: provider[row],
                process: process[row],
                pid: pid[row],
                rv: rv[row],
                returned: returned[row],
            };
            tally.cells.entry(key).or_default().add(dur[row], seq[row]);
            if let Some(listed) = listed.as_mut() {
                listed.offer(Operation {
                    start: start[row],
                    client: key.client,
                    seq: seq[row],
                    pid: key.pid,
                    tid: tid[row],
                    func: key.func,
                    rv: key.rv,
                    rv_name: key.rv_name,
                    dur_ns: dur[row],
                    slot: slot[row],
                    session: session[row],
                    mechanism: mechanisms[row],
                    object: objects[row],
                    internal: internal[row],
                    returned: key.returned,
                });
            }
            tally.saw_start(start[row]);
            if noted != Some(key.client) {
                noted = Some(key.client);
                tally
                    .client_first
                    .entry(key.client)
                    .or_insert((key.pid, key.process));
            }
            if key.provider != NONE && provided != Some((key.client, key.provider)) {
                provided = Some((key.client, key.provider));
                tally
                    .client_provider
                    .entry(key.client)
                    .or_insert(key.provider);
            }
            if let Some(kind) = tests.lifecycle.kind(key.func) {
                life.push(Life {
                    client: key.client,
                    kind,
                    ok: key.rv == 0,
                    session: session[row],
                    slot: slot[row],
                    start: start[row],
                    seq: seq[row],
                });
            }
            if awaited
                .clients
                .get(key.client as usize)
                .is_some_and(|&n| n > 0)
            {
                let call = (seq[row], key.func, session[row], key.rv);
                awaited.arrived(&mut tally.size_queries, key.client, tid[row], call);
            }
            if key.rv == CKR_BUFFER_TOO_SMALL || tests.too_small.of(key.rv_name, false) {
                if key.rv == CKR_BUFFER_TOO_SMALL && seq[row] != NULL {
                    awaited.expect(key.client, seq[row], tally.size_queries.len());
                }
                tally.size_queries.push(SizeQuery {
                    key,
                    tid: tid[row],
                    seq: seq[row],
                    session: session[row],
                    next: None,
                });
            }
        }
    }
    tally.life.push(exact(&life));
    drop(life);
    for cell in tally.cells.values_mut() {
        cell.durations.settle();
    }
    tally.listings.extend(listed);
    Ok(tally)
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
    let run_column = if criteria.run_id.is_some() {
        "run_id"
    } else {
        ""
    };
    let columns = [
        "client_id",
        "func",
        "tid",
        "seq",
        "session",
        "rv",
        "pid",
        "start",
        run_column,
    ];
    let mut file = Projected::open(path, &columns, &["client_id", "func", "run_id"])?;
    let mut client_mapper = Mapper::new(&shared.clients);
    let mut func_mapper = Mapper::new(&shared.funcs);
    let run_names = Mutex::new(Names::default());
    let mut run_mapper = Mapper::new(&run_names);
    let (mut funcs_kept, mut runs_kept) = (Verdicts::default(), Verdicts::default());
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
        funcs_kept.update(&shared.funcs, |f| criteria.keeps_func(Some(f)));
        runs_kept.update(&run_names, |r| criteria.keeps_run(Some(r)));
        let [tid, seq, session, rv, pid, start] = &numbers;
        let some = |v: i64| (v != NULL).then_some(v);
        for row in 0..rows {
            if !clients.get(client[row] as usize).copied().unwrap_or(false) {
                continue;
            }
            let thread = (client[row], tid[row]);
            let Some(queries) = threads.get(&thread) else {
                continue;
            };
            let kept = funcs_kept.of(func[row], criteria.keeps_func(None))
                && runs_kept.of(run_ids[row], criteria.keeps_run(None))
                && criteria.keeps_pid(some(pid[row]))
                && criteria.keeps_start(some(start[row]))
                && criteria.keeps_rv(some(rv[row]));
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

/// Reads `files` (decoded in parallel) into one tally of the calls the filters keep, and with
/// `listing` (most calls, 0 = all) the candidates for the `operations` list.
pub fn read(files: &[PathBuf], criteria: &Criteria, listing: Option<usize>) -> Result<Calls> {
    let shared = Shared::default();
    let results = p11trace_dataset::parallel::par_map(files, |path| {
        fold_file(path, criteria, &shared, listing)
    });
    let mut tally = Tally::default();
    for result in results {
        tally.absorb(result?);
    }
    let retried = retries(files, criteria, &shared, &mut tally)?;
    Ok(Calls {
        tally,
        retried,
        names: Dictionaries {
            clients: into_names(shared.clients),
            funcs: into_names(shared.funcs),
            rv_names: into_names(shared.rv_names),
            providers: into_names(shared.providers),
            processes: into_names(shared.processes),
            mechanisms: into_names(shared.mechanisms),
        },
    })
}

/// Counts, on each size query's cell, the size queries that the next call of their thread
/// retried (`expected::is_retry`).
fn retries(
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

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
