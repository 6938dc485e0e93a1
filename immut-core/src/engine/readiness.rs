//! Rollback readiness: whether an older release could still be launched again. The engine
//! asks at the start, before any launch, and again right before the point of no return, the
//! termination of that release's instances. Blocked at the start, the deployment is refused
//! ([`ErrorKind::NoWayBack`]); blocked before a termination, it stops there
//! ([`Phase::NoWayBack`]) with the new release serving and the old instances kept.
//! `accept_no_way_back` turns both into events and lets the deployment go on.

use super::*;
use crate::provider::Readiness;
use events::ReadinessCheck;

/// How long a release's "can be launched" answer is taken as current before a termination that
/// leaves some of its instances running. The termination of its last instances, the point of no
/// return, always asks afresh.
const READY_FOR: Duration = Duration::from_secs(60);

impl Deployment {
    /// The release `id` in full, as this deployment knows it: the previous release it was
    /// given, else the ledger's last record of it. The provenance alone does not name the
    /// image, so a release known by neither cannot be checked.
    async fn known_release(&self, id: &ReleaseId) -> Option<Arc<Release>> {
        if let Some(r) = self.previous_release.as_ref().filter(|r| r.id() == id) {
            return Some(r.clone());
        }
        let ledger = self.inner.ledger.clone()?;
        let (service, id) = (self.release.service().to_owned(), id.clone());
        let found = blocking(move || {
            Ok(ledger.entries()?.into_iter().rev().find(|e| e.service == service && *e.release.id() == id))
        })
        .await;
        match found {
            Ok(entry) => entry.map(|e| Arc::new(e.release)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the ledger for the previous release");
                None
            }
        }
    }

    async fn readiness_of(&mut self, release: &Release) -> Result<Readiness> {
        let provider = self.inner.provider.clone();
        let answer = self.retrying("readiness", || provider.readiness(release)).await;
        self.calls.readiness += 1;
        answer.map_err(|e| e.with_operation("readiness"))
    }

    /// The check at the start. Blocked without `accept_no_way_back`, the deployment is
    /// refused before any launch: it could not roll back, and finishing it would destroy the
    /// last instances of a release that cannot be launched again. Returns the event to report
    /// after `Started`.
    pub(super) async fn check_way_back_at_start(&mut self, previous: &ReleaseId) -> Result<Option<Event>> {
        let Some(release) = self.known_release(previous).await else {
            tracing::info!(%previous, "the previous release is not known in full; its readiness is not checked");
            return Ok(None);
        };
        let readiness = match self.readiness_of(&release).await {
            Ok(r) => r,
            Err(e) if self.accept_no_way_back => {
                tracing::warn!(error = %e, "readiness unknown; going on (accept_no_way_back)");
                Readiness::unknown()
            }
            Err(e) => return Err(e),
        };
        let blocked = readiness.blocking.clone();
        if blocked.is_none() {
            self.ready_at.insert(previous.clone(), Instant::now());
        }
        let accepted = blocked.is_some() && self.accept_no_way_back;
        let event = Event::Readiness { release: previous.clone(), at: ReadinessCheck::Start, readiness, accepted };
        match blocked {
            Some(why) if !accepted => {
                self.pending.push_back(event);
                Err(Error::new(
                    ErrorKind::NoWayBack,
                    format!(
                        "the previous release {previous} can no longer be launched ({why}): this deployment could not roll back, and would destroy the last way back; restore the image, or deploy with accept_no_way_back"
                    ),
                ))
            }
            _ => Ok(Some(event)),
        }
    }

    /// The check before terminating `ids` while deploying: for each older release among
    /// them, whether it could be launched again. Returns why the deployment must stop here,
    /// if it must. A check that fails counts as blocked: when in doubt, keep the old instances.
    /// A termination that leaves some of a release's instances running reuses an answer younger
    /// than [`READY_FOR`], so a rolling deployment does not ask at every wave.
    pub(super) async fn way_back_gone(&mut self, ids: &[InstanceId], obs: &Observation) -> Option<String> {
        let target = self.release.id().clone();
        let releases: BTreeSet<ReleaseId> = fleet::pick(&self.fleet, &obs.stand_ins, ids)
            .iter()
            .filter_map(|i| i.release().cloned())
            .filter(|r| *r != target)
            .collect();
        let terminating: HashSet<&InstanceId> = ids.iter().collect();
        for id in releases {
            let keeps_some = self
                .fleet
                .instances
                .iter()
                .chain(&obs.stand_ins)
                .any(|i| i.state.is_live() && i.release() == Some(&id) && !terminating.contains(&i.id));
            if keeps_some && self.ready_at.get(&id).is_some_and(|at| at.elapsed() < READY_FOR) {
                continue;
            }
            let Some(release) = self.known_release(&id).await else { continue };
            let readiness = match self.readiness_of(&release).await {
                Ok(r) => r,
                Err(e) => Readiness::blocked(format!("its readiness could not be checked: {e}")),
            };
            let blocked = readiness.blocking.clone();
            if blocked.is_none() {
                self.ready_at.insert(id.clone(), Instant::now());
            }
            let accepted = blocked.is_some() && self.accept_no_way_back;
            self.pending.push_back(Event::Readiness {
                release: id.clone(),
                at: ReadinessCheck::BeforeTerminate,
                readiness,
                accepted,
            });
            if let Some(why) = blocked
                && !accepted
            {
                return Some(format!(
                    "release {id} can no longer be launched ({why}); its instances were kept and {target} serves; deploy {target} again with accept_no_way_back to terminate them"
                ));
            }
        }
        None
    }
}
