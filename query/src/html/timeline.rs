//! The session timeline's data: one lane per process and thread (the busiest [`MAX_LANES`]),
//! sessions as bars from open to close, calls as marks by phase (open, login, operation, close,
//! failed), thinned to what a page can draw.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use polars::prelude::*;

use super::data::{MAX_LANES, MAX_MARKS, PIXELS, bounds, process_label};
use crate::Explain;
use crate::analyze::expected;

/// Where a call stands in a session's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Open,
    Login,
    Operation,
    Close,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Open,
        Phase::Login,
        Phase::Operation,
        Phase::Close,
        Phase::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Phase::Open => "open",
            Phase::Login => "login / logout",
            Phase::Operation => "operation",
            Phase::Close => "close / finalize",
            Phase::Failed => "failed call",
        }
    }

    fn of(func: &str, ok: bool) -> Phase {
        match func {
            _ if !ok => Phase::Failed,
            "C_OpenSession" => Phase::Open,
            "C_Login" | "C_LoginUser" | "C_Logout" => Phase::Login,
            "C_CloseSession" | "C_CloseAllSessions" | "C_Finalize" => Phase::Close,
            _ => Phase::Operation,
        }
    }
}

/// A session drawn as a bar, from its `C_OpenSession` to its close (or the end of the data).
#[derive(Debug, Clone)]
pub struct SessionBar {
    pub lane: usize,
    pub from_s: f64,
    pub to_s: f64,
    pub closed: bool,
}

#[derive(Debug, Clone)]
pub struct Mark {
    pub lane: usize,
    pub at_s: f64,
    pub phase: Phase,
}

#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// `process pid/tid` of each lane.
    pub lanes: Vec<String>,
    pub hidden_lanes: usize,
    pub bars: Vec<SessionBar>,
    pub marks: Vec<Mark>,
    /// Calls with a session or a lifecycle role not drawn (over [`MAX_MARKS`]).
    pub hidden_marks: usize,
    /// Seconds from the first call to the last.
    pub span_s: f64,
}

/// A thread: (pid, tid).
type Thread = (Option<i64>, Option<i64>);

