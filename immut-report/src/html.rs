//! The report: one self-contained HTML file with the picture inline, the summary and the
//! events as a table. Every text is escaped, and nothing in it points outside the file (no
//! `src`, `href` or `url()`), so it opens in any browser with no network access.

use std::fmt::Write;

use immut_core::Result;

use crate::svg;
use crate::timeline::{Source, Timeline, duration};

/// `text` with the five characters that mean something in HTML and XML escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}\
h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f3f3f3}table.summary th{width:180px}td.num{text-align:right;white-space:nowrap}\
figure{margin:16px 0}p.note{color:#555;font-size:13px}";

/// The timeline as a self-contained HTML document.
pub fn render(timeline: &Timeline) -> Result<String> {
    let picture = svg::render(timeline)?;
    let mut s = String::new();
    let title = escape(&timeline.title);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    );
    let note = match timeline.source {
        Source::Plan => {
            "A dry-run: the same engine and strategy on the simulator, seeded from the live fleet. Times are predicted."
        }
        Source::Recorded => {
            "As recorded: the capacity curve is what the engine observed and journaled, never inferred from its actions."
        }
    };
    let _ = writeln!(s, "<p class=\"note\">{}</p>", escape(note));
    s.push_str("<table class=\"summary\">\n");
    for (name, value) in &timeline.summary {
        let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", escape(name), escape(value));
    }
    s.push_str("</table>\n<figure>\n");
    s.push_str(&picture);
    s.push_str("</figure>\n<h2>Events</h2>\n<table class=\"events\">\n<thead><tr><th>time</th><th>what</th><th>details</th></tr></thead>\n<tbody>\n");
    for row in &timeline.events {
        let _ = writeln!(
            s,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&duration(row.at_ms)),
            escape(&row.what),
            escape(&row.detail)
        );
    }
    s.push_str("</tbody>\n</table>\n</body>\n</html>\n");
    Ok(s)
}
