//! What a watch finds: the audit's verdicts, plus the fleet's count against the desired one,
//! turned into findings with a stable key and what the watch does about each.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditReport, Verdict};
use crate::model::{InstanceId, Release};

/// What a watch does about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingAction {
    /// Replaced by a repair deployment of the serving release (or, for missing capacity,
    /// restored by one).
    Replace,
    /// Taken out without a replacement: a traffic target no instance answers for, or an
    /// unmanaged instance the settings say to terminate.
    Remove,
    /// Reported only.
    Report,
}

/// One finding of a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchFinding {
    /// Stable across cycles and restarts: the kind and the instance (`unhealthy:i-0a1`), or
    /// `missing_capacity`.
    pub key: String,
    /// The audit's verdict name (`unhealthy`, `wrong_artifact`, `tampered`, `unrecorded`,
    /// `orphaned`, `unmanaged`, ...), or `missing_capacity`, or `vanished` (a traffic target
    /// that no instance answers for: the instance is gone, its target stayed).
    pub kind: String,
    /// The instance, for per-instance findings.
    pub instance: Option<InstanceId>,
    /// What was found, in words.
    pub detail: String,
    /// Whether the instance received traffic when it was found.
    pub serving: bool,
    /// What the watch does about it.
    pub action: FindingAction,
    /// When it was first seen, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

impl fmt::Display for WatchFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.action {
            FindingAction::Replace => "replace",
            FindingAction::Remove => "remove",
            FindingAction::Report => "report only",
        };
        match &self.instance {
            Some(id) => write!(f, "{} {id}: {} ({what})", self.kind, self.detail),
            None => write!(f, "{}: {} ({what})", self.kind, self.detail),
        }
    }
}

/// What a watch does with instances launched outside immut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmanagedAction {
    /// Reports them (the default).
    #[default]
    Report,
    /// Replaces them through a repair deployment: drained, then terminated once the fleet
    /// holds its desired count of the serving release.
    Replace,
    /// Detaches and terminates them outright, while the serving release alone holds the
    /// healthy floor.
    Terminate,
}

/// Which unmanaged instances a watch may act on: never more than the service's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmanagedScope {
    /// Only those that receive the service's traffic (the default).
    #[default]
    Serving,
    /// Also those the provider attributes to the service that receive no traffic (for the
    /// local provider: copies of the service's executable started by hand).
    Service,
}

/// How findings are classified.
pub(crate) struct Rules {
    pub desired: usize,
    pub unmanaged: UnmanagedAction,
    pub scope: UnmanagedScope,
}

/// The findings of one audit, sorted by key, and how many instances of `expected` are there.
pub(crate) fn classify(
    report: &AuditReport,
    expected: &Release,
    vanished: &HashSet<InstanceId>,
    rules: &Rules,
    now_ms: u64,
) -> Vec<WatchFinding> {
    let mut out = Vec::new();
    for f in &report.findings {
        let (kind, action, detail) = match &f.verdict {
            Verdict::Ok => continue,
            Verdict::Unmanaged if vanished.contains(&f.id) => (
                "vanished".to_owned(),
                FindingAction::Remove,
                "receives traffic, but no instance answers for it".to_owned(),
            ),
            Verdict::Unmanaged => {
                let in_scope = f.serving || rules.scope == UnmanagedScope::Service;
                let action = match rules.unmanaged {
                    _ if !in_scope => FindingAction::Report,
                    UnmanagedAction::Report => FindingAction::Report,
                    UnmanagedAction::Replace => FindingAction::Replace,
                    UnmanagedAction::Terminate => FindingAction::Remove,
                };
                let detail = if f.serving { "launched outside immut, serving" } else { "launched outside immut" };
                ("unmanaged".to_owned(), action, detail.to_owned())
            }
            v if v.is_report_only() => (v.name().to_owned(), FindingAction::Report, v.detail()),
            v => (v.name().to_owned(), FindingAction::Replace, v.detail()),
        };
        out.push(WatchFinding {
            key: format!("{kind}:{}", f.id),
            kind,
            instance: Some(f.id.clone()),
            detail,
            serving: f.serving,
            action,
            since_ms: now_ms,
        });
    }
    let present = present(report, expected);
    if present < rules.desired {
        out.push(WatchFinding {
            key: "missing_capacity".to_owned(),
            kind: "missing_capacity".to_owned(),
            instance: None,
            detail: format!("{present} of {} instances of {} are there", rules.desired, expected.id()),
            serving: false,
            action: FindingAction::Replace,
            since_ms: now_ms,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Instances of `expected` that are there: healthy, unhealthy (not replaced yet), or launched
/// before the journal recorded ids (reported only).
pub(crate) fn present(report: &AuditReport, expected: &Release) -> usize {
    report
        .findings
        .iter()
        .filter(|f| f.release.as_ref() == Some(expected.id()))
        .filter(|f| matches!(f.verdict, Verdict::Ok | Verdict::Unhealthy { .. }) || f.verdict.is_report_only())
        .count()
}

/// The order in which a rate-bounded cycle repairs: what lost capacity first, then drift and
/// forged provenance, then orphans and unmanaged instances.
pub(crate) fn priority(kind: &str) -> u8 {
    match kind {
        "unhealthy" => 0,
        "wrong_artifact" | "wrong_baseline" | "tampered" | "unrecorded" => 1,
        "orphaned" => 2,
        _ => 3,
    }
}
