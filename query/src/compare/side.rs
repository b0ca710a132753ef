//! One side of a comparison: the calls of one input (or of one group of an input) reduced to what
//! `compare` and `diff` weigh. Per (function, mechanism): the latency samples of its successful
//! calls, its call and failure counts and its failing return codes; per client, its script (the
//! calls in `seq` order) for the alignment.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use rustc_hash::FxHashMap;

use super::rows::{KEEP, NULL, Rows};

/// What a row of the comparison is keyed by: `C_Sign` with `CKM_ECDSA` is not `C_Sign` with
/// `CKM_SHA256_RSA_PKCS`. The mechanism of `C_Sign`/`C_Encrypt`/… rows is the one of their
/// operation's `C_XInit` (same `op_id`) where the row itself has none.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub func: String,
    pub mechanism: Option<String>,
}

impl Key {
    /// `C_Sign` or `C_Sign/CKM_ECDSA`.
    pub fn label(&self) -> String {
        match &self.mechanism {
            Some(mechanism) => format!("{}/{mechanism}", self.func),
            None => self.func.clone(),
        }
    }
}

/// Percentiles in nanoseconds, where only those are known (an `analyze --format json` input).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The calls of one key on one side.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub calls: u64,
    /// Returned calls with `rv ≠ CKR_OK`.
    pub failed: u64,
    /// Durations (ns) of the successful calls, ascending: a failure is often fast, and a release
    /// whose calls fail quickly has not become faster.
    pub durations: Vec<f64>,
    /// The median duration of each client's successful calls, ascending: the processes of one
    /// run differ in speed (measured: one workload's four processes' `C_Sign` medians 34–111 µs),
    /// so the client, not the call, is the unit that repeats.
    pub client_medians: Vec<f64>,
    /// Percentiles when the input carries no samples (analysis JSON).
    pub percentiles: Option<Percentiles>,
    /// Failing return code name → calls.
    pub failures: BTreeMap<String, u64>,
}

impl Group {
    pub fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failed as f64 / self.calls as f64
        }
    }

    /// p50, p95 and p99 (ns): of the samples, or the report's percentiles where there are none.
    pub fn latency(&self) -> [Option<f64>; 3] {
        match self.percentiles {
            Some(p) if self.durations.is_empty() => [Some(p.p50), Some(p.p95), Some(p.p99)],
            _ => [0.5, 0.95, 0.99].map(|q| crate::stats::quantile(&self.durations, q).ok()),
        }
    }

    /// Folds another group in (a function's row gathers all its mechanisms).
    pub fn absorb(&mut self, other: &Group) {
        self.calls = self.calls.saturating_add(other.calls);
        self.failed = self.failed.saturating_add(other.failed);
        self.durations.extend_from_slice(&other.durations);
        self.durations.sort_unstable_by(f64::total_cmp);
        self.client_medians.extend_from_slice(&other.client_medians);
        self.client_medians.sort_unstable_by(f64::total_cmp);
        for (rv, count) in &other.failures {
            let total = self.failures.entry(rv.clone()).or_default();
            *total = total.saturating_add(*count);
        }
        if self.percentiles.is_none() {
            self.percentiles = other.percentiles;
        }
    }
}

/// How a side knows its latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Every call's duration: rank tests and bootstrap intervals.
    Samples,
    /// Only per-function percentiles (analysis JSON): no test, no interval.
    Percentiles,
    /// No durations at all (pkcs11-spy imports).
    None,
}

/// One client's calls in `seq` order: (function, return code name, seq).
#[derive(Debug, Clone)]
pub struct Script {
    pub client: String,
    pub calls: Vec<(String, Option<String>, i64)>,
}

/// Everything one side contributes.
#[derive(Debug, Clone)]
pub struct Side {
    pub name: String,
    /// Distinct providers (`C_GetInfo` identities), most calls first.
    pub providers: Vec<String>,
    /// Distinct module paths, most calls first.
    pub modules: Vec<String>,
    pub clients: u64,
    pub calls: u64,
    pub basis: Basis,
    pub groups: BTreeMap<Key, Group>,
    /// Per-client scripts, clients in order of their first call; `None` when the side is too
    /// large to align (see [`SCRIPT_LIMIT`]) or its source has no sequence.
    pub scripts: Option<Vec<Script>>,
    /// Whether the groups' `failures` name their return codes (an analysis report has only
    /// failure counts).
    pub failure_codes: bool,
}

/// Most calls a side may have for its scripts to be kept for the alignment.
pub const SCRIPT_LIMIT: usize = 1_000_000;

