//! Audit archives end to end: a real recorded dataset (several clients, two recorder runs, plus
//! a real pkcs11-spy log of an earlier day) archived, verified, re-archived byte for byte,
//! extended, tampered with in every way the archive promises to catch, interrupted at each step
//! of sealing, and pruned. Real recorder, real shimmed clients against SoftHSM2, real DuckDB.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;

/// A dataset written by two recorder runs on one folder (3 clients, then 2), kept for every test.
fn recorded() -> &'static Path {
    static DATASET: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DATASET
        .get_or_init(|| {
            let keep = temp();
            let dataset = keep.path().join("ds");
            record_into(&dataset, &[3, 2]).expect("recording the archive tests' dataset");
            (keep, dataset)
        })
        .1
}

/// Runs one recorder per entry of `runs` on `dataset`, each with that many paced clients.
fn record_into(dataset: &Path, runs: &[usize]) -> Result<()> {
    let token = Token::new("archive")?;
    let socket_dir = temp();
    let socket = socket_dir.path().join("sock").join("r.sock");
    for &clients in runs {
        let mut recorder = Launch::at(temp(), dataset.to_owned(), socket.clone())
            .args(&["--roll-secs", "1"])
            .start()?;
        for child in spawn_clients(&token, &socket, clients, &["paced", "300", "1"])? {
            report(child)?;
        }
        recorder.stop()?;
    }
    Ok(())
}

fn p11query(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<Output> {
    let mut command = Command::new(query_bin());
    for arg in args {
        command.arg(arg);
    }
    run(&mut command, Duration::from_secs(300))
}

fn archive(inputs: &[&Path], to: &Path, extra: &[&str]) -> Result<Output> {
    let mut command = Command::new(query_bin());
    command
        .arg("archive")
        .args(inputs)
        .arg("--to")
        .arg(to)
        .args(["--tz", "UTC"])
        .args(extra);
    let output = run(&mut command, Duration::from_secs(300))?;
    ensure!(
        output.status.success(),
        "archive failed: {}",
        text(&output.stderr)
    );
    Ok(output)
}

fn verify(archive: &Path, extra: &[&str]) -> Result<(i32, String, String)> {
    let mut command = Command::new(query_bin());
    command.arg("verify").arg(archive).args(extra);
    let output = run(&mut command, Duration::from_secs(300))?;
    Ok((
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    ))
}

/// Every file of a tree (but the lock) and its bytes.
fn tree(root: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != ".lock") {
                let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
                files.insert(relative, std::fs::read(&path)?);
            }
        }
    }
    Ok(files)
}

fn spy_log() -> PathBuf {
    corpus("pt-sign-rsa-pkcs.log")
}

/// The recorded dataset and the spy log, archived into `to` with `extra` options.
fn full_archive(to: &Path, extra: &[&str]) -> Result<()> {
    archive(&[recorded(), &spy_log()], to, extra).map(|_| ())
}

