//! Issue 3: the shim is complete, exact and unbreakable. Real pkcs11-tool and a real multi-threaded,
//! forking client against SoftHSM2 (2.40) and Kryoptic (3.2), with pkcs11-spy and a counting
//! pass-through module (`tests/p11count`) as independent oracles.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

/// The workloads of the issue: --test, --test-ec, keygen, sign, verify, encrypt, decrypt, and a
/// vendor-defined mechanism. `SIG`/`CIPHER` become paths in the run's folder.
fn workloads(message: &Path) -> Vec<Vec<String>> {
    let message = message.display().to_string();
    let pin = ["--login", "--pin", USER_PIN];
    let with_pin = |rest: &[&str]| {
        pin.iter()
            .chain(rest)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    vec![
        with_pin(&["--test"]),
        with_pin(&["--test-ec", "--id", "77", "--key-type", "EC:prime256v1"]),
        with_pin(&[
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--id",
            "01",
            "--label",
            "rsa1",
        ]),
        with_pin(&[
            "--sign",
            "-m",
            "SHA256-RSA-PKCS",
            "--id",
            "01",
            "-i",
            &message,
            "-o",
            "SIG",
        ]),
        with_pin(&[
            "--verify",
            "-m",
            "SHA256-RSA-PKCS",
            "--id",
            "01",
            "-i",
            &message,
            "--signature-file",
            "SIG",
        ]),
        with_pin(&[
            "--keygen",
            "--key-type",
            "AES:32",
            "--id",
            "02",
            "--label",
            "aes1",
        ]),
        with_pin(&[
            "--encrypt",
            "-m",
            "AES-CBC-PAD",
            "--id",
            "02",
            "--iv",
            "000102030405060708090a0b0c0d0e0f",
            "-i",
            &message,
            "-o",
            "CIPHER",
        ]),
        with_pin(&[
            "--decrypt",
            "-m",
            "AES-CBC-PAD",
            "--id",
            "02",
            "--iv",
            "000102030405060708090a0b0c0d0e0f",
            "-i",
            "CIPHER",
        ]),
        with_pin(&[
            "--sign",
            "-m",
            "0x80001234",
            "--id",
            "01",
            "-i",
            &message,
            "-o",
            "/dev/null",
        ]),
    ]
}

/// Runs every workload against `module` (direct or traced), restoring the token first, keeping
/// state (keys, signature, ciphertext) between workloads as a real user would.
fn run_workloads(
    token: &Token,
    module: &Path,
    dir: &Path,
    env: &[(&str, String)],
) -> Result<Vec<RunResult>> {
    token.restore()?;
    let message = dir.join("message.txt");
    std::fs::write(&message, b"the message p11trace signs and encrypts\n")?;
    let signature = dir.join("sig.bin");
    let cipher = dir.join("cipher.bin");
    let _ = std::fs::remove_file(&signature);
    let _ = std::fs::remove_file(&cipher);
    let mut results = Vec::new();
    for args in workloads(&message) {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| match a.as_str() {
                "SIG" => signature.display().to_string(),
                "CIPHER" => cipher.display().to_string(),
                _ => a,
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = token.pkcs11_tool(module, &args);
        command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        // The keys are generated in the run, so signatures differ between runs; --verify checks them.
        results.push(outcome(&mut command, None)?);
    }
    Ok(results)
}

fn recorded(recorder: &Recorder, columns: &str, filter: &str) -> Result<Vec<Value>> {
    duckdb(&format!(
        "SELECT {columns} FROM {} {filter} ORDER BY start, client_id, seq",
        recorder.table("calls")
    ))
}

/// (func, rv) of each call, in order.
type Sequence = Vec<(String, String)>;

/// (func, rv) per row: the rv as its name (`rv_name`) or its number (`rv`).
fn func_rv(rows: &[Value], rv_column: &str) -> Sequence {
    let rv = |r: &Value| match &r[rv_column] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    rows.iter()
        .map(|r| (r["func"].as_str().unwrap_or("").to_owned(), rv(r)))
        .collect()
}

#[test]
fn pkcs11_tool_workloads_match_direct_runs_and_the_oracles_on_both_providers() -> Result<()> {
    for provider in [Provider::SoftHsm, Provider::Kryoptic] {
        let token = Token::of(provider, "workloads")?;
        let dir = temp();
        let direct = run_workloads(&token, &token.module(), dir.path(), &[])?;
        ensure!(
            direct[0].0 == Some(0),
            "{provider:?}: --test failed directly: {}",
            direct[0].2
        );
        ensure!(
            direct[3].0 == Some(0) && direct[4].0 == Some(0),
            "{provider:?}: sign/verify failed directly: {:?}",
            &direct[3..5]
        );

        let mut recorder = Recorder::start(&[])?;
        let log = dir.path().join("oracle.log");
        // The oracle sits between the shim and the token: pkcs11-spy for SoftHSM2, our counting
        // module for Kryoptic (OpenSC 0.23's spy loses every call of a 3.2 interface).
        let (middle, oracle_env) = match provider {
            Provider::SoftHsm => (
                SPY.to_owned(),
                vec![
                    ("PKCS11SPY", SOFTHSM.to_owned()),
                    ("PKCS11SPY_OUTPUT", log.display().to_string()),
                ],
            ),
            Provider::Kryoptic => (
                target_dir().join("libp11count.so").display().to_string(),
                vec![
                    ("P11COUNT_MODULE", kryoptic().display().to_string()),
                    ("P11COUNT_OUTPUT", log.display().to_string()),
                ],
            ),
        };
        let mut env = oracle_env;
        env.push(("P11TRACE_MODULE", middle));
        env.push(("P11TRACE_SOCKET", recorder.socket.display().to_string()));
        let traced = run_workloads(&token, &shim(), dir.path(), &env)?;
        for (index, (a, b)) in direct.iter().zip(&traced).enumerate() {
            ensure!(
                a == b,
                "{provider:?} workload {index}: direct and traced differ:\n{a:?}\n{b:?}"
            );
        }
        recorder.stop()?;

        let rows = recorded(&recorder, "func, rv, rv_name", "")?;
        let (ours, oracle): (Sequence, Sequence) = match provider {
            // pkcs11-spy prints names; the counting module prints numbers.
            Provider::SoftHsm => (
                func_rv(&rows, "rv_name"),
                spy_sequence(&std::fs::read_to_string(&log)?),
            ),
            Provider::Kryoptic => (
                func_rv(&rows, "rv"),
                std::fs::read_to_string(&log)?
                    .lines()
                    .filter_map(|l| {
                        l.split_once(' ')
                            .map(|(f, rv)| (f.to_owned(), rv.to_owned()))
                    })
                    .collect(),
            ),
        };
        ensure!(
            ours.len() > 500,
            "{provider:?}: too few calls recorded: {}",
            ours.len()
        );
        ensure!(
            ours == oracle,
            "{provider:?}: recorded {} calls, oracle {}; first difference {:?}",
            ours.len(),
            oracle.len(),
            ours.iter()
                .zip(&oracle)
                .position(|(a, b)| a != b)
                .map(|i| (&ours[i], &oracle[i]))
        );

        // Vendor-defined mechanisms are forwarded and recorded by number.
        let vendor = recorded(
            &recorder,
            "mechanism, mech_code, rv_name",
            "WHERE func = 'C_SignInit' AND mech_code = 2147488308",
        )?;
        ensure!(
            vendor.len() == 1 && vendor[0]["mechanism"] == "0x80001234",
            "{provider:?}: {vendor:?}"
        );
        // Kryoptic is asked for its 3.2 interface: every call of it carries 3.2.
        if provider == Provider::Kryoptic {
            let versions = duckdb(&format!(
                "SELECT DISTINCT interface_version AS v FROM {} WHERE func = 'C_Sign'",
                recorder.table("calls")
            ))?;
            ensure!(
                versions.len() == 1 && versions[0]["v"] == "3.2",
                "{versions:?}"
            );
        }
        // Templates, mechanism parameters, handles and op_id are filled.
        let keygen = recorded(
            &recorder,
            "out_objects, attrs, mechanism",
            "WHERE func = 'C_GenerateKeyPair' AND rv = 0 AND mechanism = 'CKM_RSA_PKCS_KEY_PAIR_GEN'",
        )?;
        ensure!(keygen.len() == 1, "{provider:?}: {keygen:?}");
        ensure!(
            keygen[0]["out_objects"]
                .as_array()
                .is_some_and(|o| o.len() == 2),
            "{keygen:?}"
        );
        let attrs = keygen[0]["attrs"].as_array().context("attrs")?;
        ensure!(
            attrs.iter().any(|a| a["template"] == "public"
                && a["type"] == "CKA_MODULUS_BITS"
                && a["value"] == "2048"),
            "{attrs:?}"
        );
        ensure!(
            attrs.iter().any(|a| a["template"] == "private"
                && a["type"] == "CKA_LABEL"
                && a["value"] == "rsa1"),
            "{attrs:?}"
        );
        let ops = recorded(
            &recorder,
            "func, op_id, session",
            "WHERE func IN ('C_SignInit', 'C_Sign') AND rv = 0",
        )?;
        ensure!(
            ops.len() >= 2 && ops.iter().all(|r| r["op_id"].is_number()),
            "{provider:?} op_id: {ops:?}"
        );
        ensure!(
            ops[0]["op_id"] == ops[1]["op_id"],
            "{provider:?}: C_SignInit and C_Sign must share op_id: {ops:?}"
        );
        let cbc = recorded(
            &recorder,
            "mech_params",
            "WHERE func = 'C_EncryptInit' AND mechanism = 'CKM_AES_CBC_PAD'",
        )?;
        ensure!(
            cbc.first().is_some_and(|r| r["mech_params"] == "iv_len=16"),
            "{provider:?}: {cbc:?}"
        );
        // Info calls keep their useful fields.
        let info = duckdb(&format!(
            "WITH one AS (SELECT attrs FROM {} WHERE func = 'C_GetTokenInfo' AND rv = 0 LIMIT 1) SELECT a.type AS t, a.value AS v FROM (SELECT unnest(attrs) AS a FROM one)",
            recorder.table("calls")
        ))?;
        let field = |name: &str| info.iter().find(|r| r["t"] == name).map(|r| r["v"].clone());
        ensure!(
            field("label") == Some(Value::from("workloads")),
            "{provider:?} token info: {info:?}"
        );
        ensure!(
            field("serialNumber").is_some() && field("model").is_some(),
            "{provider:?} token info: {info:?}"
        );
        let mechanism_info = duckdb(&format!(
            "WITH one AS (SELECT attrs FROM {} WHERE func = 'C_GetMechanismInfo' AND mechanism = 'CKM_RSA_PKCS_KEY_PAIR_GEN' AND rv = 0 LIMIT 1) SELECT a.type AS t, a.value AS v FROM (SELECT unnest(attrs) AS a FROM one)",
            recorder.table("calls")
        ))?;
        ensure!(
            mechanism_info.iter().any(|r| r["t"] == "ulMaxKeySize"
                && r["v"]
                    .as_str()
                    .is_some_and(|v| v.parse::<u64>().is_ok_and(|n| n >= 4096))),
            "{provider:?}: {mechanism_info:?}"
        );
    }
    Ok(())
}

fn client_json(output: &std::process::Output) -> Result<Vec<Value>> {
    ensure!(
        output.status.success(),
        "p11client failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// Recorded rows per pid: (all rows, rows the shim made itself).
fn rows_by_pid(recorder: &Recorder) -> Result<BTreeMap<i64, (i64, i64)>> {
    let rows = duckdb(&format!(
        "SELECT pid, count(*) AS n, count(*) FILTER (internal) AS internal FROM {} GROUP BY 1",
        recorder.table("calls")
    ))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["pid"].as_i64().unwrap_or(-1),
                (
                    r["n"].as_i64().unwrap_or(-1),
                    r["internal"].as_i64().unwrap_or(-1),
                ),
            )
        })
        .collect())
}

