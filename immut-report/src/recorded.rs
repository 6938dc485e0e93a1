//! A deployment as its journal and the ledger recorded it, as a timeline.
//!
//! Only what was recorded is drawn: the capacity curve is the engine's journaled observations
//! (`observed` records), never one inferred from the actions, so a picture of a finished,
//! failed or interrupted deployment can be drawn afterwards on any machine that reads the same
//! state. An interrupted deployment (a `begin` and no `end`) shows where its record stops.

use std::collections::HashMap;

use immut_core::analysis::MeasurementPhase;
use immut_core::journal::{JournalEntry, JournalRecord};
use immut_core::ledger::LedgerEntry;
use immut_core::{Decision, DeploymentId, Error, Result};

use crate::timeline::{LimitsAt, Marker, MarkerKind, Row, Sample, Source, Timeline, WaveBand, duration};

/// The deployment of `records` named `deployment`, or the last one that began, as a timeline.
/// `ledger` is its ledger entry, when it finished and one exists. Fails naming `deployment`
/// when the records hold no beginning of it.
pub fn timeline(
    records: &[JournalRecord],
    deployment: Option<&DeploymentId>,
    ledger: Option<&LedgerEntry>,
) -> Result<Timeline> {
    let begun = |r: &&JournalRecord| matches!(r.entry, JournalEntry::Begin { .. });
    let begin = match deployment {
        Some(id) => records.iter().filter(begun).find(|r| &r.deployment == id).ok_or_else(|| {
            Error::invalid(
                "deployment",
                format!("the journal holds no deployment {id}; `immut history` lists the finished ones"),
            )
        })?,
        None => records.iter().rfind(begun).ok_or_else(|| {
            Error::invalid("deployment", "the journal holds no deployment yet; deploy first, or name one")
        })?,
    };
    let id = begin.deployment.clone();
    let mine: Vec<&JournalRecord> = records.iter().filter(|r| r.deployment == id).collect();
    let t0 = begin.at_ms;
    let at = |r: &JournalRecord| r.at_ms.saturating_sub(t0);
    let mut b = Builder::default();
    if let JournalEntry::Begin { release, previous, previous_count, desired, strategy, initial_total, .. } =
        &begin.entry
    {
        b.summary.push(("service".to_owned(), release.service().to_owned()));
        b.summary.push(("deployment".to_owned(), id.to_string()));
        b.summary.push(("release".to_owned(), release.id().to_string()));
        let replaced = previous.as_ref().map_or("nothing".to_owned(), |p| format!("{p} ({previous_count} serving)"));
        b.summary.push(("replaces".to_owned(), replaced));
        b.summary.push(("strategy".to_owned(), strategy.clone()));
        b.summary.push(("desired".to_owned(), desired.to_string()));
        b.summary.push(("live at the start".to_owned(), initial_total.to_string()));
    }
    let mut open: HashMap<u64, Decision> = HashMap::new();
    let mut ended = None;
    for r in &mine {
        let t = at(r);
        match &r.entry {
            JournalEntry::Begin { release, .. } => b.row(t, "begin", format!("deploying {}", release.id())),
            JournalEntry::Observed(o) => {
                b.samples.push(Sample { at_ms: t, serving_healthy: o.serving_healthy, total: o.total });
                if b.limits.last().is_none_or(|l| (l.floor, l.ceiling) != (o.floor, o.ceiling)) {
                    b.limits.push(LimitsAt { at_ms: t, floor: o.floor, ceiling: o.ceiling });
                }
                b.row(
                    t,
                    "observed",
                    format!(
                        "step {}: {} serving healthy, {} serving, {} live (floor {}, ceiling {})",
                        o.step, o.serving_healthy, o.serving, o.total, o.floor, o.ceiling
                    ),
                );
            }
            JournalEntry::Intent { step, launch: Some(l), .. } => {
                match b.waves.iter_mut().find(|w| w.wave == l.wave && w.rollback == l.rollback) {
                    Some(w) => w.launched += l.count,
                    None => b.waves.push(WaveBand {
                        wave: l.wave,
                        from_ms: t,
                        to_ms: t,
                        launched: l.count,
                        rollback: l.rollback,
                    }),
                }
                let what = if l.rollback { "relaunch of the previous release" } else { "launch" };
                let label = format!("wave {}: {what} of {} instances (step {step})", l.wave, l.count);
                b.mark(t, MarkerKind::Launch, label.clone());
                b.row(t, "launch", label);
            }
            JournalEntry::Intent { step, decision, launch: None } => {
                open.insert(*step, decision.clone());
            }
            JournalEntry::Applied { step, ids, .. } => {
                if let Some(decision) = open.remove(step) {
                    let (kind, label) = applied(&decision);
                    if let Some(kind) = kind {
                        b.mark(t, kind, label.clone());
                    }
                    b.row(t, decision.kind(), label);
                } else if !ids.is_empty() {
                    b.row(t, "launched", format!("{} instances: {}", ids.len(), short(ids)));
                }
            }
            JournalEntry::Failed { step, error, .. } => {
                let what = open.remove(step).map_or("launch", |d| d.kind());
                let label = format!("{what} failed (step {step}): {error}");
                b.mark(t, MarkerKind::Failed, label.clone());
                b.row(t, "failed", label);
            }
            JournalEntry::GatePassed { gate } => b.row(t, "gate", format!("{gate} passed")),
            JournalEntry::Measured(m) => {
                let value = m.value.map_or(String::new(), |v| format!(" {v}"));
                let label = format!("{} {} #{}: {}{value} ({})", m.gate, m.metric, m.index, m.phase, m.message);
                // Inconclusive and error readings decide nothing on their own: listed, not marked.
                let passed = match m.phase {
                    MeasurementPhase::Successful => Some(true),
                    MeasurementPhase::Failed => Some(false),
                    MeasurementPhase::Inconclusive | MeasurementPhase::Error => None,
                };
                if let Some(passed) = passed {
                    b.mark(t, MarkerKind::Measurement { passed }, label.clone());
                }
                b.row(t, "measure", label);
            }
            JournalEntry::RollingBack { reason } => {
                b.mark(t, MarkerKind::Rollback, format!("rollback began: {reason}"));
                b.row(t, "rollback", reason.clone());
            }
            JournalEntry::End { outcome } => {
                ended = Some((t, outcome.summary()));
                b.row(t, "end", outcome.summary());
            }
        }
    }
    let last = mine.iter().map(|r| at(r)).max().unwrap_or(0);
    let end_ms = ended.as_ref().map_or(last, |(t, _)| *t);
    match &ended {
        Some((_, summary)) => b.summary.push(("outcome".to_owned(), summary.clone())),
        None => {
            b.mark(last, MarkerKind::Interrupted, "the journal ends here: no end is recorded".to_owned());
            b.summary.push((
                "outcome".to_owned(),
                "interrupted: no end is recorded (`immut resume` continues it, or rolls it back)".to_owned(),
            ));
        }
    }
    b.summary.push(("duration".to_owned(), duration(end_ms)));
    if let Some(entry) = ledger.filter(|e| e.deployment == id) {
        b.summary.push(("ledger entry".to_owned(), format!("#{} (hash {})", entry.seq, short_hash(&entry.hash))));
        b.summary.push(("baseline fingerprint".to_owned(), entry.baseline_fingerprint.clone()));
        if let Some(digest) = &entry.artifact_digest {
            b.summary.push(("artifact digest".to_owned(), digest.clone()));
        }
    }
    let mut waves = b.waves;
    waves.sort_by_key(|w| w.from_ms);
    for n in 0..waves.len() {
        waves[n].to_ms = waves.get(n + 1).map_or(end_ms, |next| next.from_ms).max(waves[n].from_ms);
    }
    let title = match &begin.entry {
        JournalEntry::Begin { release, strategy, .. } => format!(
            "{}: deployment {id} of {}@{} ({strategy}), as recorded",
            release.service(),
            release.artifact().name,
            release.artifact().version
        ),
        _ => format!("deployment {id}, as recorded"),
    };
    Ok(Timeline {
        title,
        source: Source::Recorded,
        samples: b.samples,
        limits: b.limits,
        waves,
        markers: b.markers,
        end_ms,
        summary: b.summary,
        events: b.rows,
    })
}

