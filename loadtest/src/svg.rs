//! A small SVG line-chart writer: stacked panels sharing one x axis, each
//! with its own y axis and any number of series. No dependencies, pure.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Panel {
    pub y_label: String,
    pub series: Vec<Series>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub panels: Vec<Panel>,
}

const WIDTH: f64 = 720.0;
const PANEL_H: f64 = 200.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const GAP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Escape text for an SVG text node or attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite()) || v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v.abs() >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

impl Chart {
    pub fn render(&self) -> String {
        let n = self.panels.len().max(1) as f64;
        let height = TOP + n * PANEL_H + (n - 1.0) * GAP + BOTTOM;
        let plot_w = WIDTH - LEFT - RIGHT;
        let xs = self
            .panels
            .iter()
            .flat_map(|p| p.series.iter())
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .filter(|x| x.is_finite());
        let (mut xmin, mut xmax) = (f64::INFINITY, f64::NEG_INFINITY);
        for x in xs {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
        }
        if !xmin.is_finite() {
            (xmin, xmax) = (0.0, 1.0);
        }
        let xmin = xmin.min(0.0);
        let xmax = nice_max(xmax);
        let sx = |x: f64| LEFT + (x - xmin) / (xmax - xmin).max(f64::EPSILON) * plot_w;

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            WIDTH / 2.0,
            escape(&self.title)
        );
        let mut color_i = 0;
        for (pi, panel) in self.panels.iter().enumerate() {
            let top = TOP + pi as f64 * (PANEL_H + GAP);
            let bottom = top + PANEL_H;
            let ymax = nice_max(
                panel
                    .series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.1))
                    .filter(|y| y.is_finite())
                    .fold(0.0, f64::max),
            );
            let sy = |y: f64| bottom - (y / ymax) * PANEL_H;
            let _ = writeln!(
                s,
                r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#888"/>"##
            );
            for t in 0..=4 {
                let v = ymax * f64::from(t) / 4.0;
                let y = sy(v);
                let _ = writeln!(
                    s,
                    r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                    LEFT + plot_w,
                    LEFT - 6.0,
                    y + 4.0,
                    fmt_tick(v)
                );
            }
            let _ = writeln!(
                s,
                r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
                top + PANEL_H / 2.0,
                escape(&panel.y_label)
            );
            for (si, series) in panel.series.iter().enumerate() {
                let color = COLORS[color_i % COLORS.len()];
                color_i += 1;
                let pts: Vec<String> = series
                    .points
                    .iter()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                    .collect();
                if !pts.is_empty() {
                    let _ = writeln!(
                        s,
                        r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                        pts.join(" ")
                    );
                    for p in &pts {
                        let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                        let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
                    }
                }
                let ly = top + 14.0 + si as f64 * 16.0;
                let lx = LEFT + plot_w + 10.0;
                let _ = writeln!(
                    s,
                    r#"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
                    ly - 4.0,
                    lx + 18.0,
                    ly - 4.0,
                    lx + 24.0,
                    escape(&series.name)
                );
            }
        }
        let axis_y = TOP + n * PANEL_H + (n - 1.0) * GAP;
        for t in 0..=5 {
            let v = xmin + (xmax - xmin) * f64::from(t) / 5.0;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                sx(v),
                axis_y + 16.0,
                fmt_tick(v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            axis_y + 38.0,
            escape(&self.x_label)
        );
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "Load <test> & \"us\"".into(),
            x_label: "consults".into(),
            panels: vec![
                Panel {
                    y_label: "packets/s".into(),
                    series: vec![Series {
                        name: "spreekkamer".into(),
                        points: vec![(10.0, 3500.0), (20.0, 7000.0), (30.0, 10_500.0)],
                    }],
                },
                Panel {
                    y_label: "p99 ms".into(),
                    series: vec![
                        Series {
                            name: "a".into(),
                            points: vec![(10.0, 1.0), (20.0, f64::NAN), (30.0, 4.0)],
                        },
                        Series {
                            name: "b".into(),
                            points: vec![],
                        },
                    ],
                },
            ],
        }
    }

    #[test]
    fn renders_well_formed_svg_with_escaped_text() {
        let svg = chart().render();
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Load &lt;test&gt; &amp; &quot;us&quot;"));
        assert!(!svg.contains("<test>"));
        assert_eq!(
            svg.matches("<polyline").count(),
            2,
            "empty series draws no line"
        );
        // NaN points are skipped, not written as "NaN".
        assert!(!svg.contains("NaN"));
        assert_eq!(svg.matches("<circle").count(), 5);
        let opens = svg.matches("<text").count();
        assert_eq!(opens, svg.matches("</text>").count());
    }

    #[test]
    fn points_map_into_the_plot_area() {
        let svg = chart().render();
        // x from 0 to nice_max(30) = 50 over 470 px: x=30 -> 80 + 282 = 362.
        // y: 10500 on a 20k axis in a 200 px panel at top 40: 240 - 105 = 135.
        assert!(svg.contains("362.0,135.0"), "{svg}");
    }

    #[test]
    fn nice_max_rounds_up() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(10_500.0), 20_000.0);
        assert_eq!(nice_max(100.0), 100.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
    }
}