/// Σ dropped and Σ lost over each pid's connections.
fn accounting_by_pid(recorder: &Recorder) -> Result<BTreeMap<i64, (i64, i64)>> {
    let rows = duckdb(&format!(
        "SELECT pid, sum(dropped)::BIGINT AS d, sum(lost)::BIGINT AS l FROM {} GROUP BY 1",
        recorder.table("clients")
    ))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["pid"].as_i64().unwrap_or(-1),
                (r["d"].as_i64().unwrap_or(-1), r["l"].as_i64().unwrap_or(-1)),
            )
        })
        .collect())
}

/// Σ dropped and Σ lost over a pid's connections.
fn dropped_and_lost(recorder: &Recorder, pid: i64) -> Result<(i64, i64)> {
    Ok(accounting_by_pid(recorder)?
        .get(&pid)
        .copied()
        .unwrap_or((0, 0)))
}

/// One p11client run through the shim on a fresh SoftHSM2 token, with a recorder of its own,
/// stopped once the client is done; its dataset stays to be queried.
struct TracedRun {
    recorder: Recorder,
    output: std::process::Output,
    report: Value,
    pid: i64,
    /// Rows the client's process produced, and how many of them the shim made itself.
    rows: i64,
    internal: i64,
}

fn traced_run(
    label: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<TracedRun> {
    let token = Token::new(label)?;
    let mut recorder = Recorder::start(&[])?;
    let mut command = token.client(&shim(), args);
    recorder.shim_env(&mut command, SOFTHSM);
    command.envs(env.iter().copied());
    let output = run(&mut command, timeout)?;
    let report = client_json(&output)?.remove(0);
    recorder.stop()?;
    let pid = report["pid"].as_i64().context("pid")?;
    let (rows, internal) = rows_by_pid(&recorder)?[&pid];
    Ok(TracedRun {
        recorder,
        output,
        report,
        pid,
        rows,
        internal,
    })
}

impl TracedRun {
    /// The calls the client says it made.
    fn calls(&self) -> i64 {
        self.report["calls"].as_i64().unwrap_or(-1)
    }

    fn dropped_and_lost(&self) -> Result<(i64, i64)> {
        dropped_and_lost(&self.recorder, self.pid)
    }
}

#[test]
fn three_x_interfaces_of_kryoptic_are_traced_including_3x_only_functions() -> Result<()> {
    let token = Token::of(Provider::Kryoptic, "interfaces")?;
    let mut recorder = Recorder::start(&[])?;
    let mut command = token.client(&shim(), &["interfaces", USER_PIN]);
    recorder.shim_env(&mut command, kryoptic().to_str().unwrap_or_default());
    let report = client_json(&run(&mut command, Duration::from_secs(60))?)?;
    recorder.stop()?;
    let interfaces = report[0]["interfaces"].as_array().context("interfaces")?;
    ensure!(
        interfaces.len() == 2 && interfaces.iter().all(|i| i["session_cancel"] == 0),
        "{report:?}"
    );
    for version in ["3.0", "3.2"] {
        let rows = duckdb(&format!(
            "SELECT func, rv FROM {} WHERE interface_version = '{version}' AND func IN ('C_LoginUser', 'C_SessionCancel', 'C_OpenSession')",
            recorder.table("calls")
        ))?;
        let funcs: Vec<&str> = rows.iter().filter_map(|r| r["func"].as_str()).collect();
        for func in ["C_LoginUser", "C_SessionCancel", "C_OpenSession"] {
            ensure!(
                funcs.contains(&func),
                "{func} through the {version} table was not traced: {rows:?}"
            );
        }
    }
    // The reported versions are the real module's, and every call the client made is a row.
    ensure!(interfaces[1]["reported_version"] == "3.2", "{report:?}");
    let (rows, internal) = rows_by_pid(&recorder)?
        .into_values()
        .next()
        .context("no rows")?;
    ensure!(
        rows - internal == report[0]["calls"].as_i64().unwrap_or(-1),
        "rows {rows} (internal {internal}) vs {report:?}"
    );
    Ok(())
}

#[test]
fn eight_threads_of_five_hundred_calls_are_recorded_exactly() -> Result<()> {
    let traced = traced_run(
        "threads",
        &["threads", "8", "500"],
        &[],
        Duration::from_secs(120),
    )?;
    let (recorder, report) = (&traced.recorder, &traced.report);
    let (rows, internal) = (traced.rows, traced.internal);
    ensure!(
        rows - internal == traced.calls(),
        "rows {rows} (internal {internal}) vs client {}",
        report["calls"]
    );
    ensure!(traced.dropped_and_lost()? == (0, 0), "drops or losses");
    // Each thread's rows carry its tid, and only its own session: no record mixed between threads.
    for thread in report["threads"].as_array().context("threads")? {
        let tid = thread["tid"].as_i64().context("tid")?;
        let rows = duckdb(&format!(
            "SELECT count(*) AS n, count(DISTINCT session) AS sessions, min(session) AS s FROM {} WHERE tid = {tid}",
            recorder.table("calls")
        ))?;
        ensure!(
            rows[0]["n"] == thread["calls"],
            "tid {tid}: {} rows for {} calls",
            rows[0]["n"],
            thread["calls"]
        );
        ensure!(
            rows[0]["sessions"] == 1 && rows[0]["s"] == thread["session"],
            "tid {tid}: sessions {rows:?} vs {thread}"
        );
    }
    // seq is gap-free.
    let seq = duckdb(&format!(
        "SELECT min(seq) AS lo, max(seq) AS hi, count(DISTINCT seq) AS n FROM {}",
        recorder.table("calls")
    ))?;
    ensure!(
        seq[0]["lo"] == 0
            && seq[0]["hi"].as_i64() == Some(rows - 1)
            && seq[0]["n"].as_i64() == Some(rows),
        "{seq:?}"
    );
    Ok(())
}

#[test]
fn two_hundred_forks_deliver_exact_counts_without_deadlock() -> Result<()> {
    let token = Token::new("forks")?;
    let mut recorder = Recorder::start(&[])?;
    let mut command = token.client(&shim(), &["fork", "200", "20"]);
    recorder.shim_env(&mut command, SOFTHSM);
    let started = Instant::now();
    let output = run(&mut command, Duration::from_secs(240))?;
    let stderr = text(&output.stderr);
    let lines = client_json(&output)?;
    let elapsed = started.elapsed();
    recorder.stop()?;
    let parent = lines
        .iter()
        .find(|l| l["child"] == false)
        .context("parent line")?;
    ensure!(parent["failed_children"] == 0, "{parent}");
    let children: Vec<&Value> = lines.iter().filter(|l| l["child"] == true).collect();
    ensure!(children.len() == 200, "{} child reports", children.len());
    let by_pid = rows_by_pid(&recorder)?;
    let accounting = accounting_by_pid(&recorder)?;
    for line in lines.iter() {
        let pid = line["pid"].as_i64().context("pid")?;
        let (rows, internal) = by_pid.get(&pid).copied().unwrap_or((0, 0));
        let (dropped, lost) = accounting.get(&pid).copied().unwrap_or((0, 0));
        // Exact accounting: every call is a row, or counted as dropped or lost.
        if rows + dropped + lost - internal != line["calls"].as_i64().unwrap_or(-1) {
            let connections = duckdb(&format!(
                "SELECT * EXCLUDE (run_id, host, exe, module, provider) FROM {} WHERE pid = {pid}",
                recorder.table("clients")
            ))?;
            anyhow::bail!(
                "pid {pid}: rows {rows} (internal {internal}) + dropped {dropped} + lost {lost} vs {line}; connections {connections:?}; recorder: {:?}; client stderr: {stderr}",
                recorder.stderr_lines
            );
        }
    }
    // One client_id per process, whose seq runs from 0 without gaps: no parent seq leaked into a child.
    let clients = duckdb(&format!(
        "SELECT client_id, count(DISTINCT pid) AS pids, min(seq) AS lo, max(seq) AS hi, count(*) AS n FROM {} GROUP BY 1",
        recorder.table("calls")
    ))?;
    ensure!(clients.len() == 201, "{} clients", clients.len());
    for client in &clients {
        ensure!(
            client["pids"] == 1
                && client["lo"] == 0
                && client["hi"].as_i64().map(|h| h + 1) == client["n"].as_i64(),
            "{client}"
        );
    }
    ensure!(elapsed < Duration::from_secs(200), "forks took {elapsed:?}");
    Ok(())
}

#[test]
fn a_recorder_started_late_killed_and_restarted_never_hurts_the_host() -> Result<()> {
    let token = Token::new("lifecycle")?;
    let dir = temp();
    let socket = dir.path().join("sock").join("r.sock");
    std::fs::create_dir_all(socket.parent().context("folder")?)?;
    std::fs::set_permissions(
        socket.parent().context("folder")?,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    // 600 calls 10 ms apart: about 6 s of traffic.
    let mut command = token.client(&shim(), &["paced", "600", "10"]);
    command
        .env("P11TRACE_MODULE", SOFTHSM)
        .env("P11TRACE_SOCKET", &socket)
        .stdout(std::process::Stdio::piped());
    let client = command.spawn()?;
    std::thread::sleep(Duration::from_millis(1200));
    let dataset = dir.path().join("ds");
    let mut first = Recorder::start_at(temp(), dataset.clone(), socket.clone(), &[])?;
    std::thread::sleep(Duration::from_millis(1500));
    first.kill()?;
    std::thread::sleep(Duration::from_millis(1000));
    let mut second = Recorder::start_at(temp(), dataset.clone(), socket.clone(), &[])?;
    let output = client.wait_with_output()?;
    ensure!(
        output.status.success(),
        "the host failed: {}",
        text(&output.stderr)
    );
    let report: Value = serde_json::from_str(text(&output.stdout).trim())?;
    second.stop()?;
    let pid = report["pid"].as_i64().context("pid")?;
    let calls = duckdb(&format!(
        "SELECT count(*) AS n, count(*) FILTER (internal) AS internal, count(DISTINCT seq) AS distinct_seq FROM {} WHERE pid = {pid}",
        second.table("calls")
    ))?;
    let n = calls[0]["n"].as_i64().unwrap_or(-1);
    ensure!(
        calls[0]["distinct_seq"].as_i64() == Some(n),
        "a seq was recorded twice: {calls:?}"
    );
    let connections = duckdb(&format!(
        "SELECT connection, records, dropped, lost, disconnect_reason FROM {} WHERE pid = {pid} ORDER BY connection",
        second.table("clients")
    ))?;
    // The first recorder died before writing its clients row; the second saw the reconnection.
    ensure!(
        connections
            .iter()
            .any(|c| c["connection"].as_i64().unwrap_or(0) >= 1),
        "no reconnection recorded: {connections:?}"
    );
    ensure!(
        n > 100 && n < 600,
        "rows from both recorders expected, got {n}"
    );
    Ok(())
}

#[test]
fn audit_mode_refuses_calls_it_cannot_record_and_off_mode_records_nothing() -> Result<()> {
    let token = Token::new("modes")?;
    let dir = temp();
    let absent = dir.path().join("absent.sock");
    // Audit, no recorder: refused, one stderr line, clean failure.
    let mut refused = token.pkcs11_tool(&shim(), &["--list-slots"]);
    refused
        .env("P11TRACE_MODULE", SOFTHSM)
        .env("P11TRACE_SOCKET", &absent)
        .env("P11TRACE_MODE", "audit");
    let output = run(&mut refused, Duration::from_secs(30))?;
    ensure!(
        !output.status.success() && output.status.code().is_some(),
        "audit without recorder must fail cleanly"
    );
    let lines: Vec<String> = text(&output.stderr)
        .lines()
        .filter(|l| l.starts_with("p11trace:"))
        .map(String::from)
        .collect();
    ensure!(lines.len() == 1 && lines[0].contains("audit"), "{lines:?}");
    // Audit with a recorder: every call runs and is recorded.
    let mut recorder = Recorder::start(&[])?;
    let mut audited = token.pkcs11_tool(&shim(), &["--login", "--pin", USER_PIN, "--test"]);
    recorder.shim_env(&mut audited, SOFTHSM);
    audited.env("P11TRACE_MODE", "audit");
    ensure!(
        run(&mut audited, Duration::from_secs(120))?
            .status
            .success(),
        "audit with a recorder must work"
    );
    // Off: forwards without recording.
    let mut off = token.pkcs11_tool(&shim(), &["--list-slots"]);
    recorder.shim_env(&mut off, SOFTHSM);
    off.env("P11TRACE_MODE", "off");
    let off_output = run(&mut off, Duration::from_secs(30))?;
    ensure!(off_output.status.success());
    recorder.stop()?;
    let clients = duckdb(&format!(
        "SELECT count(*) AS n, sum(dropped)::BIGINT AS d FROM {}",
        recorder.table("clients")
    ))?;
    ensure!(
        clients[0]["n"] == 1 && clients[0]["d"] == 0,
        "only the audited run connects, with no drop: {clients:?}"
    );
    Ok(())
}

#[test]
fn configuration_comes_from_a_file_when_the_host_cannot_set_variables() -> Result<()> {
    let token = Token::new("config")?;
    let mut recorder = Recorder::start(&[])?;
    let dir = temp();
    let config = dir.path().join("p11trace.conf");
    std::fs::write(
        &config,
        format!(
            "# p11trace\nmodule = {SOFTHSM}\nsocket = {}\nredact = labels\n",
            recorder.socket.display()
        ),
    )?;
    let mut command = token.pkcs11_tool(
        &shim(),
        &[
            "--login",
            "--pin",
            USER_PIN,
            "--keygen",
            "--key-type",
            "AES:16",
            "--label",
            "secret-project-x",
        ],
    );
    command
        .env("P11TRACE_CONFIG", &config)
        .env_remove("P11TRACE_MODULE")
        .env_remove("PKCS11SPY");
    let output = run(&mut command, Duration::from_secs(60))?;
    ensure!(output.status.success(), "{}", text(&output.stderr));
    recorder.stop()?;
    let rows = duckdb(&format!(
        "SELECT a.value AS v FROM (SELECT unnest(attrs) AS a FROM {} WHERE func = 'C_GenerateKey') WHERE a.type = 'CKA_LABEL'",
        recorder.table("calls")
    ))?;
    // redact = labels from the file: the label is a keyed hash, not the text.
    ensure!(
        rows.len() == 1
            && rows[0]["v"]
                .as_str()
                .is_some_and(|v| v.starts_with("hmac:") && v.len() == 37),
        "{rows:?}"
    );
    let policy = duckdb(&format!(
        "SELECT redaction FROM {}",
        recorder.table("clients")
    ))?;
    ensure!(policy[0]["redaction"] == "labels");
    for file in all_files(recorder.dir.path()) {
        ensure!(
            !contains_secret(&std::fs::read(&file)?, b"secret-project-x"),
            "label in clear in {}",
            file.display()
        );
    }
    Ok(())
}

#[test]
fn a_full_queue_drops_and_counts_so_rows_plus_dropped_equal_calls() -> Result<()> {
    let traced = traced_run(
        "drops",
        &["burst", "20000"],
        &[("P11TRACE_QUEUE_CAPACITY", "4")],
        Duration::from_secs(120),
    )?;
    let (rows, internal, pid) = (traced.rows, traced.internal, traced.pid);
    let (dropped, lost) = traced.dropped_and_lost()?;
    let calls = traced.report["calls"].as_i64().context("calls")?;
    ensure!(dropped > 0, "a 4-record queue under 20,000 calls must drop");
    ensure!(
        rows + dropped + lost == calls + internal,
        "rows {rows} + dropped {dropped} + lost {lost} != calls {calls} + internal {internal}"
    );
    // `calls` never holds gap rows: every row is a real call, and seq values are distinct.
    let seq = duckdb(&format!(
        "SELECT count(DISTINCT seq) AS n, max(seq) AS hi FROM {} WHERE pid = {pid}",
        traced.recorder.table("calls")
    ))?;
    ensure!(
        seq[0]["n"].as_i64() == Some(rows)
            && seq[0]["hi"].as_i64().is_some_and(|h| h < calls + internal),
        "{seq:?}"
    );
    Ok(())
}

#[test]
fn vendor_interfaces_pass_through_untraced_and_the_record_says_so() -> Result<()> {
    let token = Token::of(Provider::Kryoptic, "vendor")?;
    let dir = temp();
    let count = target_dir().join("libp11count.so");
    let oracle_env = |command: &mut std::process::Command, log: &str| {
        command
            .env("P11COUNT_MODULE", kryoptic())
            .env("P11COUNT_OUTPUT", dir.path().join(log));
    };
    let mut direct = token.client(&count, &["interface-list"]);
    oracle_env(&mut direct, "direct.log");
    let direct = client_json(&run(&mut direct, Duration::from_secs(60))?)?.remove(0);
    let mut recorder = Recorder::start(&[])?;
    let mut traced = token.client(&shim(), &["interface-list"]);
    recorder.shim_env(&mut traced, count.to_str().unwrap_or_default());
    oracle_env(&mut traced, "traced.log");
    let traced = client_json(&run(&mut traced, Duration::from_secs(60))?)?.remove(0);
    recorder.stop()?;
    // The caller sees exactly the interfaces and versions the module offers, and the vendor one works.
    ensure!(
        direct["interfaces"] == traced["interfaces"],
        "{direct} vs {traced}"
    );
    ensure!(
        traced["interfaces"]
            .as_array()
            .is_some_and(|i| i.len() == 3),
        "{traced}"
    );
    ensure!(traced["vendor_ping"] == 42, "{traced}");
    // Its call went straight to the module (the oracle saw it), the shim recorded none.
    ensure!(std::fs::read_to_string(dir.path().join("traced.log"))?.contains("Vendor_Ping 42"));
    let rows = duckdb(&format!(
        "SELECT a.value AS v FROM (SELECT unnest(attrs) AS a FROM {} WHERE func = 'C_GetInterfaceList' AND out_len = 3) WHERE a.type = 'untracedInterface'",
        recorder.table("calls")
    ))?;
    ensure!(
        rows.len() == 1 && rows[0]["v"] == "Vendor p11count",
        "{rows:?}"
    );
    Ok(())
}

#[test]
fn a_host_that_forbids_threads_gets_no_thread_and_every_record() -> Result<()> {
    let traced = traced_run(
        "nothreads",
        &["nothreads", "20000"],
        &[],
        Duration::from_secs(120),
    )?;
    let (report, rows, internal) = (&traced.report, traced.rows, traced.internal);
    ensure!(
        report["threads_before_finalize"] == 1,
        "the shim started a thread: {report}"
    );
    let (dropped, lost) = traced.dropped_and_lost()?;
    ensure!(
        rows + dropped + lost - internal == traced.calls(),
        "rows {rows} dropped {dropped} lost {lost} vs {report}"
    );
    ensure!(
        rows - internal > 1000,
        "calling threads must deliver records themselves: {rows}"
    );
    Ok(())
}

#[test]
fn a_process_exiting_without_finalize_delivers_from_its_destructor() -> Result<()> {
    let traced = traced_run("noexit", &["noexit", "3000"], &[], Duration::from_secs(60))?;
    let TracedRun {
        recorder,
        report,
        pid,
        rows,
        internal,
        ..
    } = &traced;
    ensure!(rows - internal == traced.calls(), "rows {rows} vs {report}");
    let reason = duckdb(&format!(
        "SELECT disconnect_reason AS r FROM {} WHERE pid = {pid}",
        recorder.table("clients")
    ))?;
    ensure!(reason.len() == 1 && reason[0]["r"] == "exit", "{reason:?}");
    Ok(())
}

#[test]
fn a_panic_while_recording_never_reaches_the_host() -> Result<()> {
    let traced = traced_run(
        "panic",
        &["burst", "100"],
        &[("P11TRACE_TEST_PANIC", "C_GetSessionInfo")],
        Duration::from_secs(60),
    )?;
    let (report, rows, internal) = (&traced.report, traced.rows, traced.internal);
    let ours: Vec<String> = text(&traced.output.stderr)
        .lines()
        .map(String::from)
        .collect();
    ensure!(
        ours.len() == 1
            && ours[0].starts_with("p11trace: internal error while recording C_GetSessionInfo"),
        "{ours:?}"
    );
    let (dropped, _) = traced.dropped_and_lost()?;
    // The 100 calls went through; their records were lost to the panic and counted as dropped.
    ensure!(
        dropped == 100 && rows + dropped - internal == traced.calls(),
        "rows {rows} dropped {dropped} {report}"
    );
    Ok(())
}
