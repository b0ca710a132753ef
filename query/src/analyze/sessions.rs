//! Session lifecycle: opened, closed, never closed, most open at once, logins and logouts.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::tally::{Calls, Life};
use crate::direct::names::NULL;

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

/// The functions that open, close, log in and finalize.
pub const LIFECYCLE: &[&str] = &[
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_Login",
    "C_LoginUser",
    "C_Logout",
    "C_Finalize",
];

/// The lifecycle calls in call order (start, then client, then `seq`; unknown starts last),
/// replayed.
pub fn lifecycle(calls: &Calls) -> Sessions {
    let client_name = |id: u32| calls.client(id).unwrap_or_default();
    let last = |v: i64| (v == NULL, v);
    let mut rows: Vec<&Life> = calls.tally.life.iter().flatten().collect();
    rows.sort_by(|a, b| {
        (last(a.start), client_name(a.client), last(a.seq)).cmp(&(
            last(b.start),
            client_name(b.client),
            last(b.seq),
        ))
    });
    let some = |v: i64| (v != NULL).then_some(v);
    let mut sessions = Sessions::default();
    // (client, session) -> slot
    let mut open: HashMap<(u32, i64), Option<i64>> = HashMap::new();
    let mut logged_in: HashSet<(u32, Option<i64>)> = HashSet::new();
    for row in rows {
        let client = row.client;
        let ok = row.ok;
        let session = some(row.session);
        let slot = some(row.slot);
        let slot_of = |open: &HashMap<(u32, i64), Option<i64>>| {
            session.and_then(|s| open.get(&(client, s)).copied().flatten())
        };
        match LIFECYCLE
            .get(usize::from(row.kind))
            .copied()
            .unwrap_or_default()
        {
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
                open.retain(|(c, _), s| !(*c == client && (slot.is_none() || *s == slot)));
                sessions.closed += (before - open.len()) as u64;
            }
            "C_Login" | "C_LoginUser" => {
                if ok {
                    sessions.logins += 1;
                    logged_in.insert((client, slot_of(&open)));
                } else {
                    sessions.failed_logins += 1;
                }
            }
            "C_Logout" if ok => {
                sessions.logouts += 1;
                let slot = slot_of(&open);
                if !logged_in.remove(&(client, slot)) {
                    logged_in.retain(|(c, _)| *c != client);
                }
            }
            "C_Finalize" if ok => {
                let before = open.len();
                open.retain(|(c, _), _| *c != client);
                sessions.closed_by_finalize += (before - open.len()) as u64;
            }
            _ => {}
        }
    }
    sessions.never_closed = open.len() as u64;
    let mut examples: Vec<(String, i64)> = open
        .into_keys()
        .map(|(client, session)| (client_name(client).to_owned(), session))
        .collect();
    examples.sort();
    examples.truncate(10);
    sessions.never_closed_examples = examples;
    sessions.left_logged_in = logged_in.len() as u64;
    sessions
}
