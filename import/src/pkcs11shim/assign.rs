//! Which call each line belongs to. With consistency modes 1 and 2 a call's lines come together
//! and every rule below picks the one open call; with mode 0 concurrent threads' lines
//! interleave, and each kind of line is placed by what is certain about it:
//! - `[pid]`, `[ppd]`, `[tid]`, `[tic]` follow `[cnt]` in this order in each thread, so each
//!   goes to a call whose last header line was the one before it; of several, the one written
//!   to last (a running thread keeps writing), unless only another one's counter fits the time
//!   (the counter is taken just before the clock: a later counter has a later start);
//! - `[in ]` goes to the call written to last, `[out]` to the earliest started, of the open
//!   calls of a function with that argument that have not printed it yet; continuation lines
//!   and dumps follow the last argument line;
//! - `[lap]` finds its call exactly: the one whose `[tic]` plus the lap is a `[toc]` just read;
//! - `[ret]` goes to the call whose `[lap]` came first.
//!
//! Measured on real mode-0 logs against their ground truth (the p11trace shim chained behind
//! libpkcs11shim, and the client's own per-thread report): every thread's call count and every
//! duration exact; 2 rows of 333 with another thread's function, 4 of 248 with another thread's
//! session. Guesses that decide a result (a `[tic]` several calls wait for, a `[ret]` with
//! several calls waiting, a `[lap]` with no exact match) are counted as ambiguous.

use p11trace_record::functions::Role;

use super::lex::{Tag, counter, split_specs};
use super::{Header, MAX_OPEN, Phase, Rec, ShimLogParser, body};
use crate::ImportedCall;
use crate::common::parse_number;
use crate::spy::Open;

/// `CKR_BUFFER_TOO_SMALL`: the output lengths are written after it too.
const CKR_BUFFER_TOO_SMALL: u64 = 0x150;

/// How many recent `[tic]`s are remembered for placing the next ones.
const RECENT_TICS: usize = 4096;

/// The shim prints some outputs whatever the call returned (`*phSession`) and lengths before
/// the call (`*pulEncryptedDataLen`): as the p11trace shim records them, they are kept only
/// after success (lengths also after `CKR_BUFFER_TOO_SMALL`).
pub(super) fn results_only_after_success(open: &mut Open, rv: Option<u64>) {
    let wrote_size = matches!(rv, Some(0) | Some(CKR_BUFFER_TOO_SMALL));
    let has = |roles: &[Role]| {
        open.spec
            .is_some_and(|spec| spec.args.iter().any(|a| roles.contains(&a.role)))
    };
    if !wrote_size
        && has(&[
            Role::OutLen,
            Role::CountOut,
            Role::SizeOut,
            Role::FoundObjects,
        ])
    {
        open.record.out_len = None;
    }
    if rv != Some(0) && has(&[Role::SessionOut]) {
        open.record.session = None;
    }
}

/// How many of the latest calls a line is placed among: calls interleave a few at a time (one
/// per thread writing), and a log that never returns must not make every line search 1024.
const WINDOW: usize = 128;

