//! Drift audit, orphan reaping and reconciliation.
//!
//! The audit gives every instance of a service one [`Verdict`], from its provenance labels,
//! their signature, what the provider observed (image, machine type, and the access settings of
//! a sealed baseline's instances), the serving set, health,
//! the running deployment and, given a journal, the record of what each launch returned. The
//! report is JSON (serde) and a readable table.
//! [`Deployer::reconcile`](crate::Deployer::reconcile) then replaces the offenders through the
//! deployer's strategy: new instances are launched and proven, the offenders are drained and
//! terminated. Nothing is modified in place.
//!
//! Valid provenance proves that some deployment launched *an* instance with those labels; it
//! cannot prove it launched *this* one, since a label set can be copied onto another instance
//! of the same image. So the audit cross-checks every instance with valid provenance against
//! the instance ids the journal recorded for its launch token: an id the journal never
//! recorded is [`Verdict::Unrecorded`]. An instance whose deployment the journal does not know
//! at all (launched before the journal recorded ids, or with another journal) gets the same
//! verdict as report-only ([`Verdict::Unrecorded::predates_record`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::engine::{Deployer, Deployment};
use crate::error::Result;
use crate::health::{Health, HealthCheck};
use crate::journal::{Journal, Recorded};
use crate::model::{Instance, InstanceId, LabelCharset, Release, ReleaseId, SigningKey};
use crate::provider::{Provider, ProviderExt, Query};
use crate::traffic::Traffic;

/// One instance's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Traces back to the expected release, serves, and is healthy.
    Ok,
    /// Runs, or claims, another artifact than the expected release's.
    WrongArtifact {
        /// What differs.
        detail: String,
    },
    /// Was launched from, or runs with, another baseline than the expected release's.
    WrongBaseline {
        /// What differs.
        detail: String,
    },
    /// Carries no provenance: launched outside the pipeline.
    Unmanaged,
    /// Its provenance labels do not match their signature: edited by hand.
    Tampered {
        /// What failed.
        detail: String,
    },
    /// Fails its health check.
    Unhealthy {
        /// Why.
        reason: String,
    },
    /// Its baseline is sealed, and the provider sees a way in that was opened since the launch
    /// (a login key, a console, metadata without a token, an agent): it was changed in place.
    Unsealed {
        /// What the provider sees open, one entry per way in.
        opened: Vec<String>,
    },
    /// Carries immut provenance, is not part of the expected release, does not serve, and no
    /// running deployment owns it.
    Orphaned {
        /// The deployment that launched it.
        deployment: String,
    },
    /// Carries valid provenance, but the journal never recorded its id for the launch token
    /// its labels name: its labels were copied from a real instance (or it was launched under
    /// the token outside the engine). Reconcile replaces it only when asked
    /// ([`AuditReport::offenders_including_unrecorded`]).
    Unrecorded {
        /// The deployment its labels name.
        deployment: String,
        /// The launch token its labels name.
        token: String,
        /// Set when the journal holds no record of that deployment at all (it predates the
        /// journal's record of ids): reported only, never replaced.
        predates_record: bool,
    },
}

impl Verdict {
    /// A short name for tables and counts.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::WrongArtifact { .. } => "wrong_artifact",
            Verdict::WrongBaseline { .. } => "wrong_baseline",
            Verdict::Unmanaged => "unmanaged",
            Verdict::Tampered { .. } => "tampered",
            Verdict::Unhealthy { .. } => "unhealthy",
            Verdict::Unsealed { .. } => "unsealed",
            Verdict::Orphaned { .. } => "orphaned",
            Verdict::Unrecorded { .. } => "unrecorded",
        }
    }

    /// Whether the verdict is reported only, with nothing to replace: an unrecorded instance
    /// whose deployment predates the journal's record.
    pub fn is_report_only(&self) -> bool {
        matches!(self, Verdict::Unrecorded { predates_record: true, .. })
    }

    /// What the verdict found, in words (empty for ok and unmanaged).
    pub fn detail(&self) -> String {
        match self {
            Verdict::WrongArtifact { detail } | Verdict::WrongBaseline { detail } | Verdict::Tampered { detail } => {
                detail.clone()
            }
            Verdict::Unhealthy { reason } => reason.clone(),
            Verdict::Orphaned { deployment } => deployment.clone(),
            Verdict::Unsealed { opened } => format!("opened: {}", opened.join("; ")),
            Verdict::Unrecorded { deployment, token, predates_record: true } => {
                format!("deployment {deployment} predates the journal's record (token {token}); report only")
            }
            Verdict::Unrecorded { deployment, token, predates_record: false } => {
                format!("deployment {deployment} never recorded this id for token {token}")
            }
            Verdict::Ok | Verdict::Unmanaged => String::new(),
        }
    }
}

