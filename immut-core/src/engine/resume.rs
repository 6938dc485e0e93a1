//! Picking up a deployment whose process died, from its journal.

use super::*;

impl Deployer {
    /// Picks up the deployment of `service` that the journal shows began and never ended (its
    /// process died), or `None` when there is none. The deployment keeps its id, release and
    /// phase: it continues, or goes on rolling back; cancel it before running to roll it back
    /// instead. A launch that was in flight is completed under its token, adopting whatever the
    /// dead process already launched, so nothing is launched twice.
    ///
    /// It takes the service's lock first (on a state store: the lease, so a deployment whose
    /// holder is still alive, or whose lease has not yet run out plus the clock-skew margin, is
    /// refused with [`ErrorKind::Conflict`] naming it), then reads the journal again under it,
    /// so what it resumes from is what the last holder wrote. The returned deployment holds
    /// the lock; dropping it releases the lock.
    pub fn resume(&self, service: &str) -> Result<Option<Deployment>> {
        let journal = self
            .inner
            .journal
            .as_ref()
            .ok_or_else(|| Error::invalid("journal", "resume needs a journal; call .journal(..) on the builder"))?;
        let before = journal.read_last(service)?;
        let Some(seen) = journal::interrupted(&before) else { return Ok(None) };
        let guard = journal.lock(service, &seen.deployment)?;
        let read = journal.read_last(service)?;
        let Some(found) = journal::interrupted(&read) else { return Ok(None) };
        if found.deployment != seen.deployment {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "the journal of {service} changed while resuming (deployment {} is now the interrupted one, not {}); try again",
                    found.deployment, seen.deployment
                ),
            ));
        }
        let JournalEntry::Begin {
            release,
            previous_release,
            previous,
            previous_count,
            initial_total,
            replacing,
            strategy,
            desired,
            accept_no_way_back,
        } = found.begin
        else {
            unreachable!("interrupted() starts at a Begin record")
        };
        if desired != self.inner.settings.desired {
            return Err(Error::invalid(
                "desired",
                format!(
                    "the journal shows deployment {} began with desired {desired}, but this deployer has desired {}; build the deployer with .desired({desired}) to resume it",
                    found.deployment, self.inner.settings.desired
                ),
            ));
        }
        let picked = match &self.inner.change_policy {
            Some(policy) => {
                [&policy.patch, &policy.minor, &policy.major].into_iter().find(|s| s.name() == strategy).cloned()
            }
            None => Some(self.inner.strategy.clone()).filter(|s| s.name() == strategy),
        };
        let Some(picked) = picked else {
            return Err(Error::invalid(
                "strategy",
                format!(
                    "the journal shows deployment {} began with strategy {strategy}, but this deployer has {}; build the deployer with the same strategy to resume it",
                    found.deployment,
                    self.inner.strategy.name()
                ),
            ));
        };
        let mut d = Deployment::new(self.inner.clone(), *release).with_id(found.deployment.clone());
        d.previous_release = previous_release.map(|r| Arc::new(*r));
        d.previous = previous;
        d.previous_count = previous_count;
        d.initial_total = initial_total;
        d.wave = found.waves;
        d.passed_gates = found.passed_gates;
        d.inner.gate.restore_measurements(found.measurements);
        d.replacing = replacing.into_iter().collect();
        d.resumed = true;
        // What the first run accepted holds for its resumption too.
        d.accept_no_way_back |= accept_no_way_back;
        d.lock = Some(guard);
        d.strategy = picked;
        d.pending_launch = found.pending_launch;
        for (intent, ids) in &found.launched {
            let release = if intent.rollback { d.previous_release.clone() } else { Some(d.release.clone()) };
            let Some(release) = release else { continue };
            let provenance = Arc::new(release.provenance(&d.id, &intent.token));
            let stand_ins: Vec<Instance> = ids
                .iter()
                .map(|id| Instance {
                    id: id.clone(),
                    state: InstanceState::Pending,
                    provenance: Some(provenance.clone()),
                    labels: Arc::default(),
                    observed: Arc::default(),
                    address: None,
                })
                .collect();
            // Counted from the record until describe shows them, or the consistency window
            // (from now: the restart may have been quick) passes.
            d.memory.launched(intent.wave, &stand_ins);
        }
        d.memory.terminated(&found.terminated);
        if let Some(reason) = &found.rolling_back {
            d.phase = Phase::RollingBack { reason: reason.clone() };
        }
        d.pending.push_back(Event::Resumed {
            deployment: found.deployment,
            rolling_back: found.rolling_back.is_some(),
            pending_launch: d.pending_launch.is_some(),
            torn_lines: read.torn.len(),
        });
        Ok(Some(d))
    }

    /// [`Deployer::resume`], waiting while another deployer holds the service: a refused
    /// attempt ([`ErrorKind::Conflict`]) is tried again every `poll` until `max_wait` has
    /// passed. This is how a second machine picks up a deployment whose first machine died:
    /// the lease of a crashed holder frees once it expires, plus the clock-skew margin.
    pub async fn resume_waiting(
        &self,
        service: &str,
        poll: Duration,
        max_wait: Duration,
    ) -> Result<Option<Deployment>> {
        let deadline = Instant::now() + max_wait;
        loop {
            let this = self.clone();
            let svc = service.to_owned();
            match blocking(move || this.resume(&svc)).await {
                Err(e) if e.kind() == ErrorKind::Conflict && Instant::now() + poll < deadline => {
                    tracing::info!(error = %e, "the service is held; waiting");
                    tokio::time::sleep(poll).await;
                }
                other => return other,
            }
        }
    }
}
