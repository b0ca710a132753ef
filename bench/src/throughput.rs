//! Benchmark 2: recorder throughput. 1, 4 and 16 client processes make `C_GetSessionInfo` calls
//! through the shim at a combined 1 M calls/s (the target load), then one client makes them as
//! fast as it can (the saturation point); the recorder writes everything to Parquet. Reported:
//! calls/s the clients made, calls/s from the first call to the last row durable on disk, drops,
//! the recorder's peak RSS and CPU.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use p11trace_tests::Token;
use serde::Serialize;

use crate::Ctx;
use crate::client::{Op, Timing};
use crate::measure::{self, parquet_rows};
use crate::report::{Line, bytes};
use crate::setup::{Rig, Route};

pub const RATE_TARGET: f64 = 1_000_000.0;
pub const RSS_TARGET: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub clients: usize,
    /// Combined calls/s the clients were paced at (`None`: as fast as they can).
    pub offered_per_sec: Option<f64>,
    pub calls: u64,
    pub rows_written: u64,
    pub dropped: u64,
    pub client_calls_per_sec: f64,
    pub written_calls_per_sec: f64,
    pub recorder_max_rss: u64,
    /// Recorder CPU time / wall time (1.0 = one core busy).
    pub recorder_cpu_share: f64,
}

fn measure_clients(
    ctx: &Ctx,
    clients: usize,
    calls_per_client: u64,
    offered_per_sec: Option<f64>,
) -> Result<Throughput> {
    let rig = Rig::start(ctx, Token::new("bench")?)?;
    let env = rig.env();
    let started = Instant::now();
    let running: Vec<_> = (0..clients)
        .map(|index| {
            let mut command = env.client(&rig.token, Route::Shim, &[Op::SessionInfo]);
            command
                .args(["--batches", "1", "--warmup", "0", "--ops-per-batch"])
                .arg(calls_per_client.to_string());
            if let Some(rate) = offered_per_sec {
                command
                    .arg("--rate")
                    .arg((rate / clients as f64).to_string());
            }
            let stdout = rig.dir().join(format!("client-{index}.out"));
            let stderr = rig.dir().join(format!("client-{index}.err"));
            measure::start(&mut command, Some(&stdout), Some(&stderr))
                .map(|process| (process, stdout, stderr))
        })
        .collect::<Result<_>>()?;
    // The clients' own timing of their call loops (process start-up and C_Initialize excluded).
    let mut longest_loop_ns: f64 = 0.0;
    for (process, stdout, stderr) in running {
        if !process.finish()?.success {
            bail!(
                "one of {clients} throughput clients failed: {}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        let timing: Timing = serde_json::from_str(std::fs::read_to_string(&stdout)?.trim())
            .context("a throughput client printed no timing")?;
        let ns_per_call = timing.ns_per_op.first().copied().unwrap_or(0.0);
        longest_loop_ns = longest_loop_ns.max(ns_per_call * calls_per_client as f64);
    }
    let (recorded, recorder) = rig.stop()?;
    let all_written = started.elapsed();
    let rows_written =
        parquet_rows(&recorder.dataset.join("calls")).context("counting the rows written")?;
    let calls = clients as u64 * calls_per_client;
    Ok(Throughput {
        clients,
        offered_per_sec,
        calls,
        rows_written,
        dropped: recorded.summary.undelivered(),
        client_calls_per_sec: calls as f64 * 1e9 / longest_loop_ns,
        written_calls_per_sec: rows_written as f64 / all_written.as_secs_f64(),
        recorder_max_rss: recorded.cost.max_rss,
        recorder_cpu_share: recorded.cost.cpu.as_secs_f64() / all_written.as_secs_f64(),
    })
}

pub fn run(ctx: &Ctx) -> Result<(Vec<Line>, serde_json::Value)> {
    // Quick mode: the same shapes at a rate and size that only prove the code runs.
    let (offered, seconds) = if ctx.quick {
        (50_000.0, 0.1)
    } else {
        (RATE_TARGET, 5.0)
    };
    let total = (offered * seconds) as u64;
    let mut runs: Vec<(usize, Option<f64>)> = [1, 4, 16].map(|n| (n, Some(offered))).to_vec();
    runs.push((1, None));
    let mut results = Vec::new();
    let mut lines = Vec::new();
    for (clients, pace) in runs {
        let result = measure_clients(ctx, clients, total / clients as u64, pace)?;
        let subject = match pace {
            Some(rate) => format!(
                "{clients} client(s) at {:.0}k calls/s, {} calls",
                rate / 1e3,
                result.calls
            ),
            None => format!(
                "{clients} client, unpaced (saturation), {} calls",
                result.calls
            ),
        };
        let figure = format!(
            "{:.0} calls/s made · {:.0} calls/s written · {} rows · dropped {} ({:.1}%)",
            result.client_calls_per_sec,
            result.written_calls_per_sec,
            result.rows_written,
            result.dropped,
            result.dropped as f64 * 100.0 / result.calls as f64
        );
        lines.push(match pace {
            Some(_) => Line::target(
                "2 throughput",
                subject,
                figure,
                "0 dropped at ≥ 1 M calls/s",
                result.dropped == 0 && result.client_calls_per_sec >= RATE_TARGET * 0.99,
            ),
            None => Line::info("2 throughput", subject, figure),
        });
        lines.push(Line::target(
            "2 throughput",
            "  recorder",
            format!(
                "peak RSS {} · CPU {:.0}% of one core",
                bytes(result.recorder_max_rss as f64),
                result.recorder_cpu_share * 100.0
            ),
            "RSS ≤ 256 MiB",
            result.recorder_max_rss <= RSS_TARGET,
        ));
        results.push(result);
    }
    // The best 0-drop rate from 4 processes (the recorder issue's figure): a ladder below the
    // target, 3 s per step, plus the 1 M run above.
    if !ctx.quick {
        for rate in [500_000.0, 750_000.0, 900_000.0] {
            let calls = (rate * 3.0) as u64;
            results.push(measure_clients(ctx, 4, calls / 4, Some(rate))?);
        }
        let best = results
            .iter()
            .filter(|r| r.clients == 4 && r.offered_per_sec.is_some() && r.dropped == 0)
            .map(|r| r.client_calls_per_sec)
            .fold(None, |best: Option<f64>, rate| {
                Some(best.map_or(rate, |b| b.max(rate)))
            });
        let ladder: Vec<String> = results
            .iter()
            .filter(|r| r.clients == 4 && r.offered_per_sec.is_some())
            .map(|r| format!("{:.0}k:{}", r.client_calls_per_sec / 1e3, r.dropped))
            .collect();
        lines.push(Line::info(
            "2 throughput",
            "4 clients: best 0-drop rate",
            format!(
                "{} (rate:dropped {})",
                best.map_or("none".to_owned(), |b| format!("{:.0} calls/s", b)),
                ladder.join(" ")
            ),
        ));
    }
    Ok((lines, serde_json::to_value(&results)?))
}
