//! Mastercard libpkcs11shim logs (read from its source, 1.9.0): a pkcs11-spy fork whose records
//! are tagged lines, one call each:
//!
//! ```text
//! [cnt] 0000000000000020 - C_GetAttributeValue     a counter per process, from 0
//! [pid] 230885 / [ppd] 230878 / [tid] 230885      process, parent, kernel thread (gettid)
//! [tic] 2023-06-28 16:32:50.903681                 start: local time, µs, no zone
//! [in ] … / [out] …                                arguments, rendered by pkcs11-spy's code
//! [toc] 2023-06-28 16:32:50.903695                 end: local time, µs
//! [lap] 0.000014                                   toc − tic: seconds, 6 decimals
//! [ret] 0 CKR_OK                                   the return value, decimal
//! ```
//!
//! A banner (`*** PKCS#11 shim library ***`, `pid:`, `ppid: unforked|<parent>`,
//! `PKCS11SHIM_LIBRARY=…`) starts each process's output, a forked child's too.
//!
//! How it is read:
//! - `start` is `[tic]` converted from local time with `--tz` (`start_local = true`), `dur_ns`
//!   is `[lap]`; `pid` is `[pid]`, `tid` is `[tid]`; each process is a client.
//! - Bodies go to the spy's readers ([`body`]), through the same allowlist: a PIN printed under
//!   `PKCS11SHIM_REVEALPIN` is never stored, nor any data or key material, only lengths.
//! - Consistency modes 1 and 2 write each record whole. Mode 0 writes each field with its own
//!   `fprintf`, so concurrent threads' lines interleave and even glue mid-line. [`assign`] puts
//!   each line back: lines glued on are split off (a hex dump has a fixed width, tags are
//!   searched outside quotes), header lines follow each thread's order (`[cnt]`, `[pid]`,
//!   `[ppd]`, `[tid]`, `[tic]`), an argument line goes to an open call of a function that has
//!   that argument, `[toc]`/`[lap]` find their call exactly (`toc − tic = lap`) and `[ret]`
//!   follows its `[lap]`; a pairing that had to be guessed is counted as ambiguous.
//! - Rows keep the order of `[cnt]` lines (`seq`), whatever order calls returned in.
//! - A call without `[ret]` (crash, truncation) is kept with `returned = false`, `rv` null.

mod assign;
mod body;
mod lex;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::spy::Open;
use crate::{Clock, ImportedCall, LineParser, ParseTotals, Problems, SourceClient};
use lex::{Local, Tag};

/// Whether the start of a file looks like a libpkcs11shim log: its banner, or `[cnt]` headers
/// with `[ret]` lines.
pub fn looks_like_pkcs11shim(text: &str) -> bool {
    let headers = text
        .lines()
        .take(400)
        .filter_map(|line| line.strip_prefix("[cnt] "))
        .any(|rest| lex::counter(rest).is_some());
    text.contains("* PKCS#11 shim library *")
        || (headers && text.lines().any(|line| line.starts_with("[ret] ")))
}

/// The most calls open (or returned, waiting for an earlier one to be written) at once.
pub const MAX_OPEN: usize = 1024;

/// How many `[toc]`s wait for their `[lap]` at most (one per thread writing at that moment).
const PENDING_TOCS: usize = 64;

/// Where a call's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `[cnt]` read; `[pid]`…`[tic]` to come.
    Header,
    /// `[tic]` read: arguments.
    Input,
    /// An `[out]` line read.
    Output,
    /// `[toc]`/`[lap]` read: `[ret]` to come.
    Ending,
    /// `[ret]` read (or given up): waits for the calls before it to be written.
    Done,
}

/// A header line's value.
#[derive(Debug, Clone, Copy)]
enum Header {
    Id(i64),
    Time(Local),
}

/// One call being assembled.
struct Rec {
    id: u64,
    line: u64,
    cnt: u64,
    open: Open,
    phase: Phase,
    /// The header line its thread prints next (`[pid]`, `[ppd]`, `[tid]`, `[tic]`).
    expect: Option<Tag>,
    /// The last line that went to it.
    touched: u64,
    client: Option<Arc<SourceClient>>,
    pid: Option<i64>,
    tid: Option<i64>,
    tic: Option<Local>,
    lap_us: Option<i64>,
    rv: Option<u64>,
    /// Argument names read (`[in ]`, `[out]`): an argument is printed once per call.
    seen: Vec<(bool, String)>,
}

impl Rec {
    fn seen(&self, input: bool, name: &str) -> bool {
        self.seen.iter().any(|(i, n)| *i == input && n == name)
    }
}

/// What a client carries between its calls.
#[derive(Default)]
struct ClientState {
    seq: i64,
    provider: Option<Arc<str>>,
}

