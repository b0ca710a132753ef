//! Pairing: which open record each line belongs to, which client (segment and pid) and thread a
//! record came from, and which record a `Returned:` ends.
//!
//! The spy's `enter()` prints a record's header and then its stamp line, two separate writes:
//! other threads' lines may come between them, and the stamp may land after a partial line of
//! another record (split off by [`glued_marker`]). Everything else of a record (its `[in]` and
//! `[out]` lines, its `Returned:`) is printed by the same thread after its stamp. So:
//! - a stamp goes to the newest open record that has none yet (a thread that printed its header
//!   and was held up before its stamp is most often overtaken by whole header-and-stamp pairs of
//!   other threads; which waiting header is whose cannot be read from the log, so a stamp that
//!   had several candidates is counted in `ambiguous_stamps`);
//! - every other line goes only to records that already have their stamp (in a segment that
//!   prints stamps): input lines to the newest, output lines and `Returned:` to the oldest (first
//!   in, first out). A record is therefore never ended before its stamp arrives, and every stamp
//!   in the log finds its record.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use p11trace_record::params::MechParams;

use super::args::{argument_line, attribute_line, print_print_line, settle};
use super::info::{info_line, mechanism_info_line};
use super::inline::{MAX_ARGUMENTS_BYTES, depth_after, inline_header, named_line, read_arguments};
use super::lex::{glued_marker, header, hexdump, parse_number, stamp};
use super::{Open, Pending};
use crate::common::{info_attrs, info_provider};
use crate::{Clock, ImportedCall, LineParser, ParseTotals, Problems, SourceClient};

/// Per-segment state (one spy banner: one process, or a parent and its forked children).
#[derive(Default)]
struct Segment {
    index: u32,
    module: Option<String>,
    provider: Option<Arc<str>>,
    /// Clients by pid (`None` when the log prints no pids), each with its next `seq` (a client
    /// belongs to one segment: its id names the segment).
    clients: HashMap<Option<i64>, (Arc<SourceClient>, i64)>,
    /// Whether this segment has printed a stamp line (0.23+); then only stamped records take
    /// argument lines and `Returned:`.
    stamps: bool,
}

/// The most records open (called, not yet returned) at once: pkcs11-spy interleaves the calls
/// of concurrent threads, a handful at a time.
pub const MAX_OPEN: usize = 1024;

pub struct SpyParser<'a> {
    file: &'a str,
    clock: &'a mut Clock,
    problems: &'a mut Problems,
    segment: Segment,
    segments: u32,
    open: VecDeque<Open>,
    /// Guide form: a header whose argument list is still open (the record, the text so far,
    /// the bracket depth).
    arguments: Option<(Open, String, i64)>,
    pub ambiguous: u64,
    pub ambiguous_stamps: u64,
    pub unreturned: u64,
    pub unstamped: u64,
    pub processes: u64,
}

