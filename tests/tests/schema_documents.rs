//! The hand-written schema documents say what is really written: `schemas/*.schema.json` against
//! the files the recorder and the importer write (every column's name, type, nullability and
//! DuckDB type, and the schema version), read back by DuckDB; `schemas/*.md` against the JSON.

use anyhow::{Context, Result, bail, ensure};
use p11trace_tests::*;
use serde_json::{Value, json};

/// A column of a written file, rebuilt from DuckDB's flattened `parquet_schema()` rows.
fn column(rows: &[Value], index: &mut usize) -> Result<Value> {
    let row = rows.get(*index).context("parquet_schema ended early")?;
    *index += 1;
    let nullable = match row["repetition_type"].as_str() {
        Some("OPTIONAL") => true,
        Some("REQUIRED") => false,
        other => bail!("unexpected repetition {other:?} for {}", row["name"]),
    };
    let name = row["name"].as_str().unwrap_or_default().to_owned();
    let children = row["num_children"].as_i64().unwrap_or(0);
    let kind = match (
        row["type"].as_str(),
        row["converted_type"].as_str(),
        children,
    ) {
        (Some("BYTE_ARRAY"), Some("UTF8"), _) => json!({ "type": "utf8" }),
        (Some("INT64"), None, _) => json!({ "type": "int64" }),
        (Some("INT64"), Some("TIMESTAMP_MICROS"), _) => {
            let logical = row["logical_type"].as_str().unwrap_or_default();
            ensure!(
                logical.contains("isAdjustedToUTC=1"),
                "{name}: timestamp not UTC-adjusted: {logical}"
            );
            json!({ "type": "timestamp[us, UTC]" })
        }
        (Some("BOOLEAN"), None, _) => json!({ "type": "bool" }),
        (_, Some("LIST"), 1) => {
            let repeated = rows
                .get(*index)
                .context("list without its repeated group")?;
            ensure!(
                repeated["repetition_type"] == "REPEATED",
                "{name}: list layout"
            );
            *index += 1;
            let item = column(rows, index)?;
            ensure!(
                item["name"] == "element",
                "{name}: list item should be named element"
            );
            let mut item = item;
            item.as_object_mut().map(|o| o.remove("name"));
            json!({ "type": "list", "item": item })
        }
        (_, None, n) if n > 0 => {
            let fields = (0..n)
                .map(|_| column(rows, index))
                .collect::<Result<Vec<_>>>()?;
            json!({ "type": "struct", "fields": fields })
        }
        other => bail!("unexpected Parquet type {other:?} for {name}"),
    };
    let mut object = kind;
    object["name"] = json!(name);
    object["nullable"] = json!(nullable);
    Ok(object)
}

/// Drops fields the file cannot tell (DuckDB types are checked separately).
fn comparable(mut column: Value) -> Value {
    if let Some(object) = column.as_object_mut() {
        object.remove("duckdb_type");
    }
    column
}

fn check_file(file: &std::path::Path, document: &str) -> Result<()> {
    let path = workspace().join("schemas").join(document);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let rows = duckdb(&format!(
        "SELECT name, type, repetition_type, num_children, converted_type, logical_type FROM parquet_schema('{}')",
        file.display()
    ))?;
    let mut index = 1; // row 0 is the schema root
    let mut written = Vec::new();
    while index < rows.len() {
        written.push(comparable(column(&rows, &mut index)?));
    }
    let documented: Vec<Value> = doc["columns"]
        .as_array()
        .context("columns")?
        .iter()
        .cloned()
        .map(comparable)
        .collect();
    ensure!(
        written.len() == documented.len(),
        "{document}: file has {} columns, document {}",
        written.len(),
        documented.len()
    );
    for (w, d) in written.iter().zip(&documented) {
        ensure!(w == d, "{document}: written {w} vs documented {d}");
    }
    // DuckDB's own types, as users see them in DESCRIBE.
    let described = duckdb(&format!(
        "DESCRIBE SELECT * FROM read_parquet('{}')",
        file.display()
    ))?;
    for (row, d) in described
        .iter()
        .zip(doc["columns"].as_array().context("columns")?)
    {
        ensure!(
            row["column_name"] == d["name"],
            "{document}: DESCRIBE order {} vs {}",
            row["column_name"],
            d["name"]
        );
        ensure!(
            row["column_type"] == d["duckdb_type"],
            "{document}: {} is {} in DuckDB, documented {}",
            d["name"],
            row["column_type"],
            d["duckdb_type"]
        );
    }
    let version = duckdb(&format!(
        "SELECT value::VARCHAR AS v FROM parquet_kv_metadata('{}') WHERE key::VARCHAR = 'p11trace.schema_version'",
        file.display()
    ))?;
    ensure!(
        version.len() == 1
            && version[0]["v"].as_str() == Some(doc["schema_version"].to_string().as_str()),
        "schema_version metadata: {version:?}"
    );
    Ok(())
}

/// Every column of the JSON document is a row of the Markdown table, with the same type and
/// nullability (and nothing else is).
fn check_markdown(document: &str, markdown: &str) -> Result<()> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(
        workspace().join("schemas").join(document),
    )?)?;
    let text = std::fs::read_to_string(workspace().join("schemas").join(markdown))?;
    let mut rows = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 5 && cells[1].starts_with('`') && (cells[3] == "yes" || cells[3] == "no")
        {
            rows.push((
                cells[1].trim_matches('`').to_owned(),
                cells[2].to_owned(),
                cells[3] == "yes",
            ));
            if cells[1] == "`attrs`" || rows.len() == doc["columns"].as_array().map_or(0, Vec::len)
            {
                break;
            }
        }
    }
    let documented: Vec<(String, String, bool)> = doc["columns"]
        .as_array()
        .context("columns")?
        .iter()
        .map(|c| {
            let kind = match c["type"].as_str().unwrap_or_default() {
                "list" => match c["item"]["type"].as_str() {
                    Some("struct") => "list<struct>".to_owned(),
                    Some(item) => format!("list<{item}>"),
                    None => "list".to_owned(),
                },
                other => other.to_owned(),
            };
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                kind,
                c["nullable"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    ensure!(
        rows == documented,
        "{markdown} and {document} disagree:\n{rows:?}\n{documented:?}"
    );
    Ok(())
}

#[test]
fn written_files_match_the_hand_written_schemas() -> Result<()> {
    let traced = Traced::pkcs11_tool_test("schema")?;
    let recorder = &traced.recorder;
    let calls = p11trace_query_files(&recorder.dataset.join("calls"));
    let clients = p11trace_query_files(&recorder.dataset.join("clients"));
    ensure!(
        !calls.is_empty() && !clients.is_empty(),
        "recorder wrote no files"
    );
    check_file(&calls[0], "calls.schema.json")?;
    check_file(&clients[0], "clients.schema.json")?;

    // The importer writes the same schema.
    let dir = temp();
    let imported = import_as(
        &corpus("pt-keygen-rsa2048.log"),
        dir.path(),
        "imported.parquet",
        &[],
    )?;
    check_file(&imported, "calls.schema.json")
}

#[test]
fn the_markdown_documents_list_exactly_the_columns() -> Result<()> {
    check_markdown("calls.schema.json", "calls.md")?;
    check_markdown("clients.schema.json", "clients.md")
}

fn p11trace_query_files(folder: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = all_files(folder)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files
}
