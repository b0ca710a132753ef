//! p11-kit `log-calls: yes` logs: what p11-kit writes to the application's stderr for every call
//! into a module it manages (p11-kit/log.c, 0.23 to 0.26):
//!
//! ```text
//! C_Login
//!   IN: hSession = S1
//!   IN: userType = CKU_USER
//!   IN: pPin = (4) "1234"
//! C_Login = CKR_OK
//! ```
//!
//! What real logs contain and how it is handled:
//! - p11-kit writes each call in two pieces, each with one `fwrite`: the name and its `IN:` lines
//!   before the real call, the ` OUT:` lines and `C_X = CKR_…` after it. Threads interleave only
//!   between pieces, and the result names its function, so it ends the oldest open call of that
//!   name; a pairing made while several calls of the same name were open is counted ambiguous.
//! - No pid, thread, time or module: one log is one client (`p11-kit:<file>`), and `pid`, `tid`,
//!   `start`, `dur_ns` and `module` stay null. The log shares stderr with the application, so lines
//!   that are not p11-kit's are skipped.
//! - Handles carry prefixes (`S1`, `H2`, `SL1`); numbers behind pointers follow them
//!   (`0x7FFC… = 256`); `IN:` values of output arguments (`pulCount`) are whatever the caller left
//!   there and are not recorded.
//! - Buffers print their length and their bytes C-escaped, cut at about 120 characters with
//!   `...` (attribute values at 128 bytes): lengths are recorded, a cut value never. PINs are
//!   printed in clear (`pPin = (4) "1234"`): only the length is kept. Values go through the
//!   shim's allowlist (`p11trace_record::policy`).
//! - Input templates print types only (`len` -1, no value); `C_GetAttributeValue` prints values
//!   after the call. p11-kit 0.24 prints 16 bytes of unrelated memory as `utcTime` (NULs and
//!   maybe a newline): info blocks take the fields they know and skip the rest.
//! - A call without its result line (crash, truncation) is kept with `returned = false`.
//!
//! Split by job: [`values`] reads printed values, [`args`] maps arguments to columns by their
//! [`Role`](p11trace_record::functions::Role), [`params`] decodes mechanism parameters; this
//! module pairs lines into calls.

mod args;
mod params;
mod values;

use std::collections::VecDeque;
use std::sync::Arc;

use p11trace_record::Func;
use p11trace_record::functions::{FunctionSpec, Role};
use p11trace_record::names;
use p11trace_record::wire::CallRecord;

use crate::common::{info_attrs, info_provider};
use crate::{ImportedCall, LineParser, ParseTotals, Problems, SourceClient};
use args::{Arg, apply};

/// The most calls open (called, not yet returned) at once.
pub const MAX_OPEN: usize = 1024;

/// The most lines of one `{ … }` block (an info structure has 22).
const MAX_BLOCK_LINES: usize = 64;

/// The most output arguments of one call (`C_GenerateKeyPair` has two).
const MAX_OUTPUTS: usize = 64;

