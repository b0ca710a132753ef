//! Every call is accounted for, exactly: per process, rows + Σdropped + Σlost = the calls the
//! client made (plus the shim's own) — across 8 threads, 200 forks, 200 clients 50 at a time, a
//! queue too small for a burst, a host that forbids threads, and a process that exits without
//! C_Finalize. No record lands in another thread's, process's or client's rows.

use std::process::Child;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

#[test]
fn eight_threads_of_five_hundred_calls_are_recorded_exactly() -> Result<()> {
    let traced = Traced::new("threads")?.run_client(
        &["threads", "8", "500"],
        &[],
        Duration::from_secs(120),
    )?;
    let (recorder, report) = (traced.recorder(), traced.report());
    let Tally { rows, internal, .. } = traced.tally;
    ensure!(
        rows - internal == traced.calls(),
        "rows {rows} (internal {internal}) vs client {}",
        report["calls"]
    );
    ensure!(
        (traced.tally.dropped, traced.tally.lost) == (0, 0),
        "drops or losses"
    );
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
    let traced =
        Traced::new("forks")?.run_client(&["fork", "200", "20"], &[], Duration::from_secs(240))?;
    let (recorder, lines) = (traced.recorder(), &traced.reports);
    let parent = lines
        .iter()
        .find(|l| l["child"] == false)
        .context("parent line")?;
    ensure!(parent["failed_children"] == 0, "{parent}");
    let children: Vec<&Value> = lines.iter().filter(|l| l["child"] == true).collect();
    ensure!(children.len() == 200, "{} child reports", children.len());
    let tallies = tallies(&recorder.dataset)?;
    for line in lines {
        let pid = line["pid"].as_i64().context("pid")?;
        let t = tallies.get(&pid).copied().unwrap_or_default();
        // Exact accounting: every call is a row, or counted as dropped or lost.
        if t.accounted() != line["calls"].as_i64().unwrap_or(-1) {
            let connections = duckdb(&format!(
                "SELECT * EXCLUDE (run_id, host, exe, module, provider) FROM {} WHERE pid = {pid}",
                recorder.table("clients")
            ))?;
            anyhow::bail!(
                "pid {pid}: rows {} (internal {}) + dropped {} + lost {} vs {line}; connections {connections:?}; recorder: {:?}; client stderr: {}",
                t.rows,
                t.internal,
                t.dropped,
                t.lost,
                recorder.stderr_lines,
                text(&traced.output.stderr)
            );
        }
    }
    // One client_id per process, whose seq runs from 0 with no gap but the calls its shim
    // dropped or lost (a loaded machine makes some): no parent seq leaked into a child.
    let clients = duckdb(&format!(
        "SELECT c.client_id, count(DISTINCT c.pid) AS pids, min(c.seq) AS lo, max(c.seq) AS hi, count(*) AS n, \
         any_value(u.undelivered) AS undelivered FROM {} c JOIN (SELECT client_id, sum(dropped + lost)::BIGINT AS undelivered \
         FROM {} GROUP BY 1) u USING (client_id) GROUP BY 1",
        recorder.table("calls"),
        recorder.table("clients")
    ))?;
    ensure!(clients.len() == 201, "{} clients", clients.len());
    for client in &clients {
        let int = |key: &str| client[key].as_i64().unwrap_or(-1);
        let seqs = int("hi") + 1;
        let gaps_explained = if int("undelivered") == 0 {
            seqs == int("n")
        } else {
            int("n") <= seqs && seqs <= int("n") + int("undelivered")
        };
        ensure!(
            int("pids") == 1 && int("lo") == 0 && gaps_explained,
            "{client}"
        );
    }
    let elapsed = traced.elapsed;
    ensure!(elapsed < Duration::from_secs(200), "forks took {elapsed:?}");
    Ok(())
}