fn digests(archive: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(archive.join("digests"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    Ok(names)
}

#[test]
fn an_archive_verifies_holds_every_row_once_and_rearchiving_changes_no_byte() -> Result<()> {
    let dir = temp();
    let a = dir.path().join("a");
    full_archive(&a, &[])?;
    let (code, stdout, stderr) = verify(&a, &[])?;
    ensure!(code == 0, "verify: {stdout}{stderr}");
    ensure!(
        stdout.contains("intact") && stdout.contains("unsigned"),
        "{stdout}"
    );

    // Every distinct (client_id, seq) of the inputs once; the clients table beside it.
    let spy = import_as(&spy_log(), dir.path(), "spy.parquet", &["--tz", "UTC"])?;
    let inputs = format!(
        "(SELECT client_id, seq FROM {} UNION ALL SELECT client_id, seq FROM read_parquet('{}'))",
        table(recorded(), "calls"),
        spy.display()
    );
    let distinct = count_of(&format!(
        "SELECT count(*) AS n FROM (SELECT DISTINCT client_id, seq FROM {inputs})"
    ))?;
    let archived = count_of(&format!("SELECT count(*) AS n FROM {}", table(&a, "calls")))?;
    let unique = count_of(&format!(
        "SELECT count(*) AS n FROM (SELECT DISTINCT client_id, seq FROM {})",
        table(&a, "calls")
    ))?;
    ensure!(
        distinct > 500 && archived == distinct && unique == archived,
        "{distinct} {archived} {unique}"
    );
    let clients = count_of(&format!(
        "SELECT count(*) AS n FROM {}",
        table(recorded(), "clients")
    ))?;
    ensure!(
        clients == 5
            && count_of(&format!(
                "SELECT count(*) AS n FROM {}",
                table(&a, "clients")
            ))? == clients,
        "clients rows"
    );
    // Sorted by start within each file, and the log's earlier day sealed with empty days after it.
    let names = digests(&a)?;
    ensure!(
        names.first().map(String::as_str) == Some("2026-11-25.json"),
        "{names:?}"
    );
    ensure!(
        names.len() >= 3 && stdout.contains(" empty"),
        "{names:?} {stdout}"
    );
    let unsorted = count_of(&format!(
        "SELECT count(*) AS n FROM (SELECT start < lag(start) OVER (PARTITION BY filename ORDER BY file_row_number) AS back \
         FROM read_parquet('{}/calls/**/*.parquet', filename=true, file_row_number=true)) WHERE back",
        a.display()
    ))?;
    ensure!(unsorted == 0, "{unsorted} rows out of start order");

    // Private to the user whatever the umask: folders 0700, files 0600.
    for entry in walk(&a)? {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&entry)?.permissions());
        ensure!(mode & 0o077 == 0, "{} is {mode:o}", entry.display());
        let folder = entry.parent().context("parent")?;
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(folder)?.permissions());
        ensure!(mode & 0o077 == 0, "{} is {mode:o}", folder.display());
    }

    // Again: nothing changes. The same inputs given twice into a new archive: the same bytes.
    let before = tree(&a)?;
    let again = archive(&[recorded(), &spy_log()], &a, &[])?;
    ensure!(
        text(&again.stdout).contains("none new"),
        "{}",
        text(&again.stdout)
    );
    ensure!(tree(&a)? == before, "re-archiving changed the archive");
    let b = dir.path().join("b");
    archive(&[&spy_log(), recorded(), recorded()], &b, &[])?;
    ensure!(tree(&b)? == before, "the same data archived anew differs");

    // A later recording appends one digest and still verifies.
    let later = dir.path().join("later");
    record_into(&later, &[1])?;
    archive(&[&later], &a, &[])?;
    let after = digests(&a)?;
    ensure!(after.len() == names.len() + 1, "{names:?} -> {after:?}");
    let (code, stdout, stderr) = verify(&a, &[])?;
    ensure!(code == 0, "{stdout}{stderr}");
    let total = count_of(&format!("SELECT count(*) AS n FROM {}", table(&a, "calls")))?;
    let added = count_of(&format!(
        "SELECT count(*) AS n FROM {}",
        table(&later, "calls")
    ))?;
    ensure!(total == archived + added, "{total} != {archived} + {added}");
    Ok(())
}

/// A signed archive with several digests, and its head hash.
fn signed(dir: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let key = dir.join("archive.key");
    p11query(&[&"archive-key", &"--out", &key])?;
    let a = dir.join("signed");
    full_archive(&a, &["--signing-key", key.to_str().context("path")?])?;
    let (code, stdout, stderr) = verify(&a, &["--public-key", &format!("{}.pub", key.display())])?;
    ensure!(
        code == 0 && stdout.contains("signed by ed25519:"),
        "{stdout}{stderr}"
    );
    let head = stdout
        .lines()
        .find_map(|l| l.strip_prefix("head      "))
        .and_then(|l| l.split_whitespace().next())
        .context("head line")?
        .to_owned();
    Ok((a, key, head))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    for (relative, bytes) in tree(from)? {
        let path = to.join(relative);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        std::fs::write(path, bytes)?;
    }
    Ok(())
}

fn first_calls_file(archive: &Path) -> Result<PathBuf> {
    let files = tree(archive)?;
    let name = files
        .keys()
        .find(|k| k.starts_with("calls/") && k.ends_with(".parquet"))
        .context("no calls file")?;
    Ok(archive.join(name))
}

