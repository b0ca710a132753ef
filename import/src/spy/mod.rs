//! pkcs11-spy plaintext logs, every format in use: OpenSC ≤0.23 (a bare local-time stamp line),
//! 0.24+ (`P:<pid>; T:0x<tid> <time>`, Windows `T:<tid>`), 0.26+ (extra length lines), and the
//! integration guide's forms (stamp-less, and with arguments inline). Streamed line by line in constant memory.
//!
//! What real logs contain and how it is handled:
//! - Several processes appended to one file: each `*** OpenSC PKCS#11 spy ***` banner starts a new
//!   *segment* with its own `Loaded:` module. Within a segment, records are split into clients by
//!   pid where the log prints one (a forked child continues its parent's numbering).
//! - Threads interleave records, and `Returned:` names neither the function nor the thread. A
//!   header and its stamp line come apart (other threads' lines between them, the stamp glued
//!   after another record's partial line): a stamp goes to the newest record still without one,
//!   and the other lines only to records that have their stamp (input lines to the newest,
//!   output lines and `Returned:` to the oldest, first in, first out), so every stamp in the log
//!   finds its call. Every pairing made while several records were candidates is counted as
//!   ambiguous (see [`pair`]).
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
//!
//! - The integration guide's form (arguments inline in the header, outputs as named lines, no
//!   stamps) is read by [`inline`] into the same record; its `Returned:` pairs as everywhere.
//!
//! Split by job: [`lex`] reads lines (headers, stamps, hex dumps, glued markers, values),
//! [`pair`] assigns lines to open records and records to clients, threads and `Returned:`,
//! [`args`] maps arguments to columns by their [`Role`](p11trace_record::functions::Role), and
//! [`info`] reads info structures. This module holds the record they all fill ([`Open`]).

// `args`, `info` and `lex` are also the libpkcs11shim importer's: that tracer renders record
// bodies with pkcs11-spy's own code (`crate::pkcs11shim`).
pub(crate) mod args;
pub(crate) mod info;
mod inline;
pub(crate) mod lex;
mod pair;

use p11trace_record::Func;
use p11trace_record::attr::Template;
use p11trace_record::functions::{FunctionSpec, Role};
use p11trace_record::params::MechParams;
use p11trace_record::wire::CallRecord;

pub use lex::looks_like_spy;
pub use pair::SpyParser;

use lex::Stamp;

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
        role: Role,
        bytes: Vec<u8>,
    },
}

/// One record being assembled.
pub(crate) struct Open {
    line: u64,
    pub(crate) func: String,
    pub(crate) spec: Option<&'static FunctionSpec>,
    stamp: Option<Stamp>,
    pub(crate) record: CallRecord,
    params: MechParams,
    pub(crate) info: Vec<(String, String)>,
    template: Option<TemplateBlock>,
    pending: Pending,
    found: Option<Vec<u64>>,
    /// Guide form: `Slot:` lines counted (→ `out_len`).
    listed: Option<i64>,
    /// Guide form: `Public Key:`-style lines replaced the header's `&N` handles.
    named_out: bool,
    /// Guide form: the record's outputs are named lines, not `[out]` lines.
    inline: bool,
}

impl Open {
    pub(crate) fn new(line: u64, func: &str) -> Open {
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
            listed: None,
            named_out: false,
            inline: false,
        }
    }

    /// The role of argument `name` (spy spellings accepted: `*phObject`, `hPublicKey`).
    pub(crate) fn role(&self, name: &str) -> Option<Role> {
        crate::common::role_of(self.spec?, name)
    }
}

impl Open {
    /// An `[in]`/`[out]` argument line (its prefix removed): it ends any template or value
    /// being read, as in `pair`.
    pub(crate) fn argument(&mut self, text: &str, input: bool) {
        self.template = None;
        self.pending = Pending::None;
        args::argument_line(self, text, input);
    }

    /// The bytes of a hex dump line, for the value being read (if it is kept).
    pub(crate) fn dump_bytes(&mut self, bytes: &[u8]) {
        match &mut self.pending {
            Pending::Attribute {
                keep: true,
                bytes: value,
                ..
            }
            | Pending::Buffer { bytes: value, .. } => {
                value.extend_from_slice(bytes);
                args::settle(self);
            }
            _ => {}
        }
    }

    /// `Object 0x… matches` of `C_FindObjects`.
    pub(crate) fn found_object(&mut self, handle: u64) {
        self.found.get_or_insert_with(Vec::new).push(handle);
    }

    /// The record's columns once its lines are all read: the value still pending settled, the
    /// handles found, the mechanism parameters and the info fields in place (what `pair` does
    /// before it emits, for the importers that reuse these renderings).
    pub(crate) fn complete(&mut self) {
        args::settle(self);
        if let Some(found) = self.found.take() {
            self.record.out_len = Some(found.len() as i64);
            self.record.out_objects = Some(found);
        }
        if self.params != MechParams::default() {
            self.record.mech_params = self.params.render();
        }
        if !self.info.is_empty() {
            let fields = crate::common::info_attrs(&self.func, &self.info);
            self.record
                .attrs
                .get_or_insert_with(Vec::new)
                .extend(fields);
        }
    }
}