impl<'a> SpyParser<'a> {
    pub fn new(file: &'a str, clock: &'a mut Clock, problems: &'a mut Problems) -> SpyParser<'a> {
        SpyParser {
            file,
            clock,
            problems,
            segment: Segment::default(),
            segments: 0,
            open: VecDeque::new(),
            arguments: None,
            ambiguous: 0,
            ambiguous_stamps: 0,
            unreturned: 0,
            unstamped: 0,
            processes: 0,
        }
    }

    /// Feeds one physical line (without its newline).
    pub fn feed(&mut self, number: u64, line: &str, emit: &mut impl FnMut(ImportedCall)) {
        let mut rest = line.trim_end_matches('\r');
        loop {
            // A hex dump has a fixed width: anything after it was glued on.
            if let Some((bytes, tail)) = hexdump(rest) {
                self.dump_bytes(bytes);
                if tail.is_empty() {
                    return;
                }
                rest = tail;
                continue;
            }
            match glued_marker(rest) {
                Some(at) => {
                    self.logical(number, &rest[..at], emit);
                    rest = &rest[at..];
                }
                None => {
                    self.logical(number, rest, emit);
                    return;
                }
            }
        }
    }

    /// Ends the input: records still open never returned. They are kept (`returned = false`);
    /// `--strict`, which wants a complete log, reports each.
    pub fn end(&mut self, emit: &mut impl FnMut(ImportedCall)) {
        self.close_arguments(None);
        while let Some(open) = self.open.pop_front() {
            if self.problems.strict {
                let message = format!(
                    "{} never returned: the log is truncated or the process crashed",
                    open.func
                );
                self.problems.report(self.file, open.line, &message);
            }
            self.unreturned += 1;
            self.emit(open, None, emit);
        }
    }

    /// Bounded: a log whose `Returned:` lines never match would otherwise hold every record
    /// open, and every continuation line would search them all.
    fn make_room(&mut self, number: u64, emit: &mut impl FnMut(ImportedCall)) {
        if self.open.len() >= MAX_OPEN
            && let Some(oldest) = self.open.pop_front()
        {
            let message = format!(
                "more than {MAX_OPEN} calls open at once: {} (line {}) is taken as never \
                 returned",
                oldest.func, oldest.line
            );
            self.problems.report(self.file, number, &message);
            self.unreturned += 1;
            self.emit(oldest, None, emit);
        }
    }

    /// Guide form: the argument list is complete (or, with `cut_at`, was cut off at that line);
    /// its record joins the open ones.
    fn close_arguments(&mut self, cut_at: Option<u64>) {
        let Some((mut open, text, _)) = self.arguments.take() else {
            return;
        };
        if let Some(line) = cut_at {
            let message = format!(
                "{}'s argument list (line {}) never closes; read as far as it goes",
                open.func, open.line
            );
            self.problems.report(self.file, line, &message);
        }
        if let Some(problem) = read_arguments(&mut open, &text) {
            self.problems.report(self.file, open.line, &problem);
        }
        self.open.push_back(open);
    }

    /// Where the newest record ready for lines is: one with its stamp, or any when the segment
    /// prints no stamps or none has one yet.
    fn newest_index(&self) -> Option<usize> {
        let stamps = self.segment.stamps;
        self.open
            .iter()
            .rposition(|open| open.stamp.is_some() || !stamps)
            .or_else(|| self.open.len().checked_sub(1))
    }

    /// Where the oldest record ready for lines is (as [`Self::newest_index`]).
    fn oldest_index(&self) -> Option<usize> {
        let stamps = self.segment.stamps;
        self.open
            .iter()
            .position(|open| open.stamp.is_some() || !stamps)
            .or_else(|| (!self.open.is_empty()).then_some(0))
    }

    fn newest(&mut self) -> Option<&mut Open> {
        let index = self.newest_index()?;
        self.open.get_mut(index)
    }

    fn oldest(&mut self) -> Option<&mut Open> {
        let index = self.oldest_index()?;
        self.open.get_mut(index)
    }

    /// Ends the record a `Returned:` belongs to (the oldest ready one), counting the guess when
    /// several were ready.
    fn take_returning(&mut self) -> Option<Open> {
        let stamps = self.segment.stamps;
        let ready = self
            .open
            .iter()
            .filter(|open| open.stamp.is_some() || !stamps)
            .count();
        if ready > 1 {
            self.ambiguous += 1;
        }
        let index = self.oldest_index()?;
        self.open.remove(index)
    }

    fn logical(&mut self, number: u64, line: &str, emit: &mut impl FnMut(ImportedCall)) {
        if line.is_empty() {
            return;
        }
        if let Some((_, text, depth)) = self.arguments.as_mut() {
            let ends_record = line.starts_with("Returned:  ")
                || header(line).is_some()
                || inline_header(line).is_some();
            if !ends_record {
                if text.len() + line.len() > MAX_ARGUMENTS_BYTES {
                    self.close_arguments(Some(number));
                } else {
                    text.push(' ');
                    text.push_str(line.trim());
                    *depth = depth_after(*depth, line);
                    if *depth <= 0 {
                        self.close_arguments(None);
                    }
                }
                return;
            }
            self.close_arguments(Some(number));
        }
        if line.starts_with("***") && line.contains("OpenSC PKCS#11 spy") {
            self.end(emit);
            self.segments += 1;
            self.segment = Segment {
                index: self.segments,
                ..Segment::default()
            };
            return;
        }
        if let Some(path) = line.strip_prefix("Loaded: \"") {
            self.segment.module = Some(path.trim_end().trim_end_matches('"').to_owned());
            return;
        }
        if let Some((_, func, arguments)) = inline_header(line) {
            self.make_room(number, emit);
            let mut open = Open::new(number, func);
            open.inline = true;
            let depth = depth_after(1, arguments);
            self.arguments = Some((open, arguments.to_owned(), depth));
            if depth <= 0 {
                self.close_arguments(None);
            }
            return;
        }
        if let Some((_, func)) = header(line) {
            self.make_room(number, emit);
            self.open.push_back(Open::new(number, func));
            return;
        }
        if let Some(stamp) = stamp(line) {
            self.segment.stamps = true;
            let waiting = self.open.iter().filter(|open| open.stamp.is_none()).count();
            if waiting > 1 {
                self.ambiguous_stamps += 1;
            }
            match self.open.iter_mut().rev().find(|open| open.stamp.is_none()) {
                Some(open) => open.stamp = Some(stamp),
                None => {
                    self.problems
                        .report(self.file, number, "timestamp line outside any record")
                }
            }
            return;
        }
        if let Some(result) = line.strip_prefix("Returned:  ") {
            let (rv, _) = result.split_once(' ').unwrap_or((result, ""));
            let Ok(rv) = rv.trim().parse::<i64>() else {
                self.problems.report(
                    self.file,
                    number,
                    &format!("unreadable return value `{}`", result.trim()),
                );
                if let Some(open) = self.take_returning() {
                    self.unreturned += 1;
                    self.emit(open, None, emit);
                }
                return;
            };
            match self.take_returning() {
                Some(open) => self.emit(open, Some(rv as u64), emit),
                None => self
                    .problems
                    .report(self.file, number, "`Returned:` without a call"),
            }
            return;
        }
        if let Some(open) = self.open.front_mut()
            && open.inline
            && named_line(open, line)
        {
            return;
        }
        if let Some(argument) = line.strip_prefix("[in] ") {
            if let Some(open) = self.newest() {
                open.template = None;
                open.pending = Pending::None;
                argument_line(open, argument, true);
            }
            return;
        }
        if let Some(argument) = line.strip_prefix("[out] ") {
            if let Some(open) = self.oldest() {
                open.template = None;
                open.pending = Pending::None;
                argument_line(open, argument, false);
            }
            return;
        }
        let Some(open) = self.current_block() else {
            return;
        };
        if let Some(attribute) = line.strip_prefix("    ").filter(|l| l.starts_with("CKA_")) {
            attribute_line(open, attribute);
        } else if let Some(object) = line
            .strip_prefix("Object ")
            .and_then(|l| l.strip_suffix(" matches"))
        {
            if let Some(handle) = parse_number(object) {
                open.found.get_or_insert_with(Vec::new).push(handle);
            }
        } else if line.starts_with("     ") || line.starts_with('\t') {
            info_line(open, line);
        } else if line.contains(" : min:") {
            mechanism_info_line(open, line);
        } else if let Some(value) = line.strip_prefix("    ") {
            print_print_line(open, value);
        }
    }

    /// The record that continuation lines (attributes, dumps, info fields) belong to: the one
    /// whose block was opened last, else the newest ready one.
    fn current_block(&mut self) -> Option<&mut Open> {
        let index = self
            .open
            .iter()
            .rposition(|open| {
                open.template.is_some()
                    || !matches!(open.pending, Pending::None)
                    || !open.info.is_empty()
            })
            .or_else(|| self.newest_index())?;
        self.open.get_mut(index)
    }

    fn dump_bytes(&mut self, bytes: Vec<u8>) {
        let Some(open) = self.current_block() else {
            return;
        };
        match &mut open.pending {
            Pending::Attribute {
                keep: true,
                bytes: value,
                ..
            }
            | Pending::Buffer { bytes: value, .. } => {
                value.extend_from_slice(&bytes);
                settle(open);
            }
            _ => {}
        }
    }

    /// The client of `pid` in this segment and the `seq` of its next call (counted here).
    fn client(&mut self, pid: Option<i64>) -> (Arc<SourceClient>, i64) {
        let segment = &mut self.segment;
        let file = self.file;
        let processes = &mut self.processes;
        let (client, next) = segment.clients.entry(pid).or_insert_with(|| {
            *processes += 1;
            let client_id = match pid {
                Some(pid) => format!("spy:{file}#{}:{pid}", segment.index),
                None => format!("spy:{file}#{}", segment.index),
            };
            let client = Arc::new(SourceClient {
                client_id,
                module: segment.module.clone(),
                pid,
            });
            (client, 0)
        });
        let seq = *next;
        *next += 1;
        (client.clone(), seq)
    }

    fn emit(&mut self, mut open: Open, rv: Option<u64>, emit: &mut impl FnMut(ImportedCall)) {
        settle(&mut open);
        // A log that prints no stamps at all (the guide's forms) has no stamp to miss.
        if open.stamp.is_none() && self.segment.stamps {
            self.unstamped += 1;
        }
        let pid = open.stamp.as_ref().and_then(|s| s.pid);
        let (client, this_seq) = self.client(pid);
        let start_us = match &open.stamp {
            Some(stamp) => match self.clock.to_utc_micros(stamp.local) {
                Some(micros) => Some(micros),
                None => {
                    self.problems.report(
                        self.file,
                        open.line,
                        "timestamp does not exist in the chosen time zone",
                    );
                    None
                }
            },
            None => None,
        };
        if open.inline && rv != Some(0) {
            // The guide prints output pointers whatever the call returned.
            open.record.out_objects = None;
        }
        if let Some(listed) = open.listed {
            open.record.out_len = Some(listed);
        }
        if let Some(found) = open.found.take() {
            open.record.out_len = Some(found.len() as i64);
            open.record.out_objects = Some(found);
        }
        if open.params != MechParams::default() {
            open.record.mech_params = open.params.render();
        }
        if !open.info.is_empty() {
            let fields = info_attrs(&open.func, &open.info);
            open.record
                .attrs
                .get_or_insert_with(Vec::new)
                .extend(fields);
        }
        if open.func == "C_GetInfo" && rv == Some(0) {
            self.segment.provider = info_provider(&open.info).map(Arc::from);
        }
        let provider = self.segment.provider.clone();
        emit(ImportedCall {
            client,
            func: open.func,
            tid: open.stamp.as_ref().and_then(|s| s.tid),
            seq: this_seq,
            start_us,
            start_local: open.stamp.is_some(),
            returned: rv.is_some(),
            rv,
            provider,
            record: open.record,
        });
    }
}

impl LineParser for SpyParser<'_> {
    fn line(&mut self, number: u64, line: &[u8], emit: &mut dyn FnMut(ImportedCall)) {
        self.feed(number, &crate::common::line_text(line), &mut &mut *emit);
    }