#[test]
fn every_kind_of_tampering_is_found_and_named() -> Result<()> {
    let dir = temp();
    let (a, key, head) = signed(dir.path())?;
    let public = format!("{}.pub", key.display());
    let names = digests(&a)?;
    let (oldest, newest) = (names[0].clone(), names[names.len() - 1].clone());
    // schemas/archive.md documents exactly the keys of a signed digest with files.
    let digest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("digests").join(&oldest))?)?;
    ensure!(
        digest["files"].as_array().is_some_and(|f| !f.is_empty()),
        "{digest:#}"
    );
    let written = json_paths(&digest, &[]);
    let documented = documented_paths("archive.md")?;
    ensure!(
        written == documented,
        "digest keys {written:?} vs schemas/archive.md {documented:?}"
    );
    type Tamper = Box<dyn Fn(&Path) -> Result<String>>;
    let cases: Vec<(&str, Tamper, Vec<String>)> = vec![
        (
            "a flipped byte",
            Box::new(|a: &Path| {
                let file = first_calls_file(a)?;
                let mut bytes = std::fs::read(&file)?;
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x01;
                std::fs::write(&file, bytes)?;
                Ok(file.strip_prefix(a)?.display().to_string())
            }),
            vec![],
        ),
        (
            "a deleted file",
            Box::new(|a: &Path| {
                let file = first_calls_file(a)?;
                std::fs::remove_file(&file)?;
                Ok(file.strip_prefix(a)?.display().to_string())
            }),
            vec![],
        ),
        (
            "an added file",
            Box::new(|a: &Path| {
                let file = first_calls_file(a)?;
                let foreign = file.with_file_name("part-999999-0000.parquet");
                std::fs::copy(&file, &foreign)?;
                Ok(foreign.strip_prefix(a)?.display().to_string())
            }),
            vec![],
        ),
        (
            "an edited digest",
            Box::new(move |a: &Path| {
                let path = a.join("digests").join(&oldest);
                let text = std::fs::read_to_string(&path)?;
                let edited = text.replacen("\"rows\": ", "\"rows\": 1", 1);
                ensure!(edited != text, "nothing to edit");
                std::fs::write(&path, edited)?;
                Ok(format!("digests/{oldest}"))
            }),
            vec![],
        ),
        (
            "the oldest digest deleted",
            Box::new(|a: &Path| {
                let names = digests(a)?;
                std::fs::remove_file(a.join("digests").join(&names[0]))?;
                Ok(format!("digests/{}", names[1]))
            }),
            vec![],
        ),
        (
            "the newest digest deleted",
            Box::new(move |a: &Path| {
                std::fs::remove_file(a.join("digests").join(&newest))?;
                let names = digests(a)?;
                Ok(format!("digests/{}", names[names.len() - 1]))
            }),
            vec!["--expect-head".to_owned(), head.clone()],
        ),
    ];
    for (what, tamper, extra) in cases {
        let copy_dir = dir.path().join(what.replace(' ', "-"));
        copy(&a, &copy_dir)?;
        let named = tamper(&copy_dir)?;
        let mut args: Vec<&str> = vec!["--public-key", &public];
        args.extend(extra.iter().map(String::as_str));
        let (code, stdout, stderr) = verify(&copy_dir, &args)?;
        ensure!(code == 1, "{what}: verify exited {code}: {stdout}{stderr}");
        ensure!(
            stderr.contains(&named),
            "{what}: the problem should name {named}: {stderr}"
        );
        ensure!(stdout.contains("problem(s) found"), "{what}: {stdout}");
    }

    // Without --expect-head the deletion of the newest digest is invisible: that is what the
    // head hash kept elsewhere is for.
    let trimmed = dir.path().join("trimmed");
    copy(&a, &trimmed)?;
    let names = digests(&trimmed)?;
    std::fs::remove_file(trimmed.join("digests").join(&names[names.len() - 1]))?;
    std::fs::remove_dir_all(trimmed.join("calls"))?; // …and a thorough forger removes its files
    std::fs::remove_dir_all(trimmed.join("clients"))?;
    let (code, _, _) = verify(&trimmed, &[])?;
    ensure!(code == 1, "missing files must still be found");

    // Signed by another key: the same data archived with key 2 gives valid digests by key 2.
    let other_key = dir.path().join("other.key");
    p11query(&[&"archive-key", &"--out", &other_key])?;
    let other = dir.path().join("other");
    full_archive(
        &other,
        &["--signing-key", other_key.to_str().context("path")?],
    )?;
    let (code, _, stderr) = verify(&other, &["--public-key", &public])?;
    ensure!(
        code == 1 && stderr.contains("not by the --public-key"),
        "{stderr}"
    );
    // The intact archive, with the right key and head: 0.
    let (code, _, stderr) = verify(&a, &["--public-key", &public, "--expect-head", &head])?;
    ensure!(code == 0, "{stderr}");
    // Not an archive, or an unreadable key: usage/input error, 2.
    let (code, _, _) = verify(dir.path(), &[])?;
    ensure!(code == 2, "a folder without digests/ is an input error");
    let (code, _, _) = verify(&a, &["--public-key", key.to_str().context("path")?])?;
    ensure!(
        code == 2,
        "a private key given as --public-key is an input error"
    );
    Ok(())
}

