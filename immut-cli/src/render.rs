//! Tables for people: the plan, the status, the history.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use immut::dry_run::Plan;
use immut::journal::Interrupted;
use immut::ledger::{LedgerEntry, WatchNote};
use immut::{DeploymentId, Instance, InstanceId, Phase, Release};
use serde::Serialize;

use crate::spec::Spec;

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0).floor() as u64, (s % 60.0).round() as u64)
    } else {
        format!("{s:.1}s")
    }
}

fn ids(ids: &[InstanceId]) -> String {
    let mut s = ids.iter().take(4).map(|i| i.as_str()).collect::<Vec<_>>().join(", ");
    if ids.len() > 4 {
        let _ = write!(s, ", +{}", ids.len() - 4);
    }
    s
}

/// The plan as a readable report.
pub fn plan(spec: &Spec, release: &Release, plan: &Plan) -> String {
    let mut out = String::new();
    let o = &plan.outcome;
    let _ = writeln!(out, "plan for {release}");
    let _ = writeln!(
        out,
        "strategy {}, desired {}, from {}",
        spec.strategy.build().name(),
        spec.desired,
        o.previous.as_ref().map_or("nothing".to_owned(), |p| p.to_string())
    );
    let b = release.baseline();
    let _ = writeln!(
        out,
        "baseline {}@{}: {}",
        b.name,
        b.version,
        if b.spec.sealed {
            "sealed (launched with no interactive way in; the audit flags one opened later)"
        } else {
            "not sealed (baseline.sealed = true closes keys, consoles and agents)"
        }
    );
    let how = match &o.phase {
        Phase::Succeeded => "succeeds".to_owned(),
        Phase::Refused { reason } => format!("is REFUSED: {reason}"),
        Phase::RolledBack { reason } => format!("ROLLS BACK: {reason}"),
        Phase::NoWayBack { reason } => format!("STOPS before the point of no return: {reason}"),
        other => format!("ends {other:?}"),
    };
    if let Some(r) = &plan.readiness {
        let _ = match (&r.readiness.blocking, r.readiness.checked) {
            (Some(why), _) => writeln!(out, "way back: NONE, {} can no longer be launched: {why}", r.release),
            (None, true) => writeln!(out, "way back: {} can be launched again", r.release),
            (None, false) => {
                writeln!(out, "way back: unknown, the provider cannot tell whether {} launches", r.release)
            }
        };
        for w in &r.readiness.warnings {
            let _ = writeln!(out, "way back: warning: {w}");
        }
        if let Some(room) = r.readiness.room {
            let _ = writeln!(out, "way back: room for {room} instances under the quota");
        }
    }
    for a in &plan.analysis {
        let _ = writeln!(
            out,
            "analysis: at {} ({} in), at least {} (the expected time below leaves it out)",
            a.gate,
            secs(Duration::from_millis(a.at_ms)),
            secs(Duration::from_millis(a.min_duration_ms))
        );
    }
    let _ = writeln!(
        out,
        "expected: {how} in {} ({} waves, {} steps)\n",
        secs(Duration::from_millis(plan.expected_duration_ms)),
        plan.waves.len(),
        o.steps
    );
    let _ = writeln!(out, "{:<5} {:<9} {:<9} {:<11} LAUNCHED", "WAVE", "ATTACHED", "DETACHED", "TERMINATED");
    for w in &plan.waves {
        let _ = writeln!(
            out,
            "{:<5} {:<9} {:<9} {:<11} {} [{}]",
            w.wave,
            w.attached.len(),
            w.detached.len(),
            w.terminated.len(),
            w.launched.len(),
            ids(&w.launched)
        );
    }
    let _ = writeln!(out, "\ncapacity (serving healthy / live, at each change):");
    let mut last = None;
    let mut points = Vec::new();
    for c in &plan.capacity {
        if last != Some((c.serving_healthy, c.total)) {
            points.push(format!("{} {}/{}", secs(Duration::from_millis(c.at_ms)), c.serving_healthy, c.total));
            last = Some((c.serving_healthy, c.total));
        }
    }
    let _ = writeln!(out, "  {}", points.join("  "));
    let c = &plan.calls;
    let _ = writeln!(
        out,
        "\ncalls: launch {}, terminate {}, attach {}, detach {}, switch {}, describe {}, serving {}, health {}",
        c.launch, c.terminate, c.attach, c.detach, c.switch, c.describe, c.serving, c.health
    );
    let l = &plan.latencies;
    let _ = write!(
        out,
        "assumed latencies ([plan] in the spec): api {}, launch to running {}, boot to healthy {}, drain {}",
        humantime::format_duration(l.api),
        humantime::format_duration(l.launch_to_running),
        humantime::format_duration(l.boot_to_healthy),
        humantime::format_duration(l.drain)
    );
    out
}

