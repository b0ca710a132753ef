//! p11-kit `log-calls` logs import to what really happened (issue #16): real p11-kit (Debian's
//! proxy module, and p11tool's own p11-kit loading) managing the shim in front of SoftHSM2 with
//! `log-calls: yes`, so p11-kit's log and the recorder's dataset describe the same run; each log,
//! imported by the real `p11trace-query import` with its format sniffed, matches the shim's
//! recording call for call (function, return value, and every column both carry). The committed
//! logs (`tests/fixtures/p11kit/`) import to their counted ground truth; no PIN p11-kit printed
//! survives; a damaged log fails `--strict` with file:line and leaves nothing; a truncated one
//! keeps its unreturned call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use p11trace_tests::p11kit::{P11Kit, PROXY};
use p11trace_tests::*;
use serde_json::Value;

const WRONG_PIN: &str = "0000-Wrong";

/// One workload: its name, program and arguments, and whether it must succeed.
struct Workload {
    name: &'static str,
    program: &'static str,
    args: Vec<String>,
    succeeds: bool,
}

fn workloads(label: &str, dir: &Path) -> Vec<Workload> {
    let through_proxy = |rest: &[&str]| -> Vec<String> {
        ["--module", PROXY, "--token-label", label]
            .iter()
            .chain(rest)
            .map(|s| s.to_string())
            .collect()
    };
    let message = dir.join("message.txt").display().to_string();
    let signature = dir.join("signature.bin").display().to_string();
    let uri = format!("pkcs11:token={label}");
    let workload = |name, program, args, succeeds| Workload {
        name,
        program,
        args,
        succeeds,
    };
    vec![
        workload("list-slots", "pkcs11-tool", through_proxy(&["-L"]), true),
        workload(
            "keygen",
            "pkcs11-tool",
            through_proxy(&login(&[
                "--keypairgen",
                "--key-type",
                "rsa:2048",
                "--id",
                "01",
                "--label",
                "p11kit-rsa",
            ])),
            true,
        ),
        workload(
            "sign",
            "pkcs11-tool",
            through_proxy(&login(&[
                "--sign",
                "-m",
                "SHA256-RSA-PKCS",
                "--id",
                "01",
                "-i",
                &message,
                "-o",
                &signature,
            ])),
            true,
        ),
        workload(
            "wrong-pin",
            "pkcs11-tool",
            through_proxy(&["--login", "--pin", WRONG_PIN, "-O"]),
            false,
        ),
        // p11tool loads p11-kit's modules itself (no proxy): the same log, the same shim.
        workload(
            "p11tool-privkeys",
            "p11tool",
            ["--login", "--list-privkeys", &uri]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            true,
        ),
    ]
}

/// The columns both sources carry, compared call for call.
const COLUMNS: &str = "seq, func, rv, slot_id, session, mechanism, mech_params, object, object2, \
                       out_objects, in_len, out_len, ck_flags, attrs";

/// Calls the shim sees that p11-kit's log cannot show: the tables p11-kit asks the module for.
const UNLOGGABLE: &str = "('C_GetFunctionList', 'C_GetInterface', 'C_GetInterfaceList')";

/// What a comparison compared (so a run that compares nothing fails).
#[derive(Debug, Default)]
struct Compared {
    calls: usize,
    handles: usize,
    values: usize,
    /// The shim's calls the log lacks (p11-kit's own, below its log layer).
    unlogged: BTreeMap<String, usize>,
}

/// Whether the attributes p11-kit printed agree with the shim's: the same entries in the same
/// order (template, type, redacted); the same length and value wherever p11-kit printed them
/// (input templates print types only: length -1, no value; a cut or unprinted value is null).
fn attrs_agree(shim: &Value, p11kit: &Value, compared: &mut Compared) -> Result<()> {
    let empty = Vec::new();
    let (ours, theirs) = (
        shim.as_array().unwrap_or(&empty),
        p11kit.as_array().unwrap_or(&empty),
    );
    ensure!(ours.len() == theirs.len(), "attrs {shim} vs {p11kit}");
    for (a, b) in ours.iter().zip(theirs) {
        for key in ["template", "type", "type_code", "redacted"] {
            ensure!(a[key] == b[key], "attr {key}: {a} vs {b}");
        }
        if b["len"] != -1 {
            ensure!(a["len"] == b["len"], "attr len: {a} vs {b}");
        }
        if !b["value"].is_null() {
            ensure!(a["value"] == b["value"], "attr value: {a} vs {b}");
            compared.values += 1;
        }
    }
    Ok(())
}

