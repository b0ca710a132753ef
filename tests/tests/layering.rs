//! The house rules that keep the stages apart, read from the source of truth rather than assumed:
//!
//! - the shim's dependency closure inside this workspace declares no arrow, parquet or polars,
//!   not even as an optional dependency (cargo unifies features across packages built together,
//!   so an optional dependency that another crate enables would be compiled into the shim);
//! - the recorder, the importers and the archive never reach polars;
//! - no crate has an import loop between its top-level modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// `cargo metadata` of the workspace, without resolving dependencies' features.
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// Each workspace package: (name → every dependency it declares, normal or build, with
/// whether it is a path dependency inside the workspace). Dev-dependencies never reach a
/// shipped artifact, so they are left out.
fn declared(metadata: &Value) -> BTreeMap<String, Vec<(String, bool)>> {
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().expect("name").to_owned();
            let deps = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|dep| dep["kind"].as_str() != Some("dev"))
                .map(|dep| {
                    let dep_name = dep["name"].as_str().expect("dependency name").to_owned();
                    let local = members.contains(dep_name.as_str()) && dep["path"].is_string();
                    (dep_name, local)
                })
                .collect();
            (name, deps)
        })
        .collect()
}

/// The workspace crates `root` reaches through normal and build dependencies, itself included.
fn closure(graph: &BTreeMap<String, Vec<(String, bool)>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(name) = stack.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        for (dep, local) in graph.get(&name).into_iter().flatten() {
            if *local {
                stack.push(dep.clone());
            }
        }
    }
    seen
}

/// (crate, dependency) pairs where a crate of `root`'s closure declares a forbidden dependency.
fn forbidden_in_closure(root: &str, forbidden: &[&str]) -> Vec<(String, String)> {
    let graph = declared(&metadata());
    assert!(graph.contains_key(root), "{root} is a workspace member");
    let mut found = Vec::new();
    for name in closure(&graph, root) {
        for (dep, _) in &graph[&name] {
            if forbidden
                .iter()
                .any(|f| dep == f || dep.starts_with(&format!("{f}-")))
            {
                found.push((name.clone(), dep.clone()));
            }
        }
    }
    found
}

#[test]
fn the_shim_cannot_reach_arrow_parquet_or_polars() {
    let found = forbidden_in_closure("p11trace-shim", &["arrow", "parquet", "polars"]);
    assert!(
        found.is_empty(),
        "crates the shim depends on declare {found:?}: the shim is linked into every traced \
         process and must never carry them, not even optionally"
    );
    // The closure itself is what we think it is: the record crate, and not the dataset crate.
    let graph = declared(&metadata());
    let reach = closure(&graph, "p11trace-shim");
    assert!(reach.contains("p11trace-record"), "{reach:?}");
    assert!(!reach.contains("p11trace-dataset"), "{reach:?}");
}

#[test]
fn the_recorder_the_importers_and_the_archive_cannot_reach_polars() {
    for package in ["p11trace-recorder", "p11trace-import", "p11trace-archive"] {
        let found = forbidden_in_closure(package, &["polars"]);
        assert!(found.is_empty(), "{package}'s closure declares {found:?}");
    }
}

/// The top-level module a `crate::x` path names, for every `crate::` reference in `text`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue; // `p11trace_crate::` or `$crate::`
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
        // `use crate::{a, b::c}`
        if let Some(at) = code.find("use crate::{") {
            let list = &code[at + "use crate::{".len()..];
            for item in list.split([',', '}']) {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// Top-level module of a source file below `src/` (`src/a.rs`, `src/a/b.rs` → `a`); `None` for
/// the crate root and binaries.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "bin" => None,
        name => Some(name.trim_end_matches(".rs").to_owned()),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A cycle in `graph`, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_loop_between_its_modules() {
    let metadata = metadata();
    let mut loops = Vec::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let manifest = PathBuf::from(package["manifest_path"].as_str().expect("manifest"));
        let src = manifest.parent().expect("crate folder").join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let Some(module) = top_module(&src, file) else {
                continue;
            };
            let text = std::fs::read_to_string(file).expect("read source");
            let uses = graph.entry(module.clone()).or_default();
            for target in crate_references(&text) {
                if target != module && modules.contains(&target) {
                    uses.insert(target);
                }
            }
        }
        if let Some(cycle) = find_cycle(&graph) {
            loops.push(format!("{}: {}", package["name"], cycle.join(" → ")));
        }
    }
    assert!(loops.is_empty(), "import loops: {loops:#?}");
}

#[test]
fn the_loop_finder_finds_loops() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let refs = crate_references("use crate::{input::x, filters};\nlet y = crate::analyze::f();");
    assert_eq!(
        refs,
        ["analyze", "filters", "input"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
}
