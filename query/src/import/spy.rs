//! pkcs11-spy plaintext logs, every format in use: OpenSC ≤0.23 (a bare local-time stamp line),
//! 0.24+ (`P:<pid>; T:0x<tid> <time>`, Windows `T:<tid>`), 0.26+ (extra length lines), and the
//! stamp-less form of the integration guide. Streamed line by line in constant memory.
//!
//! What real logs contain and how it is handled:
//! - Several processes appended to one file: each `*** OpenSC PKCS#11 spy ***` banner starts a new
//!   *segment* with its own `Loaded:` module. Within a segment, records are split into clients by
//!   pid where the log prints one (a forked child continues its parent's numbering).
//! - Threads interleave records, and `Returned:` names neither the function nor the thread. Input
//!   lines go to the newest open record, output lines and `Returned:` to the oldest (first in,
//!   first out); every pairing made while several records were open is counted as ambiguous.
//! - Lines glued to the end of another line (after a hex dump without its newline, or the 0.23
//!   `[in] type = CKM_X` run-on) are split off: a hex dump line is exactly 79 characters, so
//!   whatever follows is another line, and its ASCII column (which may hold spaces, `:`, `=`, 0x7F)
//!   is never searched. Elsewhere, markers are searched outside quoted text only.
//! - A record without `Returned:` (crash, truncation) is kept with `returned = false`, `rv` null.
//! - Values: only what the shim's allowlist would record (`p11trace_record::policy`); PINs, data
//!   and key material are never stored, only their lengths.
//! - Durations: the spy logs only start times, so `dur_ns` stays null. The next call on the same
//!   thread bounds a duration from above, but that bound includes the application's own time
//!   between calls, so it is not recorded as a duration.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use p11trace_record::Func;
use p11trace_record::attr::InfoField;
use p11trace_record::attr::{Attr, AttrType, AttrValue, Template};
use p11trace_record::functions::FunctionSpec;
use p11trace_record::names;
use p11trace_record::params::{MechParams, takes_bare_iv};
use p11trace_record::policy::{
    ValuePolicy, fixed_text_of, provider_string, value_from_bytes, value_policy,
};
use p11trace_record::wire::CallRecord;

use super::{Clock, ImportedCall, Problems, SourceClient};

/// Whether the start of a file looks like a pkcs11-spy log.
pub fn looks_like_spy(head: &str) -> bool {
    head.contains("OpenSC PKCS#11 spy")
        || head
            .lines()
            .take(200)
            .filter_map(header)
            .any(|(_, name)| name.starts_with("C_"))
            && head.contains("Returned:  ")
}

const HEXDUMP_WIDTH: usize = 79;

/// `N: C_Function` (the name may lack `C_`, as old spies print `SetOperationState`).
fn header(line: &str) -> Option<(i64, &str)> {
    let (number, name) = line.split_once(": ")?;
    if number.is_empty() || number.len() > 12 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let name = name.trim_end();
    if name.is_empty()
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return None;
    }
    Some((number.parse().ok()?, name))
}

fn is_hex_upper(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

/// `    %08X  XX XX … ` hex dump line: returns its bytes and whatever was glued after it.
fn hexdump(line: &str) -> Option<(Vec<u8>, &str)> {
    let bytes = line.as_bytes();
    if bytes.len() < 14
        || !bytes.starts_with(b"    ")
        || !bytes[4..12].iter().all(|&b| is_hex_upper(b))
        || &bytes[12..14] != b"  "
    {
        return None;
    }
    let hex_end = bytes.len().min(14 + 48);
    let mut data = Vec::with_capacity(16);
    let mut i = 14;
    while i + 1 < hex_end && is_hex_upper(bytes[i]) && is_hex_upper(bytes[i + 1]) {
        data.push(u8::from_str_radix(&line[i..i + 2], 16).ok()?);
        i += 3;
    }
    let tail = if bytes.len() > HEXDUMP_WIDTH && line.is_char_boundary(HEXDUMP_WIDTH) {
        &line[HEXDUMP_WIDTH..]
    } else {
        ""
    };
    Some((data, tail))
}

/// `YYYY-MM-DD HH:MM:SS.mmm` at the start of `text`.
fn stamp_at(text: &str) -> Option<(i64, u32, u32, u32, u32, u32, u32)> {
    let b = text.as_bytes();
    if b.len() < 23 {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range.clone()]
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| text[range].parse().ok())?
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
    {
        return None;
    }
    Some((
        i64::from(digits(0..4)?),
        digits(5..7)?,
        digits(8..10)?,
        digits(11..13)?,
        digits(14..16)?,
        digits(17..19)?,
        digits(20..23)?,
    ))
}

