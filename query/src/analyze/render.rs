//! Rendering a report or a frame: aligned text tables (colour only on a terminal, never with
//! `NO_COLOR`), JSON, JSON lines, CSV and Markdown.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use comfy_table::presets::{ASCII_MARKDOWN, NOTHING};
use comfy_table::{Cell, CellAlignment, Color, Table};
use polars::prelude::*;
use serde_json::{Map, Value};

use super::{Report, units};

/// RFC 3339 UTC rendering of a `start` value.
pub fn timestamp(micros: i64) -> String {
    p11trace_dataset::time::rfc3339(micros)
}

/// One polars value as JSON (timestamps as RFC 3339 strings).
pub fn any_to_json(value: &AnyValue<'_>) -> Value {
    match value {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(*b),
        AnyValue::String(s) => Value::String((*s).to_owned()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::Int8(v) => (*v).into(),
        AnyValue::Int16(v) => (*v).into(),
        AnyValue::Int32(v) => (*v).into(),
        AnyValue::Int64(v) => (*v).into(),
        AnyValue::UInt8(v) => (*v).into(),
        AnyValue::UInt16(v) => (*v).into(),
        AnyValue::UInt32(v) => (*v).into(),
        AnyValue::UInt64(v) => (*v).into(),
        AnyValue::Float32(v) => {
            serde_json::Number::from_f64(f64::from(*v)).map_or(Value::Null, Value::Number)
        }
        AnyValue::Float64(v) => serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number),
        AnyValue::Datetime(v, unit, _) | AnyValue::DatetimeOwned(v, unit, _) => {
            let micros = match unit {
                TimeUnit::Nanoseconds => v.div_euclid(1000),
                TimeUnit::Microseconds => *v,
                TimeUnit::Milliseconds => v * 1000,
            };
            Value::String(timestamp(micros))
        }
        AnyValue::List(series) => Value::Array(series.iter().map(|v| any_to_json(&v)).collect()),
        AnyValue::StructOwned(payload) => {
            let (values, fields) = &**payload;
            Value::Object(
                fields
                    .iter()
                    .zip(values)
                    .map(|(f, v)| (f.name().to_string(), any_to_json(v)))
                    .collect(),
            )
        }
        AnyValue::Struct(index, array, fields) => {
            let mut object = Map::new();
            for (field, child) in fields.iter().zip(array.values()) {
                let series = Series::try_from((field.name().clone(), child.clone())).ok();
                let value =
                    series.and_then(|s| s.get(*index).ok().map(|v| any_to_json(&v.into_static())));
                object.insert(field.name().to_string(), value.unwrap_or(Value::Null));
            }
            Value::Object(object)
        }
        other => Value::String(other.to_string()),
    }
}

/// Every row of `frame` as a JSON object keyed by column name.
pub fn rows_as_json(frame: &DataFrame) -> Result<Vec<Value>> {
    let columns = frame.columns();
    let mut rows = Vec::with_capacity(frame.height());
    for row in 0..frame.height() {
        let mut object = Map::with_capacity(columns.len());
        for column in columns {
            let value = column.get(row)?;
            object.insert(column.name().to_string(), any_to_json(&value));
        }
        rows.push(Value::Object(object));
    }
    Ok(rows)
}

/// Whether to colour text output: only on a terminal, and never with `NO_COLOR` set.
pub fn use_colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub(crate) fn table(headers: &[&str], markdown: bool) -> Table {
    let mut table = Table::new();
    table.load_preset(if markdown { ASCII_MARKDOWN } else { NOTHING });
    if !markdown && !use_colour() {
        table.force_no_tty();
    }
    table.set_header(headers.iter().map(Cell::new).collect::<Vec<_>>());
    table
}

pub(crate) fn number(value: impl ToString) -> Cell {
    Cell::new(value.to_string()).set_alignment(CellAlignment::Right)
}

/// A duration (held in milliseconds) in the unit that fits it: `1.23 µs`, `12.1 ms`.
fn duration(value: Option<f64>) -> Cell {
    number(units::duration_ms(value))
}

