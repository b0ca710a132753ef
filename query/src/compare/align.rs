//! Script alignment: when both sides ran the same workload, pair their clients in order of first
//! call, align each pair's function sequences (Myers' diff, from the `similar` crate), and list
//! the first aligned calls whose return codes differ and the places where the scripts part.

use serde::Serialize;
use similar::{Algorithm, DiffOp, capture_diff_slices_deadline};

use super::side::Script;

/// Most differences listed per comparison.
pub const MAX_LISTED: usize = 20;

/// Longest a client pair's alignment may take before it settles for an approximate one.
const ALIGN_BUDGET: std::time::Duration = std::time::Duration::from_millis(500);

/// One aligned call whose return code differs, or one run of calls only one side made.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// Index of the client pair (clients in order of their first call).
    pub client: usize,
    /// `rv` (same function, other return code), `only_a` or `only_b` (calls one side made and
    /// the other did not, at this point of the script).
    pub kind: &'static str,
    pub func: String,
    /// `seq` of the call on each side (the first of the run for `only_*`).
    pub seq_a: Option<i64>,
    pub seq_b: Option<i64>,
    pub rv_a: Option<String>,
    pub rv_b: Option<String>,
    /// Calls in the run (1 for `rv`).
    pub calls: usize,
}

/// What the alignment found.
#[derive(Debug, Clone, Serialize)]
pub struct Alignment {
    /// `same_script` (every client pair ran the same function sequence), `diverged` (aligned
    /// with insertions/deletions), `clients_differ` (another number of clients: the first
    /// min(a, b) pairs are aligned), `skipped` (a side has no scripts: too large, or analysis
    /// JSON).
    pub status: &'static str,
    pub clients_a: usize,
    pub clients_b: usize,
    /// Aligned calls whose return codes differ, in all.
    pub rv_differences: usize,
    pub differences: Vec<Difference>,
    /// More differences were found than are listed.
    pub truncated: bool,
}

#[derive(Clone, Copy)]
enum Side {
    A,
    B,
}

/// A run of `calls` calls only `side` made, starting with `first` (function, rv, seq).
fn only(
    client: usize,
    side: Side,
    first: &(String, Option<String>, i64),
    calls: usize,
) -> Difference {
    let (func, rv, seq) = first;
    let (kind, seq_a, seq_b, rv_a, rv_b) = match side {
        Side::A => ("only_a", Some(*seq), None, rv.clone(), None),
        Side::B => ("only_b", None, Some(*seq), None, rv.clone()),
    };
    Difference {
        client,
        kind,
        func: func.clone(),
        seq_a,
        seq_b,
        rv_a,
        rv_b,
        calls,
    }
}

