//! Pkcs11Interop's pkcs11-logger logs (2.x, every line `0x<pid> : 0x<tid> : …`), streamed line
//! by line in constant memory per open call.
//!
//! What real logs contain and how it is handled:
//! - A call is `<stamp> - Entered C_X`, `Input` and its argument lines, `<stamp> - Calling C_X`
//!   and `<stamp> - Received response from C_X` around the real call, `Output` (only after a
//!   successful call; `C_GetAttributeValue` also after its three partial results), then
//!   `<stamp> - Returning <rv> (<name>)`. `C_GetFunctionList` is answered by the logger itself:
//!   it has no `Calling`/`Received` lines.
//! - Threads interleave their lines, but every line names its pid and thread, so lines are
//!   grouped by (pid, tid) and nothing is guessed (`ambiguous` stays 0). Processes appending to
//!   one file are told apart by pid; a second banner in one pid (the logger loaded again) starts
//!   another client.
//! - Stamps are local time without a zone, in microseconds: converted with the [`Clock`]
//!   (`start_local = true`). `start` is the `Calling` stamp (the `Entered` one for calls that
//!   never reached the module), `dur_ns` runs from `Calling` to `Received response`: the module's
//!   own time, without the logger's.
//! - The loader's lines (banner, `Loading library "…"`, the logger's own `C_GetFunctionList` of
//!   the module) are not calls; the library loaded is the rows' `module`.
//! - A call without `Returning` (crash, truncation) is kept with `returned = false`, `rv` null;
//!   `--strict` reports it. Result, timing, section and argument lines of a thread with no call
//!   open, and unreadable return values or stamps, are reported with file:line.
//! - Values: only what the shim's allowlist would record (`p11trace_record::policy`); PINs (which
//!   `PKCS11_LOGGER_FLAGS` 0x08 prints), data and key material are never stored.
//!
//! Split by job: `lex` reads prefixes, stamps and values; `args` maps argument lines to
//! columns; this module pairs lines with calls and calls with clients.

mod args;
mod lex;

use std::collections::HashMap;
use std::sync::Arc;

use p11trace_record::Func;
use p11trace_record::attr::Template;
use p11trace_record::functions::FunctionSpec;
use p11trace_record::params::MechParams;
use p11trace_record::wire::CallRecord;

pub use lex::looks_like_logger;

use crate::common::{info_attrs, info_provider};
use crate::{Clock, ImportedCall, LineParser, ParseTotals, Problems, SourceClient};
use lex::{LocalTime, prefix, stamped};

/// The most calls open (entered, not yet returned) at once, over all threads.
pub const MAX_OPEN: usize = 1024;

/// Where in a call a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Input,
    /// Between `Calling` and `Output`.
    Module,
    Output,
}

/// What nested lines (two spaces or more) belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nested {
    None,
    Mechanism,
    Info,
    InitArgs,
    /// `C_FindObjects`' handles (`  *phObject[i]: h`) after `*pulObjectCount`.
    Found,
}

/// A template being read: which one (`None`: read past, not recorded), and how deep in
/// `Begin`/`End` markers.
#[derive(Debug, Clone, Copy)]
struct TemplateBlock {
    template: Option<Template>,
    depth: u32,
}

/// One call being assembled.
struct Call {
    line: u64,
    func: String,
    spec: Option<&'static FunctionSpec>,
    client: Arc<SourceClient>,
    seq: i64,
    tid: Option<i64>,
    /// UTC µs of the `Entered`, `Calling` and `Received response` stamps.
    entered: Option<i64>,
    calling: Option<i64>,
    received: Option<i64>,
    section: Section,
    nested: Nested,
    template: Option<TemplateBlock>,
    record: CallRecord,
    found: Option<Vec<u64>>,
    parameter: Option<Vec<u8>>,
    parameter_len: Option<u64>,
    info: Vec<(String, String)>,
    /// A version field being read: its name and its major number.
    version: Option<(String, Option<String>)>,
}

/// One process of the log (one pid; the banner again starts another load).
#[derive(Default)]
struct Process {
    load: u32,
    module: Option<String>,
    provider: Option<Arc<str>>,
    client: Option<Arc<SourceClient>>,
    seq: i64,
}

pub struct LoggerParser<'a> {
    file: &'a str,
    clock: &'a mut Clock,
    problems: &'a mut Problems,
    processes: HashMap<Option<i64>, Process>,
    open: HashMap<(Option<i64>, Option<i64>), Call>,
    clients: u64,
    unreturned: u64,
}