#[derive(Default)]
struct Builder {
    samples: Vec<Sample>,
    limits: Vec<LimitsAt>,
    waves: Vec<WaveBand>,
    markers: Vec<Marker>,
    summary: Vec<(String, String)>,
    rows: Vec<Row>,
}

impl Builder {
    fn mark(&mut self, at_ms: u64, kind: MarkerKind, label: String) {
        self.markers.push(Marker { at_ms, kind, label });
    }

    fn row(&mut self, at_ms: u64, what: &str, detail: String) {
        self.rows.push(Row { at_ms, what: what.to_owned(), detail });
    }
}

/// The marker and the words for a completed traffic change or termination.
fn applied(decision: &Decision) -> (Option<MarkerKind>, String) {
    match decision {
        Decision::Switch { attach, detach } => (
            Some(MarkerKind::Switch),
            format!("traffic switched to {} instances from {}: {}", attach.len(), detach.len(), short(attach)),
        ),
        Decision::Attach { ids } => {
            (Some(MarkerKind::Attach), format!("{} instances start serving: {}", ids.len(), short(ids)))
        }
        Decision::Detach { ids } => {
            (Some(MarkerKind::Detach), format!("{} instances stop serving: {}", ids.len(), short(ids)))
        }
        Decision::Terminate { ids } => {
            (Some(MarkerKind::Terminate), format!("{} instances terminated: {}", ids.len(), short(ids)))
        }
        other => (None, other.kind().to_owned()),
    }
}

fn short(ids: &[immut_core::InstanceId]) -> String {
    let mut s = ids.iter().take(4).map(|i| i.as_str()).collect::<Vec<_>>().join(", ");
    if ids.len() > 4 {
        s.push_str(&format!(", +{}", ids.len() - 4));
    }
    s
}

fn short_hash(hash: &str) -> &str {
    &hash[..hash.len().min(16)]
}
