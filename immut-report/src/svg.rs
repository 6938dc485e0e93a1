//! The picture: a timeline as one SVG document.
//!
//! plotters' SVG backend draws the frame: the caption, the axes with their ticks and
//! descriptions, and the grid. It emits bare elements (no id, class or title), so the layers
//! a reader and a test must tell apart (the wave bands, the floor and ceiling, the two capacity
//! lines, the markers and the legend) are written here, in the same pixel coordinates as the
//! frame (read from plotters' own mapping), each with an `id` or a `class` and a `<title>` tooltip,
//! and added to the end of the document. The layer group carries the mapping as
//! `data-origin-x`, `data-origin-y` (the pixel of time 0 and 0 instances), `data-px-per-ms` and
//! `data-px-per-instance`, so a point's value can be read back from the picture itself.

use std::fmt::Write;

use immut_core::{Error, ErrorKind, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::html::escape;
use crate::timeline::{MarkerKind, Source, Timeline};

/// The picture's size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Default for Size {
    fn default() -> Self {
        Size { width: 1000, height: 500 }
    }
}

const LEGEND_WIDTH: u32 = 280;
const SERVING: &str = "#1f77b4";
const TOTAL: &str = "#6b6b6b";
const FLOOR: &str = "#d62728";
const CEILING: &str = "#e377c2";
const BAND: [&str; 2] = ["#2ca02c", "#17becf"];

/// The timeline as an SVG document of the default [`Size`].
pub fn render(timeline: &Timeline) -> Result<String> {
    render_sized(timeline, Size::default())
}

/// The timeline as an SVG document of `size`.
pub fn render_sized(timeline: &Timeline, size: Size) -> Result<String> {
    if size.width <= LEGEND_WIDTH + 200 || size.height < 240 {
        return Err(Error::invalid(
            "size",
            format!(
                "{}x{} is too small for a picture; give at least {}x240",
                size.width,
                size.height,
                LEGEND_WIDTH + 201
            ),
        ));
    }
    let minutes = timeline.end_ms > 10 * 60_000;
    let unit_ms = if minutes { 60_000.0 } else { 1000.0 };
    let x_max = (timeline.end_ms as f64 / unit_ms).max(0.001) * 1.02;
    let y_max = timeline.y_max();
    let y_top = (y_max + (y_max / 10).max(1)) as i32;
    let mut svg = String::new();
    let frame = {
        let root = SVGBackend::with_string(&mut svg, (size.width, size.height)).into_drawing_area();
        let frame = draw_frame(&root, timeline, size, x_max, y_top, minutes).map_err(plot_error)?;
        root.present().map_err(plot_error)?;
        frame
    };
    let map = Map {
        origin: frame.origin,
        px_per_ms: (frame.far.0 - frame.origin.0) / (x_max * unit_ms),
        px_per_instance: (frame.origin.1 - frame.far.1) / y_top as f64,
    };
    let layers = layers(timeline, &map, &frame, size);
    let close = svg.rfind("</svg>").ok_or_else(|| Error::new(ErrorKind::Other, "plotters wrote no closing </svg>"))?;
    svg.insert_str(close, &layers);
    Ok(svg)
}

/// Where plotters put the plot: the pixels of (0, 0) and of the far corner.
struct Frame {
    origin: (f64, f64),
    far: (f64, f64),
}

/// From time and instances to pixels.
struct Map {
    origin: (f64, f64),
    px_per_ms: f64,
    px_per_instance: f64,
}

impl Map {
    fn x(&self, at_ms: u64) -> f64 {
        self.origin.0 + at_ms as f64 * self.px_per_ms
    }

    fn y(&self, instances: usize) -> f64 {
        self.origin.1 - instances as f64 * self.px_per_instance
    }
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Other, format!("drawing the picture failed: {e}"))
}

