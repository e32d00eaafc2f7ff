//! The report's charts, as SVG files (plotters' SVG backend: text is
//! written as `<text>` elements, so no font is needed to draw them).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::combinators::{BindKeyPoints, LogCoord, WithKeyPoints};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Ours, the reference, and a third series, in every chart.
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];
const FONT: &str = "sans-serif";

/// A named series of values (a distribution) or of points.
pub struct Series<T> {
    pub name: String,
    pub data: T,
}

impl<T> Series<T> {
    pub fn new(name: &str, data: T) -> Series<T> {
        Series {
            name: name.to_string(),
            data,
        }
    }
}

/// One chart of empirical CDFs sharing a log-scaled x axis.
pub struct CdfPanel<'a> {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series<&'a [f64]>>,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing: {e}")
}

/// Side-by-side CDF panels in one SVG.
pub fn cdfs(path: &Path, panels: &[CdfPanel]) -> Result<()> {
    let width = match panels.len() {
        1 => 760,
        n => 520 * n as u32,
    };
    let root = SVGBackend::new(path, (width, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        cdf_panel(area, panel)?;
    }
    root.present().map_err(err)
}

fn cdf_panel(area: &DrawingArea<SVGBackend, Shift>, panel: &CdfPanel) -> Result<()> {
    let all: Vec<f64> = panel
        .series
        .iter()
        .flat_map(|s| s.data.iter().copied())
        .filter(|x| *x > 0.0)
        .collect();
    let (lo, hi) = bounds(&all);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(log_axis(lo / 1.2, hi * 1.2), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc("fraction of samples ≤ x")
        .x_label_formatter(&|x| short(*x))
        .draw()
        .map_err(err)?;
    for (i, s) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(cdf_points(s.data), color.stroke_width(2)))
            .map_err(err)?
            .label(&s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// Points of a step CDF: for each sorted value, the fraction at or below.
fn cdf_points(values: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| *x > 0.0).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mut points = Vec::with_capacity(v.len() * 2);
    for (i, x) in v.iter().enumerate() {
        points.push((*x, i as f64 / n));
        points.push((*x, (i + 1) as f64 / n));
    }
    points
}

/// Lines of (x, y) points on log-log axes (scaling with a count).
pub fn lines_loglog(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series<Vec<(f64, f64)>>],
) -> Result<()> {
    let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.data.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.data.iter().map(|p| p.1))
        .collect();
    let ((x0, x1), (y0, y1)) = (bounds(&xs), bounds(&ys));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (x0 / 1.3..x1 * 1.3).log_scale(),
            (y0 / 1.5..y1 * 1.5).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| short(*x))
        .y_label_formatter(&|y| short(*y))
        .draw()
        .map_err(err)?;
    points_joined(&mut chart, series)
}

/// Lines of (x, y) points, x log-scaled, y linear from zero.
pub fn lines_logx(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series<Vec<(f64, f64)>>],
) -> Result<()> {
    let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.data.iter().map(|p| p.0))
        .collect();
    let y1 = series
        .iter()
        .flat_map(|s| s.data.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let (x0, x1) = bounds(&xs);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(60)
        .build_cartesian_2d(log_axis(x0 / 1.3, x1 * 1.3), 0.0..(y1 * 1.25).max(1.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| short(*x))
        .draw()
        .map_err(err)?;
    points_joined(&mut chart, series)
}

/// Vertical bars with their value written above each.
pub fn bars(path: &Path, title: &str, y_label: &str, bars: &[(String, f64)]) -> Result<()> {
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9) * 1.2;
    let n = bars.len();
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let label = move |x: &f64| {
        let i = x.round();
        match (x - i).abs() < 0.01 && i >= 0.0 {
            true => names.get(i as usize).cloned().unwrap_or_default(),
            false => String::new(),
        }
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(1) * 2 + 1)
        .x_label_formatter(&label)
        .y_desc(y_label)
        .draw()
        .map_err(err)?;
    for (i, (_, value)) in bars.iter().enumerate() {
        let (x, color) = (i as f64, COLORS[i % COLORS.len()]);
        let bar = Rectangle::new([(x - 0.3, 0.0), (x + 0.3, *value)], color.filled());
        chart.draw_series(std::iter::once(bar)).map_err(err)?;
        let text = Text::new(
            format!("{value:.2}"),
            (x - 0.1, value + top * 0.03),
            (FONT, 16),
        );
        chart.draw_series(std::iter::once(text)).map_err(err)?;
    }
    root.present().map_err(err)
}

/// Each series as a line through its points, marked, with the legend.
fn points_joined<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    series: &[Series<Vec<(f64, f64)>>],
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.data.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(&s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.data.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(err)?;
    }
    legend(chart, SeriesLabelPosition::UpperLeft)
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(err)
}

/// A log-scaled axis from `lo` to `hi` labelled at 1-2-5 steps (every
/// integer step of a decade when the range is too narrow for those).
fn log_axis(lo: f64, hi: f64) -> WithKeyPoints<LogCoord<f64>> {
    let decades = lo.log10().floor() as i32..=hi.log10().ceil() as i32;
    let ticks = |steps: &[f64]| -> Vec<f64> {
        decades
            .clone()
            .flat_map(|d| steps.iter().map(move |m| m * 10f64.powi(d)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let mut points = ticks(&[1.0, 2.0, 5.0]);
    if points.len() < 3 {
        points = ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    }
    if points.len() < 3 {
        // A narrow range: tenths of a decade, at most about eight of them.
        let tenths: Vec<f64> = (10..100).map(|k| f64::from(k) / 10.0).collect();
        let fine = ticks(&tenths);
        let step = fine.len().div_ceil(8).max(1);
        points = fine.into_iter().step_by(step).collect();
    }
    (lo..hi).log_scale().with_key_points(points)
}

/// Smallest and largest positive value (1..10 when there is none).
fn bounds(values: &[f64]) -> (f64, f64) {
    let positive = values.iter().copied().filter(|x| *x > 0.0 && x.is_finite());
    let (lo, hi) = positive.fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    match hi > 0.0 {
        true => (lo, hi),
        false => (1.0, 10.0),
    }
}

/// An axis label: few digits, `k` for thousands.
fn short(x: f64) -> String {
    match x {
        x if x >= 1000.0 => format!("{}k", trim(x / 1000.0)),
        x => trim(x),
    }
}

fn trim(x: f64) -> String {
    let s = match x {
        x if x >= 10.0 => format!("{x:.0}"),
        x if x >= 1.0 => format!("{x:.1}"),
        x => format!("{x:.2}"),
    };
    match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_steps_end_at_one() {
        let p = cdf_points(&[2.0, 1.0]);
        assert_eq!(p, vec![(1.0, 0.0), (1.0, 0.5), (2.0, 0.5), (2.0, 1.0)]);
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(short(10_000.0), "10k");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(300.0), "300");
    }

    #[test]
    fn svg_is_written_without_fonts() {
        let dir = std::env::temp_dir().join(format!("bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cdf.svg");
        let a = [1.0, 2.0, 3.0];
        let panel = CdfPanel {
            title: "t".into(),
            x_label: "ms".into(),
            series: vec![Series::new("ours", &a[..])],
        };
        cdfs(&path, &[panel]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<text") && svg.contains("ours"));
        bars(&dir.join("b.svg"), "t", "Gbit/s", &[("a".into(), 1.0)]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
