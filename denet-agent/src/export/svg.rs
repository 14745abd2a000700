//! Hand-written inline SVG for the HTML report: a process timeline (Gantt) and line
//! charts. Drawn server-side so the report is static, self-contained and shows the
//! same thing in every browser; `<title>` elements give hover details without script.

use std::fmt::Write;

/// Escapes text for HTML and SVG content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Round tick steps (1, 2, 5 x 10^k) giving about `target` ticks up to `max`.
pub fn ticks(max: f64, target: usize) -> Vec<f64> {
    if !(max.is_finite() && max > 0.0) {
        return vec![0.0];
    }
    let raw = max / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let n = (max / step).floor() as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

fn tick_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if (v * 10.0).fract().abs() < 1e-9 {
        format!("{v:.1}")
    } else if (v * 100.0).fract().abs() < 1e-9 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

pub const WIDTH: f64 = 1100.0;

/// One row of the timeline.
pub struct Bar {
    pub depth: usize,
    pub label: String,
    /// Seconds since the run start; None: unknown.
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    /// CSS class: `ok`, `failed`, `killed`, `open` (no record), `group` added for ×N.
    pub class: String,
    pub tooltip: String,
}

/// The timeline: one row per tree line, bars from start to end on a shared axis.
pub fn timeline(bars: &[Bar], span_s: f64, omitted: usize) -> String {
    const LEFT: f64 = 340.0;
    const ROW: f64 = 18.0;
    const TOP: f64 = 24.0;
    let right = WIDTH - 16.0;
    let span = if span_s > 0.0 { span_s } else { 1.0 };
    let x = |t: f64| LEFT + (t.clamp(0.0, span) / span) * (right - LEFT);
    let height = TOP + ROW * bars.len().max(1) as f64 + 8.0;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg id="timeline" class="chart" data-rows="{}" data-omitted="{omitted}" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="Process timeline" xmlns="http://www.w3.org/2000/svg">"#,
        bars.len()
    );
    for t in ticks(span, 8) {
        let _ = write!(
            o,
            r#"<line class="grid" x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2:.1}"/><text class="tick" x="{0:.1}" y="14" text-anchor="middle">{3} s</text>"#,
            x(t),
            TOP - 4.0,
            height - 8.0,
            tick_label(t)
        );
    }
    if bars.is_empty() {
        let _ = write!(
            o,
            r#"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle">no process records in this trace</text>"#,
            (LEFT + right) / 2.0,
            TOP + 14.0
        );
    }
    for (i, b) in bars.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let indent = 8.0 + 12.0 * b.depth.min(12) as f64;
        let max_chars = ((LEFT - indent - 8.0) / 6.6) as usize;
        let label: String = if b.label.chars().count() > max_chars {
            let mut s: String = b.label.chars().take(max_chars.saturating_sub(1)).collect();
            s.push('…');
            s
        } else {
            b.label.clone()
        };
        let _ = write!(
            o,
            r#"<g class="row"><text class="label" x="{indent:.1}" y="{:.1}">{}</text>"#,
            y + 13.0,
            esc(&label)
        );
        if let Some(s) = b.start_s {
            let e = b.end_s.unwrap_or(span);
            let (x0, x1) = (x(s), x(e));
            let _ = write!(
                o,
                r#"<rect class="bar {}" x="{x0:.2}" y="{:.1}" width="{:.2}" height="{:.1}" rx="2"><title>{}</title></rect>"#,
                b.class,
                y + 3.0,
                (x1 - x0).max(1.5),
                ROW - 6.0,
                esc(&b.tooltip)
            );
        }
        o.push_str("</g>");
    }
    o.push_str("</svg>");
    o
}

/// A line chart of (seconds, value) points with a filled area under the line.
pub fn line_chart(id: &str, label: &str, points: &[(f64, f64)], span_s: f64, unit: &str) -> String {
    const LEFT: f64 = 64.0;
    const TOP: f64 = 12.0;
    const HEIGHT: f64 = 220.0;
    const BOTTOM: f64 = 28.0;
    let right = WIDTH - 16.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let span = if span_s > 0.0 { span_s } else { 1.0 };
    let y_max_data = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let y_ticks = ticks(
        if y_max_data > 0.0 {
            y_max_data * 1.05
        } else {
            1.0
        },
        4,
    );
    let y_max = y_ticks
        .last()
        .copied()
        .filter(|m| *m >= y_max_data && *m > 0.0)
        .unwrap_or(y_max_data.max(1.0));
    let x = |t: f64| LEFT + (t.clamp(0.0, span) / span) * (right - LEFT);
    let y = |v: f64| TOP + plot_h - (v / y_max).clamp(0.0, 1.0) * plot_h;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg id="{id}" class="chart" data-points="{}" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        points.len(),
        esc(label)
    );
    for t in &y_ticks {
        let _ = write!(
            o,
            r#"<line class="grid" x1="{LEFT}" x2="{right}" y1="{0:.1}" y2="{0:.1}"/><text class="tick" x="{1}" y="{2:.1}" text-anchor="end">{3} {unit}</text>"#,
            y(*t),
            LEFT - 6.0,
            y(*t) + 4.0,
            tick_label(*t)
        );
    }
    for t in ticks(span, 8) {
        let _ = write!(
            o,
            r#"<text class="tick" x="{:.1}" y="{}" text-anchor="middle">{} s</text>"#,
            x(t),
            HEIGHT - 8.0,
            tick_label(t)
        );
    }
    let _ = write!(
        o,
        r#"<line class="axis" x1="{LEFT}" x2="{right}" y1="{0:.1}" y2="{0:.1}"/>"#,
        TOP + plot_h
    );
    if points.is_empty() {
        let _ = write!(
            o,
            r#"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle">no samples in this trace (the run was shorter than the sampling interval)</text>"#,
            (LEFT + right) / 2.0,
            TOP + plot_h / 2.0
        );
    } else {
        let coords: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let base = y(0.0);
        let _ = write!(
            o,
            r#"<polygon class="area" points="{:.1},{base:.1} {} {:.1},{base:.1}"/><polyline class="series" points="{}"><title>{}</title></polyline>"#,
            x(points[0].0),
            coords.join(" "),
            x(points[points.len() - 1].0),
            coords.join(" "),
            esc(label)
        );
        for (t, v) in points.iter().take(400) {
            let _ = write!(
                o,
                r#"<circle class="dot" cx="{:.1}" cy="{:.1}" r="2"><title>{t:.3} s: {} {unit}</title></circle>"#,
                x(*t),
                y(*v),
                tick_label((v * 10.0).round() / 10.0)
            );
        }
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(
            ticks(1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(ticks(100.0, 4), vec![0.0, 50.0, 100.0]);
        assert_eq!(ticks(0.0, 4), vec![0.0]);
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn timeline_places_bars_on_the_axis() {
        let bars = vec![Bar {
            depth: 0,
            label: "sh".into(),
            start_s: Some(0.5),
            end_s: Some(1.0),
            class: "ok".into(),
            tooltip: "sh".into(),
        }];
        let s = timeline(&bars, 1.0, 0);
        // LEFT 340, right 1084: 0.5 s is the middle.
        assert!(s.contains(r#"x="712.00""#), "{s}");
        assert!(s.contains(r#"width="372.00""#), "{s}");
    }
}
