//! Benchmark 9: cost against size (issue 13, target 4). Synthetic datasets of 1 M, 10 M and
//! 100 M calls (`--quick`: 5 k, 10 k, 20 k); on each, `analyze`, `sql`, `compare` and `diff`
//! (the dataset against itself), `archive`, and DuckDB's per-function query: wall time, CPU time
//! and peak RSS. Targets: from the middle size to the largest, time within 1.3× of linear, and
//! every command's peak RSS at the largest ≤ 1 GiB. A command whose peak RSS at the middle size,
//! grown linearly, would not fit in half the machine's available memory is not run at the
//! largest: the table says so (and misses the target) rather than swapping the machine to death.
//! The curve is drawn as SVG (plotters) where `--plots` says.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::Ctx;
use crate::query_speed::{DUCKDB_PERFORMANCE, GROUP_BY, Timed, duckdb, timed};
use crate::report::{Line, bytes};
use crate::synth;

/// Time at the largest size over time at the middle one, divided by the sizes' ratio.
pub const LINEARITY_TARGET: f64 = 1.3;
/// Peak RSS of every command at the largest size.
pub const RSS_TARGET: u64 = 1 << 30;

/// One command at every size (`None`: not run at that size).
struct Curve {
    name: &'static str,
    points: Vec<Option<Timed>>,
}

/// Memory the kernel says is available now (bytes; 0 if unknown).
fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("MemAvailable:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

type Maker<'a> = Box<dyn Fn(&Path, &Path) -> Command + 'a>;

pub fn run(ctx: &Ctx) -> Result<(Vec<Line>, serde_json::Value)> {
    let sizes: [u64; 3] = if ctx.quick {
        [5_000, 10_000, 20_000]
    } else {
        [1_000_000, 10_000_000, 100_000_000]
    };
    let reps = if ctx.quick { 1 } else { 2 };
    let query = |args: &'static [&'static str], twice: bool| -> Maker<'_> {
        Box::new(move |dataset: &Path, _: &Path| {
            let mut command = Command::new(&ctx.bins.query);
            command.args(args).arg(dataset);
            if twice {
                command.arg(dataset);
            }
            command
        })
    };
    let commands: Vec<(&'static str, Maker<'_>)> = vec![
        ("analyze", query(&["analyze"], false)),
        ("sql group by", query(&["sql", GROUP_BY], false)),
        ("compare", query(&["compare", "--format", "json"], true)),
        ("diff", query(&["diff", "--format", "json"], true)),
        (
            "archive",
            Box::new(|dataset: &Path, scratch: &Path| {
                let archive = scratch.join("archive");
                let _ = std::fs::remove_dir_all(&archive);
                let mut command = Command::new(&ctx.bins.query);
                command.arg("archive").arg(dataset).arg("--to").arg(archive);
                command
            }),
        ),
        (
            "duckdb per-function",
            Box::new(|dataset: &Path, _: &Path| duckdb(dataset, DUCKDB_PERFORMANCE)),
        ),
    ];
    let mut curves: Vec<Curve> = commands
        .iter()
        .map(|(name, _)| Curve {
            name,
            points: Vec::new(),
        })
        .collect();
    let mut made = Vec::new();
    for (index, &size) in sizes.iter().enumerate() {
        let dir = tempfile::tempdir_in(&ctx.scratch)?;
        let dataset = dir.path().join("dataset");
        eprintln!("p11trace-bench: scaling: writing {size} calls…");
        made.push(synth::dataset(&dataset, size).context("writing a synthetic dataset")?);
        for ((name, make), curve) in commands.iter().zip(&mut curves) {
            let previous = index.checked_sub(1).and_then(|i| curve.points[i].as_ref());
            let growth = sizes[index] as f64 / sizes[index.saturating_sub(1)] as f64;
            let projected = previous.map_or(0.0, |p| p.max_rss as f64 * growth);
            if index > 0 && (previous.is_none() || projected > available_memory() as f64 / 2.0) {
                eprintln!(
                    "p11trace-bench: scaling: {name} not run at {size} calls \
                     (projected peak RSS {})",
                    bytes(projected)
                );
                curve.points.push(None);
                continue;
            }
            eprintln!("p11trace-bench: scaling: {name} on {size} calls…");
            let point = timed(ctx, name, reps, || make(&dataset, dir.path()))?;
            curve.points.push(Some(point));
        }
    }
    if let Some(folder) = &ctx.plots {
        let path = folder.join("scaling.svg");
        draw(&path, &made, &curves).with_context(|| format!("drawing {}", path.display()))?;
    }
    Ok((lines(&made, &curves), json(&made, &curves)))
}