/// p11-kit's imported rows against the shim's rows of `client`, call for call. The shim may see
/// more: p11-kit closes sessions the application left open before it finalizes the module,
/// through the module's own table, unlogged; any other difference fails.
fn agree(shim: &[Value], p11kit: &[Value], compared: &mut Compared) -> Result<()> {
    let mut ours = shim.iter().peekable();
    for (index, theirs) in p11kit.iter().enumerate() {
        let call = loop {
            let call = ours.next().with_context(|| {
                format!(
                    "p11-kit's call {index} ({}) is not in the shim's recording",
                    theirs["func"]
                )
            })?;
            if call["func"] == theirs["func"] {
                break call;
            }
            let func = call["func"].as_str().unwrap_or("");
            ensure!(
                matches!(func, "C_CloseSession" | "C_CloseAllSessions"),
                "the shim saw {call} where p11-kit logged {theirs}"
            );
            *compared.unlogged.entry(func.to_owned()).or_default() += 1;
        };
        let func = call["func"].as_str().unwrap_or("");
        for column in COLUMNS.split(", ").skip(1) {
            match column {
                "attrs" => attrs_agree(&call["attrs"], &theirs["attrs"], compared)?,
                // p11-kit prints only the name of CKF_OS_LOCKING_OK, never the flags' number.
                "ck_flags" if func == "C_Initialize" => {
                    ensure!(theirs[column].is_null(), "{theirs}")
                }
                _ => ensure!(
                    call[column] == theirs[column],
                    "{func} (call {index}): {column} {} (shim) vs {} (p11-kit)",
                    call[column],
                    theirs[column]
                ),
            }
        }
        compared.calls += 1;
        compared.handles += [&call["session"], &call["object"], &call["slot_id"]]
            .iter()
            .filter(|v| !v.is_null())
            .count();
    }
    if let Some(rest) = ours.next() {
        bail!("the shim saw {rest} after p11-kit's last logged call");
    }
    Ok(())
}

#[test]
fn p11kit_logs_match_the_shims_recording_call_for_call() -> Result<()> {
    let mut traced = Traced::new("p11kit")?;
    let dir = temp();
    std::fs::write(dir.path().join("message.txt"), b"p11-kit import check\n")?;
    let p11kit = P11Kit::new()?;
    let mut logs = Vec::new();
    for workload in workloads(&traced.token.label, dir.path()) {
        let args: Vec<&str> = workload.args.iter().map(String::as_str).collect();
        let mut command = p11kit.command(&traced, workload.program, &args);
        command.env("GNUTLS_PIN", USER_PIN);
        let output = run(&mut command, Duration::from_secs(120))?;
        ensure!(
            output.status.success() == workload.succeeds,
            "{}: {} {}",
            workload.name,
            output.status,
            text(&output.stderr)
        );
        let log = dir.path().join(format!("{}.log", workload.name));
        std::fs::write(&log, &output.stderr)?;
        logs.push((workload.name, log));
    }
    traced.recorder.stop()?;
    let table = traced.recorder.table("calls");
    let clients = duckdb(&format!(
        "SELECT client_id FROM {table} GROUP BY 1 ORDER BY min(start)"
    ))?;
    ensure!(clients.len() == logs.len(), "clients: {clients:?}");
    let mut total = Compared::default();
    for ((name, log), client) in logs.iter().zip(&clients) {
        let bytes = std::fs::read(log)?;
        ensure!(
            text(&bytes).contains("\nC_Initialize = CKR_OK\n"),
            "{name}: p11-kit logged nothing:\n{}",
            text(&bytes)
        );
        // Sniffed by content: no --input-format.
        let out = import_as(log, dir.path(), &format!("{name}.parquet"), &[])?;
        let sources = counts(&format!(
            "SELECT source AS k, count(*) AS n FROM '{}' GROUP BY 1",
            out.display()
        ))?;
        ensure!(
            sources.keys().eq(["p11-kit-log"]),
            "{name}: sources {sources:?}"
        );
        let theirs = duckdb(&format!(
            "SELECT {COLUMNS} FROM '{}' ORDER BY seq",
            out.display()
        ))?;
        let ours = duckdb(&format!(
            "SELECT {COLUMNS} FROM {table} WHERE client_id = '{}' AND NOT internal \
             AND func NOT IN {UNLOGGABLE} ORDER BY seq",
            client["client_id"].as_str().unwrap_or("")
        ))?;
        let mut compared = Compared::default();
        agree(&ours, &theirs, &mut compared).with_context(|| name.to_string())?;
        // The PINs p11-kit printed are in its log and nowhere in the import.
        let values = decompressed(&out, dir.path())?;
        for pin in [USER_PIN, WRONG_PIN, SO_PIN] {
            ensure!(
                !contains_secret(&values, pin.as_bytes()),
                "{name}: {pin} in the import"
            );
        }
        let pin = if *name == "wrong-pin" {
            WRONG_PIN
        } else {
            USER_PIN
        };
        if *name != "list-slots" {
            ensure!(
                contains_secret(&bytes, pin.as_bytes()),
                "{name}: control: p11-kit printed no PIN"
            );
        }
        total.calls += compared.calls;
        total.handles += compared.handles;
        total.values += compared.values;
        for (func, n) in compared.unlogged {
            *total.unlogged.entry(func).or_default() += n;
        }
    }
    eprintln!("compared: {total:?}");
    // Enough was compared for the agreement to mean something: every workload's calls, with
    // handles and attribute values among them; the wrong-PIN run's open session closed by p11-kit.
    ensure!(
        total.calls > 200 && total.handles > 100 && total.values > 20,
        "compared too little: {total:?}"
    );
    ensure!(
        total.unlogged.get("C_CloseSession") == Some(&1),
        "{total:?}"
    );
    Ok(())
}