pub struct ShimLogParser<'a> {
    file: &'a str,
    clock: &'a mut Clock,
    problems: &'a mut Problems,
    recs: VecDeque<Rec>,
    next_id: u64,
    /// `[toc]` values not yet paired with a `[lap]` (naive µs, line).
    tocs: VecDeque<(i64, u64)>,
    /// Calls whose `[lap]` was read, waiting for `[ret]`, in that order.
    awaiting: VecDeque<u64>,
    /// Recent `[tic]`s by (pid, counter): the counter is taken just before the time.
    tics: BTreeMap<(Option<i64>, u64), i64>,
    /// The call continuation lines and hex dumps belong to.
    owner: Option<u64>,
    /// Argument lines cut after their name (`[in ] pData[ulDataLen] `), waiting for the value.
    dangling: VecDeque<(u64, String, bool)>,
    segments: u32,
    module: Option<String>,
    banner_pid: Option<i64>,
    clients: HashMap<Option<i64>, Arc<SourceClient>>,
    processes: u64,
    states: HashMap<String, ClientState>,
    ambiguous: u64,
    unreturned: u64,
}

impl<'a> ShimLogParser<'a> {
    pub fn new(
        file: &'a str,
        clock: &'a mut Clock,
        problems: &'a mut Problems,
    ) -> ShimLogParser<'a> {
        ShimLogParser {
            file,
            clock,
            problems,
            recs: VecDeque::new(),
            next_id: 0,
            tocs: VecDeque::new(),
            awaiting: VecDeque::new(),
            tics: BTreeMap::new(),
            owner: None,
            dangling: VecDeque::new(),
            segments: 0,
            module: None,
            banner_pid: None,
            clients: HashMap::new(),
            processes: 0,
            states: HashMap::new(),
            ambiguous: 0,
            unreturned: 0,
        }
    }

    fn report(&mut self, line: u64, message: &str) {
        self.problems.report(self.file, line, message);
    }

    /// One physical line: hex dumps and lines glued on are taken apart first.
    fn feed(&mut self, number: u64, line: &str, emit: &mut dyn FnMut(ImportedCall)) {
        let mut rest = line.trim_end_matches('\r');
        loop {
            if let Some((bytes, tail)) = lex::dump(rest) {
                if let Some(rec) = self.owner_rec() {
                    rec.open.dump_bytes(&bytes);
                }
                if tail.is_empty() {
                    return;
                }
                rest = tail;
                continue;
            }
            match lex::glued_at(rest) {
                Some(at) => {
                    self.logical(number, &rest[..at], emit);
                    rest = &rest[at..];
                }
                None => return self.logical(number, rest, emit),
            }
        }
    }

    fn logical(&mut self, number: u64, piece: &str, emit: &mut dyn FnMut(ImportedCall)) {
        if piece.trim().is_empty() {
            return;
        }
        let Some((tag, rest)) = lex::tag(piece) else {
            return self.untagged(number, piece, emit);
        };
        match tag {
            Tag::Cnt => self.counter(number, rest, emit),
            Tag::Pid | Tag::Ppd | Tag::Tid => match rest.trim().parse::<i64>() {
                Ok(id) => self.header(number, tag, Header::Id(id)),
                Err(_) => self.report(number, &format!("unreadable id `{}`", rest.trim())),
            },
            Tag::Tic => match lex::local_time(rest) {
                Some(local) => self.header(number, tag, Header::Time(local)),
                None => self.report(
                    number,
                    &format!("unreadable `[tic]` time `{}`", rest.trim()),
                ),
            },
            Tag::In => self.argument(number, rest, true),
            Tag::Out => self.argument(number, rest, false),
            Tag::Toc => match lex::local_time(rest) {
                Some(local) => {
                    self.tocs.push_back((local.naive_micros(), number));
                    if self.tocs.len() > PENDING_TOCS {
                        self.tocs.pop_front();
                    }
                }
                None => self.report(
                    number,
                    &format!("unreadable `[toc]` time `{}`", rest.trim()),
                ),
            },
            Tag::Lap => match lex::lap_micros(rest) {
                Some(lap) => self.lap(number, lap),
                None => self.report(number, &format!("unreadable `[lap]` `{}`", rest.trim())),
            },
            Tag::Ret => self.ret(number, rest, emit),
            // `[lib] *** EOF ***`, `[lib] process forked from A to B`.
            Tag::Lib => {}
        }
    }

    /// Banner lines, continuation lines, and values cut from their argument line.
    fn untagged(&mut self, number: u64, piece: &str, emit: &mut dyn FnMut(ImportedCall)) {
        if piece.starts_with('*') {
            if piece.contains("PKCS#11 shim library") {
                self.segments += 1;
                self.module = None;
                self.banner_pid = None;
            }
            return;
        }
        if let Some(pid) = piece.strip_prefix("pid: ") {
            self.banner_pid = pid.trim().parse().ok();
            return;
        }
        if let Some(parent) = piece.strip_prefix("ppid: ") {
            if parent.trim() == "unforked" {
                // A new process: whatever the previous one left open never returned, and its
                // pid, if reused, is another client.
                self.end(emit);
                self.clients.remove(&self.banner_pid);
            }
            return;
        }
        if let Some(path) = piece.strip_prefix("PKCS11SHIM_LIBRARY=") {
            self.module = Some(path.trim_end().to_owned());
            return;
        }
        if let Some(path) = piece.strip_prefix("library: \"") {
            self.module = Some(path.trim_end().trim_end_matches('"').to_owned());
            return;
        }
        if piece.starts_with(lex::SPACER) || piece.starts_with('\t') {
            if let Some(rec) = self.owner_rec() {
                body::continuation(&mut rec.open, piece);
            }
            return;
        }
        if lex::orphan_value(piece) {
            for value in lex::split_specs(piece) {
                self.orphan(value);
            }
        } else if piece.starts_with('[') && piece.find("] ").is_some_and(|end| end <= 4) {
            let tag = &piece[..piece.find("] ").map_or(0, |end| end + 1)];
            self.report(number, &format!("unknown tag `{tag}`"));
        }
    }

    fn rec_mut(&mut self, id: u64) -> Option<&mut Rec> {
        self.recs.iter_mut().find(|rec| rec.id == id)
    }

    fn owner_rec(&mut self) -> Option<&mut Rec> {
        match self.owner {
            Some(id) => self.rec_mut(id),
            None => None,
        }
    }

    /// Ends the input (or a process): calls still open never returned. They are kept
    /// (`returned = false`); `--strict`, which wants a complete log, reports each.
    fn end(&mut self, emit: &mut dyn FnMut(ImportedCall)) {
        while let Some(rec) = self.recs.pop_front() {
            self.write(rec, emit);
        }
        self.tocs.clear();
        self.awaiting.clear();
        self.dangling.clear();
        self.owner = None;
    }

    /// Writes the calls at the front that are done (rows keep the `[cnt]` order).
    fn drain(&mut self, emit: &mut dyn FnMut(ImportedCall)) {
        while self
            .recs
            .front()
            .is_some_and(|rec| rec.phase == Phase::Done)
        {
            if let Some(rec) = self.recs.pop_front() {
                self.write(rec, emit);
            }
        }
    }

    /// The client of process `pid`: one per process (a pid announced again by a new process's
    /// banner is another client).
    fn client(&mut self, pid: Option<i64>) -> Arc<SourceClient> {
        let (file, segment, module) = (self.file, self.segments, self.module.clone());
        let processes = &mut self.processes;
        self.clients
            .entry(pid)
            .or_insert_with(|| {
                *processes += 1;
                let client_id = match pid {
                    Some(pid) => format!("libpkcs11shim:{file}#{segment}:{pid}"),
                    None => format!("libpkcs11shim:{file}#{segment}"),
                };
                Arc::new(SourceClient {
                    client_id,
                    module,
                    pid,
                })
            })
            .clone()
    }

    /// Writes one call (a call without a readable `[ret]` as never returned).
    fn write(&mut self, mut rec: Rec, emit: &mut dyn FnMut(ImportedCall)) {
        if rec.rv.is_none() {
            if self.problems.strict && rec.phase != Phase::Done {
                let message = format!(
                    "{} never returned: the log is truncated or the process crashed",
                    rec.open.func
                );
                self.report(rec.line, &message);
            }
            self.unreturned += 1;
        }
        let client = match rec.client.take() {
            Some(client) => client,
            None => self.client(rec.pid.or(self.banner_pid)),
        };
        let start_us = match rec.tic {
            Some(tic) => {
                let (year, month, day) = tic.date;
                let (hour, minute, second) = tic.time;
                let local = (year, month, day, hour, minute, second, 0);
                match self.clock.to_utc_micros(local) {
                    Some(micros) => Some(micros + i64::from(tic.micros)),
                    None => {
                        let message = "`[tic]` time does not exist in the chosen time zone";
                        self.report(rec.line, message);
                        None
                    }
                }
            }
            None => None,
        };
        let rv = rec.rv;
        rec.open.complete();
        assign::results_only_after_success(&mut rec.open, rv);
        if let Some(lap) = rec.lap_us.filter(|&lap| lap > 0) {
            rec.open.record.dur_ns = lap.checked_mul(1000).unwrap_or(0);
        }
        let state = self.states.entry(client.client_id.clone()).or_default();
        if rec.open.func == "C_GetInfo" && rv == Some(0) {
            state.provider = crate::common::info_provider(&rec.open.info).map(Arc::from);
        }
        let seq = state.seq;
        state.seq += 1;
        let provider = state.provider.clone();
        emit(ImportedCall {
            client,
            func: rec.open.func,
            tid: rec.tid,
            seq,
            start_us,
            start_local: rec.tic.is_some(),
            returned: rv.is_some(),
            rv,
            provider,
            record: rec.open.record,
        });
    }
}

impl LineParser for ShimLogParser<'_> {
    fn line(&mut self, number: u64, line: &[u8], emit: &mut dyn FnMut(ImportedCall)) {
        self.feed(number, &crate::common::line_text(line), emit);
    }

    fn finish(&mut self, emit: &mut dyn FnMut(ImportedCall)) {
        self.end(emit);
    }

    fn totals(&self) -> ParseTotals {
        ParseTotals {
            processes: self.processes,
            unreturned: self.unreturned,
            ambiguous: self.ambiguous,
            ..ParseTotals::default()
        }
    }
}