fn lines(made: &[u64], curves: &[Curve]) -> Vec<Line> {
    let mut lines = Vec::new();
    let (middle, largest) = (made[1] as f64, made[2] as f64);
    for curve in curves {
        let figures: Vec<String> = curve
            .points
            .iter()
            .zip(made)
            .map(|(point, calls)| match point {
                Some(p) => format!(
                    "{calls}: {:.2} s, {:.2} CPU-s, {}",
                    p.seconds.median,
                    p.cpu_seconds.median,
                    bytes(p.max_rss as f64)
                ),
                None => format!("{calls}: not run"),
            })
            .collect();
        lines.push(Line::info("9 scaling", curve.name, figures.join(" · ")));
        if curve.name.starts_with("duckdb") {
            // The reference, not ours: its curve is shown, not judged.
            continue;
        }
        let judged = match (&curve.points[1], &curve.points[2]) {
            (Some(mid), Some(big)) => {
                let linearity = (big.seconds.median / mid.seconds.median) / (largest / middle);
                let figure = format!(
                    "{linearity:.2}× linear · peak RSS {}",
                    bytes(big.max_rss as f64)
                );
                (
                    figure,
                    linearity <= LINEARITY_TARGET && big.max_rss <= RSS_TARGET,
                )
            }
            _ => ("not run at the largest size (memory)".to_owned(), false),
        };
        lines.push(Line::target(
            "9 scaling",
            format!("{}: {} → {} calls", curve.name, made[1], made[2]),
            judged.0,
            format!(
                "≤ {LINEARITY_TARGET}× linear, ≤ {}",
                bytes(RSS_TARGET as f64)
            ),
            judged.1,
        ));
    }
    lines
}

fn json(made: &[u64], curves: &[Curve]) -> serde_json::Value {
    let curves: Vec<serde_json::Value> = curves
        .iter()
        .map(|curve| serde_json::json!({ "name": curve.name, "points": curve.points }))
        .collect();
    serde_json::json!({ "calls": made, "curves": curves })
}

/// Time and peak RSS against calls, log–log, one line per command.
fn draw(path: &Path, made: &[u64], curves: &[Curve]) -> Result<()> {
    let root = SVGBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let x = (made[0] as f64 / 2.0)..(made[2] as f64 * 2.0);
    let all = |value: &dyn Fn(&Timed) -> f64| -> Vec<f64> {
        curves
            .iter()
            .flat_map(|c| c.points.iter().flatten().map(value))
            .collect()
    };
    let seconds = |t: &Timed| t.seconds.median;
    let gib = |t: &Timed| t.max_rss as f64 / f64::from(1u32 << 30);
    for (panel, (title, value)) in panels.iter().zip([
        ("wall time (s)", &seconds as &dyn Fn(&Timed) -> f64),
        ("peak RSS (GiB)", &gib),
    ]) {
        let values = all(value);
        let low = values
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .max(1e-3);
        let high = values.iter().copied().fold(0.0, f64::max).max(low * 10.0);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x.clone().log_scale(), (low / 2.0..high * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("calls")
            .x_label_formatter(&|v| format!("{:.0e}", v))
            .draw()?;
        for (index, curve) in curves.iter().enumerate() {
            let colour = Palette99::pick(index).to_rgba();
            let points: Vec<(f64, f64)> = curve
                .points
                .iter()
                .zip(made)
                .filter_map(|(p, calls)| p.as_ref().map(|p| (*calls as f64, value(p))))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                .label(curve.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