/// A parsed stamp line: optional pid/tid and the local time.
struct Stamp {
    pid: Option<i64>,
    tid: Option<i64>,
    local: (i64, u32, u32, u32, u32, u32, u32),
}

fn stamp(line: &str) -> Option<Stamp> {
    if let Some(rest) = line.strip_prefix("P:") {
        let (pid, rest) = rest.split_once("; T:")?;
        let (tid, time) = rest.split_once(' ')?;
        // Unix prints the thread id in decimal after a literal "0x"; Windows prints it bare.
        let tid = tid.strip_prefix("0x").unwrap_or(tid);
        return Some(Stamp {
            pid: pid.parse().ok(),
            tid: tid.parse().ok(),
            local: stamp_at(time.trim_end())?,
        });
    }
    let local = stamp_at(line)?;
    line[23..].trim().is_empty().then_some(Stamp {
        pid: None,
        tid: None,
        local,
    })
}

/// Where a glued line starts inside `line` (never inside single quotes), if anywhere after 0.
fn glued_marker(line: &str) -> Option<usize> {
    // A stamp line carries its own date: it is whole (the spy ends it with a newline).
    if line.starts_with("P:") && stamp(line).is_some() {
        return None;
    }
    let bytes = line.as_bytes();
    let mut quoted = false;
    for i in 1..bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            _ if quoted => {}
            b'R' if line[i..].starts_with("Returned:  ") => return Some(i),
            b'P' if line[i..].starts_with("P:") && stamp(&line[i..]).is_some() => return Some(i),
            b'0'..=b'9' if !bytes[i - 1].is_ascii_digit() && stamp_at(&line[i..]).is_some() => {
                return Some(i);
            }
            b'[' if line.starts_with("[in] ")
                && (line[i..].starts_with("[out] ") || line[i..].starts_with("[in] ")) =>
            {
                return Some(i);
            }
            _ => {}
        }
    }
    None
}

/// A template being read: which one, and how many attribute lines remain.
#[derive(Debug, Clone, Copy)]
struct TemplateBlock {
    template: Template,
    /// `C_GetAttributeValue`'s `[in]` template: types only, recorded from its `[out]` twin.
    skip: bool,
}

/// A value whose bytes follow on hex dump (or print_print) lines.
#[derive(Debug)]
enum Pending {
    None,
    /// An attribute's value; `keep` when the allowlist lets it be recorded.
    Attribute {
        index: usize,
        keep: bool,
        bytes: Vec<u8>,
    },
    /// A buffer argument whose content may be kept (interface name, token label).
    Buffer {
        role: &'static str,
        bytes: Vec<u8>,
    },
}

/// One record being assembled.
struct Open {
    line: u64,
    func: String,
    spec: Option<&'static FunctionSpec>,
    stamp: Option<Stamp>,
    record: CallRecord,
    params: MechParams,
    info: Vec<(String, String)>,
    template: Option<TemplateBlock>,
    pending: Pending,
    found: Option<Vec<u64>>,
}

impl Open {
    fn new(line: u64, func: &str) -> Open {
        Open {
            line,
            func: func.to_owned(),
            spec: Func::from_name(func).map(Func::spec),
            stamp: None,
            record: CallRecord::default(),
            params: MechParams::default(),
            info: Vec::new(),
            template: None,
            pending: Pending::None,
            found: None,
        }
    }

    /// The role of argument `name` (spy spellings accepted: `*phObject`, `hPublicKey`).
    fn role(&self, name: &str) -> Option<&'static str> {
        let spec = self.spec?;
        let name = name.trim_start_matches('*');
        let find = |wanted: &str| spec.args.iter().find(|a| a.name == wanted).map(|a| a.role);
        // The table spells C keywords with a trailing underscore (`type_`).
        find(name)
            .or_else(|| find(&format!("p{name}")))
            .or_else(|| find(&format!("{name}_")))
    }
}

