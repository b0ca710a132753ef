//! The report's charts as inline SVG, drawn by `plotters` (its SVG backend only: no fonts read,
//! no script; text in the SVG is escaped by the backend).

use anyhow::Result;
use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::RangedCoordi32;
use plotters::prelude::*;

use super::data::{Latency, OverTime, Phase, Timeline};
use super::format::seconds;
use crate::analyze::units::duration_ns;
use crate::compare::report::Row;

const WIDTH: u32 = 1200;
const ROW: u32 = 26;
const FONT: &str = "sans-serif";

/// Draws onto a fresh SVG of `height` and returns its text.
fn svg(
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(out)
}

/// Rows drawn top to bottom: row `i` of `n` is segment `n - 1 - i`.
fn row(i: usize, n: usize) -> i32 {
    (n - 1 - i) as i32
}

/// The frame of the per-function charts: a log x axis over `range`, one row per name (the
/// first name drawn at the bottom), the x labels by `x_label`, and `x_desc` under the axis.
type RowsChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<LogCoord<f64>, SegmentedCoord<RangedCoordi32>>>;

fn rows_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    range: (f64, f64),
    names: &[String],
    x_label: &dyn Fn(&f64) -> String,
    x_desc: &str,
) -> Result<RowsChart<'a, 'b>> {
    let n = names.len();
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(250)
        .build_cartesian_2d(
            (range.0..range.1).log_scale(),
            (0..n as i32).into_segmented(),
        )?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| names.get(i))
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_formatter(x_label)
        .x_desc(x_desc)
        .label_style((FONT, 14))
        .draw()?;
    Ok(chart)
}

fn log_range(low: f64, high: f64) -> (f64, f64) {
    let low = low.max(1.0);
    let high = high.max(low * 10.0);
    (low / 1.5, high * 1.5)
}

fn bar(
    x0: f64,
    x1: f64,
    y: i32,
    margin: u32,
    style: ShapeStyle,
) -> Rectangle<(f64, SegmentValue<i32>)> {
    let mut rect = Rectangle::new(
        [
            (x0, SegmentValue::Exact(y)),
            (x1, SegmentValue::Exact(y + 1)),
        ],
        style,
    );
    rect.set_margin(margin, margin, 0, 0);
    rect
}

/// Per function: whiskers from the fastest to the slowest call, the box from the first to the
/// third quartile, the median as a bar across it and p95 as a dot; latency on a log axis.
pub fn latency(rows: &[Latency]) -> Result<Option<String>> {
    if rows.is_empty() {
        return Ok(None);
    }
    let n = rows.len();
    let low = rows.iter().map(|r| r.min).fold(f64::INFINITY, f64::min);
    let high = rows.iter().map(|r| r.max).fold(0.0, f64::max);
    let (low, high) = log_range(low, high);
    let names: Vec<String> = rows
        .iter()
        .rev()
        .map(|r| format!("{} ({})", r.func, r.timed))
        .collect();
    let chart = svg(90 + ROW * n as u32, |root| {
        let mut chart = rows_chart(
            root,
            (low, high),
            &names,
            &|v| duration_ns(Some(*v)),
            "latency per call (log scale); box: quartiles, bar: median, dot: p95, whiskers: min–max",
        )?;
        let blue = RGBColor(52, 101, 164);
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            let y = SegmentValue::CenterOf(row(i, n));
            PathElement::new(
                vec![(r.min.max(low), y.clone()), (r.max, y)],
                BLACK.stroke_width(1),
            )
        }))?;
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            bar(
                r.q1.max(low),
                r.q3.max(r.q1 * 1.02),
                row(i, n),
                5,
                blue.mix(0.55).filled(),
            )
        }))?;
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            bar(
                r.median.max(low),
                r.median.max(low) * 1.04,
                row(i, n),
                3,
                RGBColor(32, 32, 32).filled(),
            )
        }))?;
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            Circle::new(
                (r.p95.max(low), SegmentValue::CenterOf(row(i, n))),
                4,
                RGBColor(204, 0, 0).filled(),
            )
        }))?;
        Ok(())
    })?;
    Ok(Some(chart))
}

