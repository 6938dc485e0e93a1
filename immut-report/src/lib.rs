//! # immut-report
//!
//! Pictures of a plan and of a deployment: instances over time, serving-healthy and total,
//! against the healthy floor and the surge ceiling, one shaded band per wave, and markers for
//! launches, switches, terminations, rollbacks and analysis measurements. A picture is an SVG
//! document ([`svg`]); a report is one self-contained HTML file with the picture, a summary
//! and the events as a table ([`html`]).
//!
//! Both draw a [`Timeline`], made from a dry-run's [`Plan`](immut_core::dry_run::Plan)
//! ([`plan::timeline`]) or from a deployment's journal records and ledger entry
//! ([`recorded::timeline`]: only the observations the engine journaled are plotted).
//!
//! ```
//! use immut_report::{Sample, LimitsAt, Source, Timeline};
//!
//! let timeline = Timeline {
//!     title: "web: 2 instances".into(),
//!     source: Source::Recorded,
//!     samples: vec![
//!         Sample { at_ms: 0, serving_healthy: 2, total: 2 },
//!         Sample { at_ms: 4_000, serving_healthy: 2, total: 4 },
//!     ],
//!     limits: vec![LimitsAt { at_ms: 0, floor: 2, ceiling: 4 }],
//!     waves: vec![],
//!     markers: vec![],
//!     end_ms: 8_000,
//!     summary: vec![],
//!     events: vec![],
//! };
//! let svg = immut_report::svg::render(&timeline)?;
//! assert!(svg.contains(r#"id="floor""#));
//! let html = immut_report::html::render(&timeline)?;
//! assert!(html.starts_with("<!DOCTYPE html>"));
//! # Ok::<(), immut_core::Error>(())
//! ```

pub mod html;
pub mod plan;
pub mod recorded;
pub mod svg;
pub mod timeline;

pub use timeline::{LimitsAt, Marker, MarkerKind, Row, Sample, Source, Timeline, WaveBand};
