//! The audit report (`audit --format json`; keys documented in `schemas/audit.md`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::Caller;
use super::resolve::{Call, Object, Resolver};
use crate::analyze::render::timestamp;

/// `audit_version` of the JSON this build writes.
pub const AUDIT_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct AuditReport {
    pub audit_version: u32,
    /// Calls in the input (after filters).
    pub calls: u64,
    /// Uses of a key (a `C_WrapKey` is two: the wrapping and the wrapped key): each resolved to
    /// one of `keys`, or counted in `unresolved`.
    pub key_uses: u64,
    pub keys: Vec<KeyReport>,
    pub unresolved: Unresolved,
    pub logins: Vec<LoginReport>,
    pub objects: Objects,
}

#[derive(Debug, Default, Serialize)]
pub struct KeyReport {
    /// `private/id=01`, `secret/label=backup`: class and `CKA_ID` (else label).
    pub key: String,
    pub class: Option<String>,
    pub key_type: Option<String>,
    pub id: Option<String>,
    pub label: Option<String>,
    pub calls: u64,
    pub failed: u64,
    pub first_use: Option<String>,
    pub last_use: Option<String>,
    pub operations: Vec<OperationCount>,
    pub processes: Vec<ProcessCount>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct OperationCount {
    pub func: String,
    pub mechanism: Option<String>,
    pub calls: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcessCount {
    pub pid: Option<i64>,
    pub process: Option<String>,
    pub host: Option<String>,
    pub calls: u64,
    pub failed: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Unresolved {
    pub calls: u64,
    pub by_function: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoginReport {
    pub pid: Option<i64>,
    pub process: Option<String>,
    pub host: Option<String>,
    pub user_type: Option<String>,
    pub ok: u64,
    pub failed: u64,
    /// Failed logins by return code.
    pub failures: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Objects {
    pub created: BTreeMap<String, u64>,
    pub destroyed: u64,
}

/// A real failure: not OK, and not the size query the protocol answers with
/// `CKR_BUFFER_TOO_SMALL` before the caller retries.
fn failed(call: &Call, caller: &Caller) -> bool {
    !call.ok && caller.rv_name.as_deref() != Some("CKR_BUFFER_TOO_SMALL")
}

fn merged(objects: &[&Object]) -> Object {
    let mut all = Object::default();
    for object in objects {
        for (slot, value) in [
            (&mut all.class, &object.class),
            (&mut all.key_type, &object.key_type),
            (&mut all.id, &object.id),
            (&mut all.label, &object.label),
        ] {
            if slot.is_none() {
                slot.clone_from(value);
            }
        }
    }
    all
}

/// (calls, failed).
type Tally = (u64, u64);
/// (pid, process, host).
type Who = (Option<i64>, Option<String>, Option<String>);

fn add(tally: &mut Tally, failed: bool) {
    tally.0 += 1;
    tally.1 += u64::from(failed);
}

pub fn build(total: u64, resolver: &Resolver, calls: &[Call], callers: &[Caller]) -> AuditReport {
    struct Key<'a> {
        objects: Vec<&'a Object>,
        tally: Tally,
        first: Option<i64>,
        last: Option<i64>,
        operations: BTreeMap<(String, Option<String>), Tally>,
        processes: BTreeMap<Who, Tally>,
    }
    let mut keys: BTreeMap<String, Key> = BTreeMap::new();
    let mut unresolved = Unresolved::default();
    for using in &resolver.uses {
        let (call, caller) = (&calls[using.call], &callers[using.call]);
        let object = using.object.map(|o| &resolver.objects[o]);
        let Some((object, identity)) = object.and_then(|o| Some((o, o.identity()?))) else {
            unresolved.calls += 1;
            *unresolved
                .by_function
                .entry(using.role.clone())
                .or_default() += 1;
            continue;
        };
        let key = keys.entry(identity).or_insert_with(|| Key {
            objects: Vec::new(),
            tally: (0, 0),
            first: None,
            last: None,
            operations: BTreeMap::new(),
            processes: BTreeMap::new(),
        });
        if !key.objects.iter().any(|o| std::ptr::eq(*o, object)) {
            key.objects.push(object);
        }
        let failed = failed(call, caller);
        add(&mut key.tally, failed);
        if let Some(start) = caller.start {
            key.first = Some(key.first.map_or(start, |f| f.min(start)));
            key.last = Some(key.last.map_or(start, |l| l.max(start)));
        }
        add(
            key.operations
                .entry((using.role.clone(), using.mechanism.clone()))
                .or_default(),
            failed,
        );
        add(
            key.processes
                .entry((caller.pid, caller.process.clone(), caller.host.clone()))
                .or_default(),
            failed,
        );
    }
    // What every process learnt of a key, not only the ones that used it (the process that
    // generated a key knows its label and type; a signer may have looked it up by id alone).
    let mut everything: BTreeMap<String, Vec<&Object>> = BTreeMap::new();
    for object in &resolver.objects {
        if let Some(identity) = object.identity() {
            everything.entry(identity).or_default().push(object);
        }
    }
    let mut keys: Vec<KeyReport> = keys
        .into_iter()
        .map(|(name, mut key)| {
            key.objects
                .extend(everything.remove(&name).unwrap_or_default());
            let known = merged(&key.objects);
            KeyReport {
                key: name,
                class: known.class,
                key_type: known.key_type,
                id: known.id,
                label: known.label,
                calls: key.tally.0,
                failed: key.tally.1,
                first_use: key.first.map(timestamp),
                last_use: key.last.map(timestamp),
                operations: key
                    .operations
                    .into_iter()
                    .map(|((func, mechanism), (calls, failed))| OperationCount {
                        func,
                        mechanism,
                        calls,
                        failed,
                    })
                    .collect(),
                processes: key
                    .processes
                    .into_iter()
                    .map(|((pid, process, host), (calls, failed))| ProcessCount {
                        pid,
                        process,
                        host,
                        calls,
                        failed,
                    })
                    .collect(),
            }
        })
        .collect();
    keys.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.key.cmp(&b.key)));

    let mut logins: BTreeMap<_, LoginReport> = BTreeMap::new();
    for (call, caller) in calls.iter().zip(callers) {
        if call.func != "C_Login" && call.func != "C_LoginUser" {
            continue;
        }
        let key = (
            caller.pid,
            caller.process.clone(),
            caller.host.clone(),
            caller.user_type.clone(),
        );
        let login = logins.entry(key).or_insert_with(|| LoginReport {
            pid: caller.pid,
            process: caller.process.clone(),
            host: caller.host.clone(),
            user_type: caller.user_type.clone(),
            ok: 0,
            failed: 0,
            failures: BTreeMap::new(),
        });
        if call.ok || caller.rv_name.as_deref() == Some("CKR_USER_ALREADY_LOGGED_IN") {
            login.ok += 1;
        } else {
            login.failed += 1;
            let rv = caller.rv_name.clone().unwrap_or_else(|| "none".to_owned());
            *login.failures.entry(rv).or_default() += 1;
        }
    }
    AuditReport {
        audit_version: AUDIT_VERSION,
        calls: total,
        key_uses: resolver.uses.len() as u64,
        keys,
        unresolved,
        logins: logins.into_values().collect(),
        objects: Objects {
            created: resolver
                .created
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            destroyed: resolver.destroyed,
        },
    }
}