/// Calls per time bucket, one line per process.
pub fn over_time(over: &OverTime) -> Result<Option<String>> {
    let Some(first) = over.series.first() else {
        return Ok(None);
    };
    let buckets = first.counts.len();
    let span = over.bucket_s * buckets as f64;
    let peak = over
        .series
        .iter()
        .flat_map(|s| s.counts.iter().copied())
        .max()
        .unwrap_or(1);
    let chart = svg(420, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..span, 0u64..(peak + peak / 10 + 1))?;
        chart
            .configure_mesh()
            .x_label_formatter(&|v| seconds(*v, span))
            .x_desc(format!(
                "time since the first call (buckets of {})",
                seconds(over.bucket_s, over.bucket_s)
            ))
            .y_desc("calls per bucket")
            .label_style((FONT, 14))
            .draw()?;
        for (index, series) in over.series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            // From the bucket before its first call to the one after its last: a process that
            // ran for a moment is a peak, not a line along zero across the whole chart.
            let first = series.counts.iter().position(|&c| c > 0).unwrap_or(0);
            let last = series.counts.iter().rposition(|&c| c > 0).unwrap_or(0);
            let shown = first.saturating_sub(1)..(last + 2).min(series.counts.len());
            let points = series.counts[shown.clone()]
                .iter()
                .zip(shown)
                .map(|(&count, b)| ((b as f64 + 0.5) * over.bucket_s, count));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(2))?
                .label(series.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()?;
        Ok(())
    })?;
    Ok(Some(chart))
}

/// The colour of a phase's dots, for the page's legend (`#rrggbb`).
pub fn phase_css(phase: Phase) -> String {
    let RGBColor(r, g, b) = phase_color(phase);
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn phase_color(phase: Phase) -> RGBColor {
    match phase {
        Phase::Open => RGBColor(78, 154, 6),
        Phase::Login => RGBColor(245, 121, 0),
        Phase::Operation => RGBColor(52, 101, 164),
        Phase::Close => RGBColor(117, 80, 123),
        Phase::Failed => RGBColor(204, 0, 0),
    }
}

/// Per thread: each session a bar from its opening to its close (hatched grey if never
/// closed), and the calls as dots coloured by their place in the session's life.
pub fn timeline(timeline: &Timeline) -> Result<Option<String>> {
    if timeline.lanes.is_empty() {
        return Ok(None);
    }
    let n = timeline.lanes.len();
    let span = timeline.span_s * 1.02;
    let chart = svg(110 + 34 * n as u32, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(250)
            .build_cartesian_2d(0.0..span, (0..n as i32).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => usize::try_from(n as i32 - 1 - *i)
                    .ok()
                    .and_then(|lane| timeline.lanes.get(lane))
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&|v| seconds(*v, span))
            .x_desc("time since the first call; bars: sessions, open to close")
            .label_style((FONT, 14))
            .draw()?;
        let minimum = span / 400.0;
        chart.draw_series(timeline.bars.iter().map(|b| {
            let style = if b.closed {
                RGBColor(114, 159, 207).mix(0.45).filled()
            } else {
                RGBColor(136, 138, 133).mix(0.45).filled()
            };
            bar(
                b.from_s,
                b.to_s.max(b.from_s + minimum),
                row(b.lane, n),
                6,
                style,
            )
        }))?;
        for phase in Phase::ALL {
            let color = phase_color(phase);
            chart.draw_series(timeline.marks.iter().filter(|m| m.phase == phase).map(|m| {
                Circle::new(
                    (m.at_s, SegmentValue::CenterOf(row(m.lane, n))),
                    4,
                    color.filled(),
                )
            }))?;
        }
        Ok(())
    })?;
    Ok(Some(chart))
}

/// The compare view: per function, the ratio B/A of the medians with its interval (log scale).
pub fn ratios(rows: &[Row]) -> Result<Option<String>> {
    let rows: Vec<(&Row, f64, f64, f64)> = rows
        .iter()
        .filter_map(|r| r.median_ratio.map(|m| (r, m.estimate, m.lo, m.hi)))
        .filter(|(_, e, lo, hi)| *e > 0.0 && *lo > 0.0 && *hi > 0.0)
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let n = rows.len();
    let low = rows.iter().map(|r| r.2).fold(1.0, f64::min) / 1.5;
    let high = rows.iter().map(|r| r.3).fold(1.0, f64::max) * 1.5;
    let names: Vec<String> = rows.iter().rev().map(|r| r.0.func.clone()).collect();
    let chart = svg(90 + ROW * n as u32, |root| {
        let mut chart = rows_chart(
            root,
            (low, high),
            &names,
            &|v| format!("{v:.2}×"),
            "median latency B / A (log scale) with its bootstrap interval; right of 1× B is slower",
        )?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
            BLACK.stroke_width(1),
        )))?;
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            let y = SegmentValue::CenterOf(row(i, n));
            PathElement::new(
                vec![(r.2, y.clone()), (r.3, y)],
                RGBColor(52, 101, 164).stroke_width(3),
            )
        }))?;
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            let color = if r.2 > 1.0 {
                RGBColor(204, 0, 0)
            } else if r.3 < 1.0 {
                RGBColor(78, 154, 6)
            } else {
                RGBColor(32, 32, 32)
            };
            Circle::new((r.1, SegmentValue::CenterOf(row(i, n))), 5, color.filled())
        }))?;
        Ok(())
    })?;
    Ok(Some(chart))
}