/// The verdict on one instance, with what it was judged on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Instance id.
    pub id: InstanceId,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The release its labels claim.
    pub release: Option<ReleaseId>,
    /// The artifact version its labels claim.
    pub version: Option<String>,
    /// Whether it receives traffic.
    pub serving: bool,
    /// Its address.
    pub address: Option<String>,
}

/// An audit of one service against its expected release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// Service.
    pub service: String,
    /// The release everything should trace back to.
    pub expected: ReleaseId,
    /// Its artifact version.
    pub expected_version: String,
    /// One finding per instance.
    pub findings: Vec<Finding>,
    /// How many instances got each verdict.
    pub counts: BTreeMap<String, usize>,
}

impl AuditReport {
    /// Whether every instance is ok (or reported only: see [`Verdict::is_report_only`]).
    pub fn is_clean(&self) -> bool {
        self.findings.iter().all(|f| f.verdict == Verdict::Ok || f.verdict.is_report_only())
    }

    /// Instances whose verdict is not ok, unrecorded ones aside: what reconcile replaces.
    pub fn offenders(&self) -> Vec<InstanceId> {
        self.findings
            .iter()
            .filter(|f| f.verdict != Verdict::Ok && !matches!(f.verdict, Verdict::Unrecorded { .. }))
            .map(|f| f.id.clone())
            .collect()
    }

    /// The offenders and the unrecorded instances whose deployment the journal knows (not the
    /// report-only ones): what [`Deployer::reconcile_including_unrecorded`] replaces.
    pub fn offenders_including_unrecorded(&self) -> Vec<InstanceId> {
        self.findings
            .iter()
            .filter(|f| f.verdict != Verdict::Ok && !f.verdict.is_report_only())
            .map(|f| f.id.clone())
            .collect()
    }

    /// The findings as a table for people.
    pub fn table(&self) -> String {
        let mut out = format!("audit of {} against {} ({})\n", self.service, self.expected, self.expected_version);
        let _ = writeln!(
            out,
            "{:<22} {:<15} {:<20} {:<10} {:<8} DETAIL",
            "INSTANCE", "VERDICT", "RELEASE", "VERSION", "SERVING"
        );
        for f in &self.findings {
            let _ = writeln!(
                out,
                "{:<22} {:<15} {:<20} {:<10} {:<8} {}",
                f.id.as_str(),
                f.verdict.name(),
                f.release.as_ref().map_or("-", |r| r.as_str()),
                f.version.as_deref().unwrap_or("-"),
                if f.serving { "yes" } else { "no" },
                f.verdict.detail()
            );
        }
        let counts: Vec<String> = self.counts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = write!(out, "{}", counts.join(", "));
        out
    }
}

/// What the audit knows of who launched what: the running deployments (the lock's holder,
/// read before and after the fleet) and the journal's record of launches.
struct Owners {
    running: Vec<String>,
    recorded: Option<Recorded>,
}

/// Audits a service. Set the health check, the signing key and the journal (to know the
/// running deployment) as you have them; each makes the verdicts sharper.
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    provider: &'a dyn Provider,
    traffic: &'a dyn Traffic,
    health: Option<&'a dyn HealthCheck>,
    key: Option<&'a SigningKey>,
    journal: Option<&'a dyn Journal>,
}

impl<'a> Audit<'a> {
    /// An audit over a provider and its traffic.
    pub fn new(provider: &'a dyn Provider, traffic: &'a dyn Traffic) -> Self {
        Audit { provider, traffic, health: None, key: None, journal: None }
    }