/// Aligns the scripts of two sides.
pub fn align(a: Option<&[Script]>, b: Option<&[Script]>) -> Alignment {
    let (Some(a), Some(b)) = (a, b) else {
        return Alignment {
            status: "skipped",
            clients_a: a.map_or(0, <[Script]>::len),
            clients_b: b.map_or(0, <[Script]>::len),
            rv_differences: 0,
            differences: Vec::new(),
            truncated: false,
        };
    };
    let mut differences = Vec::new();
    let mut rv_differences = 0;
    let mut found = 0usize;
    let mut diverged = false;
    let mut push = |difference: Difference| {
        found += 1;
        if differences.len() < MAX_LISTED {
            differences.push(difference);
        }
    };
    for (client, (left, right)) in a.iter().zip(b).enumerate() {
        let funcs_a: Vec<&str> = left.calls.iter().map(|c| c.0.as_str()).collect();
        let funcs_b: Vec<&str> = right.calls.iter().map(|c| c.0.as_str()).collect();
        // Myers is O((N+M)·D): scripts that part everywhere get an approximate alignment after
        // the deadline rather than a hang.
        let deadline = Some(std::time::Instant::now() + ALIGN_BUDGET);
        for op in capture_diff_slices_deadline(Algorithm::Myers, &funcs_a, &funcs_b, deadline) {
            match op {
                DiffOp::Equal {
                    old_index,
                    new_index,
                    len,
                } => {
                    for offset in 0..len {
                        let (x, y) = (
                            &left.calls[old_index + offset],
                            &right.calls[new_index + offset],
                        );
                        if x.1 != y.1 {
                            rv_differences += 1;
                            push(Difference {
                                client,
                                kind: "rv",
                                func: x.0.clone(),
                                seq_a: Some(x.2),
                                seq_b: Some(y.2),
                                rv_a: x.1.clone(),
                                rv_b: y.1.clone(),
                                calls: 1,
                            });
                        }
                    }
                }
                DiffOp::Delete {
                    old_index, old_len, ..
                } => {
                    diverged = true;
                    push(only(client, Side::A, &left.calls[old_index], old_len));
                }
                DiffOp::Insert {
                    new_index, new_len, ..
                } => {
                    diverged = true;
                    push(only(client, Side::B, &right.calls[new_index], new_len));
                }
                DiffOp::Replace {
                    old_index,
                    old_len,
                    new_index,
                    new_len,
                } => {
                    diverged = true;
                    push(only(client, Side::A, &left.calls[old_index], old_len));
                    push(only(client, Side::B, &right.calls[new_index], new_len));
                }
            }
        }
    }
    let status = if a.len() != b.len() {
        "clients_differ"
    } else if diverged {
        "diverged"
    } else {
        "same_script"
    };
    Alignment {
        status,
        clients_a: a.len(),
        clients_b: b.len(),
        rv_differences,
        truncated: found > differences.len(),
        differences,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(calls: &[(&str, &str)]) -> Script {
        Script {
            client: "c".into(),
            calls: calls
                .iter()
                .enumerate()
                .map(|(i, (f, rv))| ((*f).to_owned(), Some((*rv).to_owned()), i as i64))
                .collect(),
        }
    }

    #[test]
    fn same_script_lists_the_calls_whose_return_codes_differ() {
        let a = [script(&[
            ("C_Initialize", "CKR_OK"),
            ("C_SignInit", "CKR_OK"),
            ("C_Sign", "CKR_OK"),
        ])];
        let b = [script(&[
            ("C_Initialize", "CKR_OK"),
            ("C_SignInit", "CKR_MECHANISM_INVALID"),
            ("C_Sign", "CKR_OPERATION_NOT_INITIALIZED"),
        ])];
        let found = align(Some(&a), Some(&b));
        assert_eq!(found.status, "same_script");
        assert_eq!(found.rv_differences, 2);
        assert_eq!(found.differences[0].func, "C_SignInit");
        assert_eq!(found.differences[0].seq_a, Some(1));
        assert_eq!(
            found.differences[0].rv_b.as_deref(),
            Some("CKR_MECHANISM_INVALID")
        );
    }

    #[test]
    fn a_script_that_skips_calls_is_aligned_around_them() {
        let a = [script(&[
            ("C_Initialize", "CKR_OK"),
            ("C_SignInit", "CKR_OK"),
            ("C_Sign", "CKR_OK"),
            ("C_Finalize", "CKR_OK"),
        ])];
        let b = [script(&[
            ("C_Initialize", "CKR_OK"),
            ("C_SignInit", "CKR_MECHANISM_INVALID"),
            ("C_Finalize", "CKR_OK"),
        ])];
        let found = align(Some(&a), Some(&b));
        assert_eq!(found.status, "diverged");
        assert_eq!(found.rv_differences, 1);
        let only_a: Vec<_> = found
            .differences
            .iter()
            .filter(|d| d.kind == "only_a")
            .collect();
        assert_eq!(only_a.len(), 1);
        assert_eq!(only_a[0].func, "C_Sign");
        assert_eq!(only_a[0].seq_a, Some(2));
    }
}