impl Side {
    /// The per-function view: every mechanism of a function folded into one group.
    pub fn by_function(&self) -> BTreeMap<String, Group> {
        let mut functions: BTreeMap<String, Group> = BTreeMap::new();
        for (key, group) in &self.groups {
            functions.entry(key.func.clone()).or_default().absorb(group);
        }
        functions
    }

    /// Keys by function alone, every mechanism folded in: how a side is set against one that
    /// has no mechanisms (an analysis report).
    pub fn fold_mechanisms(&mut self) {
        let functions = self.by_function();
        self.groups = functions
            .into_iter()
            .map(|(func, group)| {
                let key = Key {
                    func,
                    mechanism: None,
                };
                (key, group)
            })
            .collect();
    }

    /// Cryptographic operations started: successful `C_XInit` calls other than
    /// `C_FindObjectsInit` (`C_SignInit`, `C_DigestInit`, `C_MessageEncryptInit`, …).
    pub fn operations(&self) -> u64 {
        self.groups
            .iter()
            .filter(|(key, _)| key.func.ends_with("Init") && key.func != "C_FindObjectsInit")
            .map(|(_, group)| group.calls.saturating_sub(group.failed))
            .fold(0, u64::saturating_add)
    }

    /// The name a side goes by when none is given: its provider, else its module, else `what`.
    pub fn default_name(&self, what: &str) -> String {
        self.providers
            .first()
            .or(self.modules.first())
            .cloned()
            .unwrap_or_else(|| what.to_owned())
    }
}

/// Reduces the calls of one side (of one `--by` group of it, when given): `rows` carries every
/// row of its clients, the filters' verdict in a flag, so an operation's `C_XInit` names the
/// mechanism of its `C_Sign` even under `--func C_Sign`.
pub fn from_rows(
    name: String,
    rows: &Rows,
    group: Option<u32>,
    want_scripts: bool,
) -> Result<Side> {
    let reduced = super::reduce::reduce(rows, group);
    if reduced.calls == 0 {
        bail!("{name}: no calls (after filters)");
    }
    let scripts = (want_scripts && rows.ordered && reduced.calls as usize <= SCRIPT_LIMIT)
        .then(|| scripts(rows, group));
    Ok(Side {
        name,
        providers: reduced.providers,
        modules: reduced.modules,
        clients: reduced.clients,
        calls: reduced.calls,
        basis: if reduced.timed > 0 {
            Basis::Samples
        } else {
            Basis::None
        },
        groups: reduced.groups,
        scripts,
        failure_codes: true,
    })
}

/// Per-client call scripts of the kept rows, clients ordered by their first call (then by
/// name), each client's calls by `seq`; unknown times and sequence numbers last.
fn scripts(rows: &Rows, group: Option<u32>) -> Vec<Script> {
    let last = |v: i64| if v == NULL { (1, 0) } else { (0, v) };
    let mut kept: Vec<(u32, u32)> = Vec::new();
    let mut first: FxHashMap<u32, (u8, i64)> = FxHashMap::default();
    for (index, chunk) in rows.chunks.iter().enumerate() {
        for row in 0..chunk.len() {
            if chunk.flags[row] & KEEP == 0
                || group.is_some_and(|g| chunk.group.get(row) != Some(&g))
            {
                continue;
            }
            kept.push((index as u32, row as u32));
            let start = last(chunk.start[row]);
            let earliest = first.entry(chunk.client[row]).or_insert(start);
            *earliest = (*earliest).min(start);
        }
    }
    let name = |client: u32| rows.clients.name(client).unwrap_or("");
    kept.sort_by(|&(ia, ra), &(ib, rb)| {
        let (a, b) = (&rows.chunks[ia as usize], &rows.chunks[ib as usize]);
        let (ca, cb) = (a.client[ra as usize], b.client[rb as usize]);
        (first.get(&ca), name(ca), last(a.seq[ra as usize])).cmp(&(
            first.get(&cb),
            name(cb),
            last(b.seq[rb as usize]),
        ))
    });
    let mut scripts: Vec<Script> = Vec::new();
    for (index, row) in kept {
        let (chunk, row) = (&rows.chunks[index as usize], row as usize);
        let client = name(chunk.client[row]);
        if scripts.last().is_none_or(|s| s.client != client) {
            scripts.push(Script {
                client: client.to_owned(),
                calls: Vec::new(),
            });
        }
        if let Some(script) = scripts.last_mut() {
            let func = rows.funcs.name(chunk.func[row]).unwrap_or("").to_owned();
            let rv = rows.rv_names.name(chunk.rv_name[row]).map(str::to_owned);
            let seq = if chunk.seq[row] == NULL {
                -1
            } else {
                chunk.seq[row]
            };
            script.calls.push((func, rv, seq));
        }
    }
    scripts
}
