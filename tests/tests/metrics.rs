//! `p11trace-recorder --metrics ADDR`: the real recorder serves Prometheus text while real
//! traced clients (p11client, pkcs11-tool on SoftHSM2) run into it. Scraped during the run and at
//! its end, parsed by the `prometheus_client` package's own parser, checked against
//! Prometheus' naming rules and histogram shape; the final counters equal what the dataset holds
//! (calls by function and rv, histogram counts and sums per function, rows, each client's drops
//! as its `clients` rows record them). And the failures: a bad address, a taken port, a path
//! that is not `/metrics`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::prometheus::*;
use p11trace_tests::*;

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn live_metrics_parse_and_end_equal_to_the_dataset() -> Result<()> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let token = Token::new("metrics")?;
    let recorder = Recorder::start(&["--metrics", &addr, "--roll-secs", "1"])?;
    let announced = format!("metrics on http://{addr}/metrics");
    ensure!(
        recorder.stderr_lines.iter().any(|l| l.contains(&announced)),
        "the recorder did not say `{announced}`: {:?}",
        recorder.stderr_lines
    );
    // A paced client (~3 s), and a fast one with a small queue that the stall below overflows.
    let paced = spawn_client(&token, &recorder.socket, &["paced", "600", "5"])?;
    let mut fast = token.client(&shim(), &["refusable", "4000"]);
    recorder
        .shim_env(&mut fast, token.module())
        .env("P11TRACE_QUEUE_CAPACITY", "1024")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fast = fast.spawn()?;

    // During the run: calls counted while clients are connected.
    let during = scrape_until(&addr, Duration::from_secs(20), |s| {
        s.sum("p11trace_calls_total") > 0.0
            && s.value("p11trace_clients_connected").unwrap_or(0.0) >= 1.0
    })?;
    during.check_names()?;
    during.check_histograms()?;
    ensure!(
        during.sum("p11trace_records_received_total") > 0.0,
        "{}",
        during.text
    );
    // A stall (scheduling the fault, not an assertion): the fast client's queue overflows.
    recorder.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    recorder.signal(libc::SIGCONT);
    let reports = [report(paced)?, report(fast)?];

    // pkcs11-tool: a key pair, a signature, and a wrong PIN (a non-OK return value).
    let mut traced = Traced { token, recorder };
    let dir = temp();
    let message = dir.path().join("message");
    std::fs::write(&message, b"metrics")?;
    let (message, signature) = (
        message.display().to_string(),
        dir.path().join("sig").display().to_string(),
    );
    let keygen = ["--keypairgen", "--key-type", "EC:prime256v1", "--id", "21"];
    run_ok(&mut traced.pkcs11_tool(&login(&keygen)), TIMEOUT)?;
    let sign = [
        "--sign", "-m", "ECDSA", "--id", "21", "-i", &message, "-o", &signature,
    ];
    run_ok(&mut traced.pkcs11_tool(&login(&sign)), TIMEOUT)?;
    let wrong = ["--login", "--pin", "Wrong-Pin-7777", "--list-objects"];
    run(&mut traced.pkcs11_tool(&wrong), TIMEOUT)?;

    // After the clients: every call written (rows_written = calls), nobody connected, and the
    // same counts twice 1.5 s apart.
    let mut previous = String::new();
    let last = scrape_until(&addr, Duration::from_secs(60), |s| {
        let calls = s.sum("p11trace_calls_total");
        let settled = calls > 0.0
            && s.value("p11trace_rows_written_total").ok() == Some(calls)
            && s.value("p11trace_clients_connected").ok() == Some(0.0);
        let key = format!("{:?}", s.by("p11trace_calls_total", &["function", "rv"]));
        let same = settled && key == previous;
        previous = if settled { key } else { String::new() };
        if settled && !same {
            std::thread::sleep(Duration::from_millis(1400));
        }
        same
    })?;
    last.check_names()?;
    last.check_histograms()?;
    last.check_documented()?;
    traced.recorder.stop()?;
    let ds = &traced.recorder.dataset;
    check_invariant(ds, &reports)?;

    let calls = table(ds, "calls");
    let by_rv = counts(&format!(
        "SELECT func || '|' || rv_name AS k, count(*) AS n FROM {calls} GROUP BY 1"
    ))?;
    ensure!(
        last.by("p11trace_calls_total", &["function", "rv"]) == by_rv,
        "calls_total by function and rv != the dataset's:\n{by_rv:?}\n{}",
        last.text
    );
    for (key, what) in [
        ("C_Sign|CKR_OK", "a signature"),
        ("C_Login|CKR_PIN_INCORRECT", "a wrong PIN"),
    ] {
        ensure!(by_rv.contains_key(key), "no {what} ({key}) in {by_rv:?}");
    }
    let by_function = counts(&format!(
        "SELECT func AS k, count(*) AS n FROM {calls} GROUP BY 1"
    ))?;
    ensure!(
        last.by("p11trace_call_duration_seconds_count", &["function"]) == by_function,
        "histogram counts != the dataset's per function:\n{by_function:?}\n{}",
        last.text
    );
    let sums = counts(&format!(
        "SELECT func AS k, sum(greatest(dur_ns, 0))::BIGINT AS n FROM {calls} GROUP BY 1"
    ))?;
    for (labels, seconds) in last.series("p11trace_call_duration_seconds_sum") {
        let function = labels["function"].as_str().unwrap_or("");
        let ns = *sums
            .get(function)
            .context("a sum for a function without rows")? as f64;
        ensure!(
            (seconds * 1e9 - ns).abs() <= ns * 1e-9 + 1.0,
            "{function}: _sum {seconds} s != Σdur_ns {ns}"
        );
    }
    let rows = count_of(&format!("SELECT count(*) AS n FROM {calls}"))?;
    ensure!(last.value("p11trace_rows_written_total")? as i64 == rows);
    ensure!(last.value("p11trace_records_received_total")? as i64 == rows);
    ensure!(
        last.value("p11trace_files_written_total")? >= 2.0,
        "{}",
        last.text
    );

    // Drops by client: the clients table's Σdropped and Σlost per client, for those with any
    // drop or loss (both series for each of them).
    let clients = table(ds, "clients");
    let per_client = |column: &str| {
        counts(&format!(
            "SELECT client_id || '|' || pid || '|' || process AS k, sum({column})::BIGINT AS n \
             FROM {clients} GROUP BY client_id, pid, process HAVING sum(dropped) + sum(lost) > 0"
        ))
    };
    let dropped = per_client("dropped")?;
    eprintln!("dropped per client (client_id|pid|process): {dropped:?}");
    ensure!(
        dropped.values().any(|&n| n > 0),
        "the 3 s stall must make the fast client (queue of 1,024) drop calls: {reports:?}"
    );
    let keys = ["client_id", "pid", "process"];
    ensure!(
        last.by("p11trace_client_dropped_total", &keys) == dropped,
        "client_dropped_total != the clients table:\n{dropped:?}\n{}",
        last.text
    );
    ensure!(last.by("p11trace_client_lost_total", &keys) == per_client("lost")?);
    let total: i64 = dropped.values().sum();
    ensure!(last.value("p11trace_dropped_by_clients_total")? as i64 == total);
    ensure!(last.value("p11trace_dropped_by_recorder_total")? == 0.0);
    Ok(())
}