/// Per-segment state (one spy banner: one process, or a parent and its forked children).
#[derive(Default)]
struct Segment {
    index: u32,
    module: Option<String>,
    provider: Option<Rc<str>>,
    /// Clients by pid (`None` when the log prints no pids).
    clients: HashMap<Option<i64>, Rc<SourceClient>>,
}

pub struct SpyParser<'a> {
    file: &'a str,
    clock: &'a mut Clock,
    problems: &'a mut Problems,
    segment: Segment,
    segments: u32,
    open: VecDeque<Open>,
    seqs: HashMap<String, i64>,
    pub ambiguous: u64,
    pub unreturned: u64,
    pub processes: u64,
}

fn parse_number(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    if let Some(negative) = text.strip_prefix('-') {
        return negative.parse::<i64>().ok().map(|v| (-v) as u64);
    }
    text.parse().ok()
}

/// `addr / len` of a buffer or attribute (`len` may be -1), or `NULL [size : 0xN (N)]`.
fn buffer_len(value: &str) -> Option<(bool, i64)> {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix("NULL [size : ") {
        let decimal = rest.split_once('(')?.1.split_once(')')?.0;
        return Some((true, decimal.trim().parse().ok()?));
    }
    let (address, len) = value.split_once(" / ")?;
    let null = address.trim().bytes().all(|b| b == b'0');
    if !address.trim().bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((null, len.trim().parse().ok()?))
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
        if let Some((_, func)) = header(line) {
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

impl super::LineParser for SpyParser<'_> {
    fn line(&mut self, number: u64, line: &[u8], emit: &mut dyn FnMut(ImportedCall)) {
        self.feed(number, &String::from_utf8_lossy(line), &mut &mut *emit);
    }

    fn finish(&mut self, emit: &mut dyn FnMut(ImportedCall)) {
        self.end(&mut &mut *emit);
    }
}

/// Completes a pending value once enough bytes arrived (or when the record moves on).
fn settle(open: &mut Open) {
    let finished = match &open.pending {
        Pending::None => return,
        Pending::Attribute { index, keep, bytes } => {
            let expected = open
                .record
                .attrs
                .as_ref()
                .and_then(|a| a.get(*index))
                .map_or(0, |a| a.len.max(0) as usize);
            if !*keep {
                true
            } else if bytes.len() >= expected {
                let value = value_from_bytes(
                    open.record
                        .attrs
                        .as_ref()
                        .map_or(0, |a| a[*index].kind_code()),
                    bytes,
                );
                if let Some(attr) = open.record.attrs.as_mut().and_then(|a| a.get_mut(*index)) {
                    attr.value = value;
                }
                true
            } else {
                false
            }
        }
        Pending::Buffer { role, bytes } => match *role {
            "token_label" if bytes.len() >= 32 => {
                let attr = Attr {
                    template: Template::In,
                    kind: AttrType::Attribute(3),
                    len: 32,
                    value: AttrValue::Text(fixed_text_of(bytes)),
                };
                open.record.attrs.get_or_insert_with(Vec::new).push(attr);
                true
            }
            "interface_name" => {
                let text = String::from_utf8_lossy(bytes)
                    .trim_end_matches('\0')
                    .to_owned();
                let attr = Attr {
                    template: Template::In,
                    kind: AttrType::Field(InfoField::InterfaceName),
                    len: text.len() as i64,
                    value: AttrValue::Text(text),
                };
                open.record.attrs.get_or_insert_with(Vec::new).push(attr);
                true
            }
            _ => false,
        },
    };
    if finished {
        open.pending = Pending::None;
    }
}

trait KindCode {
    fn kind_code(&self) -> u64;
}

impl KindCode for Attr {
    fn kind_code(&self) -> u64 {
        match self.kind {
            AttrType::Attribute(code) => code,
            AttrType::Field(_) => u64::MAX,
        }
    }
}

fn set_role(open: &mut Open, role: &str, value: &str, input: bool) {
    let number = || parse_number(value);
    let record = &mut open.record;
    match role {
        "session" | "session_out" => record.session = number().or(record.session),
        "slot" | "slot_out" => record.slot_id = number(),
        "object" => record.object = number(),
        "object2" => record.object2 = number(),
        // The spy prints flags by name only, so no flags at all is an empty value.
        "flags" if value.trim().is_empty() => record.ck_flags = Some(0),
        "flags" | "token_present" | "flags_out" => record.ck_flags = number(),
        "user" => record.user_type = names::USER.code(value.trim()),
        "mech_type" => record.mechanism = names::MECHANISM.code(value.trim()),
        "in_len" => record.in_len = number().map(|v| v as i64),
        "out_len" | "count_out" | "size_out" | "out_size" | "signature_len" => {
            record.out_len = number().map(|v| v as i64)
        }
        "object_out" if !input => {
            if let Some(handle) = number() {
                record.out_objects.get_or_insert_with(Vec::new).push(handle);
            }
        }
        "found_objects" if !input => {
            if let Some(count) = number() {
                record.out_len = Some(count as i64);
                open.found.get_or_insert_with(Vec::new);
            }
        }
        _ => {}
    }
}

/// `name = value`, `name[len] addr / N`, `name[N]: ` (template or list), `pMechanism->…`.
fn argument_line(open: &mut Open, argument: &str, input: bool) {
    let argument = argument.trim_end();
    if let Some(field) = argument.strip_prefix("pMechanism->") {
        return mechanism_line(open, field);
    }
    // `name = value`; the spy prints flags by name only, so `flags = ` can end the line.
    if let Some((name, value)) = argument
        .split_once(" = ")
        .or_else(|| argument.strip_suffix(" =").map(|n| (n, "")))
    {
        // `pInitArgs = 0x…` is followed by `     flags: N` (decimal), read by info_line.
        if let Some(role) = open.role(name) {
            set_role(open, role, value, input);
        }
        return;
    }
    if argument.ends_with(':') || argument.ends_with(": ") {
        // `pTemplate[N]:`, `pInfo:`, `pSlotList:`, `pMechanismList[70]:`
        let name = argument.trim_end_matches([':', ' ']);
        let (base, bracket) = match name.split_once('[') {
            Some((base, rest)) => (base, Some(rest.trim_end_matches(']'))),
            None => (name, None),
        };
        let template = open.spec.and_then(|spec| {
            let count = spec.args.iter().find(|a| a.extras.contains(&base))?;
            let which = match count.role {
                "template_in" => Template::In,
                "template_public" => Template::Public,
                "template_private" => Template::Private,
                "template_out" => Template::Out,
                _ => return None,
            };
            Some((which, count.role == "template_out"))
        });
        if let Some((which, out_only)) = template {
            let skip = out_only && input;
            open.template = Some(TemplateBlock {
                template: which,
                skip,
            });
            if !skip {
                open.record.attrs.get_or_insert_with(Vec::new);
            }
        } else if base == "pMechanismList"
            && !input
            && let Some(count) = bracket.and_then(|b| b.parse::<i64>().ok())
        {
            open.record.out_len = Some(count);
        }
        return;
    }
    // `pData[ulDataLen] addr / N`, `pSignature[*pulSignatureLen] addr / N`, `pPin[ulPinLen] …`
    let Some((name, value)) = argument.split_once(' ') else {
        return;
    };
    let (base, length_name) = match name.split_once('[') {
        Some((base, rest)) => (base, rest.trim_end_matches(']')),
        None => (name, ""),
    };
    let Some((null, len)) = buffer_len(value) else {
        return;
    };
    let length_role = open.role(length_name);
    let base_role = open.role(base);
    if let Some(role) = length_role.filter(|&role| role != "ignore") {
        set_role(open, role, &len.to_string(), input);
    }
    if let Some(role @ ("token_label" | "interface_name")) = base_role
        && !null
    {
        open.pending = Pending::Buffer {
            role,
            bytes: Vec::new(),
        };
    }
}

/// `pMechanism->type = CKM_X`, `pMechanism->pParameter[ulParameterLen] …`, and decoded
/// `pMechanism->pParameter->field = value` lines.
fn mechanism_line(open: &mut Open, field: &str) {
    if let Some(name) = field.strip_prefix("type = ") {
        open.record.mechanism = names::MECHANISM.code(name.trim());
        return;
    }
    if let Some(rest) = field.strip_prefix("pParameter[ulParameterLen] ") {
        if let Some((_, len)) = buffer_len(rest) {
            let len = len.max(0) as u64;
            match open.record.mechanism {
                Some(mechanism) if takes_bare_iv(mechanism) => open.params.iv_len = Some(len),
                _ if len > 0 => open.params.param_len = Some(len),
                _ => {}
            }
        }
        return;
    }
    let Some(parameter) = field.strip_prefix("pParameter->") else {
        return;
    };
    let (name, value) = match parameter.split_once(" = ") {
        Some((name, value)) => (name.trim(), value.trim()),
        None => match parameter.split_once(' ') {
            Some((name, value)) => (name.trim(), value.trim()),
            None => return,
        },
    };
    let number = || parse_number(value);
    let length = || buffer_len(value).map(|(_, len)| len.max(0) as u64);
    let params = &mut open.params;
    params.param_len = None;
    match name.split('[').next().unwrap_or(name) {
        "hashAlg" => params.hash = names::MECHANISM.code(value),
        "mgf" => params.mgf = names::MGF.code(value),
        "source" => params.source = names::OAEP_SOURCE.code(value).or_else(number),
        "pSourceData" => params.source_len = length(),
        "ulSourceDataLen" => params.source_len = number(),
        "sLen" => params.salt_len = number(),
        "pIv" => params.iv_len = length(),
        "ulIvLen" => params.iv_len = number(),
        "pAAD" => params.aad_len = length(),
        "ulAADLen" => params.aad_len = number(),
        "ulTagBits" => params.tag_bits = number(),
        _ => {}
    }
}

/// An attribute line of the open template: `CKA_NAME<pad> value`.
fn attribute_line(open: &mut Open, attribute: &str) {
    let Some(block) = open.template else { return };
    if block.skip {
        return;
    }
    let (name, value) = match attribute.strip_prefix("CKA_? (") {
        Some(rest) => {
            let (code, value) = rest.split_once(')').unwrap_or((rest, ""));
            (code.to_owned(), value)
        }
        None => {
            let end = attribute.find(' ').unwrap_or(attribute.len());
            (attribute[..end].to_owned(), &attribute[end..])
        }
    };
    let name = name.trim_end_matches(" (NSS)");
    let Some(code) = names::ATTRIBUTE.code(name) else {
        return;
    };
    let value = value.trim();
    let policy = value_policy(code);
    let mut attr = Attr {
        template: block.template,
        kind: AttrType::Attribute(code),
        len: -1,
        value: AttrValue::None,
    };
    let mut pending = None;
    if value == "True" || value == "False" {
        attr.len = 1;
        attr.value = match policy {
            ValuePolicy::Redact => AttrValue::Redacted,
            _ => AttrValue::Bool(value == "True"),
        };
    } else if let Some((null, len)) = buffer_len(value) {
        attr.len = len;
        attr.value = if matches!(policy, ValuePolicy::Redact) {
            AttrValue::Redacted
        } else {
            AttrValue::None
        };
        let readable = !null && len > 0 && !matches!(policy, ValuePolicy::Redact);
        if readable {
            pending = Some(true);
        }
    } else if value == "EMPTY" {
        attr.len = 0;
    } else if let Some(named) = [
        &names::OBJECT_CLASS,
        &names::KEY_TYPE,
        &names::CERTIFICATE_TYPE,
        &names::MECHANISM,
    ]
    .iter()
    .find_map(|table| table.code(value.split_whitespace().next().unwrap_or("")))
    {
        attr.len = 8;
        attr.value = match policy {
            ValuePolicy::Redact => AttrValue::Redacted,
            _ => AttrValue::Ulong(named),
        };
    } else if matches!(policy, ValuePolicy::Redact) {
        attr.value = AttrValue::Redacted;
    }
    let attrs = open.record.attrs.get_or_insert_with(Vec::new);
    attrs.push(attr);
    open.pending = match pending {
        Some(keep) => Pending::Attribute {
            index: attrs.len() - 1,
            keep,
            bytes: Vec::new(),
        },
        None => Pending::None,
    };
}

/// print_print (labels): a line of hex groups (`72736132 303438`), then one of spaced characters.
fn print_print_line(open: &mut Open, value: &str) {
    let Pending::Attribute {
        keep: true, bytes, ..
    } = &mut open.pending
    else {
        return;
    };
    let groups: Vec<&str> = value.split(' ').filter(|g| !g.is_empty()).collect();
    let is_hex = !groups.is_empty()
        && groups
            .iter()
            .all(|g| g.len() >= 2 && g.len() % 2 == 0 && g.bytes().all(is_hex_upper));
    if is_hex {
        for group in groups {
            for pair in group.as_bytes().chunks(2) {
                if let Ok(byte) = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("zz"), 16)
                {
                    bytes.push(byte);
                }
            }
        }
        settle(open);
    }
}

