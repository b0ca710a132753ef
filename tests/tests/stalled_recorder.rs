//! A recorder that stops reading (SIGSTOP) while clients trace into it: audit mode loses no
//! admitted call (each call either ran and is a row, or was refused), and a client without a
//! sender thread never waits past `finalize_wait` in `C_Finalize`, nor long in any other call.
//! And the other side of a handshake made in steps: a thread-less client that goes idle in the
//! middle of one, for longer than the recorder waits for it, still delivers every record.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::Value;

/// Resumes the recorder however the test ends (a stopped recorder would hang `stop`).
struct Resume<'r>(&'r Recorder);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
    }
}

#[test]
fn audit_mode_against_a_stalled_recorder_refuses_calls_and_loses_none() -> Result<()> {
    let token = Token::new("audit-stall")?;
    let mut recorder = Recorder::start(&[])?;
    // ~4,000 calls a second for 7 s; a 1,024-record queue cannot hold 3 s of them, so the stall
    // must be felt as refusals.
    let mut command = token.client(&shim(), &["refusable", "7000"]);
    recorder
        .shim_env(&mut command, token.module())
        .env("P11TRACE_MODE", "audit")
        .env("P11TRACE_QUEUE_CAPACITY", "1024");
    let client = std::thread::spawn(move || run(&mut command, Duration::from_secs(90)));
    {
        let _resume = Resume(&recorder);
        // Scheduling the fault, not an assertion: calls flow for 1.5 s first.
        std::thread::sleep(Duration::from_millis(1500));
        recorder.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_secs(3));
    }
    let output = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let report = client_reports(&output)?.pop().context("no report")?;
    recorder.stop()?;
    let pid = report["pid"].as_i64().context("pid")?;
    let t = tallies(&recorder.dataset)?
        .get(&pid)
        .copied()
        .unwrap_or_default();
    let (ran, refused) = (number(&report, "ran")?, number(&report, "refused")?);
    eprintln!("audit client: {report}; dataset: {t:?}");
    ensure!(
        t.dropped == 0 && t.lost == 0,
        "audit mode lost admitted calls: dropped {} lost {} ({report})",
        t.dropped,
        t.lost
    );
    ensure!(
        t.rows - t.internal == ran,
        "rows {} (internal {}) != calls that ran {ran} ({report})",
        t.rows,
        t.internal
    );
    ensure!(
        refused > 0,
        "a 3 s stall with a 1,024-record queue must refuse calls: {report}"
    );
    Ok(())
}

fn number(report: &Value, key: &str) -> Result<i64> {
    report[key]
        .as_i64()
        .with_context(|| format!("no {key} in {report}"))
}

/// A `p11client nothreads-held` run: started, `ready`, released, reported.
struct Held {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Held {
    fn start(token: &Token, socket: &std::path::Path, before: usize, after: usize) -> Result<Held> {
        Held::start_with(token, socket, before, after, &[])
    }

    fn start_with(
        token: &Token,
        socket: &std::path::Path,
        before: usize,
        after: usize,
        env: &[(&str, &str)],
    ) -> Result<Held> {
        let mut command = token.client(
            &shim(),
            &["nothreads-held", &before.to_string(), &after.to_string()],
        );
        shim_to(&mut command, token.module(), socket)
            .env("P11TRACE_FINALIZE_WAIT_MS", "500")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Held { child, lines })
    }

    /// Waits for the next line (generous: 20,000 traced calls on a loaded debug build).
    fn line(&self) -> Result<String> {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .context("p11client printed nothing within 60 s")
    }

    fn release(&mut self) -> Result<()> {
        let stdin = self.child.stdin.as_mut().context("piped stdin")?;
        stdin.write_all(b"go\n")?;
        Ok(stdin.flush()?)
    }

    fn report(mut self) -> Result<Value> {
        let line = self.line()?;
        let _ = self.child.wait();
        serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))
    }
}

impl Drop for Held {
    /// A client left behind by a failed test is killed, not orphaned.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a `--stats-every` line saying the recorder has received records.
fn wait_for_records(recorder: &mut Recorder) -> Result<()> {
    loop {
        let line = recorder.wait_for("records=", Duration::from_secs(30))?;
        let received = line
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix("records="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if received > 0 {
            return Ok(());
        }
    }
}

#[test]
fn without_a_sender_thread_a_stalled_recorder_never_holds_the_host() -> Result<()> {
    let token = Token::new("nothread-stall")?;
    let mut recorder = Recorder::start(&["--stats-every", "1"])?;
    // One client connected before the stall, with a full socket and a queue of batches when it
    // finalises; one that meets the stalled recorder at its handshake.
    let mut connected = Held::start(&token, &recorder.socket, 20_000, 20_000)?;
    ensure!(connected.line()? == "ready");
    wait_for_records(&mut recorder)?;
    let reports = {
        let _resume = Resume(&recorder);
        recorder.signal(libc::SIGSTOP);
        let mut handshaking = Held::start(&token, &recorder.socket, 0, 20_000)?;
        ensure!(handshaking.line()? == "ready");
        connected.release()?;
        handshaking.release()?;
        [connected.report()?, handshaking.report()?]
    };
    recorder.stop()?;
    eprintln!("no-thread clients: {reports:?}");
    // finalize_wait (500 ms) plus 1 s for SoftHSM2's own C_Finalize and a loaded 2-core machine.
    for report in &reports {
        let finalize = number(report, "finalize_ms")?;
        ensure!(
            finalize <= 1500,
            "C_Finalize took {finalize} ms with finalize_wait_ms = 500: {report}"
        );
        // No call waits on the recorder: 1 s is far above a traced C_GetSessionInfo.
        let longest = number(report, "longest_call_ms")?;
        ensure!(longest < 1000, "a call took {longest} ms: {report}");
    }
    let tallies = tallies(&recorder.dataset)?;
    let first = tallies
        .get(&number(&reports[0], "pid")?)
        .copied()
        .unwrap_or_default();
    ensure!(
        first.rows > 0,
        "the connected client delivered nothing: {first:?}"
    );
    for report in &reports {
        let t = tallies
            .get(&number(report, "pid")?)
            .copied()
            .unwrap_or_default();
        let calls = number(report, "calls")?;
        eprintln!("tally {t:?} accounted {} of {calls}", t.accounted());
        ensure!(
            t.accounted() <= calls,
            "more accounted than made: {t:?} vs {report}"
        );
    }
    Ok(())
}

#[test]
fn a_thread_less_client_idle_in_the_middle_of_its_handshake_still_delivers_everything() -> Result<()>
{
    let token = Token::new("idle-handshake")?;
    let mut recorder = Recorder::start(&[])?;
    // With a 256-record queue, the calling thread starts its handshake when 128 records are
    // queued: at the last of these 122 calls (6 records come before them).
    let env = [("P11TRACE_QUEUE_CAPACITY", "256")];
    let mut client = Held::start_with(&token, &recorder.socket, 122, 0, &env)?;
    ensure!(client.line()? == "ready");
    // Idle for longer than the recorder waits for a handshake to finish (5 s): scheduling, not an
    // assertion.
    std::thread::sleep(Duration::from_secs(6));
    client.release()?;
    let report = client.report()?;
    recorder.stop()?;
    let t = tallies(&recorder.dataset)?
        .get(&number(&report, "pid")?)
        .copied()
        .unwrap_or_default();
    ensure!(
        t.rows - t.internal == number(&report, "calls")? && t.dropped == 0 && t.lost == 0,
        "every record must arrive: {t:?} vs {report}"
    );
    Ok(())
}
