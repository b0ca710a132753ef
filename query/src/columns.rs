//! Columns of a collected frame as plain Rust vectors, for the passes that walk calls in order
//! (script alignment, key resolution) rather than aggregate them; and single cells of small
//! result frames (an aggregate's rows), read leniently: a missing column or a null is `None`.

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

/// The cell at `row` of `column` as an integer.
pub(crate) fn i64_at(frame: &DataFrame, column: &str, row: usize) -> Option<i64> {
    frame.column(column).ok()?.get(row).ok()?.extract::<i64>()
}

pub(crate) fn f64_at(frame: &DataFrame, column: &str, row: usize) -> Option<f64> {
    frame.column(column).ok()?.get(row).ok()?.extract::<f64>()
}

/// A flag cell: only `true` is true.
pub(crate) fn bool_at(frame: &DataFrame, column: &str, row: usize) -> bool {
    frame
        .column(column)
        .ok()
        .and_then(|c| c.get(row).ok())
        .is_some_and(|v| matches!(v, AnyValue::Boolean(true)))
}

/// A text cell (any other type in its text form).
pub(crate) fn str_at(frame: &DataFrame, column: &str, row: usize) -> Option<String> {
    match frame.column(column).ok()?.get(row).ok()? {
        AnyValue::Null => None,
        AnyValue::String(s) => Some(s.to_owned()),
        AnyValue::StringOwned(s) => Some(s.to_string()),
        other => Some(other.to_string()),
    }
}
