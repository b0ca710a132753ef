//! The audit report as text (or Markdown) tables, and as CSV (one line per key and operation).

use std::io::Write;

use anyhow::Result;
use comfy_table::Cell;

use super::report::AuditReport;
use crate::analyze::render::{number, table};

fn text(value: &Option<String>) -> Cell {
    Cell::new(value.as_deref().unwrap_or("-"))
}

fn heading(title: &str, markdown: bool) -> String {
    if markdown {
        format!("\n## {title}\n")
    } else {
        format!("\n{title}\n")
    }
}

pub fn text_report(report: &AuditReport, markdown: bool, out: &mut impl Write) -> Result<()> {
    let title = "PKCS#11 Key Usage Audit";
    writeln!(
        out,
        "{}",
        if markdown {
            format!("# {title}")
        } else {
            title.to_owned()
        }
    )?;
    let resolved = report.key_uses - report.unresolved.calls;
    writeln!(
        out,
        "\n{} calls; {} key uses: {resolved} resolved to {} key(s), {} unresolved",
        report.calls,
        report.key_uses,
        report.keys.len(),
        report.unresolved.calls
    )?;
    if !report.keys.is_empty() {
        write!(out, "{}", heading("Keys", markdown))?;
        let mut keys = table(
            &[
                "key",
                "type",
                "label",
                "uses",
                "failed",
                "processes",
                "first use",
                "last use",
            ],
            markdown,
        );
        for key in &report.keys {
            keys.add_row(vec![
                Cell::new(&key.key),
                text(&key.key_type),
                text(&key.label),
                number(key.calls),
                number(key.failed),
                number(key.processes.len()),
                text(&key.first_use),
                text(&key.last_use),
            ]);
        }
        writeln!(out, "{keys}")?;
    }
    for key in &report.keys {
        write!(out, "{}", heading(&format!("Key {}", key.key), markdown))?;
        let mut operations = table(&["function", "mechanism", "calls", "failed"], markdown);
        for op in &key.operations {
            operations.add_row(vec![
                Cell::new(&op.func),
                text(&op.mechanism),
                number(op.calls),
                number(op.failed),
            ]);
        }
        writeln!(out, "{operations}")?;
        let mut processes = table(&["process", "pid", "host", "calls", "failed"], markdown);
        for process in &key.processes {
            processes.add_row(vec![
                text(&process.process),
                text(&process.pid.map(|p| p.to_string())),
                text(&process.host),
                number(process.calls),
                number(process.failed),
            ]);
        }
        writeln!(out, "{processes}")?;
    }
    if !report.logins.is_empty() {
        write!(out, "{}", heading("Logins", markdown))?;
        let mut logins = table(
            &[
                "process",
                "pid",
                "host",
                "user type",
                "ok",
                "failed",
                "failures",
            ],
            markdown,
        );
        for login in &report.logins {
            let failures = login
                .failures
                .iter()
                .map(|(rv, n)| format!("{rv} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            logins.add_row(vec![
                text(&login.process),
                text(&login.pid.map(|p| p.to_string())),
                text(&login.host),
                text(&login.user_type),
                number(login.ok),
                number(login.failed),
                Cell::new(failures),
            ]);
        }
        writeln!(out, "{logins}")?;
    }
    write!(out, "{}", heading("Objects", markdown))?;
    let created = report
        .objects
        .created
        .iter()
        .map(|(f, n)| format!("{f} {n}"))
        .collect::<Vec<_>>();
    writeln!(
        out,
        "created {} ({}), destroyed {}",
        report.objects.created.values().sum::<u64>(),
        if created.is_empty() {
            "none".to_owned()
        } else {
            created.join(", ")
        },
        report.objects.destroyed
    )?;
    if report.unresolved.calls > 0 {
        let by = report
            .unresolved
            .by_function
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            out,
            "\nunresolved key uses: {} ({by}): the handle's key was never looked up, created or read in that process",
            report.unresolved.calls
        )?;
    }
    Ok(())
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

pub fn csv(report: &AuditReport, out: &mut impl Write) -> Result<()> {
    writeln!(
        out,
        "key,class,key_type,id,label,func,mechanism,calls,failed"
    )?;
    let field = |v: &Option<String>| csv_field(v.as_deref().unwrap_or(""));
    for key in &report.keys {
        for op in &key.operations {
            writeln!(
                out,
                "{},{},{},{},{},{},{},{},{}",
                csv_field(&key.key),
                field(&key.class),
                field(&key.key_type),
                field(&key.id),
                field(&key.label),
                csv_field(&op.func),
                field(&op.mechanism),
                op.calls,
                op.failed
            )?;
        }
    }
    for (func, calls) in &report.unresolved.by_function {
        writeln!(out, "unresolved,,,,,{},,{calls},", csv_field(func))?;
    }
    Ok(())
}
