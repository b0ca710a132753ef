//! pkcs11-spy plaintext logs, every format in use: OpenSC ≤0.23 (a bare local-time stamp line),
//! 0.24+ (`P:<pid>; T:0x<tid> <time>`, Windows `T:<tid>`), 0.26+ (extra length lines), and the
//! stamp-less form of the integration guide. Streamed line by line in constant memory.
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
//! Split by job: [`lex`] reads lines (headers, stamps, hex dumps, glued markers, values),
//! [`pair`] assigns lines to open records and records to clients, threads and `Returned:`,
//! [`args`] maps arguments to columns by their [`Role`](p11trace_record::functions::Role), and
//! [`info`] reads info structures. This module holds the record they all fill ([`Open`]).

mod args;
mod info;
mod lex;
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
    fn role(&self, name: &str) -> Option<Role> {
        let spec = self.spec?;
        let name = name.trim_start_matches('*');
        let find = |wanted: &str| spec.args.iter().find(|a| a.name == wanted).map(|a| a.role);
        // The table spells C keywords with a trailing underscore (`type_`).
        find(name)
            .or_else(|| find(&format!("p{name}")))
            .or_else(|| find(&format!("{name}_")))
    }
}
