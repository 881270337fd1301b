//! `loadtest-chart`: draws SCALE.md's curves from `loadtest --json` reports, as an SVG.
//!
//! Each report is placed on the series named before its path (`sidecars=<file>` or `services=<file>`) at its
//! own scenario's size: `loadtest-chart --out scale.svg sidecars=1k.json sidecars=5k.json services=100.json`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use loadtest::report::Report;
use plotters::prelude::*;

#[derive(Parser)]
#[command(name = "loadtest-chart", about = "SVG curves from loadtest JSON reports")]
struct Cli {
    /// Where to write the SVG.
    #[arg(long)]
    out: PathBuf,
    /// `sidecars=<report.json>` or `services=<report.json>`, repeated.
    reports: Vec<String>,
}

/// One point: the size on the x axis and the report.
struct Point {
    x: f64,
    r: Report,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut by_sidecars = Vec::new();
    let mut by_services = Vec::new();
    for arg in &cli.reports {
        let (series, path) = arg.split_once('=').context("expected sidecars=<file> or services=<file>")?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let r: Report = serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?;
        match series {
            "sidecars" => by_sidecars.push(Point { x: r.sidecars as f64, r }),
            "services" => {
                let services = r.scenario.pointer("/mesh/services").and_then(|v| v.as_f64()).unwrap_or(0.0);
                by_services.push(Point { x: services, r });
            }
            other => bail!("unknown series {other:?}: use sidecars= or services="),
        }
    }
    for s in [&mut by_sidecars, &mut by_services] {
        s.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    let root = SVGBackend::new(&cli.out, (1200, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((4, 2));
    type Metric = (&'static str, fn(&Report) -> f64);
    let metrics: [Metric; 4] = [
        ("controller CPU per sidecar (ms)", |r| r.cpu_per_sidecar_ms),
        ("RSS per connected sidecar (kB)", |r| r.rss_per_sidecar_kb),
        ("all converged after (s)", |r| r.all_converged_s.unwrap_or(0.0)),
        ("change → last sidecar, p50 (ms)", |r| r.change_complete.p50_ms),
    ];
    for (row, (label, f)) in metrics.iter().enumerate() {
        for (col, (series, xlabel)) in
            [(&by_sidecars, "sidecars (10 Services)"), (&by_services, "Services (1,000 sidecars)")].iter().enumerate()
        {
            let area = &panels[row * 2 + col];
            if series.is_empty() {
                continue;
            }
            let xmax = series.iter().map(|p| p.x).fold(1.0, f64::max) * 1.05;
            let ymax = series.iter().map(|p| f(&p.r)).fold(0.0, f64::max).max(1e-3) * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(*label, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(32)
                .y_label_area_size(56)
                .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
            chart.configure_mesh().x_desc(*xlabel).light_line_style(WHITE.mix(0.0)).draw()?;
            let points: Vec<(f64, f64)> = series.iter().map(|p| (p.x, f(&p.r))).collect();
            chart.draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))?;
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))?;
        }
    }
    root.present().context("writing the SVG")?;
    println!("wrote {}", cli.out.display());
    Ok(())
}
