//! `compare` and `diff`: two sides — two inputs, or the groups of one input — reduced to per
//! (function, mechanism) samples ([`side`]), then weighed: side by side with confidence intervals
//! and a compatibility answer ([`report`]), or as a regression gate with verdicts and an exit
//! status ([`diff`]). The statistics are `crate::stats`'.

pub mod align;
pub mod analysis_json;
pub mod diff;
pub mod drift;
pub mod reduce;
pub mod render;
pub mod report;
pub mod side;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use polars::prelude::*;

use crate::Explain;
use crate::cli::{By, Filters, InputArgs};
use crate::input;
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

/// The calls of `inputs`, each row marked with the filters' verdict (`__keep`): the rows a filter
/// drops still name their operations' mechanisms (resolved in `reduce`).
pub fn load_calls(
    inputs: &[PathBuf],
    input_args: &InputArgs,
    filters: &Filters,
) -> Result<(LazyFrame, input::Loaded)> {
    let loaded = input::load(
        inputs,
        input_args.input_format,
        &input_args.import_options(),
    )?;
    let keep = crate::filters::predicate(filters)?.unwrap_or(lit(true));
    let calls = loaded
        .calls
        .clone()
        .with_column(keep.fill_null(lit(false)).alias(reduce::KEEP));
    Ok((calls, loaded))
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
    if !path.exists() {
        bail!("{shown}: no such file or folder");
    }
    let mut side = if is_analysis_json(path) {
        analysis_json::from_analysis_json(shown.clone(), path)?
    } else {
        let (calls, _loaded) = load_calls(&[path.to_owned()], input_args, filters)
            .with_context(|| format!("cannot read {shown}"))?;
        side::from_calls(shown.clone(), calls, want_scripts)?
    };
    side.name = match name {
        Some(name) => name.to_owned(),
        None => side.name.clone(),
    };
    Ok(side)
}

/// Splits one input's calls into groups by `by`, in order of each group's first call.
pub fn split(calls: LazyFrame, by: By) -> Result<Vec<(String, LazyFrame)>> {
    let expr = match by {
        By::Provider => col("provider")
            .max()
            .over([col("client_id")])
            .explain("provider per client")?
            .fill_null(col("module")),
        By::Module => col("module"),
        By::Process => col("process"),
        By::RunId => col("run_id"),
        By::Host => col("host"),
    };
    let grouped = calls.with_column(expr.fill_null(lit("(unknown)")).alias("__group"));
    let names = grouped
        .clone()
        .group_by([col("__group")])
        .agg([col("start").min().alias("first"), len().alias("n")])
        .sort(
            ["first", "__group"],
            SortMultipleOptions::default().with_nulls_last(true),
        )
        .collect()
        .explain("cannot split the input")?;
    let column = names.column("__group").explain("groups")?;
    let names: Vec<String> = column
        .str()
        .explain("groups")?
        .iter()
        .flatten()
        .map(str::to_owned)
        .collect();
    Ok(names
        .into_iter()
        .map(|name| {
            let frame = grouped.clone().filter(col("__group").eq(lit(name.clone())));
            (name, frame)
        })
        .collect())
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
