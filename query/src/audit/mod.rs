//! `audit`: the report an auditor asks for — per key, who used it, how and how often; logins
//! per process; objects created and destroyed; and the calls whose key could not be resolved
//! (counted, never dropped). Keys are resolved by [`resolve`]; the report is built in
//! [`report`] and rendered in [`render`]. JSON keys: `schemas/audit.md`.

pub mod render;
pub mod report;
pub mod resolve;

use std::collections::HashMap;

use anyhow::Result;
use polars::prelude::*;

use crate::Explain;
use crate::columns::{int_lists, ints, strings};
pub use report::AuditReport;
use resolve::{Attr, Call, Resolver};

/// The identifying attributes the resolver reads.
const IDENTIFYING: [&str; 4] = ["CKA_ID", "CKA_LABEL", "CKA_CLASS", "CKA_KEY_TYPE"];

/// Who made a call, and when.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub pid: Option<i64>,
    pub process: Option<String>,
    pub host: Option<String>,
    pub start: Option<i64>,
    pub rv_name: Option<String>,
    pub user_type: Option<String>,
}

fn relevant_functions(calls: &LazyFrame) -> Result<Vec<String>> {
    let funcs = calls
        .clone()
        .select([col("func").unique()])
        .collect()
        .explain("cannot read calls")?;
    Ok(strings(&funcs, "func")?
        .into_iter()
        .flatten()
        .filter(|f| resolve::relevant(f))
        .collect())
}

/// The identifying attributes of the relevant calls, by (client_id, seq).
fn identifying_attrs(calls: LazyFrame) -> Result<HashMap<(String, i64), Vec<Attr>>> {
    let wanted = Series::new("wanted".into(), IDENTIFYING);
    let frame = calls
        .select([col("client_id"), col("seq"), col("attrs")])
        .filter(col("attrs").is_not_null())
        .explode(
            cols(["attrs"]),
            ExplodeOptions {
                empty_as_null: false,
                keep_nulls: false,
            },
        )
        .select([
            col("client_id"),
            col("seq"),
            col("attrs")
                .struct_()
                .field_by_name("template")
                .alias("template"),
            col("attrs").struct_().field_by_name("type").alias("type"),
            col("attrs").struct_().field_by_name("value").alias("value"),
        ])
        .filter(col("type").is_in(lit(wanted).implode(false), false))
        .collect()
        .explain("cannot read the calls' attributes")?;
    let (clients, seqs) = (strings(&frame, "client_id")?, ints(&frame, "seq")?);
    let (templates, types, values) = (
        strings(&frame, "template")?,
        strings(&frame, "type")?,
        strings(&frame, "value")?,
    );
    let mut by_call: HashMap<(String, i64), Vec<_>> = HashMap::new();
    for row in 0..frame.height() {
        let key = (
            clients[row].clone().unwrap_or_default(),
            seqs[row].unwrap_or(-1),
        );
        by_call.entry(key).or_default().push((
            templates[row].clone().unwrap_or_default(),
            types[row].clone().unwrap_or_default(),
            values[row].clone(),
        ));
    }
    Ok(by_call)
}

/// Resolves every relevant call's key and builds the report.
pub fn audit(calls: LazyFrame) -> Result<AuditReport> {
    let total = calls
        .clone()
        .select([len().alias("n")])
        .collect()
        .explain("cannot count calls")?;
    let total = ints(&total, "n")?.first().copied().flatten().unwrap_or(0);
    let funcs = relevant_functions(&calls)?;
    let funcs = Series::new("funcs".into(), funcs);
    let relevant = calls.filter(col("func").is_in(lit(funcs).implode(false), false));
    // Attributes are looked up by (client_id, seq): only the calls themselves need the order.
    let mut attrs = identifying_attrs(relevant.clone())?;
    let frame = relevant
        .sort(["client_id", "seq"], SortMultipleOptions::default())
        .select([
            col("client_id"),
            col("seq"),
            col("pid"),
            col("process"),
            col("host"),
            col("start"),
            col("func"),
            col("rv"),
            col("rv_name"),
            col("session"),
            col("object"),
            col("object2"),
            col("out_objects"),
            col("mechanism"),
            col("user_type"),
        ])
        .collect()
        .explain("cannot read calls")?;
    let client_ids = strings(&frame, "client_id")?;
    let seqs = ints(&frame, "seq")?;
    let (pids, processes, hosts) = (
        ints(&frame, "pid")?,
        strings(&frame, "process")?,
        strings(&frame, "host")?,
    );
    let (starts, funcs, rvs, rv_names) = (
        ints(&frame, "start")?,
        strings(&frame, "func")?,
        ints(&frame, "rv")?,
        strings(&frame, "rv_name")?,
    );
    let (sessions, objects, objects2, outs) = (
        ints(&frame, "session")?,
        ints(&frame, "object")?,
        ints(&frame, "object2")?,
        int_lists(&frame, "out_objects")?,
    );
    let (mechanisms, user_types) = (strings(&frame, "mechanism")?, strings(&frame, "user_type")?);

    let mut clients: HashMap<String, u32> = HashMap::new();
    let mut resolver = Resolver::default();
    let mut callers = Vec::with_capacity(frame.height());
    let mut calls_seen = Vec::with_capacity(frame.height());
    for row in 0..frame.height() {
        let client_id = client_ids[row].clone().unwrap_or_default();
        let next = clients.len() as u32;
        let client = *clients.entry(client_id.clone()).or_insert(next);
        let call = Call {
            client,
            func: funcs[row].clone().unwrap_or_default(),
            ok: rvs[row] == Some(0),
            session: sessions[row],
            object: objects[row],
            object2: objects2[row],
            out_objects: outs[row].clone(),
            mechanism: mechanisms[row].clone(),
            attrs: attrs
                .remove(&(client_id, seqs[row].unwrap_or(-1)))
                .unwrap_or_default(),
        };
        resolver.feed(row, &call);
        callers.push(Caller {
            pid: pids[row],
            process: processes[row].clone(),
            host: hosts[row].clone(),
            start: starts[row],
            rv_name: rv_names[row].clone(),
            user_type: user_types[row].clone(),
        });
        calls_seen.push(call);
    }
    Ok(report::build(
        total.max(0) as u64,
        &resolver,
        &calls_seen,
        &callers,
    ))
}