    /// Judges health with this check.
    pub fn health(mut self, health: &'a dyn HealthCheck) -> Self {
        self.health = Some(health);
        self
    }

    /// Verifies provenance signatures with this key; without it, signatures are not checked.
    pub fn signing_key(mut self, key: &'a SigningKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Reads the running deployment from this journal's lock (on a state store: the newest
    /// unexpired, unreleased lease epoch), and cross-checks every instance with valid
    /// provenance against the ids the journal recorded for its launch token.
    pub fn journal(mut self, journal: &'a dyn Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Audits every instance of `expected`'s service, including instances without provenance
    /// that the provider can see or that receive the service's traffic.
    pub async fn run(&self, expected: &Release) -> Result<AuditReport> {
        let service = expected.service();
        // The holder is read before the fleet and again after it: a deployment that starts or
        // ends in between still owns what it launched in either answer.
        let holder_before = self.holder(service)?;
        let mut instances = self.provider.describe(&Query::service(service).with_unmanaged()).await?;
        let serving: HashSet<InstanceId> = self.traffic.serving().await?.into_iter().collect();
        let known: HashSet<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
        let strays: Vec<InstanceId> = serving.iter().filter(|id| !known.contains(*id)).cloned().collect();
        if !strays.is_empty() {
            instances.extend(self.provider.describe(&Query::ids(strays.clone()).with_unmanaged()).await?);
        }
        let health = match self.health {
            Some(h) => h.check_many(&instances).await?,
            None => vec![Health::Healthy; instances.len()],
        };
        let holder_after = self.holder(service)?;
        let holders: Vec<String> = holder_before.into_iter().chain(holder_after).map(|d| d.to_string()).collect();
        let deployments: BTreeSet<crate::model::DeploymentId> =
            instances.iter().filter_map(|i| i.provenance.as_ref().map(|p| p.deployment.clone())).collect();
        let recorded = match self.journal {
            Some(j) if !deployments.is_empty() => Some(j.recorded(service, &deployments)?),
            _ => None,
        };
        let owners = Owners { running: holders, recorded };
        let charset = self.provider.capabilities().label_charset;
        let mut findings: Vec<Finding> = instances
            .iter()
            .zip(health)
            .map(|(i, h)| {
                let serving = serving.contains(&i.id);
                Finding {
                    id: i.id.clone(),
                    verdict: self.judge(i, serving, h, expected, &owners, charset),
                    release: i.release().cloned(),
                    version: i.provenance.as_ref().map(|p| p.artifact_version.to_string()),
                    serving,
                    address: i.address.clone(),
                }
            })
            .collect();
        // Serving targets the provider cannot describe at all.
        let described: HashSet<InstanceId> = findings.iter().map(|f| f.id.clone()).collect();
        for id in strays.into_iter().filter(|id| !described.contains(id)) {
            findings.push(Finding {
                id,
                verdict: Verdict::Unmanaged,
                release: None,
                version: None,
                serving: true,
                address: None,
            });
        }
        findings.sort_by(|a, b| a.id.cmp(&b.id));
        let mut counts = BTreeMap::new();
        for f in &findings {
            *counts.entry(f.verdict.name().to_owned()).or_default() += 1;
        }
        Ok(AuditReport {
            service: service.to_owned(),
            expected: expected.id().clone(),
            expected_version: expected.artifact().version.to_string(),
            findings,
            counts,
        })
    }

    fn judge(
        &self,
        i: &Instance,
        serving: bool,
        health: Health,
        expected: &Release,
        owners: &Owners,
        charset: LabelCharset,
    ) -> Verdict {
        let running = &owners.running;
        let Some(p) = &i.provenance else { return Verdict::Unmanaged };
        if let Some(key) = self.key
            && !key.verify(p, &i.labels, charset)
        {
            let detail = if i.labels.contains_key(crate::model::label_keys::SIGNATURE) {
                "the provenance labels do not match their signature"
            } else {
                "the provenance labels carry no signature"
            };
            return Verdict::Tampered { detail: detail.to_owned() };
        }
        let artifact = expected.artifact();
        if &p.release != expected.id() && !serving && !running.iter().any(|d| d == p.deployment.as_str()) {
            return Verdict::Orphaned { deployment: p.deployment.to_string() };
        }
        if let Some(recorded) = &owners.recorded {
            let known = recorded.deployments.contains(&p.deployment);
            let listed = recorded.launched.get(&p.token).is_some_and(|ids| ids.contains(&i.id));
            if !listed {
                return Verdict::Unrecorded {
                    deployment: p.deployment.to_string(),
                    token: p.token.to_string(),
                    predates_record: !known,
                };
            }
        }
        if p.artifact != artifact.name || p.artifact_version != artifact.version {
            return Verdict::WrongArtifact {
                detail: format!(
                    "labels say {}@{}, expected {}@{}",
                    p.artifact, p.artifact_version, artifact.name, artifact.version
                ),
            };
        }
        if p.baseline_fingerprint != expected.fingerprint() || &p.release != expected.id() {
            return Verdict::WrongBaseline {
                detail: format!("labels say baseline {}, expected {}", p.baseline_fingerprint, expected.fingerprint()),
            };
        }
        if let Some(image) = i.observed.image.as_deref().filter(|img| *img != artifact.image) {
            return Verdict::WrongArtifact { detail: format!("runs {image}, expected {}", artifact.image) };
        }
        let spec = &expected.baseline().spec;
        if let (Some(seen), Some(want)) = (i.observed.machine_type.as_deref(), spec.machine_type.as_deref())
            && seen != want
        {
            return Verdict::WrongBaseline { detail: format!("runs on {seen}, the baseline says {want}") };
        }
        // What the provider cannot see (no access settings at all) is not a finding: only what
        // it sees open is.
        if spec.sealed
            && let Some(access) = i.observed.access.as_ref().filter(|a| !a.is_sealed())
        {
            return Verdict::Unsealed { opened: access.openings.iter().map(ToString::to_string).collect() };
        }
        match health {
            Health::Healthy => Verdict::Ok,
            Health::Unhealthy(reason) => Verdict::Unhealthy { reason },
            Health::Unknown => Verdict::Unhealthy { reason: "health unknown".to_owned() },
        }
    }

    fn holder(&self, service: &str) -> Result<Option<crate::model::DeploymentId>> {
        match self.journal {
            Some(j) => j.holder(service),
            None => Ok(None),
        }
    }

    /// Finds the orphans of `expected`'s service and, when `terminate` is set, terminates them
    /// (checking again, just before, that none serves or belongs to a deployment that took
    /// the lock meanwhile).
    pub async fn reap(&self, expected: &Release, terminate: bool) -> Result<Vec<Finding>> {
        let orphans: Vec<Finding> = self
            .run(expected)
            .await?
            .findings
            .into_iter()
            .filter(|f| matches!(f.verdict, Verdict::Orphaned { .. }))
            .collect();
        if terminate && !orphans.is_empty() {
            // Right before terminating, look again: a deployment may have taken the lock, or
            // attached an instance, since the audit read the fleet.
            let holder = self.holder(expected.service())?.map(|d| d.to_string());
            let serving: HashSet<InstanceId> = self.traffic.serving().await?.into_iter().collect();
            let ids: Vec<InstanceId> = orphans
                .iter()
                .filter(|f| !serving.contains(&f.id))
                .filter(
                    |f| !matches!(&f.verdict, Verdict::Orphaned { deployment } if Some(deployment) == holder.as_ref()),
                )
                .map(|f| f.id.clone())
                .collect();
            if !ids.is_empty() {
                self.provider.terminate_all(&ids).await?;
            }
        }
        Ok(orphans)
    }
}

impl Deployer {
    /// Replaces every offender of an audit with new instances of `release`, through this
    /// deployer's strategy and within its limits. Offenders are never modified: they are
    /// drained and terminated once their replacements are proven.
    pub fn reconcile(&self, report: &AuditReport, release: Release) -> Deployment {
        self.deploy(release).replacing(report.offenders())
    }

    /// [`Deployer::reconcile`], replacing the unrecorded instances too (those whose
    /// deployment the journal knows: [`AuditReport::offenders_including_unrecorded`]).
    pub fn reconcile_including_unrecorded(&self, report: &AuditReport, release: Release) -> Deployment {
        self.deploy(release).replacing(report.offenders_including_unrecorded())
    }
}
