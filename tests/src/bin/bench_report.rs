//! `make bench` (last part): one table of every figure, and plots.
//!
//! Reads `target/bench/results.jsonl` (written by the other benchmark binaries) and
//! criterion's estimates for the translation benchmarks, prints `measure | goal | figure`,
//! writes the table to `target/bench/summary.md`, and draws two SVG plots from the xDS
//! runs: operator RSS against connected streams, and policy-edit convergence (p50, p99)
//! against streams.

use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use weir_tests::workspace_root;

/// One plotted series: a name, a colour and (x, y) points.
struct Series<'a> {
    name: &'a str,
    colour: &'a str,
    points: Vec<(f64, f64)>,
}

fn svg_plot(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, left, bottom, top, right) = (640.0, 400.0, 70.0, 50.0, 40.0, 160.0);
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let x = |v: f64| left + v / x_max * (w - left - right);
    let y = |v: f64| h - bottom - v / y_max * (h - bottom - top);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{y_label}</text>
"#,
        w / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (left + w - right) / 2.0,
        h - 12.0,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
    );
    for i in 0..=4 {
        let (xv, yv) = (x_max / 1.05 * i as f64 / 4.0, y_max / 1.15 * i as f64 / 4.0);
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{xv:.0}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{yv:.0}</text><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            x(xv),
            h - bottom + 16.0,
            left - 6.0,
            y(yv) + 4.0,
            y(yv),
            w - right,
            y(yv),
        );
    }
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            s.colour,
            points.join(" ")
        );
        for (a, b) in &s.points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="10">{b:.0}</text>"#,
                x(*a),
                y(*b),
                s.colour,
                x(*a) + 4.0,
                y(*b) - 6.0
            );
        }
        let ly = top + 20.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{:.1}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            w - right + 10.0,
            w - right + 30.0,
            s.colour,
            w - right + 35.0,
            ly + 4.0,
            s.name
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Criterion's mean estimate for a benchmark of the `translate` group, in ms.
fn criterion_ms(dir: &std::path::Path, prefix: &str) -> Option<f64> {
    let entry = std::fs::read_dir(dir.join("translate"))
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with(prefix))?;
    let text = std::fs::read_to_string(entry.path().join("new/estimates.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    Some(v["mean"]["point_estimate"].as_f64()? / 1e6)
}

fn main() -> Result<()> {
    let root = workspace_root();
    let dir = root.join("target/bench");
    let text = std::fs::read_to_string(dir.join("results.jsonl"))
        .context("no target/bench/results.jsonl: run `make bench`")?;
    let mut rows: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let criterion = root.join("target/criterion");
    for (prefix, measure, goal) in [
        (
            "full",
            "translation, 10k Services / 50k endpoints / 2k policies, 2 profiles, one core",
            "<= 200 ms",
        ),
        (
            "index",
            "indexing the same objects (before translation)",
            "-",
        ),
        (
            "one endpoint",
            "one EndpointSlice change, re-translated, 2 profiles",
            "-",
        ),
    ] {
        if let Some(ms) = criterion_ms(&criterion, prefix) {
            rows.push(serde_json::json!({"run": "translate", "measure": measure, "goal": goal, "figure": ms, "unit": "ms"}));
        }
    }
    let mut table = String::from("| run | measure | goal | figure |\n|---|---|---|---|\n");
    for r in &rows {
        let figure = r["figure"].as_f64().unwrap_or(0.0);
        let precision = if figure != 0.0 && figure.abs() < 1.0 {
            3
        } else {
            1
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} | {figure:.precision$} {} |",
            r["run"].as_str().unwrap_or(""),
            r["measure"].as_str().unwrap_or(""),
            r["goal"].as_str().unwrap_or(""),
            r["unit"].as_str().unwrap_or("")
        );
    }
    print!("{table}");
    std::fs::write(dir.join("summary.md"), &table)?;

    // xDS runs are named <protocol>-<streams>.
    let figure = |run: &str, measure: &str| {
        rows.iter()
            .find(|r| {
                r["run"] == run
                    && r["measure"]
                        .as_str()
                        .is_some_and(|m| m.starts_with(measure))
            })
            .and_then(|r| r["figure"].as_f64())
    };
    let mut runs: BTreeMap<&str, Vec<(f64, &str)>> = BTreeMap::new();
    for r in &rows {
        if let Some((protocol, streams)) = r["run"].as_str().and_then(|run| run.split_once('-')) {
            if let Ok(n) = streams.parse::<f64>() {
                let entry = runs.entry(protocol).or_default();
                if !entry.iter().any(|(m, _)| *m == n) {
                    entry.push((n, r["run"].as_str().unwrap_or_default()));
                }
            }
        }
    }
    let series = |protocol: &str, measure: &str| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = runs
            .get(protocol)
            .into_iter()
            .flatten()
            .filter_map(|(n, run)| Some((*n, figure(run, measure)?)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let rss = svg_plot(
        "Operator RSS vs connected proxies (1,000 Services)",
        "connected streams",
        "MiB",
        &[
            Series {
                name: "delta",
                colour: "#1f77b4",
                points: series("delta", "operator RSS with every stream"),
            },
            Series {
                name: "sotw",
                colour: "#ff7f0e",
                points: series("sotw", "operator RSS with every stream"),
            },
        ],
    );
    std::fs::write(dir.join("operator-rss.svg"), rss)?;
    let convergence = svg_plot(
        "Policy edit convergence vs streams (delta)",
        "connected streams",
        "ms",
        &[
            Series {
                name: "p50",
                colour: "#2ca02c",
                points: series("delta", "policy edit -> new routes received, p50"),
            },
            Series {
                name: "p99",
                colour: "#d62728",
                points: series("delta", "policy edit -> new routes received, p99"),
            },
            Series {
                name: "all ACKed",
                colour: "#9467bd",
                points: series("delta", "policy edit -> every stream ACKed"),
            },
        ],
    );
    std::fs::write(dir.join("convergence.svg"), convergence)?;
    println!(
        "\nwrote {}, operator-rss.svg and convergence.svg there",
        dir.join("summary.md").display()
    );
    Ok(())
}