/// `      key: value` lines of an info structure (and `     flags: N` of C_Initialize).
fn info_line(open: &mut Open, line: &str) {
    let trimmed = line.trim();
    if trimmed.starts_with('\'') {
        // Continuation of a long quoted value (slotDescription is printed as two halves).
        if let Some(last) = open.info.last_mut() {
            last.1.push_str(trimmed.trim_matches('\''));
        }
        return;
    }
    let Some((key, value)) = trimmed.split_once(':') else {
        return;
    };
    let value = value.trim();
    if key == "flags" && open.func == "C_Initialize" {
        open.record.ck_flags = value.parse().ok();
        return;
    }
    if open.func == "C_GetSessionInfo" {
        // The shim keeps only the slot of a session's info (its hottest call never allocates).
        if key == "slotID" {
            open.record.slot_id = value.parse().ok();
        }
        return;
    }
    let value = value
        .strip_prefix('\'')
        .map_or(value, |v| v.strip_suffix('\'').unwrap_or(v));
    open.info.push((key.to_owned(), value.to_owned()));
}

/// `CKM_X : min:16 max:32 flags:0x80300 ( … )` of C_GetMechanismInfo.
fn mechanism_info_line(open: &mut Open, line: &str) {
    let Some((_, rest)) = line.split_once(" : ") else {
        return;
    };
    for part in rest.split_whitespace() {
        if let Some((key, value)) = part.split_once(':') {
            let key = match key {
                "min" => "ulMinKeySize",
                "max" => "ulMaxKeySize",
                // printed as 0x-prefixed hex, as the info structures' flags are (without 0x)
                "flags" => "flags",
                _ => continue,
            };
            open.info.push((key.to_owned(), value.to_owned()));
        }
    }
}