#[test]
fn an_archive_killed_at_any_step_verifies_and_a_rerun_completes_it() -> Result<()> {
    let dir = temp();
    let reference = dir.path().join("reference");
    full_archive(&reference, &[])?;
    let expected = tree(&reference)?;
    for point in ["staged", "pending", "file-renamed:1", "sealed:2"] {
        let a = dir.path().join(point.replace(':', "-"));
        let mut command = Command::new(query_bin());
        command
            .args(["archive", "--tz", "UTC", "--to"])
            .arg(&a)
            .arg(recorded())
            .arg(spy_log())
            .env("P11TRACE_ARCHIVE_CRASH_AT", point);
        let output = run(&mut command, Duration::from_secs(300))?;
        ensure!(
            !output.status.success() && text(&output.stderr).contains("crash injected"),
            "{point}: archive should have crashed: {}",
            text(&output.stderr)
        );
        let (code, stdout, stderr) = verify(&a, &[])?;
        ensure!(
            code == 0,
            "{point}: the interrupted archive must verify: {stdout}{stderr}"
        );
        ensure!(
            !point.starts_with("pending") && !point.starts_with("file-renamed")
                || stdout.contains("pending"),
            "{point}: verify should report the interrupted run: {stdout}"
        );
        archive(&[recorded(), &spy_log()], &a, &[])?;
        ensure!(
            tree(&a)? == expected,
            "{point}: the completed archive differs from an uninterrupted one"
        );
    }
    Ok(())
}

#[test]
fn prune_source_removes_only_what_was_archived_and_verified() -> Result<()> {
    let dir = temp();
    let source = dir.path().join("ds");
    record_into(&source, &[2])?;
    let rows = count_of(&format!(
        "SELECT count(*) AS n FROM {}",
        table(&source, "calls")
    ))?;
    let a = dir.path().join("a");
    let output = archive(&[&source], &a, &["--prune-source"])?;
    ensure!(
        text(&output.stdout).contains("pruned"),
        "{}",
        text(&output.stdout)
    );
    let left: Vec<_> = p11trace_dataset_files(&source)?;
    ensure!(left.is_empty(), "left behind: {left:?}");
    ensure!(
        count_of(&format!("SELECT count(*) AS n FROM {}", table(&a, "calls")))? == rows,
        "rows"
    );
    let (code, _, stderr) = verify(&a, &[])?;
    ensure!(code == 0, "{stderr}");

    // A mismatched period, or a key for an unsigned archive: refused, the archive unchanged.
    let before = tree(&a)?;
    for extra in [
        vec!["--period", "hour"],
        vec!["--signing-key", "/nonexistent/key"],
    ] {
        let mut command = Command::new(query_bin());
        command
            .arg("archive")
            .arg(spy_log())
            .arg("--to")
            .arg(&a)
            .args(&extra);
        let output = run(&mut command, Duration::from_secs(120))?;
        ensure!(
            output.status.code() == Some(1),
            "{extra:?}: {}",
            text(&output.stderr)
        );
        ensure!(
            text(&output.stderr).lines().count() == 1,
            "one line: {}",
            text(&output.stderr)
        );
    }
    ensure!(
        tree(&a)? == before,
        "a refused archive run changed the archive"
    );
    Ok(())
}

fn p11trace_dataset_files(dataset: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for table in ["calls", "clients"] {
        let folder = dataset.join(table);
        if folder.exists() {
            for entry in walk(&folder)? {
                if entry.extension().is_some_and(|e| e == "parquet") {
                    found.push(entry);
                }
            }
        }
    }
    Ok(found)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}
