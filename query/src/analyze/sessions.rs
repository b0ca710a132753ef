//! Session lifecycle: opened, closed, never closed, most open at once, logins and logouts.

use std::collections::{HashMap, HashSet};

use crate::Explain;
use anyhow::Result;
use polars::prelude::*;
use serde::Serialize;

use super::{i64_at, str_at};

#[derive(Debug, Default, Serialize)]
pub struct Sessions {
    pub opened: u64,
    pub closed: u64,
    /// Sessions still open when their process called `C_Finalize` (closed by it, implicitly).
    pub closed_by_finalize: u64,
    /// Sessions neither closed nor finalized by the end of the data.
    pub never_closed: u64,
    pub max_concurrent: u64,
    pub logins: u64,
    pub logouts: u64,
    pub failed_logins: u64,
    /// Logins never followed by `C_Logout` in the same process.
    pub left_logged_in: u64,
    /// (client_id, session) of sessions never closed, first ten.
    pub never_closed_examples: Vec<(String, i64)>,
}

const LIFECYCLE: &[&str] = &[
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_Login",
    "C_LoginUser",
    "C_Logout",
    "C_Finalize",
];

pub fn lifecycle(calls: LazyFrame) -> Result<Sessions> {
    let names = Series::new("names".into(), LIFECYCLE);
    let rows = calls
        .filter(col("func").is_in(lit(names).implode(false), false))
        .select([
            col("client_id"),
            col("func"),
            col("rv"),
            col("session"),
            col("slot_id"),
            col("start"),
            col("seq"),
        ])
        .sort(
            ["start", "client_id", "seq"],
            SortMultipleOptions::default()
                .with_nulls_last(true)
                .with_maintain_order(true),
        )
        .collect()
        .explain("cannot compute session lifecycle")?;
    let mut sessions = Sessions::default();
    // (client, session) -> slot
    let mut open: HashMap<(String, i64), Option<i64>> = HashMap::new();
    let mut logged_in: HashSet<(String, Option<i64>)> = HashSet::new();
    for row in 0..rows.height() {
        let client = str_at(&rows, "client_id", row).unwrap_or_default();
        let func = str_at(&rows, "func", row).unwrap_or_default();
        let ok = i64_at(&rows, "rv", row) == Some(0);
        let session = i64_at(&rows, "session", row);
        let slot = i64_at(&rows, "slot_id", row);
        let slot_of = |open: &HashMap<(String, i64), Option<i64>>| {
            session.and_then(|s| open.get(&(client.clone(), s)).copied().flatten())
        };
        match func.as_str() {
            "C_OpenSession" if ok => {
                if let Some(session) = session {
                    sessions.opened += 1;
                    open.insert((client, session), slot);
                    sessions.max_concurrent = sessions.max_concurrent.max(open.len() as u64);
                }
            }
            "C_CloseSession" if ok => {
                if let Some(session) = session
                    && open.remove(&(client, session)).is_some()
                {
                    sessions.closed += 1;
                }
            }
            "C_CloseAllSessions" if ok => {
                let before = open.len();
                open.retain(|(c, _), s| !(c == &client && (slot.is_none() || *s == slot)));
                sessions.closed += (before - open.len()) as u64;
            }
            "C_Login" | "C_LoginUser" => {
                if ok {
                    sessions.logins += 1;
                    logged_in.insert((client.clone(), slot_of(&open)));
                } else {
                    sessions.failed_logins += 1;
                }
            }
            "C_Logout" if ok => {
                sessions.logouts += 1;
                let slot = slot_of(&open);
                if !logged_in.remove(&(client.clone(), slot)) {
                    logged_in.retain(|(c, _)| c != &client);
                }
            }
            "C_Finalize" if ok => {
                let before = open.len();
                open.retain(|(c, _), _| c != &client);
                sessions.closed_by_finalize += (before - open.len()) as u64;
            }
            _ => {}
        }
    }
    sessions.never_closed = open.len() as u64;
    let mut examples: Vec<(String, i64)> = open.into_keys().collect();
    examples.sort();
    examples.truncate(10);
    sessions.never_closed_examples = examples;
    sessions.left_logged_in = logged_in.len() as u64;
    Ok(sessions)
}