/// Live instances of one release.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseCount {
    /// The release (`unmanaged` for instances without provenance).
    pub release: String,
    /// Its artifact version.
    pub version: Option<String>,
    /// Live instances.
    pub live: usize,
    /// Of those, serving.
    pub serving: usize,
    /// The instances.
    pub instances: Vec<InstanceId>,
}

/// A deployment that began and has not ended.
#[derive(Debug, Clone, Serialize)]
pub struct InFlightReport {
    /// Its id.
    pub deployment: DeploymentId,
    /// Whether it was rolling back.
    pub rolling_back: bool,
    /// Whether a process still holds the service's lock for it (if not, it died: resume it).
    pub running: bool,
}

/// What `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Service.
    pub service: String,
    /// Provider kind.
    pub provider: String,
    /// Desired count.
    pub desired: usize,
    /// The release serving most.
    pub serving_release: Option<String>,
    /// The spec's release.
    pub spec_release: Option<String>,
    /// The ledger's last successful deployment.
    pub last_success: Option<String>,
    /// Live instances by release.
    pub releases: Vec<ReleaseCount>,
    /// A deployment in flight, or interrupted.
    pub in_flight: Option<InFlightReport>,
    /// The deployment that holds the service's lock.
    pub lock_holder: Option<DeploymentId>,
    /// Gates of the deployment in flight that wait for `immut promote`.
    pub awaiting_approval: Vec<crate::approval::Waiting>,
}

