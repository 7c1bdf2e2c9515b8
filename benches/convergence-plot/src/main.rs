//! `convergence-plot <dir>`: reads `<dir>/controller-scale.json` (written by
//! the controller benchmark) and draws `<dir>/controller-scale.png`: one
//! panel per number of claims, left to right, each showing the share of
//! claims converged (0 to 1, up) over seconds since the claims were created
//! (right), for the controller (blue), for the floor, a plain client
//! creating the same objects (black), and, for the controller's run, claims
//! whose Deployment is available, its pods Ready through KWOK (green). Grey vertical lines every `step`
//! seconds, the step written to stdout. No text in the image: the plotting
//! crate is built without fonts; docs/benchmarks.md gives the axes.
use std::path::PathBuf;

use plotters::prelude::*;
use serde_json::Value;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let text = std::fs::read(dir.join("controller-scale.json")).expect("controller-scale.json");
    let all: Value = serde_json::from_slice(&text).expect("JSON");
    let runs: Vec<&Value> = all["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| !r["controller"].is_null() || !r["floor"].is_null())
        .collect();
    assert!(!runs.is_empty(), "no runs to draw");
    let png = dir.join("controller-scale.png");
    let root = BitMapBackend::new(&png, (400 * runs.len() as u32, 400)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let panels = root.split_evenly((1, runs.len()));
    for (run, area) in runs.iter().zip(&panels) {
        let controller = curve(&run["controller"], "curve");
        let available = curve(&run["controller"], "ready_curve");
        let floor = curve(&run["floor"], "curve");
        let right = controller
            .iter()
            .chain(&floor)
            .chain(&available)
            .map(|p| p.0)
            .fold(1.0f64, f64::max)
            * 1.05;
        let step = grid_step(right);
        println!("{} claims: 0 to {right:.0} s, a grey line every {step} s", run["n"]);
        let mut chart = ChartBuilder::on(area)
            .margin(14)
            .build_cartesian_2d(0f64..right, 0f64..1.02)
            .unwrap();
        chart
            .configure_mesh()
            .x_labels(0)
            .y_labels(0)
            .disable_x_mesh()
            .disable_y_mesh()
            .draw()
            .unwrap();
        let grey = RGBColor(220, 220, 220);
        let mut x = 0.0;
        while x <= right {
            chart.draw_series(LineSeries::new([(x, 0.0), (x, 1.02)], grey)).unwrap();
            x += step;
        }
        for share in [0.5, 1.0] {
            chart
                .draw_series(LineSeries::new([(0.0, share), (right, share)], grey))
                .unwrap();
        }
        chart
            .draw_series(LineSeries::new(floor, BLACK.stroke_width(2)))
            .unwrap();
        chart
            .draw_series(LineSeries::new(available, RGBColor(0, 150, 60).stroke_width(2)))
            .unwrap();
        chart
            .draw_series(LineSeries::new(controller, BLUE.stroke_width(2)))
            .unwrap();
    }
    root.present().unwrap();
    eprintln!("wrote {}", png.display());
}

/// (seconds, share converged) as a step curve from the run's sorted times
/// under `field`.
fn curve(run: &Value, field: &str) -> Vec<(f64, f64)> {
    let Some(times) = run[field].as_array() else {
        return Vec::new();
    };
    let n = run["n"].as_f64().unwrap_or(times.len() as f64).max(1.0);
    let mut points = vec![(0.0, 0.0)];
    for (i, t) in times.iter().filter_map(Value::as_f64).enumerate() {
        points.push((t, i as f64 / n));
        points.push((t, (i + 1) as f64 / n));
    }
    points
}

/// A round grid step giving at most about 12 lines.
fn grid_step(right: f64) -> f64 {
    [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]
        .into_iter()
        .find(|s| right / s <= 12.0)
        .unwrap_or(3600.0)
}
