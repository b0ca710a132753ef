//! Independent oracles for the shim's recordings: modules that sit between the shim and the
//! token and log every call they forward, so the recorded sequence can be compared call for call.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use serde_json::Value;

use crate::{SPY, p11count};

/// A call as (func, rv).
pub type Call = (String, String);

/// The calls, in order.
pub type Sequence = Vec<Call>;

/// A logging module between the shim and the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oracle {
    /// OpenSC's pkcs11-spy: prints each function and its return value by name.
    Spy,
    /// Our counting module (`tests/p11count`): `C_Function rv` a line, the rv as a number. For
    /// Kryoptic: OpenSC 0.23's spy loses every call of a 3.2 interface.
    Count,
}

impl Oracle {
    pub fn module(self) -> PathBuf {
        match self {
            Oracle::Spy => PathBuf::from(SPY),
            Oracle::Count => p11count(),
        }
    }

    /// Makes the oracle (loaded by `command`, directly or behind the shim) forward to `real` and
    /// log to `log`.
    pub fn env<'c>(self, command: &'c mut Command, real: &Path, log: &Path) -> &'c mut Command {
        match self {
            Oracle::Spy => command.env("PKCS11SPY", real).env("PKCS11SPY_OUTPUT", log),
            Oracle::Count => command
                .env("P11COUNT_MODULE", real)
                .env("P11COUNT_OUTPUT", log),
        }
    }

    /// The calls its log holds.
    pub fn sequence(self, log: &Path) -> Result<Sequence> {
        let log = std::fs::read_to_string(log)?;
        Ok(match self {
            Oracle::Spy => spy_sequence(&log),
            Oracle::Count => log
                .lines()
                .filter_map(|l| {
                    l.split_once(' ')
                        .map(|(f, rv)| (f.to_owned(), rv.to_owned()))
                })
                .collect(),
        })
    }

    /// The recorded column its return values compare with: the name or the number.
    pub fn rv_column(self) -> &'static str {
        match self {
            Oracle::Spy => "rv_name",
            Oracle::Count => "rv",
        }
    }
}

/// (func, rv) per row: the rv as its name (`rv_name`) or its number (`rv`).
pub fn func_rv(rows: &[Value], rv_column: &str) -> Sequence {
    let rv = |r: &Value| match &r[rv_column] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    rows.iter()
        .map(|r| (r["func"].as_str().unwrap_or("").to_owned(), rv(r)))
        .collect()
}

/// Where two sequences first differ, for messages.
pub fn first_difference<'s>(
    ours: &'s Sequence,
    theirs: &'s Sequence,
) -> Option<(&'s Call, &'s Call)> {
    ours.iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .map(|i| (&ours[i], &theirs[i]))
}

/// pkcs11-spy log lines of `(func, rv_name)` in order, one per record (single-threaded logs).
pub fn spy_sequence(log: &str) -> Sequence {
    let mut sequence = Vec::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some((number, name)) = line.split_once(": ")
            && number.chars().all(|c| c.is_ascii_digit())
            && !number.is_empty()
        {
            current = Some(name.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("Returned:  ") {
            let name = rest.split_whitespace().nth(1).unwrap_or("").to_owned();
            if let Some(func) = current.take() {
                sequence.push((func, name));
            }
        }
    }
    sequence
}
