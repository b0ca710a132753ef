//! A column's values as the plain values a direct read keeps (arrow-rs arrays in, `i64`s, flags
//! and dictionaries out): the schema's own types copied as they are, other integer and
//! timestamp types (a dataset another tool wrote) widened, anything else a clear error.

use anyhow::{Result, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, DictionaryArray};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, TimeUnit};

use super::names::NULL;

/// A string column as `Dictionary(Int32, Utf8)`: the scan asks the reader for every string
/// column as that type (`direct::hinted`), so any other type is a column that holds no strings.
pub(crate) fn dictionary(column: &ArrayRef) -> Result<&DictionaryArray<Int32Type>> {
    match column.as_dictionary_opt::<Int32Type>() {
        Some(dictionary) if dictionary.values().data_type() == &DataType::Utf8 => Ok(dictionary),
        _ => bail!("a {} column, not strings", column.data_type()),
    }
}

/// `value` in every row of `out` that `nulls` marks null (`out` holds the batch's rows from 0).
pub(crate) fn mark_nulls<T: Copy>(nulls: Option<&NullBuffer>, out: &mut [T], value: T) {
    if let Some(nulls) = nulls {
        for row in nulls.iter().enumerate().filter(|(_, v)| !v).map(|(r, _)| r) {
            out[row] = value;
        }
    }
}

/// An integer column's values (`NULL` for null, a missing column, or a value outside `i64`):
/// narrower integers widened, timestamps in microseconds whatever unit the file stores.
pub(crate) fn ints(column: Option<&ArrayRef>, rows: usize, out: &mut Vec<i64>) -> Result<()> {
    out.clear();
    let Some(column) = column else {
        out.resize(rows, NULL);
        return Ok(());
    };
    match column.data_type() {
        // The schema's own types (every dataset we write): the values copied as they are.
        DataType::Int64 => copy::<Int64Type>(column, out),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            copy::<TimestampMicrosecondType>(column, out)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            widen::<TimestampNanosecondType>(column, out, |ns| Some(ns.div_euclid(1000)))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            widen::<TimestampMillisecondType>(column, out, |ms| ms.checked_mul(1000))
        }
        DataType::Timestamp(TimeUnit::Second, _) => {
            widen::<TimestampSecondType>(column, out, |s| s.checked_mul(1_000_000))
        }
        DataType::Int32 => widen::<Int32Type>(column, out, |v| Some(v.into())),
        DataType::Int16 => widen::<Int16Type>(column, out, |v| Some(v.into())),
        DataType::Int8 => widen::<Int8Type>(column, out, |v| Some(v.into())),
        DataType::UInt64 => widen::<UInt64Type>(column, out, |v| i64::try_from(v).ok()),
        DataType::UInt32 => widen::<UInt32Type>(column, out, |v| Some(v.into())),
        DataType::UInt16 => widen::<UInt16Type>(column, out, |v| Some(v.into())),
        DataType::UInt8 => widen::<UInt8Type>(column, out, |v| Some(v.into())),
        other => bail!("a {other} column, not integers or timestamps"),
    }
    Ok(())
}

/// A column of `i64` values (`T::Native = i64`) appended to `out` as a slice, nulls after.
fn copy<T: ArrowPrimitiveType<Native = i64>>(column: &ArrayRef, out: &mut Vec<i64>) {
    let values = column.as_primitive::<T>();
    out.extend_from_slice(values.values());
    mark_nulls(values.nulls(), out, NULL);
}

/// A column of another primitive type appended to `out`, each value through `to_i64`.
fn widen<T: ArrowPrimitiveType>(
    column: &ArrayRef,
    out: &mut Vec<i64>,
    to_i64: impl Fn(T::Native) -> Option<i64>,
) {
    let values = column.as_primitive::<T>();
    out.extend(values.iter().map(|v| v.and_then(&to_i64).unwrap_or(NULL)));
}

/// A boolean column (`None` for a missing column: every row `default`).
pub(crate) fn bools(column: Option<&ArrayRef>, rows: usize, default: bool) -> Result<Vec<bool>> {
    let Some(column) = column else {
        return Ok(vec![default; rows]);
    };
    let Some(values) = column.as_boolean_opt() else {
        bail!("a {} column, not booleans", column.data_type());
    };
    Ok((0..rows)
        .map(|row| values.is_valid(row) && values.value(row))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{
        BooleanArray, Int32Array, Int64Array, StringArray, TimestampNanosecondArray,
        TimestampSecondArray, UInt64Array,
    };

    use super::*;

    fn read(column: ArrayRef) -> Result<Vec<i64>> {
        let mut out = vec![7];
        ints(Some(&column), column.len(), &mut out)?;
        Ok(out)
    }

    #[test]
    fn integers_of_other_widths_are_widened_with_their_nulls() {
        let column = Arc::new(Int32Array::from(vec![Some(-3), None, Some(i32::MAX)]));
        assert_eq!(read(column).unwrap(), [-3, NULL, i64::from(i32::MAX)]);
        let column = Arc::new(Int64Array::from(vec![None, Some(5)]));
        assert_eq!(read(column).unwrap(), [NULL, 5]);
    }

    #[test]
    fn an_unsigned_value_beyond_i64_is_null() {
        let column = Arc::new(UInt64Array::from(vec![1, u64::MAX]));
        assert_eq!(read(column).unwrap(), [1, NULL]);
    }

    #[test]
    fn timestamps_come_in_microseconds_whatever_their_unit() {
        let ns = TimestampNanosecondArray::from(vec![1_500_999, -1]).with_timezone("UTC");
        assert_eq!(read(Arc::new(ns)).unwrap(), [1_500, -1]);
        let s = TimestampSecondArray::from(vec![2, i64::MAX]);
        assert_eq!(read(Arc::new(s)).unwrap(), [2_000_000, NULL]);
    }

    #[test]
    fn a_column_of_another_kind_is_named_in_the_error() {
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["C_Sign"]));
        let error = read(strings.clone()).unwrap_err().to_string();
        assert!(error.contains("Utf8"), "{error}");
        let error = bools(Some(&strings), 1, true).unwrap_err().to_string();
        assert!(error.contains("not booleans"), "{error}");
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        let error = dictionary(&ints).unwrap_err().to_string();
        assert!(error.contains("Int64"), "{error}");
    }

    #[test]
    fn flags_are_false_where_null_and_the_default_where_missing() {
        let flags: ArrayRef = Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)]));
        assert_eq!(bools(Some(&flags), 3, true).unwrap(), [true, false, false]);
        assert_eq!(bools(None, 2, true).unwrap(), [true, true]);
    }
}