/// The report as aligned text (or Markdown) sections.
pub fn report_text(report: &Report, markdown: bool, out: &mut impl Write) -> Result<()> {
    let heading = |title: &str| {
        if markdown {
            format!("\n## {title}\n")
        } else {
            format!("\n{title}\n")
        }
    };
    let colour = !markdown && use_colour();
    let s = &report.summary;
    writeln!(
        out,
        "{}",
        if markdown {
            "# PKCS#11 Operation Analysis"
        } else {
            "PKCS#11 Operation Analysis"
        }
    )?;
    write!(out, "{}", heading("Summary"))?;
    let mut summary = table(&["", ""], markdown);
    summary.add_row(vec![
        Cell::new("total operations"),
        number(s.total_operations),
    ]);
    summary.add_row(vec![
        Cell::new("successful"),
        number(s.successful_operations),
    ]);
    let mut failed = number(format!(
        "{} ({:.2}%)",
        s.failed_operations, s.failure_rate_percent
    ));
    if colour && s.failed_operations > 0 {
        failed = failed.fg(Color::Red);
    }
    summary.add_row(vec![Cell::new("failed"), failed]);
    summary.add_row(vec![
        Cell::new("expected non-OK"),
        number(s.expected_nonok_operations),
    ]);
    if s.unreturned_operations > 0 {
        summary.add_row(vec![
            Cell::new("never returned"),
            number(s.unreturned_operations),
        ]);
    }
    summary.add_row(vec![
        Cell::new("total duration"),
        duration(s.total_duration_ms),
    ]);
    summary.add_row(vec![
        Cell::new("first call"),
        Cell::new(s.first_call.clone().unwrap_or_else(|| "-".into())),
    ]);
    summary.add_row(vec![
        Cell::new("last call"),
        Cell::new(s.last_call.clone().unwrap_or_else(|| "-".into())),
    ]);
    summary.add_row(vec![Cell::new("time span"), duration(s.time_span_ms)]);
    summary.add_row(vec![Cell::new("processes"), number(s.processes)]);
    writeln!(out, "{summary}")?;

    if !report.slowest.is_empty() {
        write!(
            out,
            "{}",
            heading("Slowest functions (share of total time)")
        )?;
        let mut slowest = table(&["function", "total", "share %"], markdown);
        for entry in report.slowest.iter().take(10) {
            slowest.add_row(vec![
                Cell::new(&entry.func),
                duration(Some(entry.total_ms)),
                number(format!("{:.2}", entry.share_percent)),
            ]);
        }
        writeln!(out, "{slowest}")?;
    }

    write!(out, "{}", heading("Per-function latency"))?;
    let mut latency = table(
        &[
            "function", "calls", "failed", "expected", "p50", "p95", "p99", "max",
        ],
        markdown,
    );
    for entry in &report.frequency {
        let stats = &report.performance[&entry.func];
        latency.add_row(vec![
            Cell::new(&entry.func),
            number(stats.count),
            number(stats.failed),
            number(stats.expected_nonok),
            duration(stats.p50_ms),
            duration(stats.p95_ms),
            duration(stats.p99_ms),
            duration(stats.max_ms),
        ]);
    }
    writeln!(out, "{latency}")?;
    writeln!(
        out,
        "{}({}; \"expected\": the protocol's non-OK idioms, schemas/analysis.md)",
        if markdown { "\n" } else { "" },
        units::UNITS_NOTE
    )?;

    write!(out, "{}", heading("Return codes"))?;
    let mut codes = table(&["rv", "name", "expected", "calls", "%"], markdown);
    for code in &report.return_codes {
        codes.add_row(vec![
            number(code.rv.map_or("-".into(), |rv| format!("{rv:#x}"))),
            Cell::new(
                code.rv_name
                    .clone()
                    .unwrap_or_else(|| "(never returned)".into()),
            ),
            Cell::new(match (code.rv, code.expected) {
                (Some(0) | None, _) => "-",
                (_, true) => "yes",
                (_, false) => "no",
            }),
            number(code.count),
            number(format!("{:.2}", code.percent)),
        ]);
    }
    writeln!(out, "{codes}")?;

    write!(out, "{}", heading("Processes"))?;
    let mut processes = table(&["pid", "process", "calls", "failed", "total"], markdown);
    for process in &report.by_process {
        processes.add_row(vec![
            number(process.pid.map_or("-".into(), |p| p.to_string())),
            Cell::new(process.process.clone().unwrap_or_else(|| "-".into())),
            number(process.calls),
            number(process.failed),
            duration(process.total_ms),
        ]);
    }
    writeln!(out, "{processes}")?;

    write!(out, "{}", heading("Providers"))?;
    let mut providers = table(
        &["provider", "calls", "failed", "total", "p50", "p99"],
        markdown,
    );
    for provider in &report.by_provider {
        providers.add_row(vec![
            Cell::new(
                provider
                    .provider
                    .clone()
                    .unwrap_or_else(|| "(unknown)".into()),
            ),
            number(provider.calls),
            number(provider.failed),
            duration(provider.total_ms),
            duration(provider.p50_ms),
            duration(provider.p99_ms),
        ]);
    }
    writeln!(out, "{providers}")?;

    write!(out, "{}", heading("Sessions"))?;
    let ss = &report.sessions;
    let mut sessions = table(&["", ""], markdown);
    for (label, value) in [
        ("opened", ss.opened),
        ("closed", ss.closed),
        ("closed by C_Finalize", ss.closed_by_finalize),
        ("never closed", ss.never_closed),
        ("max concurrent", ss.max_concurrent),
        ("logins", ss.logins),
        ("failed logins", ss.failed_logins),
        ("logouts", ss.logouts),
        ("left logged in", ss.left_logged_in),
    ] {
        sessions.add_row(vec![Cell::new(label), number(value)]);
    }
    writeln!(out, "{sessions}")?;

    write!(out, "{}", heading("Potential issues"))?;
    if report.issues.is_empty() {
        writeln!(out, "none found")?;
    }
    for issue in &report.issues {
        let severity = if colour {
            let code = match issue.severity {
                "critical" => "31",
                "warning" => "33",
                _ => "36",
            };
            format!("\x1b[{code}m{}\x1b[0m", issue.severity)
        } else {
            issue.severity.to_owned()
        };
        writeln!(
            out,
            "{}[{severity}] {}: {}",
            if markdown { "- " } else { "" },
            issue.kind,
            issue.message
        )?;
        for evidence in &issue.evidence {
            writeln!(out, "{}{evidence}", if markdown { "  - " } else { "    " })?;
        }
    }
    Ok(())
}