/// `C_Name` alone on a line: a call starts.
fn header(line: &str) -> Option<&str> {
    let name = line.strip_prefix("C_")?;
    (!name.is_empty() && name.len() < 64 && name.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some(line)
}

/// `C_Name = CKR_…`: a call returned (the value as printed).
fn result(line: &str) -> Option<(&str, &str)> {
    let (func, rv) = line.split_once(" = ")?;
    header(func)?;
    Some((func, rv.trim()))
}

/// The number of a printed return value (`CKR_PIN_INCORRECT`, `CKR_0x80000001`).
fn return_value(printed: &str) -> Option<u64> {
    names::RV.code(values::unprefixed(printed))
}

/// Whether the start of a file looks like a p11-kit log: a call's name alone on a line, and
/// further on that name's `C_X = CKR_…`.
pub fn looks_like_p11kit(text: &str) -> bool {
    let mut called: Vec<&str> = Vec::new();
    for line in text.lines().take(400) {
        let line = line.trim_end_matches('\r');
        if let Some(func) = header(line) {
            called.push(func);
        } else if let Some((func, rv)) = result(line)
            && called.contains(&func)
            && rv.starts_with("CKR_")
        {
            return true;
        }
    }
    false
}

/// One call being read.
struct Call {
    line: u64,
    func: String,
    spec: Option<&'static FunctionSpec>,
    seq: i64,
    record: CallRecord,
    found: Option<Vec<u64>>,
    info: Vec<(String, String)>,
}

pub struct P11KitParser<'a> {
    file: &'a str,
    problems: &'a mut Problems,
    client: Arc<SourceClient>,
    open: VecDeque<Call>,
    /// The argument being read (its block may go on).
    arg: Option<Arg>,
    /// Output arguments read, waiting for their `C_X = …` line.
    outs: Vec<Arg>,
    next_seq: i64,
    provider: Option<Arc<str>>,
    emitted: u64,
    unreturned: u64,
    ambiguous: u64,
}

