//! A dry-run's plan as a timeline: the predicted capacity curve, waves and actions.

use immut_core::dry_run::{MarkKind, Plan};

use crate::timeline::{LimitsAt, Marker, MarkerKind, Row, Sample, Source, Timeline, WaveBand, duration};

/// The plan as a picture's timeline, captioned `title`.
pub fn timeline(plan: &Plan, title: impl Into<String>) -> Timeline {
    let end_ms = plan.expected_duration_ms.max(plan.capacity.last().map_or(0, |c| c.at_ms));
    let samples: Vec<Sample> = plan
        .capacity
        .iter()
        .map(|c| Sample { at_ms: c.at_ms, serving_healthy: c.serving_healthy, total: c.total })
        .collect();
    let waves = plan
        .waves
        .iter()
        .enumerate()
        .filter(|(_, w)| w.wave > 0)
        .map(|(n, w)| WaveBand {
            wave: w.wave,
            from_ms: w.launched_at_ms,
            to_ms: plan.waves.get(n + 1).map_or(end_ms, |next| next.launched_at_ms),
            launched: w.launched.len(),
            rollback: false,
        })
        .collect();
    let markers: Vec<Marker> = plan
        .marks
        .iter()
        .map(|m| {
            let (kind, what) = match m.kind {
                MarkKind::Launch => (MarkerKind::Launch, "launch"),
                MarkKind::Attach => (MarkerKind::Attach, "attach"),
                MarkKind::Detach => (MarkerKind::Detach, "detach"),
                MarkKind::Switch => (MarkerKind::Switch, "switch"),
                MarkKind::Terminate => (MarkerKind::Terminate, "terminate"),
                MarkKind::Rollback => (MarkerKind::Rollback, "rollback"),
            };
            let label = match m.kind {
                MarkKind::Rollback => what.to_owned(),
                _ => format!("wave {}: {what} {} instances", m.wave, m.count),
            };
            Marker { at_ms: m.at_ms, kind, label }
        })
        .collect();
    let events = markers
        .iter()
        .map(|m| Row { at_ms: m.at_ms, what: m.kind.name().to_owned(), detail: m.label.clone() })
        .collect();
    let o = &plan.outcome;
    let summary = vec![
        ("service".to_owned(), o.service.clone()),
        ("release".to_owned(), o.release.to_string()),
        ("replaces".to_owned(), o.previous.as_ref().map_or("nothing".to_owned(), |p| p.to_string())),
        ("predicted outcome".to_owned(), o.summary()),
        ("waves".to_owned(), plan.waves.len().to_string()),
        ("healthy floor".to_owned(), plan.floor.to_string()),
        ("surge ceiling".to_owned(), plan.ceiling.to_string()),
        ("expected duration".to_owned(), duration(plan.expected_duration_ms)),
        (
            "provider calls".to_owned(),
            format!(
                "{} launch, {} terminate, {} describe, {} attach, {} detach, {} switch",
                plan.calls.launch,
                plan.calls.terminate,
                plan.calls.describe,
                plan.calls.attach,
                plan.calls.detach,
                plan.calls.switch
            ),
        ),
    ];
    Timeline {
        title: title.into(),
        source: Source::Plan,
        samples,
        limits: vec![LimitsAt { at_ms: 0, floor: plan.floor, ceiling: plan.ceiling }],
        waves,
        markers,
        end_ms,
        summary,
        events,
    }
}
