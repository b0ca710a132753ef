//! The regression gate's view of two inputs: what `p11trace-query diff A B` decides with its
//! default settings (A the baseline, B the current), as a section of the page — the totals, the
//! exit status the command would have, and every (function, mechanism) whose verdict is not
//! `unchanged`.

use std::fmt::Write;

use super::page::{cell, header, number};
use crate::analyze::units::duration_ns;
use crate::compare::diff::{Change, Entry, Report};

fn change(change: Option<Change>) -> String {
    let Some(change) = change else {
        return "-".to_owned();
    };
    let percent = |v: f64| format!("{:+.1} %", v * 100.0);
    match (change.lo, change.hi) {
        (Some(lo), Some(hi)) => format!(
            "{} [{} … {}]",
            percent(change.estimate),
            percent(lo),
            percent(hi)
        ),
        _ => percent(change.estimate),
    }
}

/// Whether the gate has something to say about `entry`.
fn notable(entry: &Entry) -> bool {
    entry.verdict != "unchanged"
        || entry.rv_verdict != "unchanged"
        || entry.count_verdict != "unchanged"
        || entry.presence != "both"
}

pub fn section(out: &mut String, report: &Report) {
    out.push_str("<section id=\"gate\"><h2>Regression gate</h2>");
    let s = &report.summary;
    let _ = write!(
        out,
        "<p id=\"gate-summary\">As <code>p11trace-query diff A B</code> with its defaults \
         (A = {} the baseline, B = {}): {} row(s); {} regressed, {} improved, {} unchanged, \
         {} with too few calls, {} without durations; return codes regressed in {}, call counts \
         in {}. <b>{}</b></p>",
        super::format::escape(&report.baseline.name),
        super::format::escape(&report.current.name),
        s.entries,
        s.regressed,
        s.improved,
        s.unchanged,
        s.insufficient_data,
        s.no_durations,
        s.rv_regressed,
        s.count_regressed,
        if report.failed {
            "diff would exit 1 (a regression)."
        } else {
            "diff would exit 0."
        },
    );
    let rows: Vec<&Entry> = report.entries.iter().filter(|e| notable(e)).collect();
    if rows.is_empty() {
        out.push_str("<p id=\"gate-quiet\">No (function, mechanism) changed.</p></section>");
        return;
    }
    header(
        out,
        &[
            "function",
            "mechanism",
            "latency",
            "median change [CI]",
            "p50 A",
            "p50 B",
            "return codes",
            "calls",
            "present",
        ],
    );
    for entry in rows {
        out.push_str("<tr class=\"gate-row\">");
        cell(out, &entry.func);
        cell(out, entry.mechanism.as_deref().unwrap_or("-"));
        cell(out, entry.verdict);
        number(out, &change(entry.median_change));
        number(out, &duration_ns(entry.baseline.p50_ns));
        number(out, &duration_ns(entry.current.p50_ns));
        cell(out, entry.rv_verdict);
        cell(out, entry.count_verdict);
        cell(out, entry.presence);
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>");
}
