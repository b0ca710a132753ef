//! Benchmark 2: recorder throughput. 1, 4 and 16 client processes hammer `C_GetSessionInfo`
//! through the shim; the recorder writes everything to Parquet. Reported: calls/s the clients made,
//! calls/s from the first call to the last row durable on disk, drops, the recorder's peak RSS and
//! CPU.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use p11trace_tests::Token;
use serde::Serialize;

use crate::Ctx;
use crate::client::Op;
use crate::measure::{self, parquet_rows};
use crate::report::{Line, bytes};
use crate::setup::{Rig, Route};

pub const RATE_TARGET: f64 = 1_000_000.0;
pub const RSS_TARGET: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub clients: usize,
    pub calls: u64,
    pub rows_written: u64,
    pub dropped: u64,
    pub client_calls_per_sec: f64,
    pub written_calls_per_sec: f64,
    pub recorder_max_rss: u64,
    /// Recorder CPU time / wall time (1.0 = one core busy).
    pub recorder_cpu_share: f64,
}

fn measure_clients(ctx: &Ctx, clients: usize, calls_per_client: u64) -> Result<Throughput> {
    let rig = Rig::start(ctx, Token::new("bench")?)?;
    let env = rig.env();
    let started = Instant::now();
    let running: Vec<_> = (0..clients)
        .map(|index| {
            let mut command = env.client(&rig.token, Route::Shim, &[Op::SessionInfo]);
            command
                .args(["--batches", "1", "--warmup", "0", "--ops-per-batch"])
                .arg(calls_per_client.to_string());
            let stderr = rig.dir.path().join(format!("client-{index}.err"));
            measure::start(&mut command, None, Some(&stderr)).map(|process| (process, stderr))
        })
        .collect::<Result<_>>()?;
    for (process, stderr) in running {
        if !process.finish()?.success {
            bail!(
                "one of {clients} throughput clients failed: {}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
        }
    }
    let clients_done = started.elapsed();
    let (recorded, dir) = rig.stop()?;
    let all_written = started.elapsed();
    let rows_written =
        parquet_rows(&dir.path().join("dataset/calls")).context("counting the rows written")?;
    let calls = clients as u64 * calls_per_client;
    Ok(Throughput {
        clients,
        calls,
        rows_written,
        dropped: recorded.get("dropped")
            + recorded.get("dropped_by_recorder")
            + recorded.get("lost"),
        client_calls_per_sec: calls as f64 / clients_done.as_secs_f64(),
        written_calls_per_sec: rows_written as f64 / all_written.as_secs_f64(),
        recorder_max_rss: recorded.cost.max_rss,
        recorder_cpu_share: recorded.cost.cpu.as_secs_f64() / all_written.as_secs_f64(),
    })
}

pub fn run(ctx: &Ctx) -> Result<(Vec<Line>, serde_json::Value)> {
    let total: u64 = if ctx.quick { 4_800 } else { 4_800_000 };
    let mut results = Vec::new();
    let mut lines = Vec::new();
    for clients in [1usize, 4, 16] {
        let result = measure_clients(ctx, clients, total / clients as u64)?;
        let rate = result.written_calls_per_sec;
        lines.push(Line::target(
            "2 throughput",
            format!("{clients} client process(es), {} calls", result.calls),
            format!(
                "{:.0} calls/s written ({:.0}/s made) · {} rows · dropped {}",
                rate, result.client_calls_per_sec, result.rows_written, result.dropped
            ),
            "0 dropped at ≥ 1 M calls/s",
            result.dropped == 0 && rate >= RATE_TARGET,
        ));
        lines.push(Line::target(
            "2 throughput",
            format!("{clients} client process(es): recorder"),
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
    Ok((lines, serde_json::to_value(&results)?))
}