impl<'a> LoggerParser<'a> {
    pub fn new(
        file: &'a str,
        clock: &'a mut Clock,
        problems: &'a mut Problems,
    ) -> LoggerParser<'a> {
        LoggerParser {
            file,
            clock,
            problems,
            processes: HashMap::new(),
            open: HashMap::new(),
            clients: 0,
            unreturned: 0,
        }
    }

    /// Feeds one physical line (without its newline).
    pub fn feed(&mut self, number: u64, line: &str, emit: &mut impl FnMut(ImportedCall)) {
        let (pid, tid, rest) = prefix(line.trim_end_matches('\r'));
        if rest.is_empty() || rest.bytes().all(|b| b == b'*') {
            return;
        }
        let key = (pid, tid);
        if let Some((time, text)) = stamped(rest) {
            return self.stamped(number, key, time, text, emit);
        }
        if rest.starts_with("PKCS11-LOGGER ") {
            // The banner: the logger was loaded (again) in this process.
            let process = self.processes.entry(pid).or_default();
            if process.client.is_some() {
                process.load = process.load.saturating_add(1);
                process.client = None;
                process.provider = None;
            }
            return;
        }
        let section = match rest {
            "Input" => Some(Section::Input),
            "Output" => Some(Section::Output),
            _ if rest.starts_with(' ') => None,
            // The loader's notes and messages (`NOTE: …`, `Unable to …`) belong to no call.
            _ => return,
        };
        let Some(call) = self.open.get_mut(&key) else {
            let what = section.map_or("an argument line", |_| "a section line");
            let message = format!("{what} (`{}`) outside any call", rest.trim());
            return self.problems.report(self.file, number, &message);
        };
        match section {
            Some(section) => {
                call.section = section;
                call.nested = Nested::None;
                call.template = None;
            }
            None => {
                let indent = rest.bytes().take_while(|&b| b == b' ').count();
                args::argument(call, indent, &rest[indent..]);
            }
        }
    }

    /// A stamped line: a call's start, its real call's start and end, its result, or a loader
    /// line.
    fn stamped(
        &mut self,
        number: u64,
        key: (Option<i64>, Option<i64>),
        time: LocalTime,
        text: &str,
        emit: &mut impl FnMut(ImportedCall),
    ) {
        let (local, micros) = time;
        let utc = self
            .clock
            .to_utc_micros(local)
            .and_then(|seconds| seconds.checked_add(i64::from(micros)));
        if utc.is_none() {
            self.problems.report(
                self.file,
                number,
                "timestamp does not exist in the chosen time zone",
            );
        }
        if let Some(func) = text.strip_prefix("Entered ") {
            return self.enter(number, key, func.trim(), utc, emit);
        }
        if let Some(path) = text.strip_prefix("Loading library \"") {
            let process = self.processes.entry(key.0).or_default();
            process.module = Some(path.trim_end().trim_end_matches('"').to_owned());
            return;
        }
        let (what, func) = if let Some(func) = text.strip_prefix("Calling ") {
            ("Calling", func)
        } else if let Some(func) = text.strip_prefix("Received response from ") {
            ("Received response", func)
        } else if let Some(result) = text.strip_prefix("Returning ") {
            return self.returning(number, key, result, emit);
        } else {
            return;
        };
        // The logger's own `C_GetFunctionList` of the module, when it loads it.
        if func.ends_with(" function") {
            return;
        }
        let message = match self.open.get_mut(&key) {
            Some(call) if call.func == func.trim() => {
                if what == "Calling" {
                    call.calling = utc;
                    call.section = Section::Module;
                } else {
                    call.received = utc;
                }
                return;
            }
            Some(call) => format!("`{what} {func}` inside {}", call.func),
            None => format!("`{what} {func}` outside any call"),
        };
        self.problems.report(self.file, number, &message);
    }

    fn enter(
        &mut self,
        number: u64,
        key: (Option<i64>, Option<i64>),
        func: &str,
        utc: Option<i64>,
        emit: &mut impl FnMut(ImportedCall),
    ) {
        if let Some(previous) = self.open.remove(&key) {
            self.unreturned_call(previous, number, emit);
        }
        // Bounded: a log whose calls never return would otherwise hold every one open.
        if self.open.len() >= MAX_OPEN
            && let Some(&oldest) = self.open.iter().min_by_key(|(_, c)| c.line).map(|(k, _)| k)
            && let Some(call) = self.open.remove(&oldest)
        {
            let message = format!(
                "more than {MAX_OPEN} calls open at once: {} (line {}) is taken as never returned",
                call.func, call.line
            );
            self.problems.report(self.file, number, &message);
            self.unreturned += 1;
            self.emit(call, None, emit);
        }
        let (client, seq) = self.client(key.0);
        let call = Call {
            line: number,
            func: func.to_owned(),
            spec: Func::from_name(func).map(Func::spec),
            client,
            seq,
            tid: key.1,
            entered: utc,
            calling: None,
            received: None,
            section: Section::Input,
            nested: Nested::None,
            template: None,
            record: CallRecord::default(),
            found: None,
            parameter: None,
            parameter_len: None,
            info: Vec::new(),
            version: None,
        };
        self.open.insert(key, call);
    }

    /// `Returning <rv> (<name>)`.
    fn returning(
        &mut self,
        number: u64,
        key: (Option<i64>, Option<i64>),
        result: &str,
        emit: &mut impl FnMut(ImportedCall),
    ) {
        let Some(call) = self.open.remove(&key) else {
            let message = format!("`Returning {}` outside any call", result.trim());
            return self.problems.report(self.file, number, &message);
        };
        match lex::decimal(result) {
            Some(rv) => self.emit(call, Some(rv), emit),
            None => {
                let message = format!("unreadable return value `{}`", result.trim());
                self.problems.report(self.file, number, &message);
                self.unreturned += 1;
                self.emit(call, None, emit);
            }
        }
    }

    /// A call that never returned: kept (`returned = false`); `--strict` reports it.
    fn unreturned_call(&mut self, call: Call, line: u64, emit: &mut impl FnMut(ImportedCall)) {
        if self.problems.strict {
            let message = format!(
                "{} (line {}) never returned: the log is truncated or the process crashed",
                call.func, call.line
            );
            self.problems.report(self.file, line, &message);
        }
        self.unreturned += 1;
        self.emit(call, None, emit);
    }

    /// Ends the input: calls still open never returned.
    pub fn end(&mut self, emit: &mut impl FnMut(ImportedCall)) {
        let mut open: Vec<Call> = self.open.drain().map(|(_, call)| call).collect();
        open.sort_by_key(|call| call.line);
        for call in open {
            let line = call.line;
            self.unreturned_call(call, line, emit);
        }
    }

    /// The client of process `pid` (created at its first call) and the next call number.
    fn client(&mut self, pid: Option<i64>) -> (Arc<SourceClient>, i64) {
        let process = self.processes.entry(pid).or_default();
        let client = process.client.get_or_insert_with(|| {
            self.clients += 1;
            let mut client_id = format!("pkcs11-logger:{}", self.file);
            if let Some(pid) = pid {
                client_id.push_str(&format!(":{pid}"));
            }
            if process.load > 0 {
                client_id.push_str(&format!("#{}", process.load));
            }
            Arc::new(SourceClient {
                client_id,
                module: process.module.clone(),
                pid,
            })
        });
        let seq = process.seq;
        process.seq += 1;
        (client.clone(), seq)
    }

    fn emit(&mut self, mut call: Call, rv: Option<u64>, emit: &mut impl FnMut(ImportedCall)) {
        if let Some(found) = call.found.take() {
            call.record.out_objects = Some(found);
        }
        let params = args::mechanism_params(&call);
        if params != MechParams::default() {
            call.record.mech_params = params.render();
        }
        if !call.info.is_empty() {
            let fields = info_attrs(&call.func, &call.info);
            call.record
                .attrs
                .get_or_insert_with(Vec::new)
                .extend(fields);
        }
        // The module's own time: from `Calling` to `Received response` (µs → ns).
        if let (Some(calling), Some(received)) = (call.calling, call.received)
            && let Some(dur) = received
                .checked_sub(calling)
                .filter(|&dur| dur >= 0)
                .and_then(|dur| dur.checked_mul(1000))
        {
            call.record.dur_ns = dur;
        }
        let process = self.processes.entry(call.client.pid).or_default();
        if call.func == "C_GetInfo" && rv == Some(0) {
            process.provider = info_provider(&call.info).map(Arc::from);
        }
        emit(ImportedCall {
            provider: process.provider.clone(),
            client: call.client,
            func: call.func,
            tid: call.tid,
            seq: call.seq,
            start_us: call.calling.or(call.entered),
            start_local: true,
            returned: rv.is_some(),
            rv,
            record: call.record,
        });
    }
}

impl LineParser for LoggerParser<'_> {
    fn line(&mut self, number: u64, line: &[u8], emit: &mut dyn FnMut(ImportedCall)) {
        self.feed(number, &crate::common::line_text(line), &mut &mut *emit);
    }

    fn finish(&mut self, emit: &mut dyn FnMut(ImportedCall)) {
        self.end(&mut &mut *emit);
    }

    fn totals(&self) -> ParseTotals {
        ParseTotals {
            processes: self.clients,
            unreturned: self.unreturned,
            ambiguous: 0,
            ..ParseTotals::default()
        }
    }
}
