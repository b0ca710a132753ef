//! The calls folded into a [`Calls`] tally straight from their Parquet files (`crate::direct`):
//! files decoded in parallel, the filters evaluated as rows are read, one hash lookup per call;
//! the size queries' successors proven where the read meets them (`successors`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

use super::expected::CKR_BUFFER_TOO_SMALL;
use super::interned::Shared;
use super::listing::{Listing, Operation};
use super::sessions::LIFECYCLE;
use super::successors::{Awaited, retries};
use super::tally::{Calls, Dictionaries, Key, Life, SizeQuery, Tally, exact};
use crate::direct::columns::{bools, ints};
use crate::direct::names::{NONE, NULL, Names};
use crate::direct::{Mapper, Projected, Verdicts, into_names};
use crate::filters::{Criteria, RowFilter};

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

/// The per-id verdicts of one file's read (beside the filters').
#[derive(Default)]
struct Tests {
    /// The lifecycle function an id is, by its place in `LIFECYCLE`.
    lifecycle: Verdicts<Option<u8>>,
    too_small: Verdicts,
}

fn fold_file(
    path: &Path,
    criteria: &Criteria,
    shared: &Shared,
    listing: Option<usize>,
) -> Result<Tally> {
    let mut filter = RowFilter::new(criteria);
    let mut columns = COLUMNS;
    columns[14] = filter.run_column();
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
        filter.update(&shared.funcs, &run_names);
        tests.lifecycle.update(&shared.funcs, |f| {
            LIFECYCLE.iter().position(|l| *l == f).map(|p| p as u8)
        });
        tests
            .too_small
            .update(&shared.rv_names, |r| r == "CKR_BUFFER_TOO_SMALL");
        let [client, func, rv_name, provider, process] = &strs;
        let [pid, tid, seq, start, dur, rv, slot, session] = &numbers;
        for row in 0..rows {
            if !filter.keeps(func[row], run_ids[row], pid[row], start[row], rv[row]) {
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
            if let Some(kind) = tests.lifecycle.of(key.func, None) {
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

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
