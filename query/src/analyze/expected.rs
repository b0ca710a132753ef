//! Expected non-OK return codes: the protocol's own idioms that a healthy application meets,
//! told apart from real failures (`schemas/analysis.md`, "Expected return codes").
//!
//! - **A size query retried**: `CKR_BUFFER_TOO_SMALL` whose next call on the same thread of the
//!   same process is the same function on the same session and returns `CKR_OK` (PKCS#11 3.1
//!   §5.2, "Conventions for functions returning output in a variable-length buffer").
//! - **Attribute probes**: `C_GetAttributeValue` answering `CKR_ATTRIBUTE_TYPE_INVALID` (the object
//!   has no such attribute) or `CKR_ATTRIBUTE_SENSITIVE` (it may not be revealed): the call still
//!   fills every other attribute of the template and marks the rest unavailable (§5.7.6), so
//!   clients ask for more than an object may have and read the answer per attribute.
//! - **Mechanism probes**: `C_GetMechanismInfo` answering `CKR_MECHANISM_INVALID`: the client
//!   asked whether the token supports a mechanism, and it does not (§5.5.5).
//!
//! Everything else that is not `CKR_OK` is a failure — `CKR_BUFFER_TOO_SMALL` not followed by a
//! successful retry too.
//!
//! The rules are [`is_probe`] and [`is_retry`], applied by the read that `analyze` folds
//! (`scan`), which also names the size queries retried; [`mark`] carries that verdict into a
//! polars frame for the HTML report's per-call charts.

use polars::prelude::*;

/// `CKR_ATTRIBUTE_SENSITIVE`.
pub const CKR_ATTRIBUTE_SENSITIVE: i64 = 0x11;
/// `CKR_ATTRIBUTE_TYPE_INVALID`.
pub const CKR_ATTRIBUTE_TYPE_INVALID: i64 = 0x12;
/// `CKR_MECHANISM_INVALID`.
pub const CKR_MECHANISM_INVALID: i64 = 0x70;
/// `CKR_BUFFER_TOO_SMALL`.
pub const CKR_BUFFER_TOO_SMALL: i64 = 0x150;

/// A probe: an attribute or mechanism asked for that the object or token does not have.
pub fn is_probe(func: Option<&str>, rv: i64) -> bool {
    match func {
        Some("C_GetAttributeValue") => {
            rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE
        }
        Some("C_GetMechanismInfo") => rv == CKR_MECHANISM_INVALID,
        _ => false,
    }
}

/// A size query retried: `CKR_BUFFER_TOO_SMALL`, and the next call on its thread is the same
/// function on the same session (both without one counts as the same) and returns `CKR_OK`.
pub fn is_retry(rv: i64, func: u32, session: i64, next: (u32, i64, i64)) -> bool {
    let (next_func, next_session, next_rv) = next;
    rv == CKR_BUFFER_TOO_SMALL && next_func == func && next_session == session && next_rv == 0
}

/// The column that marks expected non-OK calls.
pub const EXPECTED: &str = "expected";

/// `calls` with a boolean `expected` column, for the per-call charts of the HTML report: true
/// for a returned call that is a probe, or one of the size queries `retried` (`(client_id, seq)`,
/// found by `analyze`'s read with [`is_retry`]). Needs `client_id`, `seq`, `func`, `rv`,
/// `returned`; the calls keep their order.
pub fn mark(calls: DataFrame, retried: &[(String, i64)]) -> PolarsResult<DataFrame> {
    let attribute_probe = col("func").eq(lit("C_GetAttributeValue")).and(
        col("rv")
            .eq(lit(CKR_ATTRIBUTE_TYPE_INVALID))
            .or(col("rv").eq(lit(CKR_ATTRIBUTE_SENSITIVE))),
    );
    let mechanism_probe = col("func")
        .eq(lit("C_GetMechanismInfo"))
        .and(col("rv").eq(lit(CKR_MECHANISM_INVALID)));
    let probes = attribute_probe.or(mechanism_probe);
    if retried.is_empty() {
        return calls
            .lazy()
            .with_column(
                col("returned")
                    .and(probes)
                    .fill_null(lit(false))
                    .alias(EXPECTED),
            )
            .collect();
    }
    let retried = df! {
        "client_id" => retried.iter().map(|(client, _)| client.as_str()).collect::<Vec<_>>(),
        "seq" => retried.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(),
        "retried" => vec![true; retried.len()],
    }?;
    let mut matched = JoinArgs::new(JoinType::Left);
    // The calls keep their order: what follows takes firsts per client and sorts stably.
    matched.maintain_order = MaintainOrderJoin::Left;
    calls
        .lazy()
        .join(
            retried.lazy(),
            [col("client_id"), col("seq")],
            [col("client_id"), col("seq")],
            matched,
        )
        .with_column(
            col("returned")
                .and(col("retried").fill_null(lit(false)).or(probes))
                .fill_null(lit(false))
                .alias(EXPECTED),
        )
        .drop(by_name(["retried"], true, false))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread of `n` calls in order; every 7th is a size query retried by the next call.
    fn calls(n: i64) -> DataFrame {
        let seq: Vec<i64> = (0..n).collect();
        let rv: Vec<i64> = seq
            .iter()
            .map(|s| if s % 7 == 0 { CKR_BUFFER_TOO_SMALL } else { 0 })
            .collect();
        df! {
            "client_id" => vec!["c"; n as usize],
            "tid" => vec![1i64; n as usize],
            "seq" => seq,
            "func" => vec!["C_Sign"; n as usize],
            "session" => vec![1i64; n as usize],
            "rv" => rv,
            "returned" => vec![true; n as usize],
        }
        .expect("a frame")
    }

    #[test]
    fn marking_keeps_every_call_in_its_place() {
        let n = 400_000;
        let retried: Vec<(String, i64)> = (0..n)
            .filter(|s| s % 7 == 0)
            .map(|s| ("c".to_owned(), s))
            .collect();
        let marked = mark(calls(n), &retried).expect("marked");
        let seq: Vec<Option<i64>> = marked
            .column("seq")
            .unwrap()
            .i64()
            .unwrap()
            .iter()
            .collect();
        assert!(
            seq.iter().copied().eq((0..n).map(Some)),
            "the calls come back in their order"
        );
        let expected = marked.column(EXPECTED).unwrap().bool().unwrap();
        assert_eq!(expected.sum(), Some((n as u32).div_ceil(7)));
    }
}
