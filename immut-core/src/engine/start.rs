//! The first step: the lock (a lease, on a state store), the checks made before any change,
//! and the journal's `Begin`.

use super::*;

impl Deployment {
    pub(super) async fn start(&mut self) -> Result<()> {
        let started = Instant::now();
        self.started = Some(started);
        self.started_wall_ms = journal::now_ms();
        self.last_progress = started;
        self.validate_launches()?;
        // A resumed deployment took its lock before it read the journal.
        if self.lock.is_none()
            && let Some(journal) = self.inner.journal.clone()
        {
            let (service, id) = (self.release.service().to_owned(), self.id.clone());
            self.lock = Some(blocking(move || journal.lock(&service, &id)).await?);
        }
        self.fence();
        if self.resumed {
            self.begun = true;
            return Ok(());
        }
        let observation = self.observe().await?;
        let mut by_release: BTreeMap<&ReleaseId, usize> = BTreeMap::new();
        let fleet = &self.fleet;
        for i in fleet.instances.iter().filter(|i| fleet.serving.contains(&i.id) && !self.excluded_from_previous(&i.id))
        {
            if let Some(r) = i.release().filter(|r| *r != self.release.id()) {
                *by_release.entry(r).or_default() += 1;
            }
        }
        let previous = by_release.iter().max_by_key(|(_, n)| **n).map(|(r, n)| ((*r).clone(), *n));
        if let (Some(given), Some((observed, _))) = (&self.previous_release, &previous)
            && given.id() != observed
        {
            return Err(Error::invalid(
                "previous",
                format!(
                    "the deployer was given release {} as the previous one, but {observed} is what serves",
                    given.id()
                ),
            ));
        }
        let previous_version = previous.as_ref().and_then(|(id, _)| {
            fleet
                .instances
                .iter()
                .find(|i| i.release() == Some(id))
                .and_then(|i| i.provenance.as_ref())
                .map(|p| p.artifact_version.clone())
        });
        self.apply_version_policy(previous_version.as_ref())?;
        let readiness = match &previous {
            Some((previous, _)) => self.check_way_back_at_start(previous).await?,
            None => None,
        };
        self.previous_count = previous.as_ref().map_or(0, |(_, n)| *n);
        self.previous = previous.map(|(r, _)| r);
        self.initial_total = self.fleet.instances.len() + observation.stand_ins.len();
        self.write_ahead(JournalEntry::Begin {
            release: Box::new((*self.release).clone()),
            previous_release: self.previous_release.as_ref().map(|r| Box::new((**r).clone())),
            previous: self.previous.clone(),
            previous_count: self.previous_count,
            initial_total: self.initial_total,
            desired: self.inner.settings.desired,
            strategy: self.strategy.name().to_owned(),
            replacing: self.replacing.iter().cloned().collect(),
            accept_no_way_back: self.accept_no_way_back,
        })
        .await?;
        self.begun = true;
        let limits = self.limits();
        self.pending.push_back(Event::Started {
            deployment: self.id.clone(),
            service: self.release.service().to_owned(),
            release: self.release.id().clone(),
            previous: self.previous.clone(),
            previous_count: self.previous_count,
            desired: self.inner.settings.desired,
            strategy: self.strategy.name().to_owned(),
            floor: limits.floor,
            ceiling: limits.ceiling,
        });
        self.pending.extend(readiness);
        tracing::info!(deployment = %self.id, release = %self.release, previous = ?self.previous, "deployment started");
        Ok(())
    }

    /// Checks, before any backend call, that every launch this deployment may make (of the
    /// release, and of the previous one for a rollback) is valid for the provider: labels,
    /// signature and counts. The longest token the deployment can use stands in for all.
    pub(super) fn validate_launches(&self) -> Result<()> {
        let caps = self.inner.provider.capabilities();
        let token = LaunchToken::new(format!("{}-rb{}-{}", self.id, u32::MAX, u32::MAX));
        for release in std::iter::once(&self.release).chain(&self.previous_release) {
            let mut probe = LaunchRequest::new(release.clone(), 1, &self.id, token.clone());
            if let Some(key) = &self.inner.signing_key {
                probe = probe.signed(key);
            }
            probe.validate(&caps).map_err(|e| {
                let which = if Arc::ptr_eq(release, &self.release) { "release" } else { "previous release" };
                Error::new(e.kind(), format!("{which} {}: {}", release.id(), e.message()))
            })?;
        }
        Ok(())
    }

    /// Refuses an unintended downgrade and picks the strategy by version change when asked to.
    pub(super) fn apply_version_policy(&mut self, previous: Option<&semver::Version>) -> Result<()> {
        let target = &self.release.artifact().version;
        if let Some(previous) = previous {
            let downgrade = Change::between(previous, target) == Change::Downgrade;
            if downgrade && !self.explicit_rollback && !self.inner.allow_downgrade {
                return Err(Error::invalid(
                    "artifact.version",
                    format!(
                        "{target} is older than {previous}, which serves now; a downgrade must be an explicit rollback (Deployment::as_rollback or Deployer::rollback_to_previous)"
                    ),
                ));
            }
        }
        if let Some(policy) = &self.inner.change_policy {
            self.strategy = policy.pick(previous, target);
        }
        Ok(())
    }
}