#[test]
fn two_hundred_clients_fifty_at_once_are_counted_exactly_and_join_their_clients_rows() -> Result<()>
{
    let token = Token::new("many")?;
    let mut recorder = Recorder::start(&[])?;
    let mut reports = Vec::new();
    for _wave in 0..4 {
        let children: Vec<Child> = spawn_clients(&token, &recorder.socket, 50, &["burst", "40"])?;
        for child in children {
            reports.push(report(child)?);
        }
    }
    recorder.stop()?;
    ensure!(reports.len() == 200);
    check_invariant(&recorder.dataset, &reports)?;
    let connections = duckdb(&format!(
        "SELECT count(*) AS n, count(*) FILTER (disconnect_reason = 'finalize') AS clean, sum(dropped)::BIGINT AS d FROM {}",
        recorder.table("clients")
    ))?;
    ensure!(
        connections[0]["n"] == 200 && connections[0]["clean"] == 200 && connections[0]["d"] == 0,
        "{connections:?}"
    );
    // Every call joins exactly one clients row on client_id.
    let joined = duckdb(&format!(
        "SELECT count(*) AS n, count(DISTINCT c.process) AS processes FROM {} AS calls JOIN {} AS c USING (client_id)",
        recorder.table("calls"),
        recorder.table("clients")
    ))?;
    let total = duckdb(&format!(
        "SELECT count(*) AS n FROM {}",
        recorder.table("calls")
    ))?;
    ensure!(
        joined[0]["n"] == total[0]["n"] && joined[0]["processes"] == 1,
        "{joined:?} vs {total:?}"
    );
    Ok(())
}

#[test]
fn a_full_queue_drops_and_counts_so_rows_plus_dropped_equal_calls() -> Result<()> {
    let traced = Traced::new("drops")?.run_client(
        &["burst", "20000"],
        &[("P11TRACE_QUEUE_CAPACITY", "4")],
        Duration::from_secs(120),
    )?;
    let (
        Tally {
            rows,
            internal,
            dropped,
            lost,
        },
        pid,
    ) = (traced.tally, traced.pid);
    let calls = traced.report()["calls"].as_i64().context("calls")?;
    ensure!(dropped > 0, "a 4-record queue under 20,000 calls must drop");
    ensure!(
        rows + dropped + lost == calls + internal,
        "rows {rows} + dropped {dropped} + lost {lost} != calls {calls} + internal {internal}"
    );
    // `calls` never holds gap rows: every row is a real call, and seq values are distinct.
    let seq = duckdb(&format!(
        "SELECT count(DISTINCT seq) AS n, max(seq) AS hi FROM {} WHERE pid = {pid}",
        traced.recorder().table("calls")
    ))?;
    ensure!(
        seq[0]["n"].as_i64() == Some(rows)
            && seq[0]["hi"].as_i64().is_some_and(|h| h < calls + internal),
        "{seq:?}"
    );
    Ok(())
}

#[test]
fn a_host_that_forbids_threads_gets_no_thread_and_every_record() -> Result<()> {
    let traced = Traced::new("nothreads")?.run_client(
        &["nothreads", "20000"],
        &[],
        Duration::from_secs(120),
    )?;
    let (report, t) = (traced.report(), traced.tally);
    ensure!(
        report["threads_before_finalize"] == 1,
        "the shim started a thread: {report}"
    );
    ensure!(
        t.accounted() == traced.calls(),
        "rows {} dropped {} lost {} vs {report}",
        t.rows,
        t.dropped,
        t.lost
    );
    ensure!(
        t.rows - t.internal > 1000,
        "calling threads must deliver records themselves: {}",
        t.rows
    );
    Ok(())
}

#[test]
fn a_process_exiting_without_finalize_delivers_from_its_destructor() -> Result<()> {
    let traced =
        Traced::new("noexit")?.run_client(&["noexit", "3000"], &[], Duration::from_secs(60))?;
    let (report, pid, Tally { rows, internal, .. }) = (traced.report(), traced.pid, traced.tally);
    ensure!(rows - internal == traced.calls(), "rows {rows} vs {report}");
    let reason = duckdb(&format!(
        "SELECT disconnect_reason AS r FROM {} WHERE pid = {pid}",
        traced.recorder().table("clients")
    ))?;
    ensure!(reason.len() == 1 && reason[0]["r"] == "exit", "{reason:?}");
    Ok(())
}
