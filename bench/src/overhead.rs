//! Benchmark 1: per-call overhead. The same client times each operation direct, through
//! pkcs11-spy (logging to a file), through the shim with a recorder, and through the shim with no
//! recorder, the four interleaved round by round (rotating which goes first) so drift in the
//! machine hits all of them alike.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use p11trace_tests::Provider;
use serde::Serialize;

use crate::Ctx;
use crate::client::{Op, Timing};
use crate::measure::{self, Spread, median};
use crate::report::{Line, nanos};
use crate::setup::{Rig, Route, token_with_keys};

/// Added latency allowed on `C_GetSessionInfo` (shim with recorder − direct).
pub const SESSION_INFO_BUDGET_NS: f64 = 250.0;
/// Shim's added latency as a share of the spy's, on cheap calls.
pub const CHEAP_RATIO_BUDGET: f64 = 0.1;

/// One (provider, operation, route) cell.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub provider: &'static str,
    pub op: Op,
    pub route: Route,
    /// Median ns per operation over every batch of every round.
    pub median_ns: f64,
    /// Min and max of the per-round medians.
    pub rounds: Spread,
}

fn provider_name(provider: Provider) -> &'static str {
    match provider {
        Provider::SoftHsm => "SoftHSM2",
        Provider::Kryoptic => "Kryoptic",
    }
}

fn measure_provider(ctx: &Ctx, provider: Provider) -> Result<Vec<Cell>> {
    let rig = Rig::start(ctx, token_with_keys(provider)?)?;
    let (env, token, dir) = (rig.env(), &rig.token, rig.dir());
    let (batches, scale) = if ctx.quick { (1, 0.001) } else { (5, 1.0) };
    // (op, route) → per-round batch values
    let mut samples: BTreeMap<(usize, usize), Vec<Vec<f64>>> = BTreeMap::new();
    for round in 0..ctx.rounds {
        for turn in 0..Route::ALL.len() {
            let route_index = (turn + round as usize) % Route::ALL.len();
            let route = Route::ALL[route_index];
            let stdout = dir.join("client.out");
            let mut command = env.client(token, route, &Op::ALL);
            command
                .arg("--batches")
                .arg(batches.to_string())
                .arg("--scale")
                .arg(scale.to_string());
            measure::run(&mut command, Some(&stdout), dir).with_context(|| {
                format!("{} client via {}", provider_name(provider), route.label())
            })?;
            let _ = std::fs::remove_file(env.spy_log());
            for line in std::fs::read_to_string(&stdout)?.lines() {
                let timing: Timing = serde_json::from_str(line)
                    .with_context(|| format!("client printed `{line}`"))?;
                let op_index = Op::ALL.iter().position(|&op| op == timing.op).unwrap_or(0);
                samples
                    .entry((op_index, route_index))
                    .or_default()
                    .push(timing.ns_per_op);
            }
        }
    }
    let (recorded, _) = rig.stop()?;
    if recorded.summary.undelivered() > 0 {
        eprintln!(
            "p11trace-bench: note: the recorder reported drops during the overhead run: {:?}",
            recorded.summary
        );
    }
    Ok(samples
        .into_iter()
        .map(|((op, route), rounds)| {
            let all: Vec<f64> = rounds.iter().flatten().copied().collect();
            let per_round: Vec<f64> = rounds.iter().map(|r| median(r)).collect();
            Cell {
                provider: provider_name(provider),
                op: Op::ALL[op],
                route: Route::ALL[route],
                median_ns: median(&all),
                rounds: Spread::of(&per_round),
            }
        })
        .collect())
}

fn find<'a>(cells: &'a [Cell], provider: &str, op: Op, route: Route) -> Option<&'a Cell> {
    cells
        .iter()
        .find(|c| c.provider == provider && c.op == op && c.route == route)
}

/// The table lines for one provider's cells.
fn lines(cells: &[Cell], provider: &'static str) -> Vec<Line> {
    let mut lines = Vec::new();
    for op in Op::ALL {
        let get = |route| find(cells, provider, op, route);
        let (Some(direct), Some(spy), Some(shim), Some(alone)) = (
            get(Route::Direct),
            get(Route::Spy),
            get(Route::Shim),
            get(Route::ShimNoRecorder),
        ) else {
            continue;
        };
        let spread = |cell: &Cell| {
            format!(
                "{} ({}–{})",
                nanos(cell.median_ns),
                nanos(cell.rounds.min),
                nanos(cell.rounds.max)
            )
        };
        let added_shim = shim.median_ns - direct.median_ns;
        let added_spy = spy.median_ns - direct.median_ns;
        let added_alone = alone.median_ns - direct.median_ns;
        let ratio = added_shim / added_spy;
        let subject = format!("{provider} {}", op.label());
        lines.push(Line::info(
            "1 overhead",
            &subject,
            format!(
                "direct {} · spy {} · shim {} · shim alone {}",
                spread(direct),
                spread(spy),
                spread(shim),
                spread(alone)
            ),
        ));
        let added = format!(
            "added: shim {} · spy {} · shim alone {} · ratio {ratio:.3}",
            nanos(added_shim),
            nanos(added_spy),
            nanos(added_alone)
        );
        lines.push(if op == Op::SessionInfo {
            Line::target(
                "1 overhead",
                &subject,
                added,
                format!(
                    "≤ {} added, ratio ≤ {CHEAP_RATIO_BUDGET}",
                    nanos(SESSION_INFO_BUDGET_NS)
                ),
                added_shim <= SESSION_INFO_BUDGET_NS && ratio <= CHEAP_RATIO_BUDGET,
            )
        } else if op.cheap() {
            Line::target(
                "1 overhead",
                &subject,
                added,
                format!("ratio ≤ {CHEAP_RATIO_BUDGET}"),
                ratio <= CHEAP_RATIO_BUDGET,
            )
        } else {
            Line::info("1 overhead", &subject, added)
        });
    }
    lines
}

pub fn run(ctx: &Ctx) -> Result<(Vec<Line>, serde_json::Value)> {
    let mut cells = Vec::new();
    let mut providers = vec![Provider::SoftHsm];
    if ctx.with_kryoptic {
        providers.push(Provider::Kryoptic);
    }
    let mut out = Vec::new();
    for provider in providers {
        let measured = measure_provider(ctx, provider)?;
        out.extend(lines(&measured, provider_name(provider)));
        cells.extend(measured);
    }
    Ok((out, serde_json::to_value(&cells)?))
}
