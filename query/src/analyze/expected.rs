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

use polars::prelude::*;

/// `CKR_ATTRIBUTE_SENSITIVE`.
pub const CKR_ATTRIBUTE_SENSITIVE: i64 = 0x11;
/// `CKR_ATTRIBUTE_TYPE_INVALID`.
pub const CKR_ATTRIBUTE_TYPE_INVALID: i64 = 0x12;
/// `CKR_MECHANISM_INVALID`.
pub const CKR_MECHANISM_INVALID: i64 = 0x70;
/// `CKR_BUFFER_TOO_SMALL`.
pub const CKR_BUFFER_TOO_SMALL: i64 = 0x150;

/// The column that marks expected non-OK calls.
pub const EXPECTED: &str = "expected";

/// `calls` with a boolean `expected` column: true for a call whose non-OK return code is one of
/// the idioms above. Needs `client_id`, `tid`, `seq`, `func`, `session`, `rv`, `returned`. Only
/// the threads that had a `CKR_BUFFER_TOO_SMALL` are put in call order (the one rule that looks
/// at the next call), so a dataset without one pays for no sort.
pub fn mark(calls: DataFrame) -> PolarsResult<DataFrame> {
    let attribute_probe = col("func").eq(lit("C_GetAttributeValue")).and(
        col("rv")
            .eq(lit(CKR_ATTRIBUTE_TYPE_INVALID))
            .or(col("rv").eq(lit(CKR_ATTRIBUTE_SENSITIVE))),
    );
    let mechanism_probe = col("func")
        .eq(lit("C_GetMechanismInfo"))
        .and(col("rv").eq(lit(CKR_MECHANISM_INVALID)));
    let probes = attribute_probe.or(mechanism_probe);
    let too_small = calls
        .column("rv")?
        .as_materialized_series()
        .equal(CKR_BUFFER_TOO_SMALL)?
        .any();
    if !too_small {
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
    let retried = retried_size_queries(&calls)?;
    let mut matched = JoinArgs::new(JoinType::Left);
    matched.nulls_equal = true;
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

/// `(client_id, seq, retried = true)` of every `CKR_BUFFER_TOO_SMALL` whose next call on its
/// thread is the same function on the same session, returning `CKR_OK`.
fn retried_size_queries(calls: &DataFrame) -> PolarsResult<DataFrame> {
    let thread = [col("client_id"), col("tid")];
    let threads = calls
        .clone()
        .lazy()
        .filter(col("rv").eq(lit(CKR_BUFFER_TOO_SMALL)))
        .select(thread.clone())
        .unique(None, UniqueKeepStrategy::Any);
    let mut same_thread = JoinArgs::new(JoinType::Semi);
    same_thread.nulls_equal = true;
    let next = |name: &str| -> PolarsResult<Expr> {
        Ok(col(name)
            .shift(lit(-1))
            .over(thread.clone())?
            .alias(format!("next_{name}")))
    };
    let same_session = col("session")
        .eq(col("next_session"))
        .or(col("session").is_null().and(col("next_session").is_null()));
    let retried = col("rv")
        .eq(lit(CKR_BUFFER_TOO_SMALL))
        .and(col("next_func").eq(col("func")))
        .and(same_session)
        .and(col("next_rv").eq(lit(0i64)))
        .fill_null(lit(false));
    calls
        .clone()
        .lazy()
        .select([
            col("client_id"),
            col("tid"),
            col("seq"),
            col("func"),
            col("session"),
            col("rv"),
        ])
        .join(threads, thread.clone(), thread.clone(), same_thread)
        .sort(
            ["client_id", "tid", "seq"],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .with_columns([next("func")?, next("session")?, next("rv")?])
        .filter(retried)
        .select([col("client_id"), col("seq"), lit(true).alias("retried")])
        // One row per call, so the join back never multiplies a call (should `seq` repeat).
        .unique(None, UniqueKeepStrategy::Any)
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
        let marked = mark(calls(n)).expect("marked");
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
