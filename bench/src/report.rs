//! The one table `p11trace-bench` prints, and the JSON it can save.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

/// Whether a figure meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Met,
    Missed,
    /// Reported, not targeted.
    Info,
}

impl Verdict {
    pub fn check(met: bool) -> Verdict {
        if met { Verdict::Met } else { Verdict::Missed }
    }

    fn mark(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::Info => "",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub bench: &'static str,
    pub subject: String,
    pub figure: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Line {
    pub fn info(
        bench: &'static str,
        subject: impl Into<String>,
        figure: impl Into<String>,
    ) -> Line {
        Line {
            bench,
            subject: subject.into(),
            figure: figure.into(),
            target: String::new(),
            verdict: Verdict::Info,
        }
    }

    pub fn target(
        bench: &'static str,
        subject: impl Into<String>,
        figure: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) -> Line {
        Line {
            bench,
            subject: subject.into(),
            figure: figure.into(),
            target: target.into(),
            verdict: Verdict::check(met),
        }
    }
}

pub fn render(lines: &[Line]) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(["benchmark", "what", "measured", "target", ""]);
    for line in lines {
        table.add_row([
            line.bench,
            &line.subject,
            &line.figure,
            &line.target,
            line.verdict.mark(),
        ]);
    }
    table.to_string()
}

/// `1234.5` ns → "1.23 µs" etc.
pub fn nanos(ns: f64) -> String {
    match ns.abs() {
        n if n >= 1e9 => format!("{:.2} s", ns / 1e9),
        n if n >= 1e6 => format!("{:.2} ms", ns / 1e6),
        n if n >= 1e4 => format!("{:.1} µs", ns / 1e3),
        n if n >= 1e3 => format!("{:.2} µs", ns / 1e3),
        _ => format!("{ns:.0} ns"),
    }
}

pub fn bytes(n: f64) -> String {
    match n {
        n if n >= 1024.0 * 1024.0 * 1024.0 => format!("{:.2} GiB", n / (1024.0 * 1024.0 * 1024.0)),
        n if n >= 1024.0 * 1024.0 => format!("{:.1} MiB", n / (1024.0 * 1024.0)),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        _ => format!("{n:.0} B"),
    }
}