/// The committed logs, each beside its ground truth.
fn fixture_logs() -> Result<Vec<PathBuf>> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(fixtures().join("p11kit"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    ensure!(logs.len() >= 2, "p11-kit fixtures missing: {logs:?}");
    Ok(logs)
}

#[test]
fn committed_p11kit_logs_import_to_their_counted_ground_truth() -> Result<()> {
    let dir = temp();
    for log in fixture_logs()? {
        let expected: Value = serde_json::from_str(&std::fs::read_to_string(
            log.with_extension("expected.json"),
        )?)?;
        let name = log.display();
        let stem = log.file_stem().and_then(|s| s.to_str()).unwrap_or("log");
        let out = import_as(&log, dir.path(), &format!("{stem}.parquet"), &[])?;
        let file = format!("'{}'", out.display());
        let by_function = counts(&format!(
            "SELECT func AS k, count(*) AS n FROM {file} GROUP BY 1"
        ))?;
        let non_ok = counts(&format!(
            "SELECT rv_name AS k, count(*) AS n FROM {file} WHERE rv <> 0 GROUP BY 1"
        ))?;
        let want = |key: &str| -> BTreeMap<String, i64> {
            expected[key]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
                        .collect()
                })
                .unwrap_or_default()
        };
        ensure!(
            by_function == want("calls_by_function"),
            "{name}: {by_function:?}"
        );
        ensure!(non_ok == want("non_ok_returns"), "{name}: {non_ok:?}");
        let s = &duckdb(&format!(
            "SELECT count(*) FILTER (func = 'C_OpenSession' AND rv = 0) AS opened, \
             count(*) FILTER (func = 'C_CloseSession' AND rv = 0) AS closed, \
             count(*) FILTER (NOT returned) AS unreturned, count(*) AS total, \
             count(pid) + count(tid) + count(start) + count(dur_ns) AS stamped FROM {file}"
        ))?[0];
        ensure!(
            s["opened"] == expected["sessions"]["opened_ok"]
                && s["closed"] == expected["sessions"]["closed_ok"]
                && s["unreturned"] == expected["calls_without_returned"]
                && s["total"] == expected["total_calls"]
                && s["stamped"] == 0,
            "{name}: {s}"
        );
        let values = decompressed(&out, dir.path())?;
        for pin in expected["pins_in_the_log"].as_array().context("pins")? {
            let pin = pin.as_str().unwrap_or("?");
            ensure!(
                contains_secret(&std::fs::read(&log)?, pin.as_bytes()),
                "{name}: control: {pin} not in the log"
            );
            ensure!(
                !contains_secret(&values, pin.as_bytes()),
                "{name}: {pin} in the import"
            );
        }
    }
    Ok(())
}

