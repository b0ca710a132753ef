//! Benchmark 6: the instruction budget. Wall-clock timings on a shared 2-core machine wander;
//! instruction counts do not. `valgrind --tool=callgrind --separate-threads=yes` counts what the
//! calling thread executes for N and for 2N `C_GetSessionInfo` calls, direct and through the shim
//! (recorder listening); the difference of differences is what the shim adds to each call on the
//! application's thread, with process start-up and shutdown cancelled out.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use p11trace_tests::Token;
use serde::Serialize;

use crate::Ctx;
use crate::client::Op;
use crate::measure;
use crate::report::Line;
use crate::setup::{Rig, Route, RouteEnv};

/// Instructions the shim may add, on the calling thread, to one `C_GetSessionInfo` (release
/// build). Measured: see BENCHMARKS.md; the budget leaves room for small changes, not for a lock,
/// an allocation per call or a system call.
pub const INSTRUCTION_BUDGET: f64 = 450.0;

#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    pub calls: u64,
    pub direct_per_call: f64,
    pub shim_per_call: f64,
    pub added_per_call: f64,
    pub budget: f64,
    pub shim: PathBuf,
}

/// Instructions executed by the main thread of one client run under callgrind.
fn main_thread_instructions(
    env: &RouteEnv<'_>,
    token: &p11trace_tests::Token,
    route: Route,
    calls: u64,
    out: &Path,
) -> Result<u64> {
    let client = env.client(token, route, &[Op::SessionInfo]);
    let mut command: Command = token.command("valgrind");
    command
        .args([
            "--tool=callgrind",
            "--separate-threads=yes",
            "--dump-instr=no",
        ])
        .arg(format!("--callgrind-out-file={}/cg.%p", out.display()))
        .arg(client.get_program())
        .args(client.get_args())
        .args(["--batches", "1", "--warmup", "0", "--ops-per-batch"])
        .arg(calls.to_string());
    for (key, value) in client.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    std::fs::create_dir_all(out)?;
    measure::run(&mut command, None, out).context("valgrind (is it installed?)")?;
    // Thread 1 is the main thread: `cg.<pid>-01`.
    let file = std::fs::read_dir(out)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-01"))
        .with_context(|| format!("callgrind wrote no main-thread file in {}", out.display()))?;
    let text = std::fs::read_to_string(&file)?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
        })
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no totals in {}", file.display()))
}

pub fn measure(ctx: &Ctx) -> Result<Budget> {
    let calls = if ctx.quick { 500 } else { 2_000 };
    let rig = Rig::start(ctx, Token::new("bench")?)?;
    let env = rig.env();
    let mut per_call = Vec::new();
    for route in [Route::Direct, Route::Shim] {
        let mut at = Vec::new();
        for n in [calls, 2 * calls] {
            let out = rig.dir().join(format!(
                "{}-{n}",
                route.label().replace([' ', ',', '+'], "_")
            ));
            at.push(main_thread_instructions(&env, &rig.token, route, n, &out)?);
        }
        per_call.push((at[1] as f64 - at[0] as f64) / calls as f64);
    }
    let (recorded, _) = rig.stop()?;
    if recorded.summary.get("records") < 2 * calls {
        bail!(
            "the recorder received {} records, fewer than the {} traced calls: the shim path was not measured",
            recorded.summary.get("records"),
            2 * calls
        );
    }
    Ok(Budget {
        calls,
        direct_per_call: per_call[0],
        shim_per_call: per_call[1],
        added_per_call: per_call[1] - per_call[0],
        budget: INSTRUCTION_BUDGET,
        shim: ctx.bins.shim.clone(),
    })
}

pub fn run(ctx: &Ctx) -> Result<(Vec<Line>, serde_json::Value)> {
    let budget = measure(ctx)?;
    let lines = vec![Line::target(
        "6 instructions",
        "C_GetSessionInfo, calling thread (callgrind)",
        format!(
            "shim adds {:.0} instructions/call (direct {:.0}, traced {:.0})",
            budget.added_per_call, budget.direct_per_call, budget.shim_per_call
        ),
        format!("≤ {INSTRUCTION_BUDGET:.0}"),
        budget.added_per_call <= INSTRUCTION_BUDGET,
    )];
    Ok((lines, serde_json::to_value(&budget)?))
}
