//! Minimal SVG line charts: enough for a throughput-latency curve and a
//! throughput timeline with marked events, with no plotting dependency.

use std::fmt::Write;

/// One line of a chart.
pub struct Series {
    /// Legend.
    pub name: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// A vertical marker (a fault or reconfiguration event).
pub struct Event {
    /// Where on the x axis.
    pub x: f64,
    /// What happened.
    pub label: String,
}

const W: f64 = 800.0;
const H: f64 = 420.0;
const L: f64 = 80.0;
const R: f64 = 30.0;
const T: f64 = 40.0;
const B: f64 = 60.0;
const COLORS: [&str; 4] = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df"];

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Renders a line chart.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], events: &[Event]) -> String {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).chain(events.iter().map(|e| e.x));
    let x_max = nice_max(xs.fold(0.0, f64::max));
    let y_max = nice_max(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max));
    let px = |x: f64| L + x / x_max * (W - L - R);
    let py = |y: f64| H - B - y / y_max * (H - T - B);
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let (x, y) = (px(f * x_max), py(f * y_max));
        let _ = write!(
            o,
            r##"<line x1="{L}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            fmt_num(f * y_max),
            H - B + 18.0,
            fmt_num(f * x_max)
        );
    }
    let _ = write!(
        o,
        r##"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="#333"/><text x="{}" y="{}" text-anchor="middle">{}</text><text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"##,
        H - B,
        W - R,
        H - B,
        H - B,
        (L + W - R) / 2.0,
        H - 20.0,
        esc(x_label),
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        esc(y_label)
    );
    for e in events {
        let x = px(e.x);
        let _ = write!(
            o,
            r##"<line x1="{x}" y1="{T}" x2="{x}" y2="{}" stroke="#999" stroke-dasharray="4 3"/><text x="{}" y="{}" fill="#555">{}</text>"##,
            H - B,
            x + 4.0,
            T + 14.0,
            esc(&e.label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = s.points.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = write!(o, r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#, pts.join(" "));
        if s.points.len() <= 30 {
            for (x, y) in &s.points {
                let _ = write!(o, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, px(*x), py(*y));
            }
        }
        let _ = write!(
            o,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            W - R - 180.0,
            T + 8.0 + 16.0 * i as f64,
            W - R - 162.0,
            T + 13.0 + 16.0 * i as f64,
            esc(&s.name)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// One group member of a bar chart: a value per group.
pub struct Bars {
    /// Legend.
    pub name: String,
    /// One value per group, in the groups' order.
    pub values: Vec<f64>,
}

/// Renders a grouped bar chart: one group per label, one bar per series.
pub fn bar_chart(title: &str, y_label: &str, groups: &[String], series: &[Bars]) -> String {
    let y_max = nice_max(series.iter().flat_map(|s| s.values.iter().copied()).fold(0.0, f64::max));
    let py = |y: f64| H - B - y / y_max * (H - T - B);
    let group_w = (W - L - R) / groups.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let v = i as f64 / 5.0 * y_max;
        let y = py(v);
        let _ = write!(
            o,
            r##"<line x1="{L}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    for (g, label) in groups.iter().enumerate() {
        let x0 = L + g as f64 * group_w + group_w * 0.1;
        for (i, s) in series.iter().enumerate() {
            let v = s.values.get(g).copied().unwrap_or(0.0);
            let (x, y) = (x0 + i as f64 * bar_w, py(v));
            let _ = write!(
                o,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {v:.2}</title></rect>"#,
                bar_w * 0.9,
                H - B - y,
                COLORS[i % COLORS.len()],
                esc(&s.name)
            );
        }
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            L + (g as f64 + 0.5) * group_w,
            H - B + 18.0,
            esc(label)
        );
    }
    let _ = write!(
        o,
        r##"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="#333"/><text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"##,
        H - B,
        W - R,
        H - B,
        H - B,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let _ = write!(
            o,
            r#"<rect x="{}" y="{}" width="12" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            L + 12.0,
            T + 4.0 + 16.0 * i as f64,
            COLORS[i % COLORS.len()],
            L + 30.0,
            T + 13.0 + 16.0 * i as f64,
            esc(&s.name)
        );
    }
    o.push_str("</svg>\n");
    o
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_its_series_events_and_labels() {
        let s = Series { name: "palisade".into(), points: vec![(0.0, 10.0), (1.0, 20.0), (2.0, 15.0)] };
        let svg = line_chart("t <1>", "time (s)", "ops/s", &[s], &[Event { x: 1.0, label: "primary killed".into() }]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("polyline") && svg.contains("primary killed") && svg.contains("t &lt;1&gt;"));
        assert_eq!(nice_max(13.0), 20.0);
        assert_eq!(nice_max(0.0), 1.0);
    }

    #[test]
    fn a_bar_chart_has_a_bar_per_series_and_group() {
        let groups = vec!["copy".to_string(), "total".to_string()];
        let series = [
            Bars { name: "local".into(), values: vec![1.0, 3.0] },
            Bars { name: "bft".into(), values: vec![2.0, 5.0] },
        ];
        let svg = bar_chart("andrew", "seconds", &groups, &series);
        assert_eq!(svg.matches("<title>").count(), 4);
        assert!(svg.contains("bft: 5.00") && svg.contains(">total<"));
    }
}