/// `p11trace-query import LOG -o OUT EXTRA…`, whatever its exit.
fn import_run(log: &Path, out: &Path, extra: &[&str]) -> Result<std::process::Output> {
    let mut command = Command::new(query_bin());
    command
        .arg("import")
        .arg(log)
        .arg("-o")
        .arg(out)
        .args(extra);
    run(&mut command, Duration::from_secs(60))
}

#[test]
fn damaged_and_truncated_p11kit_logs() -> Result<()> {
    let dir = temp();
    let log = std::fs::read_to_string(fixtures().join("p11kit/pt-sign-rsa.log"))?;
    // Damaged: the return value of C_Login is garbage.
    let line = log
        .lines()
        .position(|l| l == "C_Login = CKR_OK")
        .context("C_Login's result")?
        + 1;
    let damaged = dir.path().join("damaged.log");
    std::fs::write(
        &damaged,
        log.replacen("C_Login = CKR_OK", "C_Login = CKR_NO_SUCH_THING", 1),
    )?;
    let strict = dir.path().join("strict.parquet");
    let output = import_run(&damaged, &strict, &["--strict"])?;
    let stderr = text(&output.stderr);
    ensure!(
        output.status.code() == Some(1),
        "--strict must fail: {stderr}"
    );
    ensure!(
        stderr.contains(&format!("damaged.log:{line}: unreadable return value")),
        "{stderr}"
    );
    ensure!(
        !strict.exists() && !dir.path().join("strict.parquet.tmp").exists(),
        "no partial file may be left"
    );
    // Lenient: the problem is counted, the call kept as never returned, the rest imported.
    let lenient = import_as(&damaged, dir.path(), "lenient.parquet", &[])?;
    let login = row(&lenient, "func = 'C_Login'")?;
    ensure!(
        login["returned"] == false && login["rv"].is_null(),
        "{login}"
    );
    ensure!(
        row(&lenient, "func = 'C_Sign'")?["rv"] == 0,
        "C_Sign imported"
    );
    // Truncated inside C_Sign: after its arguments, before its result.
    let cut = log.find("C_Sign\n").context("C_Sign")?;
    let cut = cut + log[cut..].find(" = CKR_OK").context("C_Sign's result")? - "C_Sign".len();
    let truncated = dir.path().join("truncated.log");
    std::fs::write(&truncated, &log[..cut])?;
    let kept = import_as(&truncated, dir.path(), "truncated.parquet", &[])?;
    let sign = row(&kept, "func = 'C_Sign'")?;
    ensure!(
        sign["returned"] == false
            && sign["rv"].is_null()
            && sign["session"].as_i64().is_some()
            && sign["in_len"].as_i64().is_some(),
        "{sign}"
    );
    let output = import_run(&truncated, &strict, &["--strict"])?;
    let stderr = text(&output.stderr);
    ensure!(
        output.status.code() == Some(1)
            && stderr.contains("truncated.log:")
            && stderr.contains("C_Sign never returned"),
        "{stderr}"
    );
    ensure!(!strict.exists(), "no partial file may be left");
    // A spy log is not mistaken for p11-kit's, nor p11-kit's forced through the spy parser.
    let spy = import_as(
        &corpus("pt-sign-rsa-pkcs.log"),
        dir.path(),
        "spy.parquet",
        &[],
    )?;
    ensure!(
        counts(&format!(
            "SELECT source AS k, count(*) AS n FROM '{}' GROUP BY 1",
            spy.display()
        ))?
        .keys()
        .eq(["pkcs11-spy"]),
        "the spy log must import as pkcs11-spy"
    );
    let output = import_run(
        &fixtures().join("p11kit/pt-sign-rsa.log"),
        &dir.path().join("as-spy.parquet"),
        &["--input-format", "spy"],
    )?;
    ensure!(
        output.status.code() == Some(1) && text(&output.stderr).contains("no PKCS#11 call found"),
        "{}",
        text(&output.stderr)
    );
    Ok(())
}