pub(super) fn timeline(calls: LazyFrame) -> Result<Timeline> {
    let frame = calls
        .filter(col("start_us").is_not_null())
        .select([
            col("client_id"),
            col("pid"),
            col("tid"),
            col("process"),
            col("start_us"),
            col("func"),
            col("rv"),
            col("session"),
            col(expected::EXPECTED),
        ])
        .sort(
            ["start_us", "client_id"],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .collect()
        .explain("cannot read the session calls")?;
    let Some((first, last)) = bounds(&frame)? else {
        return Ok(Timeline::default());
    };
    let seconds = |us: i64| us.saturating_sub(first) as f64 / 1e6;
    let column = |name: &str| frame.column(name).explain(name);
    let clients = column("client_id")?.str().explain("client_id")?;
    let pids = column("pid")?.i64().explain("pid")?;
    let tids = column("tid")?.i64().explain("tid")?;
    let names = column("process")?.str().explain("process")?;
    let starts = column("start_us")?.i64().explain("start")?;
    let funcs = column("func")?.str().explain("func")?;
    let rvs = column("rv")?.i64().explain("rv")?;
    let sessions = column("session")?.i64().explain("session")?;
    let expecteds = column(expected::EXPECTED)?
        .bool()
        .explain(expected::EXPECTED)?;

    // Lanes: threads, the busiest MAX_LANES, in order of their first call.
    // (pid, tid) → (first row, calls, process name)
    let mut threads: HashMap<Thread, (usize, u64, Option<&str>)> = HashMap::new();
    for (row, ((pid, tid), name)) in pids.iter().zip(tids.iter()).zip(names.iter()).enumerate() {
        let entry = threads.entry((pid, tid)).or_insert((row, 0, name));
        entry.1 += 1;
    }
    let mut busiest: Vec<_> = threads.iter().collect();
    busiest.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.1.0.cmp(&b.1.0)));
    let hidden_lanes = busiest.len().saturating_sub(MAX_LANES);
    busiest.truncate(MAX_LANES);
    busiest.sort_by_key(|(_, (first_row, _, _))| *first_row);
    let mut lane_of = HashMap::new();
    let mut lanes = Vec::new();
    for (index, ((pid, tid), (_, _, name))) in busiest.into_iter().enumerate() {
        lane_of.insert((*pid, *tid), index);
        let thread = tid.map_or_else(|| "?".to_owned(), |t| t.to_string());
        lanes.push(format!("{} / {thread}", process_label(*name, *pid)));
    }

    let mut timeline = Timeline {
        lanes,
        hidden_lanes,
        span_s: seconds(last).max(1e-6),
        ..Timeline::default()
    };
    // Open sessions: (client, session) → (lane, opened at).
    let mut open: HashMap<(&str, i64), (usize, f64)> = HashMap::new();
    let mut lifecycle = Vec::new();
    let mut operations = Vec::new();
    let rows = clients
        .iter()
        .zip(pids.iter().zip(tids.iter()))
        .zip(starts.iter().zip(funcs.iter()))
        .zip(rvs.iter().zip(sessions.iter()).zip(expecteds.iter()));
    for (((client, (pid, tid)), (start, func)), ((rv, session), expected)) in rows {
        let (Some(start), Some(func), Some(client)) = (start, func, client) else {
            continue;
        };
        let at = seconds(start);
        let ok = rv == Some(0);
        let lane = lane_of.get(&(pid, tid)).copied();
        match func {
            "C_OpenSession" if ok => {
                if let (Some(session), Some(lane)) = (session, lane) {
                    open.insert((client, session), (lane, at));
                }
            }
            "C_CloseSession" if ok => {
                if let Some((lane, from)) = session.and_then(|s| open.remove(&(client, s))) {
                    timeline.bars.push(SessionBar {
                        lane,
                        from_s: from,
                        to_s: at,
                        closed: true,
                    });
                }
            }
            "C_CloseAllSessions" | "C_Finalize" if ok => {
                let ended: Vec<_> = open.keys().filter(|(c, _)| *c == client).copied().collect();
                for key in ended {
                    if let Some((lane, from)) = open.remove(&key) {
                        timeline.bars.push(SessionBar {
                            lane,
                            from_s: from,
                            to_s: at,
                            closed: true,
                        });
                    }
                }
            }
            _ => {}
        }
        let Some(lane) = lane else { continue };
        // A real failure only: an expected idiom (an attribute probe, a retried size query) is
        // drawn as the call it is, as analyze and the Errors table count it.
        let failed = matches!(rv, Some(code) if code != 0) && expected != Some(true);
        let phase = Phase::of(func, !failed);
        let mark = Mark {
            lane,
            at_s: at,
            phase,
        };
        if phase == Phase::Operation {
            if session.is_some() {
                operations.push(mark);
            }
        } else {
            lifecycle.push(mark);
        }
    }
    for ((_, _), (lane, from)) in open {
        timeline.bars.push(SessionBar {
            lane,
            from_s: from,
            to_s: timeline.span_s,
            closed: false,
        });
    }
    let pixel = timeline.span_s / PIXELS;
    timeline.bars = merge_bars(std::mem::take(&mut timeline.bars), pixel);
    // Marks of one phase on one lane within a pixel of each other are drawn as one.
    let mut seen = HashSet::new();
    let mut distinct = |m: &Mark| seen.insert((m.lane, m.phase, (m.at_s / pixel) as u64));
    lifecycle.retain(&mut distinct);
    operations.retain(&mut distinct);
    let total = lifecycle.len() + operations.len();
    // Over the budget, each kind keeps every k-th mark (so the marks still cover the whole span),
    // operations at least half the budget when they need it.
    let room = MAX_MARKS.saturating_sub(operations.len().min(MAX_MARKS / 2));
    let mut lifecycle = every_kth(lifecycle, room);
    let mut operations = every_kth(operations, MAX_MARKS - lifecycle.len());
    timeline.marks.append(&mut lifecycle);
    timeline.marks.append(&mut operations);
    timeline.hidden_marks = total - timeline.marks.len();
    Ok(timeline)
}

/// At most `room` of `marks`: every k-th when there are more.
fn every_kth(marks: Vec<Mark>, room: usize) -> Vec<Mark> {
    if marks.len() <= room {
        return marks;
    }
    let step = marks.len().div_ceil(room.max(1));
    marks.into_iter().step_by(step).take(room).collect()
}

/// Bars of one lane that touch or overlap (within `pixel` seconds) as one bar: a thread that
/// opens and closes thousands of sessions is a band, not thousands of shapes.
fn merge_bars(mut bars: Vec<SessionBar>, pixel: f64) -> Vec<SessionBar> {
    bars.sort_by(|a, b| {
        (a.lane, a.closed)
            .cmp(&(b.lane, b.closed))
            .then(a.from_s.total_cmp(&b.from_s))
    });
    let mut merged: Vec<SessionBar> = Vec::with_capacity(bars.len());
    for bar in bars {
        match merged.last_mut() {
            Some(last)
                if last.lane == bar.lane
                    && last.closed == bar.closed
                    && bar.from_s <= last.to_s + pixel =>
            {
                last.to_s = last.to_s.max(bar.to_s);
            }
            _ => merged.push(bar),
        }
    }
    merged.sort_by(|a, b| a.from_s.total_cmp(&b.from_s));
    merged
}