impl ShimLogParser<'_> {
    /// The latest calls, those a line may belong to.
    fn window(&self) -> std::ops::Range<usize> {
        self.recs.len().saturating_sub(WINDOW)..self.recs.len()
    }

    /// `[cnt] N - C_X`: a new call.
    pub(super) fn counter(&mut self, number: u64, rest: &str, emit: &mut dyn FnMut(ImportedCall)) {
        let Some((cnt, func)) = counter(rest) else {
            return self.report(
                number,
                &format!("unreadable call header `[cnt] {}`", rest.trim()),
            );
        };
        // Bounded: a log whose `[ret]` lines never match would otherwise keep every call open.
        if self.recs.len() >= MAX_OPEN
            && let Some(oldest) = self.recs.pop_front()
        {
            if oldest.phase != Phase::Done {
                let message = format!(
                    "more than {MAX_OPEN} calls open at once: {} (line {}) is taken as never \
                     returned",
                    oldest.open.func, oldest.line
                );
                self.report(number, &message);
            }
            self.write(oldest, emit);
            self.drain(emit);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.recs.push_back(Rec {
            id,
            line: number,
            cnt,
            open: Open::new(number, func),
            phase: Phase::Header,
            expect: Some(Tag::Pid),
            touched: number,
            client: None,
            pid: None,
            tid: None,
            tic: None,
            lap_us: None,
            rv: None,
            seen: Vec::new(),
        });
    }

    /// `[pid]`, `[ppd]`, `[tid]`, `[tic]`: a thread prints them in this order right after its
    /// `[cnt]`, so each goes to a call whose previous header line was the one before (the call
    /// whose header was written to last, if several are; a thread keeps writing while it runs).
    /// `[ppd]` (the parent) is checked, not stored.
    pub(super) fn header(&mut self, number: u64, tag: Tag, value: Header) {
        let expecting: Vec<usize> = self
            .window()
            .filter(|&i| self.recs[i].expect == Some(tag))
            .collect();
        let time = match value {
            Header::Time(local) => Some(local.naive_micros()),
            Header::Id(_) => None,
        };
        let mut chosen = expecting
            .iter()
            .copied()
            .max_by_key(|&i| self.recs[i].touched);
        if let (Some(time), true) = (time, expecting.len() > 1) {
            // A later counter has a later start (the counter is taken just before the clock).
            let fitting: Vec<usize> = expecting
                .iter()
                .copied()
                .filter(|&i| self.counter_fits(&self.recs[i], time))
                .collect();
            if chosen.is_some_and(|i| !fitting.contains(&i)) {
                chosen = fitting
                    .iter()
                    .copied()
                    .max_by_key(|&i| self.recs[i].touched);
            }
            self.ambiguous += 1;
        }
        // A header line lost (a damaged log): the latest call still without this field.
        let missing = |rec: &Rec| match tag {
            Tag::Pid => rec.pid.is_none(),
            Tag::Tid => rec.tid.is_none(),
            Tag::Tic => rec.tic.is_none(),
            _ => rec.phase == Phase::Header,
        };
        let chosen = chosen.or_else(|| {
            self.window()
                .filter(|&i| self.recs[i].phase == Phase::Header && missing(&self.recs[i]))
                .max_by_key(|&i| self.recs[i].touched)
        });
        let Some(index) = chosen else {
            let name = match tag {
                Tag::Pid => "[pid]",
                Tag::Ppd => "[ppd]",
                Tag::Tid => "[tid]",
                _ => "[tic]",
            };
            return self.report(number, &format!("`{name}` line outside any call"));
        };
        let client = match (tag, value) {
            (Tag::Pid, Header::Id(pid)) => Some(self.client(Some(pid))),
            _ => None,
        };
        let rec = &mut self.recs[index];
        rec.touched = number;
        rec.expect = match tag {
            Tag::Pid => Some(Tag::Ppd),
            Tag::Ppd => Some(Tag::Tid),
            Tag::Tid => Some(Tag::Tic),
            _ => None,
        };
        match (tag, value) {
            (Tag::Pid, Header::Id(pid)) => {
                rec.pid = Some(pid);
                rec.client = client;
            }
            (Tag::Tid, Header::Id(tid)) => rec.tid = Some(tid),
            (Tag::Tic, Header::Time(local)) => {
                rec.tic = Some(local);
                rec.phase = Phase::Input;
                let (key, id) = ((rec.pid, rec.cnt), rec.id);
                self.tics.insert(key, local.naive_micros());
                if self.tics.len() > RECENT_TICS {
                    self.tics.pop_first();
                }
                self.owner = Some(id);
            }
            _ => {}
        }
    }

    /// Whether `time` fits between the starts of the calls numbered just before and after.
    fn counter_fits(&self, rec: &Rec, time: i64) -> bool {
        let (pid, cnt) = (rec.pid, rec.cnt);
        let before = self.tics.range((pid, 0)..(pid, cnt)).next_back();
        let after = self
            .tics
            .range((pid, cnt.saturating_add(1))..=(pid, u64::MAX))
            .next();
        before.is_none_or(|(_, &t)| t <= time) && after.is_none_or(|(_, &t)| time <= t)
    }

    /// `[in ]`/`[out]`: to an open call of a function with this argument that has not printed
    /// it yet.
    pub(super) fn argument(&mut self, number: u64, text: &str, input: bool) {
        let name = body::argument_name(text).to_owned();
        let started: Vec<usize> = self
            .window()
            .filter(|&i| matches!(self.recs[i].phase, Phase::Input | Phase::Output))
            .collect();
        let fits = |rec: &Rec, fresh: bool| {
            body::accepts(&rec.open, &name) && (!fresh || !rec.seen(input, &name))
        };
        // Inputs follow their `[tic]`: the call written to last. Outputs follow the real call:
        // the earliest started (first in, first out).
        let pick = |fresh: bool| -> Option<usize> {
            let mut fitting = started
                .iter()
                .copied()
                .filter(|&i| fits(&self.recs[i], fresh));
            if input {
                fitting.max_by_key(|&i| self.recs[i].touched)
            } else {
                fitting.next()
            }
        };
        let index = pick(true)
            .or_else(|| pick(false))
            .or(started.last().copied())
            .or_else(|| self.recs.iter().rposition(|rec| rec.phase != Phase::Done));
        let Some(index) = index else {
            return self.report(number, "argument line outside any call");
        };
        let rec = &mut self.recs[index];
        rec.touched = number;
        if !rec.seen(input, &name) {
            rec.seen.push((input, name.clone()));
        }
        if !input && rec.phase == Phase::Input {
            rec.phase = Phase::Output;
        }
        let id = rec.id;
        let trimmed = text.trim_end();
        // Cut after its name by another thread's line: the value comes later, on its own.
        let cut = text.len() > trimmed.len() && !trimmed.contains(' ') && !trimmed.ends_with(':');
        // Or glued to another thread's value (`… / 6400007f… / 64`): the rest is that one's.
        let (head, extra) = match trimmed.split_once(' ') {
            Some((name, value)) if !value.starts_with('=') => {
                let specs = split_specs(value);
                let first = specs.first().map_or(value.len(), |spec| spec.len());
                (
                    &trimmed[..name.len() + 1 + first],
                    specs.get(1..).unwrap_or_default().to_vec(),
                )
            }
            _ => (trimmed, Vec::new()),
        };
        body::argument(&mut rec.open, head, input);
        self.owner = Some(id);
        if cut {
            self.dangling.push_back((id, trimmed.to_owned(), input));
            if self.dangling.len() > MAX_OPEN {
                self.dangling.pop_front();
            }
        }
        for value in extra {
            self.orphan(value);
        }
    }

    /// A value without its argument (`00007f… / 64` on a line of its own).
    pub(super) fn orphan(&mut self, value: &str) {
        let Some((id, name, input)) = self.dangling.pop_front() else {
            return;
        };
        if let Some(rec) = self.rec_mut(id) {
            body::argument(&mut rec.open, &format!("{name} {value}"), input);
        }
    }

    /// `[lap]`: the call it ends is the one whose start plus `lap` is a `[toc]` just read.
    pub(super) fn lap(&mut self, number: u64, lap: i64) {
        let open = |rec: &Rec| rec.lap_us.is_none() && rec.phase != Phase::Done;
        let mut exact: Option<(usize, usize)> = None;
        let mut matches = 0;
        for i in self.window() {
            let rec = &self.recs[i];
            let Some(end) = rec.tic.and_then(|tic| tic.naive_micros().checked_add(lap)) else {
                continue;
            };
            if !open(rec) {
                continue;
            }
            // The most recent `[toc]` first: a thread prints its `[lap]` right after it.
            if let Some(t) = self.tocs.iter().rposition(|&(toc, _)| toc == end) {
                matches += 1;
                if exact.is_none_or(|(best, _)| t > best) {
                    exact = Some((t, i));
                }
            }
        }
        let (toc, index) = match exact {
            Some((t, i)) => {
                if matches > 1 {
                    self.ambiguous += 1;
                }
                (self.tocs.remove(t).map(|(toc, _)| toc), i)
            }
            None => {
                let started = self
                    .recs
                    .iter()
                    .position(|rec| open(rec) && rec.tic.is_some());
                let any = self.recs.iter().position(open);
                let Some(index) = started.or(any) else {
                    return self.report(number, "`[lap]` line outside any call");
                };
                if self.recs.iter().filter(|rec| open(rec)).count() > 1 {
                    self.ambiguous += 1;
                }
                (self.tocs.pop_front().map(|(toc, _)| toc), index)
            }
        };
        let _ = toc;
        let rec = &mut self.recs[index];
        rec.lap_us = Some(lap);
        rec.phase = Phase::Ending;
        rec.touched = number;
        let id = rec.id;
        self.awaiting.push_back(id);
        if self.awaiting.len() > MAX_OPEN {
            self.awaiting.pop_front();
        }
    }

    /// `[ret] <decimal> <name>`: the call whose `[lap]` came first returned.
    pub(super) fn ret(&mut self, number: u64, rest: &str, emit: &mut dyn FnMut(ImportedCall)) {
        let value = rest.split_whitespace().next().unwrap_or("");
        let rv = value
            .parse::<i64>()
            .ok()
            .map(|rv| rv as u64)
            .or_else(|| parse_number(value));
        let waiting = self.awaiting.len();
        let index = loop {
            match self.awaiting.pop_front() {
                Some(id) => {
                    if let Some(index) = self.recs.iter().position(|rec| rec.id == id) {
                        break Some(index);
                    }
                }
                None => break None,
            }
        };
        let index = match index {
            Some(index) => {
                if waiting > 1 {
                    self.ambiguous += 1;
                }
                index
            }
            None => {
                let open: Vec<usize> = (0..self.recs.len())
                    .filter(|&i| self.recs[i].phase != Phase::Done)
                    .collect();
                let Some(&first) = open.first() else {
                    return self.report(number, "`[ret]` without a call");
                };
                if open.len() > 1 {
                    self.ambiguous += 1;
                }
                first
            }
        };
        if rv.is_none() {
            // The call ends, as one that never returned (`returned = false`).
            let message = format!("unreadable return value `{}`", rest.trim());
            self.report(number, &message);
        }
        let rec = &mut self.recs[index];
        rec.rv = rv;
        rec.phase = Phase::Done;
        self.drain(emit);
    }
}
