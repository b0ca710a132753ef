//! What the charts of the HTML report draw, computed from the `calls` table: per-function
//! latency quantiles (polars, the same linear quantiles as `analyze`), calls over time per
//! process, the session timeline per thread, and the non-OK return codes per function. The
//! summary tables come from `analyze::Report` itself.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use polars::prelude::*;

use crate::Explain;
use crate::analyze::{expected, not_ok};

/// Buckets of the calls-over-time chart.
pub const BUCKETS: usize = 60;
/// Threads drawn in the session timeline (the busiest; the rest are counted).
pub const MAX_LANES: usize = 24;
/// Calls drawn as marks in the timeline (sessions' opening, login and closing calls first).
pub const MAX_MARKS: usize = 4000;
/// Resolution of the timeline: marks and bars closer than its span / this are drawn as one.
const PIXELS: f64 = 1000.0;
/// Processes drawn in the calls-over-time chart (the busiest; the rest are summed as one).
pub const MAX_PROCESSES: usize = 8;

/// One function's latency distribution, in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    pub func: String,
    pub timed: u64,
    pub min: f64,
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
    pub p95: f64,
    pub max: f64,
}

/// Calls per bucket of one process.
#[derive(Debug, Clone)]
pub struct ProcessSeries {
    pub label: String,
    pub counts: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct OverTime {
    /// Width of a bucket, in seconds.
    pub bucket_s: f64,
    pub series: Vec<ProcessSeries>,
}

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

/// One non-OK return code of one function.
#[derive(Debug, Clone)]
pub struct ErrorRow {
    pub func: String,
    pub rv: Option<i64>,
    pub rv_name: Option<String>,
    /// One of the protocol's idioms (`analyze`'s rule, schemas/analysis.md), not a failure.
    pub expected: bool,
    pub count: u64,
}

pub struct ChartData {
    pub latency: Vec<Latency>,
    pub over_time: OverTime,
    pub timeline: Timeline,
    pub errors: Vec<ErrorRow>,
}

const COLUMNS: &[&str] = &[
    "client_id",
    "pid",
    "tid",
    "process",
    "start",
    "seq",
    "func",
    "rv",
    "rv_name",
    "session",
    "dur_ns",
    "returned",
];

pub fn compute(calls: LazyFrame) -> Result<ChartData> {
    let calls = calls
        .select(COLUMNS.iter().map(|c| col(*c)).collect::<Vec<_>>())
        .with_column(col("start").cast(DataType::Int64).alias("start_us"))
        .collect()
        .explain("cannot read the calls")?;
    let calls = expected::mark(calls)
        .explain("cannot classify the return codes")?
        .lazy();
    Ok(ChartData {
        latency: latency(calls.clone())?,
        over_time: over_time(calls.clone())?,
        timeline: timeline(calls.clone())?,
        errors: errors(calls)?,
    })
}

fn f64_at(frame: &DataFrame, column: &str, row: usize) -> Option<f64> {
    frame.column(column).ok()?.get(row).ok()?.extract::<f64>()
}

fn i64_at(frame: &DataFrame, column: &str, row: usize) -> Option<i64> {
    frame.column(column).ok()?.get(row).ok()?.extract::<i64>()
}

fn bool_at(frame: &DataFrame, column: &str, row: usize) -> bool {
    frame
        .column(column)
        .ok()
        .and_then(|c| c.get(row).ok())
        .is_some_and(|v| matches!(v, AnyValue::Boolean(true)))
}

fn str_at(frame: &DataFrame, column: &str, row: usize) -> Option<String> {
    match frame.column(column).ok()?.get(row).ok()? {
        AnyValue::Null => None,
        AnyValue::String(s) => Some(s.to_owned()),
        AnyValue::StringOwned(s) => Some(s.to_string()),
        other => Some(other.to_string()),
    }
}

fn latency(calls: LazyFrame) -> Result<Vec<Latency>> {
    let q = |p: f64, name: &str| {
        col("dur_ns")
            .cast(DataType::Float64)
            .quantile(lit(p), QuantileMethod::Linear)
            .alias(name)
    };
    let frame = calls
        .filter(col("dur_ns").is_not_null().and(col("returned")))
        .group_by([col("func")])
        .agg([
            len().alias("timed"),
            col("dur_ns").cast(DataType::Float64).min().alias("min"),
            q(0.25, "q1"),
            q(0.5, "median"),
            q(0.75, "q3"),
            q(0.95, "p95"),
            col("dur_ns").cast(DataType::Float64).max().alias("max"),
        ])
        .sort(
            ["median"],
            SortMultipleOptions::default()
                .with_order_descending(true)
                .with_maintain_order(true),
        )
        .collect()
        .explain("cannot compute latency distributions")?;
    let mut rows = Vec::with_capacity(frame.height());
    for row in 0..frame.height() {
        let value = |name: &str| f64_at(&frame, name, row).unwrap_or(0.0);
        rows.push(Latency {
            func: str_at(&frame, "func", row).unwrap_or_default(),
            timed: i64_at(&frame, "timed", row).unwrap_or(0).max(0) as u64,
            min: value("min"),
            q1: value("q1"),
            median: value("median"),
            q3: value("q3"),
            p95: value("p95"),
            max: value("max"),
        });
    }
    Ok(rows)
}

/// `process (pid)`, or what is known of it.
fn process_label(process: Option<&str>, pid: Option<i64>) -> String {
    match (process, pid) {
        (Some(name), Some(pid)) if !name.is_empty() => format!("{name} ({pid})"),
        (_, Some(pid)) => format!("pid {pid}"),
        (Some(name), None) => name.to_owned(),
        (None, None) => "(unknown process)".to_owned(),
    }
}

/// First and last start (µs) of the calls, when any has one.
fn bounds(frame: &DataFrame) -> Result<Option<(i64, i64)>> {
    let starts = frame
        .column("start_us")
        .explain("start")?
        .i64()
        .explain("start")?;
    Ok(starts.min().zip(starts.max()))
}

fn over_time(calls: LazyFrame) -> Result<OverTime> {
    let frame = calls
        .filter(col("start_us").is_not_null())
        .select([col("pid"), col("process"), col("start_us")])
        .collect()
        .explain("cannot read call times")?;
    let Some((first, last)) = bounds(&frame)? else {
        return Ok(OverTime::default());
    };
    let span = last.saturating_sub(first).max(1);
    let width = (span as f64 / BUCKETS as f64).max(1.0);
    let pids = frame.column("pid").explain("pid")?.i64().explain("pid")?;
    let names = frame
        .column("process")
        .explain("process")?
        .str()
        .explain("process")?;
    let starts = frame
        .column("start_us")
        .explain("start")?
        .i64()
        .explain("start")?;
    let mut by_process: HashMap<(Option<i64>, Option<&str>), Vec<u64>> = HashMap::new();
    for ((pid, name), start) in pids.iter().zip(names.iter()).zip(starts.iter()) {
        let Some(start) = start else { continue };
        let bucket = ((start.saturating_sub(first) as f64 / width) as usize).min(BUCKETS - 1);
        by_process
            .entry((pid, name))
            .or_insert_with(|| vec![0; BUCKETS])[bucket] += 1;
    }
    let mut series: Vec<ProcessSeries> = by_process
        .into_iter()
        .map(|((pid, name), counts)| ProcessSeries {
            label: process_label(name, pid),
            counts,
        })
        .collect();
    series.sort_by(|a, b| {
        let total = |s: &ProcessSeries| s.counts.iter().sum::<u64>();
        total(b).cmp(&total(a)).then_with(|| a.label.cmp(&b.label))
    });
    if series.len() > MAX_PROCESSES {
        let rest = series.split_off(MAX_PROCESSES - 1);
        let mut counts = vec![0; BUCKETS];
        for s in &rest {
            for (sum, n) in counts.iter_mut().zip(&s.counts) {
                *sum += n;
            }
        }
        series.push(ProcessSeries {
            label: format!("{} other processes", rest.len()),
            counts,
        });
    }
    Ok(OverTime {
        bucket_s: width / 1e6,
        series,
    })
}

/// A thread: (pid, tid).
type Thread = (Option<i64>, Option<i64>);

fn timeline(calls: LazyFrame) -> Result<Timeline> {
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
        .zip(rvs.iter().zip(sessions.iter()));
    for (((client, (pid, tid)), (start, func)), (rv, session)) in rows {
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
        let phase = Phase::of(func, !matches!(rv, Some(code) if code != 0));
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

fn errors(calls: LazyFrame) -> Result<Vec<ErrorRow>> {
    let frame = calls
        .filter(not_ok())
        .group_by([
            col("func"),
            col("rv"),
            col("rv_name"),
            col(expected::EXPECTED),
        ])
        .agg([len().alias("count")])
        .sort(
            ["count", "func"],
            SortMultipleOptions::default()
                .with_order_descending_multi([true, false])
                .with_maintain_order(true),
        )
        .collect()
        .explain("cannot compute the error table")?;
    Ok((0..frame.height())
        .map(|row| ErrorRow {
            func: str_at(&frame, "func", row).unwrap_or_default(),
            rv: i64_at(&frame, "rv", row),
            rv_name: str_at(&frame, "rv_name", row),
            expected: bool_at(&frame, expected::EXPECTED, row),
            count: i64_at(&frame, "count", row).unwrap_or(0).max(0) as u64,
        })
        .collect())
}
