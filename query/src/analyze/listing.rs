//! The JSON `operations` list — the first `max` calls in call order (start, then client, then
//! `seq`; unknown starts last) — kept while the files are read: each file keeps the calls that
//! start no later than its `max`-th earliest start so far (ties kept), so listing 100,000 calls
//! of 10 M holds about 100,000 per file, not 10 M (polars collected and sorted all of them:
//! 4 GiB at 10 M calls).

use std::collections::BinaryHeap;

use serde_json::{Map, Value};

use super::render::timestamp;
use super::tally::Calls;
use crate::direct::names::NULL;

/// One listed call, its strings as interned ids.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    pub start: i64,
    pub client: u32,
    pub seq: i64,
    pub pid: i64,
    pub tid: i64,
    pub func: u32,
    pub rv: i64,
    pub rv_name: u32,
    pub dur_ns: i64,
    pub slot: i64,
    pub session: i64,
    pub mechanism: u32,
    pub object: i64,
    pub internal: bool,
    pub returned: bool,
}

/// Unknown starts sort last.
fn start_key(start: i64) -> i64 {
    if start == NULL { i64::MAX } else { start }
}

/// One file's candidates.
#[derive(Debug, Default)]
pub struct Listing {
    /// Most calls listed; 0 = all.
    max: usize,
    /// The `max` earliest starts seen (a max-heap: its top is the latest of them).
    starts: BinaryHeap<i64>,
    pub kept: Vec<Operation>,
}

impl Listing {
    pub fn new(max: usize) -> Listing {
        Listing {
            max,
            ..Listing::default()
        }
    }

    #[inline]
    pub fn offer(&mut self, operation: Operation) {
        let start = start_key(operation.start);
        if self.max == 0 {
            self.kept.push(operation);
            return;
        }
        if self.starts.len() < self.max {
            self.starts.push(start);
        } else if let Some(mut latest) = self.starts.peek_mut()
            && start <= *latest
        {
            if start < *latest {
                *latest = start;
            }
        } else {
            return;
        }
        self.kept.push(operation);
        // Calls overtaken by earlier ones go, now and then (amortised: never more than twice
        // `max` plus the ties kept).
        if self.kept.len() >= 2 * self.max
            && let Some(&latest) = self.starts.peek()
        {
            self.kept.retain(|o| start_key(o.start) <= latest);
        }
    }
}

/// The first `max` (0: all) of the files' candidates in call order, as JSON objects, and whether
/// fewer than `total` calls are listed.
pub fn render(calls: &Calls, files: Vec<Listing>, max: usize, total: u64) -> (Vec<Value>, bool) {
    let client = |id: u32| calls.client(id).unwrap_or_default();
    let mut all: Vec<Operation> = files.into_iter().flat_map(|file| file.kept).collect();
    let last = |v: i64| (v == NULL, v);
    all.sort_by(|a, b| {
        (start_key(a.start), client(a.client), last(a.seq)).cmp(&(
            start_key(b.start),
            client(b.client),
            last(b.seq),
        ))
    });
    if max > 0 {
        all.truncate(max);
    }
    let int = |v: i64| if v == NULL { Value::Null } else { v.into() };
    let text = |name: Option<&str>| name.map_or(Value::Null, Into::into);
    let listed: Vec<Value> = all
        .iter()
        .map(|o| {
            let func = calls.func(o.func);
            let expected = o.returned && calls.is_expected(o.client, o.seq, func, o.rv);
            let mut object = Map::new();
            object.insert("client_id".into(), text(calls.client(o.client)));
            object.insert("pid".into(), int(o.pid));
            object.insert("tid".into(), int(o.tid));
            object.insert("seq".into(), int(o.seq));
            let start = (o.start != NULL).then(|| timestamp(o.start));
            object.insert("start".into(), start.map_or(Value::Null, Into::into));
            object.insert("func".into(), text(func));
            object.insert("rv".into(), int(o.rv));
            object.insert("rv_name".into(), text(calls.rv_name(o.rv_name)));
            object.insert("dur_ns".into(), int(o.dur_ns));
            let dur_ms = (o.dur_ns != NULL).then(|| o.dur_ns as f64 / 1_000_000.0);
            object.insert("dur_ms".into(), dur_ms.map_or(Value::Null, Into::into));
            object.insert("slot_id".into(), int(o.slot));
            object.insert("session".into(), int(o.session));
            object.insert("mechanism".into(), text(calls.mechanism(o.mechanism)));
            object.insert("object".into(), int(o.object));
            object.insert("internal".into(), o.internal.into());
            object.insert("returned".into(), o.returned.into());
            object.insert("expected".into(), expected.into());
            Value::Object(object)
        })
        .collect();
    let truncated = (listed.len() as u64) < total;
    (listed, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct::names::NONE;

    fn at(start: i64, seq: i64) -> Operation {
        Operation {
            start,
            client: 0,
            seq,
            pid: NULL,
            tid: NULL,
            func: NONE,
            rv: 0,
            rv_name: NONE,
            dur_ns: NULL,
            slot: NULL,
            session: NULL,
            mechanism: NONE,
            object: NULL,
            internal: false,
            returned: true,
        }
    }

    #[test]
    fn a_file_keeps_its_earliest_calls_and_their_ties_whatever_the_order() {
        let mut listing = Listing::new(3);
        // Starts 9, 8, …, 0 (latest first), an unknown start, and a tie at the boundary.
        for (seq, start) in (0..10).rev().chain([NULL, 2]).enumerate() {
            listing.offer(at(start, seq as i64));
        }
        let mut starts: Vec<i64> = listing
            .kept
            .iter()
            .map(|o| o.start)
            .filter(|&s| s <= 2)
            .collect();
        starts.sort_unstable();
        assert_eq!(starts, [0, 1, 2, 2], "the three earliest and the tie");
        assert!(
            listing.kept.len() <= 2 * 3 + 1,
            "{} kept",
            listing.kept.len()
        );
    }
}