impl<'a> P11KitParser<'a> {
    pub fn new(file: &'a str, problems: &'a mut Problems) -> P11KitParser<'a> {
        P11KitParser {
            file,
            problems,
            client: Arc::new(SourceClient {
                client_id: format!("p11-kit:{file}"),
                module: None,
                pid: None,
            }),
            open: VecDeque::new(),
            arg: None,
            outs: Vec::new(),
            next_seq: 0,
            provider: None,
            emitted: 0,
            unreturned: 0,
            ambiguous: 0,
        }
    }

    fn feed(&mut self, number: u64, line: &str, emit: &mut dyn FnMut(ImportedCall)) {
        if let Some(arg) = self.arg.as_mut() {
            if line == "      }" {
                self.finish_arg();
                return;
            }
            if line.starts_with('\t') {
                if arg.block.len() < MAX_BLOCK_LINES {
                    arg.block.push(line.to_owned());
                }
                return;
            }
            // A block that never closed (p11-kit 0.24's utcTime can hold a newline).
            self.finish_arg();
        }
        let (input, argument) = match (line.strip_prefix("  IN: "), line.strip_prefix(" OUT: ")) {
            (Some(argument), _) => (true, argument),
            (None, Some(argument)) => (false, argument),
            (None, None) => return self.call_line(number, line, emit),
        };
        let Some((name, value)) = argument.split_once(" = ") else {
            let message = format!("unreadable argument `{}`", argument.trim());
            return self.problems.report(self.file, number, &message);
        };
        self.arg = Some(Arg {
            line: number,
            input,
            name: name.trim().to_owned(),
            value: value.to_owned(),
            block: Vec::new(),
        });
        if value.trim_end() != "{" {
            self.finish_arg();
        }
    }

    /// A call's name, its result, or a line that is not p11-kit's.
    fn call_line(&mut self, number: u64, line: &str, emit: &mut dyn FnMut(ImportedCall)) {
        if let Some(func) = header(line) {
            self.stray_outputs();
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
            let seq = self.next_seq;
            self.next_seq += 1;
            self.open.push_back(Call {
                line: number,
                func: func.to_owned(),
                spec: Func::from_name(func).map(Func::spec),
                seq,
                record: CallRecord::default(),
                found: None,
                info: Vec::new(),
            });
            return;
        }
        let Some((func, printed)) = result(line) else {
            return;
        };
        let mut same = self.open.iter().filter(|call| call.func == func);
        let (first, more) = (same.next().is_some(), same.next().is_some());
        if more {
            self.ambiguous += 1;
        }
        let Some(index) = first
            .then(|| self.open.iter().position(|call| call.func == func))
            .flatten()
        else {
            self.outs.clear();
            let message = format!("`{func} = {printed}` without its call");
            return self.problems.report(self.file, number, &message);
        };
        let Some(mut call) = self.open.remove(index) else {
            return;
        };
        let Some(rv) = return_value(printed) else {
            let message = format!("unreadable return value `{printed}`");
            self.problems.report(self.file, number, &message);
            self.outs.clear();
            self.unreturned += 1;
            return self.emit(call, None, emit);
        };
        for arg in std::mem::take(&mut self.outs) {
            if let Some(message) = apply(&mut call, &arg) {
                self.problems.report(self.file, arg.line, &message);
            }
        }
        self.emit(call, Some(rv), emit);
    }

    /// Outputs whose result line never came: another call started instead.
    fn stray_outputs(&mut self) {
        if let Some(first) = self.outs.first() {
            let line = first.line;
            self.outs.clear();
            self.problems
                .report(self.file, line, "output without its call's result line");
        }
    }

    fn finish_arg(&mut self) {
        let Some(arg) = self.arg.take() else { return };
        if !arg.input {
            if self.outs.len() >= MAX_OUTPUTS {
                let message = format!("more than {MAX_OUTPUTS} outputs without a result line");
                return self.problems.report(self.file, arg.line, &message);
            }
            self.outs.push(arg);
            return;
        }
        match self.open.back_mut() {
            Some(call) => {
                if let Some(message) = apply(call, &arg) {
                    self.problems.report(self.file, arg.line, &message);
                }
            }
            None => self
                .problems
                .report(self.file, arg.line, "argument outside any call"),
        }
    }

    /// Ends the input: calls still open never returned. They are kept (`returned = false`);
    /// `--strict`, which wants a complete log, reports each.
    fn end(&mut self, emit: &mut dyn FnMut(ImportedCall)) {
        self.finish_arg();
        self.outs.clear();
        while let Some(call) = self.open.pop_front() {
            if self.problems.strict {
                let message = format!(
                    "{} never returned: the log is truncated or the process crashed",
                    call.func
                );
                self.problems.report(self.file, call.line, &message);
            }
            self.unreturned += 1;
            self.emit(call, None, emit);
        }
    }

    fn emit(&mut self, mut call: Call, rv: Option<u64>, emit: &mut dyn FnMut(ImportedCall)) {
        if let Some(found) = call.found.take() {
            call.record.out_len = Some(found.len() as i64);
            call.record.out_objects = Some(found);
        }
        // The shim records an empty list of created handles when the call failed.
        let creates = call.spec.is_some_and(|spec| {
            spec.args
                .iter()
                .any(|a| matches!(a.role, Role::ObjectOut | Role::FoundObjects))
        });
        if creates && rv.is_some() && call.record.out_objects.is_none() {
            call.record.out_objects = Some(Vec::new());
        }
        if !call.info.is_empty() {
            let fields = info_attrs(&call.func, &call.info);
            call.record
                .attrs
                .get_or_insert_with(Vec::new)
                .extend(fields);
        }
        if call.func == "C_GetInfo" && rv == Some(0) {
            self.provider = info_provider(&call.info).map(Arc::from);
        }
        self.emitted += 1;
        emit(ImportedCall {
            client: self.client.clone(),
            func: call.func,
            tid: None,
            seq: call.seq,
            start_us: None,
            start_local: false,
            returned: rv.is_some(),
            rv,
            provider: self.provider.clone(),
            record: call.record,
        });
    }
}

impl LineParser for P11KitParser<'_> {
    fn line(&mut self, number: u64, line: &[u8], emit: &mut dyn FnMut(ImportedCall)) {
        let text = crate::common::line_text(line);
        self.feed(number, text.trim_end_matches('\r'), emit);
    }

    fn finish(&mut self, emit: &mut dyn FnMut(ImportedCall)) {
        self.end(emit);
    }

    fn totals(&self) -> ParseTotals {
        ParseTotals {
            processes: u64::from(self.emitted > 0),
            unreturned: self.unreturned,
            ambiguous: self.ambiguous,
            ..ParseTotals::default()
        }
    }
}
