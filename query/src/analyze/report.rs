//! The analysis' result: the structures `analyze` fills and every rendering (text, Markdown,
//! JSON, the HTML report) reads. Their JSON form is `schemas/analysis.md`'s.

use serde::Serialize;

use super::Sessions;
use super::issues::Issue;

#[derive(Debug, Serialize)]
pub struct Report {
    pub analysis_version: u32,
    pub summary: Summary,
    /// Per function, by name.
    pub performance: std::collections::BTreeMap<String, FunctionStats>,
    pub slowest: Vec<Slowest>,
    pub frequency: Vec<Frequency>,
    pub return_codes: Vec<ReturnCode>,
    pub by_process: Vec<ProcessStats>,
    pub by_provider: Vec<ProviderStats>,
    pub sessions: Sessions,
    pub issues: Vec<Issue>,
    pub operations: Vec<serde_json::Value>,
    /// (client_id, seq) of the size queries retried (for the per-call charts; not in the JSON).
    #[serde(skip)]
    pub retried: Vec<(String, i64)>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub total_operations: u64,
    pub successful_operations: u64,
    /// Calls that returned neither CKR_OK nor an expected idiom (see `expected`).
    pub failed_operations: u64,
    /// Non-OK calls that are the protocol's normal idioms (`expected.rs`).
    pub expected_nonok_operations: u64,
    /// Calls that never returned (imported records cut off by a crash or truncation).
    pub unreturned_operations: u64,
    pub failure_rate_percent: f64,
    /// Sum of call durations; null when no call has a duration (pkcs11-spy imports).
    pub total_duration_ms: Option<f64>,
    pub first_call: Option<String>,
    pub last_call: Option<String>,
    pub time_span_ms: Option<f64>,
    pub processes: u64,
    pub clients: u64,
    /// `operations` lists fewer calls than `total_operations` (see `--max-operations`).
    pub operations_truncated: bool,
}

#[derive(Debug, Serialize)]
pub struct FunctionStats {
    pub count: u64,
    pub failed: u64,
    pub expected_nonok: u64,
    pub total_ms: Option<f64>,
    pub share_percent: Option<f64>,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Slowest {
    pub func: String,
    pub total_ms: f64,
    pub share_percent: f64,
}

#[derive(Debug, Serialize)]
pub struct Frequency {
    pub func: String,
    pub count: u64,
    pub percent: f64,
}

#[derive(Debug, Serialize)]
pub struct ReturnCode {
    pub rv: Option<i64>,
    pub rv_name: Option<String>,
    /// These calls are expected idioms (a return code can have an expected and a failed entry).
    pub expected: bool,
    pub count: u64,
    pub percent: f64,
}

#[derive(Debug, Serialize)]
pub struct ProcessStats {
    pub pid: Option<i64>,
    pub process: Option<String>,
    pub calls: u64,
    pub failed: u64,
    pub total_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ProviderStats {
    pub provider: Option<String>,
    pub calls: u64,
    pub failed: u64,
    pub total_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}
