//! The RSS-over-time chart of one or more runs, as SVG (the `svg` crate
//! writes the document).

use svg::node::element::path::Data;
use svg::node::element::{Line, Path, Rectangle, Text};
use svg::Document;

use crate::child::{mib, Outcome};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 4] = ["#d62728", "#1f5fbf", "#2ca02c", "#6b3fa0"];

/// A round step that cuts `0..max` into about `count` intervals.
fn step_for(max: f64, count: f64) -> f64 {
    let raw = (max / count).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn text(x: f64, y: f64, anchor: &str, size: u32, content: impl Into<String>) -> Text {
    Text::new(content.into())
        .set("x", x)
        .set("y", y)
        .set("text-anchor", anchor)
        .set("font-family", "sans-serif")
        .set("font-size", size)
}

/// The chart as SVG text.
pub fn render(title: &str, runs: &[Outcome]) -> String {
    let max_t = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.0))
        .fold(0.0f64, f64::max)
        .max(0.1);
    let max_v = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| mib(s.1)))
        .chain(runs.iter().map(|r| mib(r.peak_rss)))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let (t_step, v_step) = (step_for(max_t, 8.0), step_for(max_v, 6.0));
    let t_top = (max_t / t_step).ceil() * t_step;
    let v_top = (max_v / v_step).ceil() * v_step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + t / t_top * plot_w;
    let y = |v: f64| TOP + plot_h - v / v_top * plot_h;

    let mut doc = Document::new()
        .set("viewBox", (0, 0, WIDTH, HEIGHT))
        .set("width", WIDTH)
        .set("height", HEIGHT)
        .add(
            Rectangle::new()
                .set("width", WIDTH)
                .set("height", HEIGHT)
                .set("fill", "white"),
        )
        .add(text(WIDTH / 2.0, 28.0, "middle", 18, title).set("font-weight", "bold"));
    let mut v = 0.0;
    while v <= v_top + v_step / 2.0 {
        doc = doc
            .add(
                Line::new()
                    .set("x1", LEFT)
                    .set("x2", LEFT + plot_w)
                    .set("y1", y(v))
                    .set("y2", y(v))
                    .set("stroke", "#e5e5e5"),
            )
            .add(text(LEFT - 8.0, y(v) + 4.0, "end", 12, format!("{v}")));
        v += v_step;
    }
    let mut t = 0.0;
    while t <= t_top + t_step / 2.0 {
        doc = doc.add(text(
            x(t),
            TOP + plot_h + 18.0,
            "middle",
            12,
            format!("{t}"),
        ));
        t += t_step;
    }
    doc = doc
        .add(text(
            LEFT + plot_w / 2.0,
            HEIGHT - 10.0,
            "middle",
            13,
            "time since the command started (s)",
        ))
        .add(
            text(18.0, TOP + plot_h / 2.0, "middle", 13, "RSS (MiB)").set(
                "transform",
                format!("rotate(-90 18 {})", TOP + plot_h / 2.0),
            ),
        );
    for (i, run) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if let Some((&(t0, v0), rest)) = run.samples.split_first() {
            let mut data = Data::new().move_to((x(t0), y(mib(v0))));
            for &(t, v) in rest {
                data = data.line_to((x(t), y(mib(v))));
            }
            doc = doc.add(
                Path::new()
                    .set("d", data)
                    .set("fill", "none")
                    .set("stroke", colour)
                    .set("stroke-width", 2),
            );
        }
        let legend_y = TOP + 20.0 + 22.0 * i as f64;
        doc = doc
            .add(
                Line::new()
                    .set("x1", LEFT + plot_w + 15.0)
                    .set("x2", LEFT + plot_w + 40.0)
                    .set("y1", legend_y - 4.0)
                    .set("y2", legend_y - 4.0)
                    .set("stroke", colour)
                    .set("stroke-width", 3),
            )
            .add(text(
                LEFT + plot_w + 46.0,
                legend_y,
                "start",
                13,
                run.label.clone(),
            ));
    }
    doc.to_string()
}