impl StatusReport {
    /// Builds the report from what was read.
    pub fn new(
        spec: &Spec,
        spec_release: Option<&Release>,
        live: &[Instance],
        serving: &[InstanceId],
        interrupted: Option<&Interrupted>,
        holder: Option<&DeploymentId>,
        current: Option<&LedgerEntry>,
    ) -> StatusReport {
        let mut by: BTreeMap<String, ReleaseCount> = BTreeMap::new();
        for i in live {
            let key = i.release().map_or("unmanaged".to_owned(), |r| r.to_string());
            let entry = by.entry(key.clone()).or_insert_with(|| ReleaseCount {
                release: key,
                version: i.provenance.as_ref().map(|p| p.artifact_version.to_string()),
                live: 0,
                serving: 0,
                instances: Vec::new(),
            });
            entry.live += 1;
            entry.serving += usize::from(serving.contains(&i.id));
            entry.instances.push(i.id.clone());
        }
        let releases: Vec<ReleaseCount> = by.into_values().collect();
        let serving_release = releases
            .iter()
            .filter(|r| r.serving > 0 && r.release != "unmanaged")
            .max_by_key(|r| r.serving)
            .map(|r| r.release.clone());
        StatusReport {
            service: spec.service.clone(),
            provider: spec.provider.kind().to_owned(),
            desired: spec.desired,
            serving_release,
            spec_release: spec_release.map(|r| r.id().to_string()),
            last_success: current.map(|e| e.release.id().to_string()),
            releases,
            in_flight: interrupted.map(|i| InFlightReport {
                deployment: i.deployment.clone(),
                rolling_back: i.rolling_back.is_some(),
                running: holder == Some(&i.deployment),
            }),
            lock_holder: holder.cloned(),
            awaiting_approval: Vec::new(),
        }
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "service {} on {}, desired {}", self.service, self.provider, self.desired);
        let _ = writeln!(out, "serving release   {}", self.serving_release.as_deref().unwrap_or("none"));
        let _ =
            writeln!(out, "last success      {}", self.last_success.as_deref().unwrap_or("none (the ledger is empty)"));
        let _ = writeln!(out, "spec release      {}", self.spec_release.as_deref().unwrap_or("-"));
        let _ = writeln!(out, "{:<20} {:<10} {:<5} {:<8} INSTANCES", "RELEASE", "VERSION", "LIVE", "SERVING");
        for r in &self.releases {
            let _ = writeln!(
                out,
                "{:<20} {:<10} {:<5} {:<8} {}",
                r.release,
                r.version.as_deref().unwrap_or("-"),
                r.live,
                r.serving,
                ids(&r.instances)
            );
        }
        if self.releases.is_empty() {
            let _ = writeln!(out, "(no live instances)");
        }
        let flight = match &self.in_flight {
            None => "none".to_owned(),
            Some(f) if f.running => {
                format!("deployment {} is running{}", f.deployment, if f.rolling_back { ", rolling back" } else { "" })
            }
            Some(f) => format!(
                "deployment {} was interrupted{} (its process died): run `immut resume`",
                f.deployment,
                if f.rolling_back { " while rolling back" } else { "" }
            ),
        };
        let _ = writeln!(out, "in flight         {flight}");
        for w in &self.awaiting_approval {
            let _ = writeln!(
                out,
                "awaiting approval gate {} of deployment {} since {}: run `{}` to go on or `{}` to roll back",
                w.gate,
                w.deployment,
                time(w.since_ms),
                crate::approval::APPROVE,
                crate::approval::REJECT
            );
        }
        let _ = write!(
            out,
            "lock held by      {}",
            self.lock_holder.as_ref().map_or("nobody".to_owned(), |d| d.to_string())
        );
        out
    }
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The ledger of one service as a table.
pub fn history(service: &str, entries: &[LedgerEntry]) -> String {
    let mut out = format!("history of {service}\n");
    let _ = writeln!(
        out,
        "{:<4} {:<14} {:<19} {:<9} {:<11} {:<12} {:<21} DURATION",
        "SEQ", "DEPLOYMENT", "RELEASE", "VERSION", "STRATEGY", "OUTCOME", "STARTED"
    );
    let mut notes = 0;
    for e in entries {
        if let Some(note) = &e.watch {
            // A watch's note is no deployment: one line saying what it saw.
            notes += 1;
            let (what, finding) = match note {
                WatchNote::FindingOpened { finding } => ("FINDING", finding),
                WatchNote::FindingClosed { finding } => ("closed", finding),
            };
            let _ =
                writeln!(out, "{:<4} {:<14} {what} {finding}  {}", e.seq, e.deployment.as_str(), time(e.ended_at_ms));
            continue;
        }
        let outcome = match &e.outcome {
            Phase::Succeeded => "succeeded",
            Phase::RolledBack { .. } => "rolled_back",
            Phase::RollbackFailed { .. } => "ROLLBACK_FAILED",
            Phase::Refused { .. } => "refused",
            Phase::NoWayBack { .. } => "no_way_back",
            _ => "unfinished",
        };
        let _ = writeln!(
            out,
            "{:<4} {:<14} {:<19} {:<9} {:<11} {:<12} {:<21} {}",
            e.seq,
            e.deployment.as_str(),
            e.release.id().as_str(),
            e.release.artifact().version.to_string(),
            e.strategy,
            outcome,
            time(e.started_at_ms),
            secs(Duration::from_millis(e.ended_at_ms.saturating_sub(e.started_at_ms)))
        );
    }
    let _ = write!(out, "{} deployments", entries.len() - notes);
    if notes > 0 {
        let _ = write!(out, ", {notes} watch notes");
    }
    out
}