fn version_value(text: &str) -> AttrValue {
    match text.split_once('.') {
        Some((major, minor)) => match (major.trim().parse(), minor.trim().parse()) {
            (Ok(major), Ok(minor)) => AttrValue::Version(major, minor),
            _ => AttrValue::None,
        },
        None => AttrValue::None,
    }
}

/// The order the shim records each function's info fields in.
fn info_order(func: &str) -> &'static [InfoField] {
    use InfoField::*;
    match func {
        "C_GetInfo" => &[
            CryptokiVersion,
            ManufacturerId,
            Flags,
            LibraryDescription,
            LibraryVersion,
        ],
        "C_GetSlotInfo" => &[
            SlotDescription,
            ManufacturerId,
            Flags,
            HardwareVersion,
            FirmwareVersion,
        ],
        "C_GetTokenInfo" => &[
            Label,
            ManufacturerId,
            Model,
            SerialNumber,
            Flags,
            HardwareVersion,
            FirmwareVersion,
        ],
        "C_GetMechanismInfo" => &[MinKeySize, MaxKeySize, Flags],
        _ => &[],
    }
}

/// Info fields as the shim records them (same fields, same order, same values).
fn info_attrs(func: &str, info: &[(String, String)]) -> Vec<Attr> {
    let field = p11trace_record::attr::info_field;
    let text = |v: &str| AttrValue::Text(v.trim_end().to_owned());
    let hex_flags = |v: &str| {
        u64::from_str_radix(v.trim().trim_start_matches("0x"), 16)
            .map_or(AttrValue::None, AttrValue::Ulong)
    };
    let mut attrs = Vec::new();
    for (key, value) in info {
        let attr = match key.as_str() {
            "cryptokiVersion" => field(InfoField::CryptokiVersion, version_value(value)),
            "manufacturerID" => field(InfoField::ManufacturerId, text(value)),
            "libraryDescription" => field(InfoField::LibraryDescription, text(value)),
            "libraryVersion" => field(InfoField::LibraryVersion, version_value(value)),
            "slotDescription" => field(InfoField::SlotDescription, text(value)),
            "hardwareVersion" => field(InfoField::HardwareVersion, version_value(value)),
            "firmwareVersion" => field(InfoField::FirmwareVersion, version_value(value)),
            "label" => field(InfoField::Label, text(value)),
            "model" => field(InfoField::Model, text(value)),
            "serialNumber" => field(InfoField::SerialNumber, text(value)),
            "flags" => field(InfoField::Flags, hex_flags(value)),
            "ulMinKeySize" => field(
                InfoField::MinKeySize,
                value.parse().map_or(AttrValue::None, AttrValue::Ulong),
            ),
            "ulMaxKeySize" => field(
                InfoField::MaxKeySize,
                value.parse().map_or(AttrValue::None, AttrValue::Ulong),
            ),
            _ => continue,
        };
        attrs.push(attr);
    }
    let order = info_order(func);
    attrs.sort_by_key(|a| match a.kind {
        AttrType::Field(field) => order.iter().position(|f| *f == field).unwrap_or(usize::MAX),
        AttrType::Attribute(_) => usize::MAX,
    });
    attrs
}

