//! Text, Markdown and CSV renderings of `compare` and `diff` (JSON is the reports serialised).

use std::io::Write;

use anyhow::Result;
use comfy_table::presets::{ASCII_MARKDOWN, NOTHING};
use comfy_table::{Cell, CellAlignment, Table};

use super::diff::{self, Entry};
use super::report::{self, Row};

fn table(headers: &[&str], markdown: bool) -> Table {
    let mut table = Table::new();
    table.load_preset(if markdown { ASCII_MARKDOWN } else { NOTHING });
    table.set_header(headers.iter().map(Cell::new).collect::<Vec<_>>());
    table
}

fn right(text: impl ToString) -> Cell {
    Cell::new(text.to_string()).set_alignment(CellAlignment::Right)
}

/// Nanoseconds as a short human duration: `812 ns`, `12.4 µs`, `3.02 ms`, `1.20 s`.
pub fn duration(ns: Option<f64>) -> String {
    match ns {
        None => "-".to_owned(),
        Some(ns) if ns < 1e3 => format!("{ns:.0} ns"),
        Some(ns) if ns < 1e6 => format!("{:.1} µs", ns / 1e3),
        Some(ns) if ns < 1e9 => format!("{:.2} ms", ns / 1e6),
        Some(ns) => format!("{:.2} s", ns / 1e9),
    }
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

fn signed_percent(change: f64) -> String {
    format!("{:+.1}%", change * 100.0)
}

fn label(func: &str, mechanism: &Option<String>) -> String {
    match mechanism {
        Some(mechanism) => format!("{func} {mechanism}"),
        None => func.to_owned(),
    }
}

fn heading(text: &str, markdown: bool, out: &mut dyn Write) -> Result<()> {
    if markdown {
        writeln!(out, "\n### {text}\n")?;
    } else {
        writeln!(out, "\n{text}")?;
    }
    Ok(())
}

fn compare_rows(rows: &[Row], markdown: bool) -> Table {
    let mut t = table(
        &[
            "function",
            "calls A",
            "calls B",
            "p50 A",
            "p50 B",
            "p95 A",
            "p95 B",
            "p99 A",
            "p99 B",
            "B/A p50 [95% CI]",
            "fail A",
            "fail B",
        ],
        markdown,
    );
    for row in rows {
        let (a, b) = (row.a.as_ref(), row.b.as_ref());
        let ratio = row.median_ratio.map_or("-".to_owned(), |r| {
            format!("{:.2} [{:.2}, {:.2}]", r.estimate, r.lo, r.hi)
        });
        t.add_row(vec![
            Cell::new(label(&row.func, &row.mechanism)),
            right(a.map_or(0, |d| d.calls)),
            right(b.map_or(0, |d| d.calls)),
            right(duration(a.and_then(|d| d.p50_ns))),
            right(duration(b.and_then(|d| d.p50_ns))),
            right(duration(a.and_then(|d| d.p95_ns))),
            right(duration(b.and_then(|d| d.p95_ns))),
            right(duration(a.and_then(|d| d.p99_ns))),
            right(duration(b.and_then(|d| d.p99_ns))),
            right(ratio),
            right(a.map_or("-".into(), |d| percent(d.failure_rate))),
            right(b.map_or("-".into(), |d| percent(d.failure_rate))),
        ]);
    }
    t
}

fn codes(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".to_owned();
    }
    map.iter()
        .map(|(rv, n)| format!("{n}× {rv}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `compare` as aligned text or Markdown.
pub fn compare_text(report: &report::Report, markdown: bool, out: &mut dyn Write) -> Result<()> {
    for side in &report.sides {
        let provider = side.providers.first().map_or("(unknown)", String::as_str);
        let module = side.modules.first().map_or("(unknown)", String::as_str);
        writeln!(
            out,
            "{}: {} calls, {} client(s); provider {provider}; module {module}",
            side.name, side.calls, side.clients
        )?;
    }
    writeln!(out, "Ratios: {}.", report.method)?;
    for comparison in &report.comparisons {
        let title = format!("A = {}, B = {}", comparison.a, comparison.b);
        heading(&format!("{title}: per function"), markdown, out)?;
        writeln!(out, "{}", compare_rows(&comparison.functions, markdown))?;
        if !comparison.mechanisms.is_empty() {
            heading("Per function and mechanism", markdown, out)?;
            writeln!(out, "{}", compare_rows(&comparison.mechanisms, markdown))?;
        }
        heading(
            "Compatibility: works on one side, fails on the other",
            markdown,
            out,
        )?;
        if comparison.compatibility.is_empty() {
            writeln!(
                out,
                "none: every call made on both sides had the same outcome"
            )?;
        } else {
            let mut t = table(
                &["function", "A", "B", "A failures", "B failures"],
                markdown,
            );
            for c in &comparison.compatibility {
                t.add_row(vec![
                    Cell::new(label(&c.func, &c.mechanism)),
                    Cell::new(c.a),
                    Cell::new(c.b),
                    Cell::new(codes(&c.rv_a)),
                    Cell::new(codes(&c.rv_b)),
                ]);
            }
            writeln!(out, "{t}")?;
        }
        let alignment = &comparison.alignment;
        heading(
            &format!(
                "Script alignment: {} ({} vs {} clients), {} aligned call(s) with another return code",
                alignment.status,
                alignment.clients_a,
                alignment.clients_b,
                alignment.rv_differences
            ),
            markdown,
            out,
        )?;
        if !alignment.differences.is_empty() {
            let mut t = table(
                &[
                    "client", "kind", "function", "seq A", "seq B", "rv A", "rv B", "calls",
                ],
                markdown,
            );
            let seq = |s: Option<i64>| s.map_or("-".to_owned(), |s| s.to_string());
            for d in &alignment.differences {
                t.add_row(vec![
                    right(d.client),
                    Cell::new(d.kind),
                    Cell::new(&d.func),
                    right(seq(d.seq_a)),
                    right(seq(d.seq_b)),
                    Cell::new(d.rv_a.as_deref().unwrap_or("-")),
                    Cell::new(d.rv_b.as_deref().unwrap_or("-")),
                    right(d.calls),
                ]);
            }
            writeln!(out, "{t}")?;
            if alignment.truncated {
                writeln!(out, "(more differences not shown)")?;
            }
        }
    }
    Ok(())
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn opt(value: Option<f64>) -> String {
    value.map_or(String::new(), |v| format!("{v}"))
}

/// `compare` as CSV: one line per (comparison, function[, mechanism]).
pub fn compare_csv(report: &report::Report, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "a,b,func,mechanism,calls_a,calls_b,p50_ns_a,p50_ns_b,p95_ns_a,p95_ns_b,p99_ns_a,p99_ns_b,\
         median_ratio,median_ratio_lo,median_ratio_hi,failure_rate_a,failure_rate_b"
    )?;
    for c in &report.comparisons {
        for row in c.functions.iter().chain(&c.mechanisms) {
            let (a, b) = (row.a.as_ref(), row.b.as_ref());
            let fields = [
                csv_field(&c.a),
                csv_field(&c.b),
                row.func.clone(),
                row.mechanism.clone().unwrap_or_default(),
                a.map_or(0, |d| d.calls).to_string(),
                b.map_or(0, |d| d.calls).to_string(),
                opt(a.and_then(|d| d.p50_ns)),
                opt(b.and_then(|d| d.p50_ns)),
                opt(a.and_then(|d| d.p95_ns)),
                opt(b.and_then(|d| d.p95_ns)),
                opt(a.and_then(|d| d.p99_ns)),
                opt(b.and_then(|d| d.p99_ns)),
                opt(row.median_ratio.map(|r| r.estimate)),
                opt(row.median_ratio.map(|r| r.lo)),
                opt(row.median_ratio.map(|r| r.hi)),
                opt(a.map(|d| d.failure_rate)),
                opt(b.map(|d| d.failure_rate)),
            ];
            writeln!(out, "{}", fields.join(","))?;
        }
    }
    Ok(())
}

fn interval(change: Option<diff::Change>) -> String {
    match change {
        None => "-".to_owned(),
        Some(c) => match (c.lo, c.hi) {
            (Some(lo), Some(hi)) => format!(
                "{} [{}, {}]",
                signed_percent(c.estimate),
                signed_percent(lo),
                signed_percent(hi)
            ),
            _ => signed_percent(c.estimate),
        },
    }
}

/// A row worth a line: some verdict says it changed.
fn changed(entry: &Entry) -> bool {
    matches!(entry.verdict, "regressed" | "improved")
        || entry.rv_verdict != "unchanged"
        || entry.count_verdict != "unchanged"
}

/// The one-line summary both renderings start with.
pub fn diff_summary(report: &diff::Report) -> String {
    let s = &report.summary;
    format!(
        "{}: {} latency regression(s), {} improvement(s), {} unchanged, {} without enough data, \
         {} without durations; {} return-code regression(s); {} call-count regression(s) \
         ({} vs {}, fail on {})",
        if report.failed { "FAIL" } else { "PASS" },
        s.regressed,
        s.improved,
        s.unchanged,
        s.insufficient_data,
        s.no_durations,
        s.rv_regressed,
        s.count_regressed,
        report.baseline.name,
        report.current.name,
        report.settings.fail_on.as_str(),
    )
}

/// `diff` as text or Markdown (a pull-request comment: summary, then what changed; unchanged
/// rows collapsed into a count).
pub fn diff_text(report: &diff::Report, markdown: bool, out: &mut dyn Write) -> Result<()> {
    if markdown {
        writeln!(out, "**{}**\n", diff_summary(report))?;
    } else {
        writeln!(out, "{}", diff_summary(report))?;
    }
    let shown: Vec<&Entry> = report.entries.iter().filter(|e| changed(e)).collect();
    if !shown.is_empty() {
        let mut t = table(
            &[
                "function",
                "latency",
                "p50 base",
                "p50 now",
                "p50 change [CI]",
                "p95 change [CI]",
                "p (Holm)",
                "return codes",
                "fail base",
                "fail now",
                "calls/client",
                "count change",
            ],
            markdown,
        );
        for e in &shown {
            let new = e
                .new_failures
                .iter()
                .map(|f| format!("new {}× {}", f.count, f.rv_name))
                .collect::<Vec<_>>()
                .join(", ");
            let rv = if new.is_empty() {
                e.rv_verdict.to_owned()
            } else {
                format!("{} ({new})", e.rv_verdict)
            };
            t.add_row(vec![
                Cell::new(label(&e.func, &e.mechanism)),
                Cell::new(e.verdict),
                right(duration(e.baseline.p50_ns)),
                right(duration(e.current.p50_ns)),
                right(interval(e.median_change)),
                right(interval(e.p95_change)),
                right(e.p_adjusted.map_or("-".to_owned(), |p| format!("{p:.2e}"))),
                Cell::new(rv),
                right(percent(e.baseline.failure_rate)),
                right(percent(e.current.failure_rate)),
                right(format!(
                    "{:.1} → {:.1}",
                    e.baseline.calls_per_client, e.current.calls_per_client
                )),
                Cell::new(format!(
                    "{} {}",
                    e.count_verdict,
                    e.count_change.map_or(String::new(), signed_percent)
                )),
            ]);
        }
        writeln!(out, "{t}")?;
    }
    let quiet = report.entries.len() - shown.len();
    writeln!(
        out,
        "{}{quiet} other (function, mechanism) pair(s): no change found (unchanged, or too few \
         calls to tell).",
        if markdown { "\n" } else { "" }
    )?;
    let drift = &report.drift;
    writeln!(
        out,
        "{}Machine drift: {} (median change of {} tested row(s)); {}.",
        if markdown { "\n" } else { "" },
        signed_percent(drift.ratio - 1.0),
        drift.rows,
        if drift.applied {
            format!(
                "latency verdicts are judged against it, outside a ±{:.0} % band",
                drift.band * 100.0
            )
        } else {
            "not applied".to_owned()
        }
    )?;
    if drift.applied && (drift.ratio - 1.0).abs() > report.settings.threshold {
        writeln!(
            out,
            "Note: the whole run moved by {}: the machine, or a change every call shares. Rerun \
             both on a quiet machine, or judge as measured with --no-drift-correction.",
            signed_percent(drift.ratio - 1.0)
        )?;
    }
    if !markdown {
        writeln!(out, "Method: {}.", report.settings.method)?;
    }
    Ok(())
}

/// `diff` as CSV: one line per entry.
pub fn diff_csv(report: &diff::Report, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "func,mechanism,verdict,rv_verdict,count_verdict,presence,basis,calls_baseline,calls_current,\
         p50_ns_baseline,p50_ns_current,median_change,median_change_lo,median_change_hi,p_value,\
         p_adjusted,failure_rate_baseline,failure_rate_current,count_change"
    )?;
    for e in &report.entries {
        let m = e.median_change;
        let fields = [
            e.func.clone(),
            e.mechanism.clone().unwrap_or_default(),
            e.verdict.to_owned(),
            e.rv_verdict.to_owned(),
            e.count_verdict.to_owned(),
            e.presence.to_owned(),
            e.basis.to_owned(),
            e.baseline.calls.to_string(),
            e.current.calls.to_string(),
            opt(e.baseline.p50_ns),
            opt(e.current.p50_ns),
            opt(m.map(|c| c.estimate)),
            opt(m.and_then(|c| c.lo)),
            opt(m.and_then(|c| c.hi)),
            opt(e.p_value),
            opt(e.p_adjusted),
            e.baseline.failure_rate.to_string(),
            e.current.failure_rate.to_string(),
            opt(e.count_change),
        ];
        writeln!(out, "{}", fields.join(","))?;
    }
    Ok(())
}
