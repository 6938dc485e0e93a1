//! Picking up a deployment whose process died, from its journal.

use super::*;

impl Deployer {
    /// Picks up the deployment of `service` that the journal shows began and never ended (its
    /// process died), or `None` when there is none. The deployment keeps its id, release and
    /// phase: it continues, or goes on rolling back; cancel it before running to roll it back
    /// instead. A launch that was in flight is completed under its token, adopting whatever the
    /// dead process already launched, so nothing is launched twice.
    pub fn resume(&self, service: &str) -> Result<Option<Deployment>> {
        let journal = self
            .inner
            .journal
            .as_ref()
            .ok_or_else(|| Error::invalid("journal", "resume needs a journal; call .journal(..) on the builder"))?;
        let read = journal.read(service)?;
        let Some(found) = journal::interrupted(&read) else { return Ok(None) };
        let JournalEntry::Begin {
            release,
            previous_release,
            previous,
            previous_count,
            initial_total,
            replacing,
            strategy,
            desired,
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
        d.replacing = replacing.into_iter().collect();
        d.resumed = true;
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
}