fn info_provider(info: &[(String, String)]) -> Option<String> {
    let get = |key: &str| info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let version = get("libraryVersion")?.split_once('.')?;
    Some(provider_string(
        get("manufacturerID")?,
        get("libraryDescription")?,
        (version.0.parse().ok()?, version.1.parse().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hexdump_lines_keep_their_ascii_column_and_release_glued_tails() {
        let line = "    00000000  3A 3D 20 7F 52 65 74 75 72 6E 65 64 3A 20 20 30  := \u{7f}Returned:  0Returned:  0 CKR_OK";
        let (bytes, tail) = hexdump(line).unwrap();
        assert_eq!(bytes.len(), 16);
        assert_eq!(bytes[3], 0x7f);
        assert_eq!(tail, "Returned:  0 CKR_OK");
        assert!(hexdump("[in] hSession = 0x1").is_none());
    }

    #[test]
    fn stamps_of_every_version_parse() {
        let old = stamp("2026-11-25 16:21:43.451").unwrap();
        assert_eq!((old.pid, old.tid), (None, None));
        let unix = stamp("P:42801; T:0x140462040723456 2026-01-13 16:13:18.382").unwrap();
        assert_eq!(
            (unix.pid, unix.tid),
            (Some(42801), Some(140_462_040_723_456))
        );
        let windows = stamp("P:1200; T:5678 2026-01-13 16:13:18.382").unwrap();
        assert_eq!(windows.tid, Some(5678));
        assert_eq!(unix.local, (2026, 1, 13, 16, 13, 18, 382));
    }

    #[test]
    fn glued_markers_are_found_outside_quotes_only() {
        assert_eq!(glued_marker("     r s aReturned:  0 CKR_OK"), Some(10));
        assert_eq!(
            glued_marker("      label:                  'Returned:  0 x'"),
            None
        );
        assert_eq!(
            glued_marker("[in] type = CKM_AES_CBC       [out] pInfo: "),
            Some(30)
        );
        assert_eq!(glued_marker("x2026-11-25 16:21:43.451"), Some(1));
        assert_eq!(
            glued_marker("P:4100; T:0x140001 2026-11-25 10:00:00.000"),
            None
        );
    }

    #[test]
    fn headers_accept_the_spy_spellings() {
        assert_eq!(header("12: C_Sign"), Some((12, "C_Sign")));
        assert_eq!(
            header("3: SetOperationState"),
            Some((3, "SetOperationState"))
        );
        assert_eq!(header("Slot 1: x"), None);
        assert_eq!(header("      flags: 42d"), None);
    }
}
