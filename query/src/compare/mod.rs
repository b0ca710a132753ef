//! `compare` and `diff`: two sides — two inputs, or the groups of one input — reduced to per
//! (function, mechanism) samples ([`side`]), then weighed: side by side with confidence intervals
//! and a compatibility answer ([`report`]), or as a regression gate with verdicts and an exit
//! status ([`diff`]). The statistics are `crate::stats`'.

pub mod align;
pub mod analysis_json;
pub mod diff;
pub mod drift;
pub mod mechanisms;
pub mod reduce;
pub mod render;
pub mod report;
pub mod rows;
pub mod scan;
pub mod side;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustc_hash::FxHashMap;

use crate::cli::{By, Filters, InputArgs};
use crate::filters::Criteria;
use crate::input;
use rows::Rows;
use side::Side;

/// An `analyze --format json` report rather than calls (its first key is `analysis_version`).
pub fn is_analysis_json(path: &Path) -> bool {
    let mut head = [0u8; 512];
    let read = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&head[..read]);
    text.trim_start().starts_with('{') && text.contains("\"analysis_version\"")
}

/// The calls of `inputs` read for a comparison (split `--by` a column when given), each row
/// marked with the filters' verdict, and every operation's mechanism resolved.
/// `ordered`: keep start times (for the scripts; `--by` always does).
pub fn load_rows(
    inputs: &[PathBuf],
    input_args: &InputArgs,
    filters: &Filters,
    by: Option<By>,
    ordered: bool,
) -> Result<Rows> {
    let located = input::locate(
        inputs,
        input_args.input_format,
        &input_args.import_options(),
    )?;
    let criteria = Criteria::parse(filters)?;
    // Scripts are kept up to `SCRIPT_LIMIT` calls: without a filter, a side whose files hold
    // more rows than twice that cannot qualify, and its start times need not be held.
    let ordered = by.is_some()
        || (ordered && {
            let mut total = 0u64;
            for file in &located.calls {
                total = total.saturating_add(crate::direct::footer_rows(file)?);
            }
            !criteria.is_empty() || total <= 2 * side::SCRIPT_LIMIT as u64
        });
    let plan = scan::Plan {
        criteria: &criteria,
        by,
        ordered,
    };
    scan::read(&located.calls, &plan)
}

/// One side from one input path: calls (any input `analyze` reads) or an analysis JSON report.
pub fn load_side(
    path: &Path,
    name: Option<&str>,
    input_args: &InputArgs,
    filters: &Filters,
    want_scripts: bool,
) -> Result<Side> {
    let shown = path.display().to_string();
    if !path.exists() && !input::remote::is_remote(path) {
        bail!("{shown}: no such file or folder");
    }
    let mut side = if is_analysis_json(path) {
        analysis_json::from_analysis_json(shown.clone(), path)?
    } else {
        let read = |ordered| {
            load_rows(&[path.to_owned()], input_args, filters, None, ordered)
                .with_context(|| format!("cannot read {shown}"))
        };
        let rows = read(want_scripts)?;
        let side = side::from_rows(shown.clone(), &rows, None, want_scripts)?;
        if side.scripts.is_none()
            && want_scripts
            && !rows.ordered
            && side.calls as usize <= side::SCRIPT_LIMIT
        {
            // Mostly the shim's own calls, which the footers count: read again, in order.
            side::from_rows(shown.clone(), &read(true)?, None, true)?
        } else {
            side
        }
    };
    side.name = match name {
        Some(name) => name.to_owned(),
        None => side.name.clone(),
    };
    Ok(side)
}

/// The groups of rows read `--by` a column, in order of each group's first call (then by
/// name): (name, group id), rows without a value in `(unknown)`.
pub fn split(rows: &Rows) -> Vec<(String, u32)> {
    let mut first: FxHashMap<u32, (u8, i64)> = FxHashMap::default();
    for chunk in &rows.chunks {
        for (&group, &start) in chunk.group.iter().zip(&chunk.start) {
            let start = if start == rows::NULL {
                (1, 0)
            } else {
                (0, start)
            };
            let earliest = first.entry(group).or_insert(start);
            *earliest = (*earliest).min(start);
        }
    }
    let name = |group: u32| match rows.groups.name(group) {
        Some(name) => name.to_owned(),
        None => "(unknown)".to_owned(),
    };
    let mut groups: Vec<((u8, i64), String, u32)> = first
        .into_iter()
        .map(|(group, start)| (start, name(group), group))
        .collect();
    groups.sort();
    groups
        .into_iter()
        .map(|(_, name, group)| (name, group))
        .collect()
}

/// Gives sides that would share a name distinct ones (`… (A)`, `… (B)`).
pub fn distinct_names(sides: &mut [Side]) {
    let letters = ["A", "B", "C", "D", "E", "F", "G", "H"];
    let names: Vec<String> = sides.iter().map(|s| s.name.clone()).collect();
    for (index, side) in sides.iter_mut().enumerate() {
        if names.iter().filter(|n| **n == side.name).count() > 1 {
            let letter = letters.get(index).copied().unwrap_or("?");
            side.name = format!("{} ({letter})", side.name);
        }
    }
}