    fn finish(&mut self, emit: &mut dyn FnMut(ImportedCall)) {
        self.end(&mut &mut *emit);
    }

    fn totals(&self) -> ParseTotals {
        ParseTotals {
            processes: self.processes,
            unreturned: self.unreturned,
            ambiguous: self.ambiguous,
            ambiguous_stamps: self.ambiguous_stamps,
            unstamped: self.unstamped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thread 1 prints its header and is held up; thread 2 prints a whole call in between, so
    /// thread 1's stamp comes after thread 2's `Returned:`.
    const HELD_UP: &str = "0: C_Sign
1: C_SignInit
P:7; T:0x2 2026-12-02 18:00:00.001
[in] hSession = 0x2
Returned:  0 CKR_OK
P:7; T:0x1 2026-12-02 18:00:00.002
[in] hSession = 0x1
Returned:  0 CKR_OK
";

    #[test]
    fn a_stamp_after_another_threads_whole_call_still_finds_its_header() {
        let mut clock = Clock::new(Some("UTC")).unwrap();
        let mut problems = Problems::default();
        let mut calls = Vec::new();
        let mut parser = SpyParser::new("t.log", &mut clock, &mut problems);
        for (number, line) in (1..).zip(HELD_UP.lines()) {
            parser.feed(number, line, &mut |call| calls.push(call));
        }
        parser.end(&mut |call| calls.push(call));
        let totals = parser.totals();
        let got: Vec<_> = calls
            .iter()
            .map(|c| (c.func.as_str(), c.tid, c.record.session, c.returned))
            .collect();
        assert_eq!(
            got,
            [
                ("C_SignInit", Some(2), Some(2), true),
                ("C_Sign", Some(1), Some(1), true)
            ]
        );
        assert!(calls.iter().all(|c| c.start_us.is_some()));
        assert_eq!((totals.unstamped, totals.ambiguous_stamps), (0, 1));
        assert_eq!(problems.count, 0);
    }
}