/// A frame as an aligned text table (or Markdown).
pub fn frame_text(frame: &DataFrame, markdown: bool, out: &mut impl Write) -> Result<()> {
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let mut rendered = table(
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
        markdown,
    );
    for row in rows_as_json(frame)? {
        let cells = names.iter().map(|name| match &row[name.as_str()] {
            Value::Null => Cell::new(""),
            Value::String(s) => Cell::new(s),
            Value::Number(n) => number(n),
            other => Cell::new(other.to_string()),
        });
        rendered.add_row(cells.collect::<Vec<_>>());
    }
    writeln!(out, "{rendered}")?;
    Ok(())
}

/// A frame as CSV (nested values as JSON text).
pub fn frame_csv(frame: &DataFrame, out: &mut impl Write) -> Result<()> {
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let escape = |text: &str| {
        if text.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_owned()
        }
    };
    writeln!(
        out,
        "{}",
        names
            .iter()
            .map(|n| escape(n))
            .collect::<Vec<_>>()
            .join(",")
    )?;
    for row in rows_as_json(frame)? {
        let fields = names.iter().map(|name| match &row[name.as_str()] {
            Value::Null => String::new(),
            Value::String(s) => escape(s),
            other => escape(&other.to_string()),
        });
        writeln!(out, "{}", fields.collect::<Vec<_>>().join(","))?;
    }
    Ok(())
}

/// The per-function statistics as CSV.
pub fn performance_csv(report: &Report, out: &mut impl Write) -> Result<()> {
    let cell = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v}"));
    writeln!(
        out,
        "func,count,failed,expected_nonok,total_ms,share_percent,mean_ms,p50_ms,p95_ms,p99_ms,max_ms"
    )?;
    for entry in &report.frequency {
        let s = &report.performance[&entry.func];
        writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{}",
            entry.func,
            s.count,
            s.failed,
            s.expected_nonok,
            cell(s.total_ms),
            cell(s.share_percent),
            cell(s.mean_ms),
            cell(s.p50_ms),
            cell(s.p95_ms),
            cell(s.p99_ms),
            cell(s.max_ms)
        )?;
    }
    Ok(())
}
