//! Pairing: which open record each line belongs to, which client (segment and pid) and thread a
//! record came from, and which record a `Returned:` ends. Input lines go to the newest open
//! record, output lines and `Returned:` to the oldest (first in, first out).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

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
    provider: Option<Rc<str>>,
    /// Clients by pid (`None` when the log prints no pids).
    clients: HashMap<Option<i64>, Rc<SourceClient>>,
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
    seqs: HashMap<String, i64>,
    pub ambiguous: u64,
    pub unreturned: u64,
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
            seqs: HashMap::new(),
            ambiguous: 0,
            unreturned: 0,
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

    fn newest(&mut self) -> Option<&mut Open> {
        self.open.back_mut()
    }

    fn oldest(&mut self) -> Option<&mut Open> {
        self.open.front_mut()
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
                if let Some(open) = self.open.pop_front() {
                    self.unreturned += 1;
                    self.emit(open, None, emit);
                }
                return;
            };
            if self.open.len() > 1 {
                self.ambiguous += 1;
            }
            match self.open.pop_front() {
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
    /// whose block was opened last.
    fn current_block(&mut self) -> Option<&mut Open> {
        let index = self
            .open
            .iter()
            .rposition(|open| {
                open.template.is_some()
                    || !matches!(open.pending, Pending::None)
                    || !open.info.is_empty()
            })
            .unwrap_or(self.open.len().checked_sub(1)?);
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

    fn client(&mut self, pid: Option<i64>) -> Rc<SourceClient> {
        let segment = &mut self.segment;
        let file = self.file;
        let processes = &mut self.processes;
        segment
            .clients
            .entry(pid)
            .or_insert_with(|| {
                *processes += 1;
                let client_id = match pid {
                    Some(pid) => format!("spy:{file}#{}:{pid}", segment.index),
                    None => format!("spy:{file}#{}", segment.index),
                };
                Rc::new(SourceClient {
                    client_id,
                    module: segment.module.clone(),
                    pid,
                })
            })
            .clone()
    }

    fn emit(&mut self, mut open: Open, rv: Option<u64>, emit: &mut impl FnMut(ImportedCall)) {
        settle(&mut open);
        let pid = open.stamp.as_ref().and_then(|s| s.pid);
        let client = self.client(pid);
        let seq = self.seqs.entry(client.client_id.clone()).or_insert(0);
        let this_seq = *seq;
        *seq += 1;
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
            self.segment.provider = info_provider(&open.info).map(Rc::from);
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
        self.feed(number, &String::from_utf8_lossy(line), &mut &mut *emit);
    }

    fn finish(&mut self, emit: &mut dyn FnMut(ImportedCall)) {
        self.end(&mut &mut *emit);
    }

    fn totals(&self) -> ParseTotals {
        ParseTotals {
            processes: self.processes,
            unreturned: self.unreturned,
            ambiguous: self.ambiguous,
        }
    }
}
