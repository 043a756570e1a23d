//! A hand-written SVG line chart of RSS over time, one line per run, so the
//! demo needs no plotting crate.

use std::fmt::Write as _;

/// One run's line: RSS samples and the moments its phases began.
pub struct Series<'a> {
    /// Legend text.
    pub label: &'a str,
    /// Stroke colour (any SVG colour).
    pub colour: &'a str,
    /// Stroke dash pattern (empty for a solid line), so the lines differ
    /// even without colour.
    pub dash: &'a str,
    /// (seconds since the run started, RSS in MiB), in time order.
    pub points: Vec<(f64, f64)>,
    /// (phase name, seconds since the run started). "free" and "trim" get
    /// markers; other phases are ignored.
    pub phases: Vec<(String, f64)>,
}

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 600.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 60.0;

/// A round step that cuts `0..max` into about `target` intervals.
fn nice_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// The RSS of `points` at time `t`, interpolated between the two samples
/// around it.
fn value_at(points: &[(f64, f64)], t: f64) -> Option<f64> {
    let after = points.iter().position(|&(pt, _)| pt >= t)?;
    if after == 0 {
        return Some(points[0].1);
    }
    let (t0, v0) = points[after - 1];
    let (t1, v1) = points[after];
    let f = if t1 > t0 { (t - t0) / (t1 - t0) } else { 1.0 };
    Some(v0 + f * (v1 - v0))
}

/// Renders the chart as SVG text.
pub fn render(title: &str, subtitle: &str, series: &[Series]) -> String {
    let max_t = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let max_v = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let x_step = nice_step(max_t, 8.0);
    let y_step = nice_step(max_v, 7.0);
    let x_max = (max_t / x_step).ceil().max(1.0) * x_step;
    let y_max = (max_v / y_step).ceil().max(1.0) * y_step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + t / x_max * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;

    let mut svg = String::new();
    // Writing to a String cannot fail, so the results of write! are ignored.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="30" font-size="20" font-weight="bold" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="52" font-size="13" fill="#555" text-anchor="middle">{}</text>"##,
        WIDTH / 2.0,
        escape(subtitle)
    );

    // Grid, ticks and tick labels.
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let py = y(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e4e4e4"/><line x1="{:.1}" y1="{py:.1}" x2="{LEFT}" y2="{py:.1}" stroke="black"/><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            LEFT - 9.0,
            py + 4.0,
            trim_number(v)
        );
        v += y_step;
    }
    let mut t = 0.0;
    while t <= x_max + x_step / 2.0 {
        let px = x(t);
        let base = TOP + plot_h;
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{base:.1}" stroke="#e4e4e4"/><line x1="{px:.1}" y1="{base:.1}" x2="{px:.1}" y2="{:.1}" stroke="black"/><text x="{px:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"##,
            base + 6.0,
            base + 21.0,
            trim_number(t)
        );
        t += x_step;
    }
    // Axes and their titles.
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="black"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        TOP + plot_h,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle">time since the child process started (s)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="22" y="{:.1}" font-size="13" text-anchor="middle" transform="rotate(-90 22 {:.1})">resident set size (MiB)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    // One polyline per run, then its phase markers on top.
    for s in series {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let dash = if s.dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{}""#, s.dash)
        };
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2.2" stroke-linejoin="round"{dash} points="{}"/>"#,
            s.colour,
            points.join(" ")
        );
    }
    for s in series {
        for (phase, t) in &s.phases {
            let Some(v) = value_at(&s.points, *t) else {
                continue;
            };
            let _ = match phase.as_str() {
                "free" => writeln!(svg, "{}", circle(x(*t), y(v), s.colour)),
                "trim" => writeln!(svg, "{}", square(x(*t), y(v), s.colour)),
                _ => Ok(()),
            };
        }
    }

    // Legend, to the right of the plot.
    let lx = LEFT + plot_w + 20.0;
    let mut ly = TOP + 10.0;
    for s in series {
        let dash = if s.dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{}""#, s.dash)
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"{dash}/><text x="{:.1}" y="{:.1}" font-size="13">{}</text>"#,
            lx + 34.0,
            s.colour,
            lx + 42.0,
            ly + 4.5,
            escape(s.label)
        );
        ly += 24.0;
    }
    ly += 10.0;
    let _ = writeln!(
        svg,
        r#"{}<text x="{:.1}" y="{:.1}" font-size="13">free begins</text>"#,
        circle(lx + 17.0, ly, "#333"),
        lx + 42.0,
        ly + 4.5
    );
    ly += 24.0;
    let _ = writeln!(
        svg,
        r#"{}<text x="{:.1}" y="{:.1}" font-size="13">trim called</text>"#,
        square(lx + 17.0, ly, "#333"),
        lx + 42.0,
        ly + 4.5
    );
    svg.push_str("</svg>\n");
    svg
}

/// A hollow circle marker centred on (x, y).
fn circle(x: f64, y: f64, colour: &str) -> String {
    format!(
        r#"<circle cx="{x:.1}" cy="{y:.1}" r="5.5" fill="white" stroke="{colour}" stroke-width="2.2"/>"#
    )
}

/// A filled square marker centred on (x, y).
fn square(x: f64, y: f64, colour: &str) -> String {
    format!(
        r#"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{colour}" stroke="white" stroke-width="1"/>"#,
        x - 5.0,
        y - 5.0
    )
}

/// A tick label without a pointless ".0".
fn trim_number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round())
    } else {
        format!("{v:.1}")
    }
}

/// Escapes text for an SVG text node.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