fn draw_frame(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    timeline: &Timeline,
    size: Size,
    x_max: f64,
    y_top: i32,
    minutes: bool,
) -> std::result::Result<Frame, String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (plot, _legend) = root.split_horizontally(size.width - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot)
        .caption(&timeline.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(46)
        .y_label_area_size(58)
        .build_cartesian_2d(0f64..x_max, 0i32..y_top)
        .map_err(|e| e.to_string())?;
    let when = match timeline.source {
        Source::Plan => "predicted time since the start",
        Source::Recorded => "measured time since the deployment began",
    };
    let x_desc = format!("{when} ({})", if minutes { "minutes" } else { "seconds" });
    // Enough decimals that ten ticks over a short axis read apart (0.05, 0.10, ...).
    let decimals = (1 - x_max.log10().floor() as i32).clamp(0, 4) as usize;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("instances")
        .x_labels(10)
        .y_labels((y_top as usize + 1).min(11))
        .x_label_formatter(&|v| format!("{v:.decimals$}"))
        .max_light_lines(1)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    let origin = chart.backend_coord(&(0.0, 0));
    let far = chart.backend_coord(&(x_max, y_top));
    Ok(Frame { origin: (origin.0 as f64, origin.1 as f64), far: (far.0 as f64, far.1 as f64) })
}

/// The identifiable layers, as SVG text to insert before `</svg>`.
fn layers(t: &Timeline, map: &Map, frame: &Frame, size: Size) -> String {
    let mut s = String::new();
    let (top, bottom) = (frame.far.1, frame.origin.1);
    let _ = writeln!(
        s,
        r#"<g id="immut-layers" data-origin-x="{:.2}" data-origin-y="{:.2}" data-px-per-ms="{}" data-px-per-instance="{}">"#,
        map.origin.0, map.origin.1, map.px_per_ms, map.px_per_instance
    );
    s.push_str("<g id=\"waves\">\n");
    for (n, w) in t.waves.iter().enumerate() {
        let (x0, x1) = (map.x(w.from_ms), map.x(w.to_ms));
        let fill = if w.rollback { FLOOR } else { BAND[n % 2] };
        let what = if w.rollback { "relaunching the previous release" } else { "new instances" };
        let id = if w.rollback { format!("wave-rollback-{}", w.wave) } else { format!("wave-{}", w.wave) };
        let _ = writeln!(
            s,
            r#"<rect id="{id}" class="wave-band" data-wave="{}" x="{x0:.2}" y="{top:.2}" width="{:.2}" height="{:.2}" fill="{fill}" fill-opacity="0.10"><title>wave {}: {} {what}, {} to {}</title></rect>"#,
            w.wave,
            (x1 - x0).max(1.0),
            bottom - top,
            w.wave,
            w.launched,
            crate::timeline::duration(w.from_ms),
            crate::timeline::duration(w.to_ms),
        );
        let _ = writeln!(
            s,
            r#"<text class="wave-label" x="{:.2}" y="{:.2}" font-family="sans-serif" font-size="10" fill="{fill}">w{}</text>"#,
            x0 + 2.0,
            bottom - 4.0,
            w.wave
        );
    }
    // The limits are drawn over the lines, so their dashes show where a line runs along them.
    s.push_str("</g>\n<g id=\"series\">\n");
    let changes = t.changes();
    for (id, color, width, points, title) in [
        (
            "total",
            TOTAL,
            1.5,
            changes.iter().map(|c| (c.at_ms, c.total)).collect::<Vec<_>>(),
            "total live instances, any release",
        ),
        (
            "serving-healthy",
            SERVING,
            3.5,
            changes.iter().map(|c| (c.at_ms, c.serving_healthy)).collect(),
            "instances serving traffic and healthy",
        ),
    ] {
        let _ = writeln!(
            s,
            r#"<polyline id="{id}" class="series {id}" points="{}" fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"><title>{title}</title></polyline>"#,
            steps(&points, t.end_ms, map)
        );
    }
    s.push_str("</g>\n<g id=\"limits\">\n");
    let limits = |pick: fn(&crate::timeline::LimitsAt) -> usize| -> Vec<(u64, usize)> {
        t.limits.iter().map(|l| (l.at_ms, pick(l))).collect()
    };
    for (id, color, points, title) in [
        ("floor", FLOOR, limits(|l| l.floor), "healthy floor: serving-healthy instances must never go below it"),
        ("ceiling", CEILING, limits(|l| l.ceiling), "surge ceiling: live instances must never go above it"),
    ] {
        let _ = writeln!(
            s,
            r#"<polyline id="{id}" class="limit {id}" points="{}" fill="none" stroke="{color}" stroke-width="1.2" stroke-dasharray="7 4"><title>{title}</title></polyline>"#,
            steps(&points, t.end_ms, map)
        );
    }
    s.push_str("</g>\n<g id=\"markers\">\n");
    let mut last_x = f64::NEG_INFINITY;
    let mut stack = 0.0;
    for (n, m) in t.markers.iter().enumerate() {
        let x = map.x(m.at_ms);
        stack = if x - last_x < 7.0 { stack + 11.0 } else { 0.0 };
        if stack > (bottom - top) / 2.0 {
            stack = 0.0;
        }
        last_x = x;
        let y = top + 8.0 + stack;
        let _ = writeln!(
            s,
            r#"<g id="marker-{n}" class="marker {}" data-at-ms="{}"><title>{}</title><line x1="{x:.2}" y1="{top:.2}" x2="{x:.2}" y2="{bottom:.2}" stroke="{}" stroke-width="0.8" stroke-opacity="0.45" stroke-dasharray="2 3"/>{}</g>"#,
            m.kind.name(),
            m.at_ms,
            escape(&format!("{} at {}", m.label, crate::timeline::duration(m.at_ms))),
            symbol_color(m.kind),
            symbol(m.kind, x, y)
        );
    }
    s.push_str("</g>\n");
    s.push_str(&legend(t, size, top));
    s.push_str("</g>\n");
    s
}

