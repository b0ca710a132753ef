//! The page: one HTML document with its style inline and no script, the analysis' tables and
//! the charts' SVG. Every string from the data goes through [`escape`].

use std::fmt::Write;

use super::charts::phase_css;
use super::data::Phase;
use super::format::escape;
use super::{Charts, ReportInput};
use crate::analyze::Report;
use crate::analyze::units::{duration_ms, duration_ns};
use crate::compare::report::{Comparison, Dist, Report as CompareReport};

const STYLE: &str = "\
body{font-family:sans-serif;margin:24px auto;max-width:1240px;color:#222;background:#fafafa}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0 16px;background:#fff}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;font-size:14px}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#eef2f7}
figure.chart{margin:8px 0 24px;background:#fff;border:1px solid #ddd}
figure.chart svg{display:block;max-width:100%;height:auto}
figcaption{font-size:13px;color:#555;padding:4px 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#fff;border:1px solid #ddd;padding:10px 16px;min-width:150px}
.card b{display:block;font-size:22px}.card span{font-size:13px;color:#555}
.legend span{margin-right:18px;font-size:14px}.legend i{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:6px}
.bad{color:#c00}.muted{color:#777;font-size:13px}";

pub(super) fn cell(out: &mut String, text: &str) {
    let _ = write!(out, "<td>{}</td>", escape(text));
}

pub(super) fn number(out: &mut String, text: &str) {
    let _ = write!(out, "<td class=\"n\">{}</td>", escape(text));
}

pub(super) fn header(out: &mut String, columns: &[&str]) {
    out.push_str("<table><thead><tr>");
    for column in columns {
        let _ = write!(out, "<th>{}</th>", escape(column));
    }
    out.push_str("</tr></thead><tbody>");
}

fn card(out: &mut String, value: &str, label: &str, bad: bool) {
    let class = if bad { " class=\"bad\"" } else { "" };
    let _ = write!(
        out,
        "<div class=\"card\"><b{class}>{}</b><span>{}</span></div>",
        escape(value),
        escape(label)
    );
}

/// A chart in its figure, or a line saying why there is none.
fn figure(out: &mut String, id: &str, svg: &Option<String>, caption: &str, empty: &str) {
    match svg {
        Some(svg) => {
            let _ = write!(
                out,
                "<figure class=\"chart\" id=\"{id}\">{svg}<figcaption>{}</figcaption></figure>",
                escape(caption)
            );
        }
        None => {
            let _ = write!(
                out,
                "<p class=\"muted\" id=\"{id}-empty\">{}</p>",
                escape(empty)
            );
        }
    }
}

fn summary(out: &mut String, report: &Report) {
    let s = &report.summary;
    out.push_str("<section id=\"summary\"><h2>Summary</h2><div class=\"cards\">");
    card(out, &s.total_operations.to_string(), "calls", false);
    card(
        out,
        &s.successful_operations.to_string(),
        "returned CKR_OK",
        false,
    );
    card(
        out,
        &s.failed_operations.to_string(),
        "failed",
        s.failed_operations > 0,
    );
    card(
        out,
        &s.expected_nonok_operations.to_string(),
        "expected non-OK (probes, retried size queries)",
        false,
    );
    card(
        out,
        &format!("{} %", s.failure_rate_percent),
        "failure rate",
        false,
    );
    card(out, &s.processes.to_string(), "processes", false);
    card(
        out,
        &report.sessions.opened.to_string(),
        "sessions opened",
        false,
    );
    card(
        out,
        &duration_ms(s.total_duration_ms),
        "time in calls",
        false,
    );
    card(
        out,
        &duration_ms(s.time_span_ms),
        "first to last call",
        false,
    );
    out.push_str("</div>");
    let first = s.first_call.as_deref().unwrap_or("–");
    let last = s.last_call.as_deref().unwrap_or("–");
    let _ = write!(
        out,
        "<p class=\"muted\">From {} to {}; {} client(s); {} call(s) never returned. \
         Sessions: {} opened, {} closed, {} closed by C_Finalize, {} never closed, at most {} \
         open at once; {} login(s), {} failed, {} logout(s).</p>",
        escape(first),
        escape(last),
        s.clients,
        s.unreturned_operations,
        report.sessions.opened,
        report.sessions.closed,
        report.sessions.closed_by_finalize,
        report.sessions.never_closed,
        report.sessions.max_concurrent,
        report.sessions.logins,
        report.sessions.failed_logins,
        report.sessions.logouts,
    );
    if !report.issues.is_empty() {
        out.push_str("<ul id=\"issues\">");
        for issue in &report.issues {
            let _ = write!(
                out,
                "<li><b>{}</b> {}</li>",
                escape(issue.severity),
                escape(&issue.message)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
}

fn functions(out: &mut String, report: &Report) {
    out.push_str("<section id=\"functions\"><h2>Functions</h2>");
    header(
        out,
        &[
            "function",
            "calls",
            "failed",
            "share of time",
            "mean",
            "p50",
            "p95",
            "p99",
            "max",
        ],
    );
    for frequency in &report.frequency {
        let Some(stats) = report.performance.get(&frequency.func) else {
            continue;
        };
        out.push_str("<tr>");
        cell(out, &frequency.func);
        number(out, &stats.count.to_string());
        number(out, &stats.failed.to_string());
        number(
            out,
            &stats
                .share_percent
                .map_or_else(|| "–".to_owned(), |p| format!("{p} %")),
        );
        for value in [
            stats.mean_ms,
            stats.p50_ms,
            stats.p95_ms,
            stats.p99_ms,
            stats.max_ms,
        ] {
            number(out, &duration_ms(value));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>");
}

fn processes(out: &mut String, report: &Report) {
    out.push_str("<section id=\"processes\"><h2>Processes</h2>");
    header(out, &["process", "pid", "calls", "failed", "time in calls"]);
    for process in &report.by_process {
        out.push_str("<tr>");
        cell(out, process.process.as_deref().unwrap_or("–"));
        number(
            out,
            &process
                .pid
                .map_or_else(|| "–".to_owned(), |p| p.to_string()),
        );
        number(out, &process.calls.to_string());
        number(out, &process.failed.to_string());
        number(out, &duration_ms(process.total_ms));
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>");
}

fn errors(out: &mut String, charts: &Charts) {
    out.push_str("<section id=\"errors\"><h2>Errors</h2>");
    if charts.data.errors.is_empty() {
        out.push_str("<p id=\"no-errors\">Every call that returned, returned CKR_OK.</p>");
    } else {
        out.push_str(
            "<p>Every call that did not return CKR_OK. <em>expected</em>: one of the protocol's \
             idioms (an attribute probe, a size query retried at once), not a failure.</p>",
        );
        header(
            out,
            &["function", "return code", "value", "calls", "expected"],
        );
        for error in &charts.data.errors {
            out.push_str("<tr>");
            cell(out, &error.func);
            cell(out, error.rv_name.as_deref().unwrap_or("(unnamed)"));
            number(
                out,
                &error
                    .rv
                    .map_or_else(|| "–".to_owned(), |rv| format!("0x{rv:08X}")),
            );
            number(out, &error.count.to_string());
            cell(out, if error.expected { "yes" } else { "no" });
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
}

fn comparison(out: &mut String, comparison: &Comparison, svg: &Option<String>) {
    let _ = write!(
        out,
        "<h3>B = {} against A = {}</h3>",
        escape(&comparison.b),
        escape(&comparison.a)
    );
    figure(
        out,
        "compare-chart",
        svg,
        "Median latency of B over A per function, with its 95 % bootstrap interval.",
        "No function has successful timed calls on both sides.",
    );
    header(
        out,
        &[
            "function", "calls A", "calls B", "p50 A", "p50 B", "p99 A", "p99 B", "B / A",
            "interval",
        ],
    );
    let latency = duration_ns;
    for row in &comparison.functions {
        out.push_str("<tr>");
        cell(out, &row.func);
        for dist in [&row.a, &row.b] {
            number(out, &dist.as_ref().map_or(0, |d| d.calls).to_string());
        }
        let picks: [fn(&Dist) -> Option<f64>; 2] = [|d| d.p50_ns, |d| d.p99_ns];
        for pick in picks {
            for dist in [&row.a, &row.b] {
                number(out, &latency(dist.as_ref().and_then(pick)));
            }
        }
        match row.median_ratio {
            Some(ratio) => {
                number(out, &format!("{:.2}×", ratio.estimate));
                number(out, &format!("{:.2}–{:.2}", ratio.lo, ratio.hi));
            }
            None => {
                number(out, "–");
                number(out, "–");
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    if comparison.compatibility.is_empty() {
        out.push_str("<p>Compatibility: what works on one side works on the other.</p>");
    } else {
        out.push_str("<h4>Works on one side, fails on the other</h4>");
        header(
            out,
            &[
                "function",
                "mechanism",
                "A",
                "B",
                "return codes A",
                "return codes B",
            ],
        );
        let codes = |map: &std::collections::BTreeMap<String, u64>| {
            map.iter()
                .map(|(rv, n)| format!("{rv} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for row in &comparison.compatibility {
            out.push_str("<tr>");
            cell(out, &row.func);
            cell(out, row.mechanism.as_deref().unwrap_or("–"));
            cell(out, row.a);
            cell(out, row.b);
            cell(out, &codes(&row.rv_a));
            cell(out, &codes(&row.rv_b));
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
    }
    let alignment = &comparison.alignment;
    let _ = write!(
        out,
        "<p class=\"muted\">Scripts: {} ({} client(s) against {}); {} aligned call(s) with \
         other return codes.</p>",
        escape(alignment.status),
        alignment.clients_a,
        alignment.clients_b,
        alignment.rv_differences
    );
}

fn compare(out: &mut String, report: &CompareReport, svgs: &[Option<String>]) {
    out.push_str("<section id=\"compare\"><h2>Compare</h2>");
    let _ = write!(out, "<p class=\"muted\">{}</p>", escape(&report.method));
    header(out, &["side", "calls", "clients", "providers", "modules"]);
    for side in &report.sides {
        out.push_str("<tr>");
        cell(out, &side.name);
        number(out, &side.calls.to_string());
        number(out, &side.clients.to_string());
        cell(out, &side.providers.join(", "));
        cell(out, &side.modules.join(", "));
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    for (index, item) in report.comparisons.iter().enumerate() {
        comparison(out, item, svgs.get(index).unwrap_or(&None));
    }
    out.push_str("</section>");
}

/// The whole document.
pub fn render(input: &ReportInput, charts: &Charts) -> String {
    let report = &input.analysis;
    let mut out = String::with_capacity(256 * 1024);
    let title = format!("p11trace report: {}", input.title);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\
         <h1>PKCS#11 Operation Analysis</h1><p class=\"muted\" id=\"inputs\">{}</p>",
        escape(&title),
        escape(&input.title),
    );
    summary(&mut out, report);
    out.push_str("<section id=\"latency\"><h2>Latency per function</h2>");
    figure(
        &mut out,
        "latency-chart",
        &charts.latency,
        "Each function's calls: the box holds the middle half, the dark bar is the median, the \
         red dot p95, the whiskers the fastest and the slowest call. In brackets: timed calls.",
        "No call has a duration (pkcs11-spy logs without timing).",
    );
    out.push_str("</section>");
    out.push_str("<section id=\"over-time\"><h2>Calls over time</h2>");
    figure(
        &mut out,
        "calls-over-time-chart",
        &charts.over_time,
        "Calls started in each time bucket, one line per process.",
        "No call has a start time.",
    );
    out.push_str("</section>");
    out.push_str("<section id=\"sessions\"><h2>Session timeline</h2>");
    let timeline = &charts.data.timeline;
    let mut caption = String::from(
        "One lane per process and thread: each session a bar from C_OpenSession to its close \
         (grey: never closed); the dots are its calls — open, login, operations, close — and \
         failed calls in red.",
    );
    if timeline.hidden_lanes > 0 {
        let _ = write!(
            caption,
            " {} quieter thread(s) not shown.",
            timeline.hidden_lanes
        );
    }
    if timeline.hidden_marks > 0 {
        let _ = write!(
            caption,
            " {} more call(s) not drawn: every k-th is.",
            timeline.hidden_marks
        );
    }
    figure(
        &mut out,
        "session-timeline-chart",
        &charts.timeline,
        &caption,
        "No call has a start time.",
    );
    if charts.timeline.is_some() {
        out.push_str("<p class=\"legend\" id=\"timeline-legend\">");
        for phase in Phase::ALL {
            let _ = write!(
                out,
                "<span><i style=\"background:{}\"></i>{}</span>",
                phase_css(phase),
                escape(phase.label())
            );
        }
        out.push_str("</p>");
    }
    out.push_str("</section>");
    errors(&mut out, charts);
    functions(&mut out, report);
    processes(&mut out, report);
    if let Some(comparison) = &input.comparison {
        compare(&mut out, comparison, &charts.ratios);
    }
    if let Some(gate) = &input.gate {
        super::gate::section(&mut out, gate);
    }
    out.push_str(
        "<p class=\"muted\">Written by p11trace-query report. The numbers are those of \
         <code>p11trace-query analyze</code> (JSON keys: schemas/analysis.md).</p></body></html>\n",
    );
    out
}
