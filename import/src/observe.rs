//! observe-core JSON lines (`{"ts":…,"pid":…,"tid":…,"func":…,"rv":…,"rv_name":…,"dur_ms":…,
//! "slot_id":…,"session":…,"mech":…,"op_id":…,"template_summary":…}`), one event per line.
//! Timestamps are RFC 3339 with an offset, so they are stored as given (`start_local = false`).

use std::collections::HashMap;
use std::sync::Arc;

use p11trace_record::attr::{Attr, AttrType, AttrValue, Template};
use p11trace_record::names;
use p11trace_record::policy::{ValuePolicy, value_policy};
use p11trace_record::wire::CallRecord;
use serde::Deserialize;
use serde_json::Value;

use crate::{ImportedCall, LineParser, ParseTotals, Problems, SourceClient};

#[derive(Debug, Deserialize)]
struct Event {
    ts: Option<String>,
    pid: Option<i64>,
    tid: Option<Value>,
    func: Option<String>,
    rv: Option<i64>,
    rv_name: Option<String>,
    dur_ms: Option<f64>,
    slot_id: Option<Value>,
    session: Option<Value>,
    mech: Option<String>,
    op_id: Option<Value>,
    template_summary: Option<Value>,
}

pub struct ObserveParser<'a> {
    file: &'a str,
    problems: &'a mut Problems,
    clients: HashMap<Option<i64>, Arc<SourceClient>>,
    seqs: HashMap<Option<i64>, i64>,
    op_ids: HashMap<String, u64>,
}

/// A number given as a JSON number or a string (decimal or `0x` hex).
fn json_number(value: &Option<Value>) -> Option<u64> {
    match value.as_ref()? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_i64().map(|v| v as u64)),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        }
        _ => None,
    }
}

fn rfc3339_micros(text: &str) -> Option<i64> {
    let parsed = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(parsed.timestamp_micros())
}

impl<'a> ObserveParser<'a> {
    pub fn new(file: &'a str, problems: &'a mut Problems) -> ObserveParser<'a> {
        ObserveParser {
            file,
            problems,
            clients: HashMap::new(),
            seqs: HashMap::new(),
            op_ids: HashMap::new(),
        }
    }
}

impl LineParser for ObserveParser<'_> {
    fn totals(&self) -> ParseTotals {
        ParseTotals {
            processes: self.clients.len() as u64,
            ..ParseTotals::default()
        }
    }

    fn line(&mut self, number: u64, line: &[u8], emit: &mut dyn FnMut(ImportedCall)) {
        let text = crate::common::line_text(line);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let event: Event = match serde_json::from_str(text) {
            Ok(event) => event,
            Err(e) => {
                return self.problems.report(
                    self.file,
                    number,
                    &format!("not an observe event: {e}"),
                );
            }
        };
        let Some(func) = event.func.clone().filter(|f| !f.is_empty()) else {
            return self
                .problems
                .report(self.file, number, "event has no `func`");
        };
        let start_us = match event.ts.as_deref() {
            Some(ts) => match rfc3339_micros(ts) {
                Some(micros) => Some(micros),
                None => {
                    self.problems.report(
                        self.file,
                        number,
                        &format!("unreadable timestamp `{ts}`"),
                    );
                    None
                }
            },
            None => None,
        };
        let file = self.file;
        let client = self
            .clients
            .entry(event.pid)
            .or_insert_with(|| {
                let client_id = match event.pid {
                    Some(pid) => format!("observe:{file}:{pid}"),
                    None => format!("observe:{file}"),
                };
                Arc::new(SourceClient {
                    client_id,
                    module: None,
                    pid: event.pid,
                })
            })
            .clone();
        let seq = self.seqs.entry(event.pid).or_insert(0);
        let this_seq = *seq;
        *seq += 1;
        let next_op = self.op_ids.len() as u64 + 1;
        let op_id = match &event.op_id {
            Some(Value::String(s)) => Some(*self.op_ids.entry(s.clone()).or_insert(next_op)),
            other => json_number(other),
        };
        let rv = event
            .rv
            .map(|rv| rv as u64)
            .or_else(|| event.rv_name.as_deref().and_then(|n| names::RV.code(n)));
        let record = CallRecord {
            dur_ns: event
                .dur_ms
                .map_or(0, |ms| (ms * 1_000_000.0).round() as i64),
            slot_id: json_number(&event.slot_id),
            session: json_number(&event.session),
            mechanism: event.mech.as_deref().and_then(|m| names::MECHANISM.code(m)),
            op_id,
            attrs: event.template_summary.as_ref().and_then(template_attrs),
            ..CallRecord::default()
        };
        emit(ImportedCall {
            client,
            func,
            tid: json_number(&event.tid).map(|t| t as i64),
            seq: this_seq,
            start_us,
            start_local: false,
            returned: rv.is_some(),
            rv,
            provider: None,
            record,
        });
    }
}

/// `template_summary` as `in` attributes: an object keyed by attribute name. Values are kept only
/// where the allowlist allows (observe already hashes labels; its hashes are kept as given).
fn template_attrs(summary: &Value) -> Option<Vec<Attr>> {
    let object = summary.as_object()?;
    let attrs = object
        .iter()
        .filter_map(|(name, value)| {
            let code = names::ATTRIBUTE.code(name)?;
            let value = match value_policy(code) {
                ValuePolicy::Redact => AttrValue::Redacted,
                _ => match value {
                    Value::Bool(b) => AttrValue::Bool(*b),
                    Value::Number(n) => n.as_u64().map_or(AttrValue::None, AttrValue::Ulong),
                    Value::String(s) => AttrValue::Text(s.clone()),
                    _ => AttrValue::None,
                },
            };
            Some(Attr {
                template: Template::In,
                kind: AttrType::Attribute(code),
                len: -1,
                value,
            })
        })
        .collect();
    Some(attrs)
}