/// A step line through `points` (each value holds until the next point), to `end_ms`.
fn steps(points: &[(u64, usize)], end_ms: u64, map: &Map) -> String {
    let mut out = String::new();
    for (n, &(at, v)) in points.iter().enumerate() {
        let next = points.get(n + 1).map_or(end_ms.max(at), |p| p.0);
        let _ = write!(out, "{:.2},{:.2} {:.2},{:.2} ", map.x(at), map.y(v), map.x(next), map.y(v));
    }
    out.trim_end().to_owned()
}

fn symbol_color(kind: MarkerKind) -> &'static str {
    match kind {
        MarkerKind::Launch => "#2ca02c",
        MarkerKind::Attach | MarkerKind::Detach => SERVING,
        MarkerKind::Switch => "#9467bd",
        MarkerKind::Terminate => "#444444",
        MarkerKind::Measurement { passed: true } => "#2ca02c",
        MarkerKind::Measurement { passed: false } | MarkerKind::Rollback | MarkerKind::Failed => "#d62728",
        MarkerKind::Interrupted => "#000000",
    }
}

/// The marker's symbol centred on (x, y).
fn symbol(kind: MarkerKind, x: f64, y: f64) -> String {
    let c = symbol_color(kind);
    match kind {
        MarkerKind::Launch => {
            format!(
                r#"<path d="M{x:.2},{:.2} L{:.2},{:.2} L{:.2},{:.2} Z" fill="{c}"/>"#,
                y - 5.0,
                x + 5.0,
                y + 4.0,
                x - 5.0,
                y + 4.0
            )
        }
        MarkerKind::Failed => {
            format!(
                r#"<path d="M{x:.2},{:.2} L{:.2},{:.2} L{:.2},{:.2} Z" fill="{c}"/>"#,
                y + 5.0,
                x + 5.0,
                y - 4.0,
                x - 5.0,
                y - 4.0
            )
        }
        MarkerKind::Switch => format!(
            r#"<path d="M{x:.2},{:.2} L{:.2},{y:.2} L{x:.2},{:.2} L{:.2},{y:.2} Z" fill="{c}"/>"#,
            y - 6.0,
            x + 6.0,
            y + 6.0,
            x - 6.0
        ),
        MarkerKind::Attach => format!(r#"<circle cx="{x:.2}" cy="{y:.2}" r="4" fill="{c}"/>"#),
        MarkerKind::Detach => {
            format!(r#"<circle cx="{x:.2}" cy="{y:.2}" r="4" fill="white" stroke="{c}" stroke-width="1.5"/>"#)
        }
        MarkerKind::Terminate => format!(
            r#"<path d="M{:.2},{:.2} L{:.2},{:.2} M{:.2},{:.2} L{:.2},{:.2}" stroke="{c}" stroke-width="2"/>"#,
            x - 4.0,
            y - 4.0,
            x + 4.0,
            y + 4.0,
            x - 4.0,
            y + 4.0,
            x + 4.0,
            y - 4.0
        ),
        MarkerKind::Measurement { .. } => {
            format!(r#"<circle cx="{x:.2}" cy="{y:.2}" r="4.5" fill="{c}" stroke="white" stroke-width="1"/>"#)
        }
        MarkerKind::Rollback => {
            format!(r#"<rect x="{:.2}" y="{:.2}" width="10" height="10" fill="{c}"/>"#, x - 5.0, y - 5.0)
        }
        MarkerKind::Interrupted => format!(
            r#"<rect x="{:.2}" y="{:.2}" width="4" height="12" fill="{c}"/><rect x="{:.2}" y="{:.2}" width="4" height="12" fill="{c}"/>"#,
            x - 5.0,
            y - 6.0,
            x + 1.0,
            y - 6.0
        ),
    }
}

/// What a legend entry shows beside its words.
enum Key {
    Line(&'static str, f64, bool),
    Band,
    Symbol(MarkerKind),
}

/// The key, right of the plot: the lines, the band and every kind of marker the picture has.
fn legend(t: &Timeline, size: Size, top: f64) -> String {
    let x = (size.width - LEGEND_WIDTH) as f64 + 8.0;
    let mut y = top + 4.0;
    let mut s = String::from("<g id=\"legend\" font-family=\"sans-serif\" font-size=\"12\">\n");
    let _ = writeln!(s, r#"<text x="{x:.2}" y="{y:.2}" font-weight="bold">Key</text>"#);
    let mut entries: Vec<(Key, &str, &str)> = vec![
        (Key::Line(SERVING, 3.5, false), "serving and healthy", "serving-healthy"),
        (Key::Line(TOTAL, 1.5, false), "total live instances", "total"),
        (Key::Line(FLOOR, 1.5, true), "healthy floor (never below)", "floor"),
        (Key::Line(CEILING, 1.5, true), "surge ceiling (never above)", "ceiling"),
        (Key::Band, "one wave: its launch to the next", "wave-band"),
    ];
    for kind in MarkerKind::all() {
        if t.markers.iter().any(|m| m.kind == kind) {
            entries.push((Key::Symbol(kind), kind.legend(), kind.name()));
        }
    }
    for (key, text, class) in entries {
        y += 20.0;
        let sample = match key {
            Key::Line(color, width, dashed) => format!(
                r#"<line x1="{x:.2}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}" stroke="{color}" stroke-width="{width}"{}/>"#,
                x + 22.0,
                if dashed { r#" stroke-dasharray="7 4""# } else { "" }
            ),
            Key::Band => format!(
                r#"<rect x="{x:.2}" y="{:.2}" width="22" height="12" fill="{}" fill-opacity="0.25"/>"#,
                y - 6.0,
                BAND[0]
            ),
            Key::Symbol(kind) => symbol(kind, x + 11.0, y),
        };
        let _ = writeln!(
            s,
            r#"<g class="legend-entry {class}">{sample}<text x="{:.2}" y="{:.2}">{}</text></g>"#,
            x + 30.0,
            y + 4.0,
            escape(text)
        );
    }
    y += 30.0;
    let note = match t.source {
        Source::Plan => "Times are predictions under the plan's latencies.",
        Source::Recorded => "Only what the journal recorded is drawn.",
    };
    let _ = writeln!(s, r#"<text x="{x:.2}" y="{y:.2}" font-size="11" fill="{TOTAL}">{}</text>"#, escape(note));
    s.push_str("</g>\n");
    s
}
