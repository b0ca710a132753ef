//! Columns of a collected frame as plain Rust vectors, for the passes that walk calls in order
//! (script alignment, key resolution) rather than aggregate them.

use anyhow::Result;
use polars::prelude::*;

use crate::Explain;

/// A column as optional owned strings (any type cast to text).
pub(crate) fn strings(frame: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    let column = frame.column(name).explain(name)?;
    let column = column.cast(&DataType::String).explain(name)?;
    Ok(column
        .str()
        .explain(name)?
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect())
}

/// A column as optional 64-bit integers (timestamps as their µs).
pub(crate) fn ints(frame: &DataFrame, name: &str) -> Result<Vec<Option<i64>>> {
    let column = frame.column(name).explain(name)?;
    let column = column.cast(&DataType::Int64).explain(name)?;
    Ok(column.i64().explain(name)?.iter().collect())
}

/// A `list<int64>` column; null lists are empty.
pub(crate) fn int_lists(frame: &DataFrame, name: &str) -> Result<Vec<Vec<i64>>> {
    let column = frame.column(name).explain(name)?;
    let lists = column.list().explain(name)?;
    lists
        .amortized_iter()
        .map(|list| match list {
            None => Ok(Vec::new()),
            Some(series) => Ok(series
                .as_ref()
                .i64()
                .explain(name)?
                .iter()
                .flatten()
                .collect()),
        })
        .collect()
}