#[test]
fn a_bad_or_taken_address_fails_and_other_paths_are_not_found() -> Result<()> {
    let dir = temp();
    let recorder = |metrics: &str| {
        let mut command = std::process::Command::new(recorder_bin());
        command
            .arg("--dataset")
            .arg(dir.path().join("ds"))
            .arg("--socket")
            .arg(dir.path().join("r.sock"))
            .args(["--metrics", metrics]);
        run(&mut command, TIMEOUT)
    };
    let bad = recorder("nonsense:xx")?;
    ensure!(
        bad.status.code() == Some(2),
        "usage error: {:?}",
        bad.status
    );
    ensure!(
        text(&bad.stderr).contains("nonsense:xx"),
        "the message names the value: {}",
        text(&bad.stderr)
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let refused = recorder(&addr)?;
    ensure!(
        refused.status.code() == Some(1),
        "bind error: {:?}",
        refused.status
    );
    let stderr = text(&refused.stderr);
    ensure!(
        stderr.contains(&format!("cannot serve metrics on {addr}"))
            && !stderr.contains("listening on"),
        "the error names {addr}, before anything listens: {stderr}"
    );
    drop(taken);

    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut recorder = Recorder::start(&["--metrics", &addr])?;
    let (status, body) = http_get(&addr, "/other")?;
    ensure!(status == 404, "GET /other: {status} {body}");
    let (status, _) = http_get(&addr, "/metrics?x=1")?;
    ensure!(status == 200, "GET /metrics?x=1: {status}");
    let (status, body) = http_get(&addr, "/metrics")?;
    ensure!(status == 200, "GET /metrics: {status}");
    parse(&body)?.check_names()?;
    let (status, _) = recorder.stop()?;
    ensure!(status.success(), "the recorder stops cleanly: {status}");
    ensure!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the endpoint is gone once the recorder has stopped"
    );
    Ok(())
}
