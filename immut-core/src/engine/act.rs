//! Acting on a decision: launches (written ahead, adopting by token), traffic changes and
//! terminations.

use super::*;

impl Deployment {
    pub(super) async fn act(&mut self, decision: Decision, view: &FleetView, obs: &Observation) -> Result<()> {
        if let Decision::Terminate { ids } = &decision
            && matches!(self.phase, Phase::Deploying)
            && let Some(reason) = self.way_back_gone(ids, obs).await
        {
            self.stop_no_way_back(reason).await;
            return Ok(());
        }
        match decision {
            Decision::Launch { count } => self.launch(count).await?,
            Decision::Attach { .. }
            | Decision::Detach { .. }
            | Decision::Switch { .. }
            | Decision::Terminate { .. } => {
                let step = self.step;
                self.write_ahead(JournalEntry::Intent { step, decision: decision.clone(), launch: None }).await?;
                let result = self.mutate(decision, obs).await;
                self.write_ahead(match &result {
                    Ok(()) => JournalEntry::Applied { step, token: None, ids: Vec::new() },
                    Err(e) => JournalEntry::Failed { step, token: None, error: e.to_string() },
                })
                .await?;
                result?;
            }
            Decision::Gate { name } => match self.ask_gate(&name, view, obs).await? {
                GateVerdict::Pass => {
                    self.write_ahead(JournalEntry::GatePassed { gate: name.clone() }).await?;
                    self.passed_gates.insert(name.clone());
                    self.pending.push_back(Event::GatePassed { gate: name });
                }
                GateVerdict::Hold(reason) => self.wait(&reason, None, true).await?,
                GateVerdict::Fail(reason) => {
                    return Err(Error::new(ErrorKind::GateRejected, format!("gate {name:?} failed: {reason}")));
                }
            },
            Decision::Wait { reason, until } => self.wait(&reason, until, false).await?,
            Decision::Done => self.finish().await,
            Decision::Fail { reason } => return Err(Error::new(ErrorKind::Unhealthy, reason)),
        }
        Ok(())
    }

    /// Tells the balancer to probe the new instances that run now and were not prepared yet.
    pub(super) async fn prepare_new(&mut self, obs: &Observation) -> Result<()> {
        let target = self.target().cloned();
        // Only what this deployment launched and did not prepare yet: a few, not the fleet.
        let fleet = &self.fleet;
        let fresh: Vec<Instance> = self
            .memory
            .unprepared
            .iter()
            .filter_map(|id| fleet.get(id).or_else(|| obs.stand_ins.iter().find(|i| i.id == *id)))
            .filter(|i| target.is_some() && i.release() == target.as_ref())
            .filter(|i| i.state == InstanceState::Running && !fleet.serving.contains(&i.id))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let traffic = self.inner.traffic.clone();
        self.retrying("prepare", || traffic.prepare(&fresh)).await?;
        self.calls.prepare += 1;
        for i in &fresh {
            if let Some(l) = self.memory.launched.get_mut(&i.id) {
                l.prepared = true;
            }
            self.memory.unprepared.remove(&i.id);
        }
        Ok(())
    }

    /// Carries out a traffic change or a termination.
    pub(super) async fn mutate(&mut self, decision: Decision, obs: &Observation) -> Result<()> {
        match decision {
            Decision::Attach { ids } => {
                let instances = fleet::pick(&self.fleet, &obs.stand_ins, &ids);
                let traffic = self.inner.traffic.clone();
                let attached = self.retrying("attach", || traffic.attach(&instances)).await;
                self.calls.attach += 1;
                if vanished(&attached) {
                    return Ok(());
                }
                attached?;
                self.changed();
                self.pending.push_back(Event::Attached { ids });
            }
            Decision::Detach { ids } => {
                let traffic = self.inner.traffic.clone();
                self.retrying("detach", || traffic.detach(&ids)).await?;
                self.calls.detach += 1;
                self.changed();
                self.pending.push_back(Event::Detached { ids });
            }
            Decision::Switch { attach, detach } => {
                let instances = fleet::pick(&self.fleet, &obs.stand_ins, &attach);
                let traffic = self.inner.traffic.clone();
                let switched = self.retrying("switch", || traffic.switch(&instances, &detach)).await;
                self.calls.switch += 1;
                if vanished(&switched) {
                    return Ok(());
                }
                switched?;
                self.changed();
                if matches!(self.phase, Phase::Deploying) {
                    self.switched_at = self.last_change_at;
                }
                self.pending.push_back(Event::Switched { attached: attach, detached: detach });
            }
            Decision::Terminate { ids } => {
                self.memory.terminated(&ids);
                let provider = self.inner.provider.clone();
                self.retrying("terminate", || provider.terminate_all(&ids)).await?;
                self.calls.terminate += ids.len().div_ceil(provider.capabilities().max_terminate_batch.max(1)) as u64;
                self.changed();
                self.pending.push_back(Event::Terminated { ids });
            }
            other => unreachable!("mutate() is called with traffic changes and terminations only, not {other:?}"),
        }
        Ok(())
    }

    /// Completes a launch a dead process journaled but did not finish, adopting by token.
    pub(super) async fn finish_launch(&mut self, intent: LaunchIntent) -> Result<()> {
        let release = if intent.rollback { self.rollback_release_or_err()? } else { self.release.clone() };
        self.launch_chunk(release, intent, true).await
    }

    pub(super) fn rollback_release(&self) -> Option<&Arc<Release>> {
        self.previous_release.as_ref().filter(|r| Some(r.id()) == self.previous.as_ref())
    }

    pub(super) fn rollback_release_or_err(&self) -> Result<Arc<Release>> {
        self.rollback_release().cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "the previous release is unknown; pass it with Deployment::with_previous",
            )
        })
    }

    pub(super) async fn launch(&mut self, count: usize) -> Result<()> {
        let rollback = matches!(self.phase, Phase::RollingBack { .. });
        let release = if rollback { self.rollback_release_or_err()? } else { self.release.clone() };
        self.wave += 1;
        let wave = self.wave;
        let prefix = if rollback { "rb" } else { "w" };
        let batch = self.inner.provider.capabilities().max_launch_batch.max(1);
        let mut remaining = count;
        let mut index = 0;
        while remaining > 0 {
            let n = remaining.min(batch);
            let token = LaunchToken::new(format!("{}-{prefix}{wave}-{index}", self.id));
            self.launch_chunk(release.clone(), LaunchIntent { wave, token, count: n, rollback }, false).await?;
            remaining -= n;
            index += 1;
        }
        Ok(())
    }

    /// One launch call's worth, written ahead, adopting what already exists under its token.
    pub(super) async fn launch_chunk(
        &mut self,
        release: Arc<Release>,
        intent: LaunchIntent,
        resumed_launch: bool,
    ) -> Result<()> {
        let step = self.step;
        let span = tracing::info_span!("wave", wave = intent.wave, count = intent.count);
        self.write_ahead(JournalEntry::Intent {
            step,
            decision: Decision::Launch { count: intent.count },
            launch: Some(intent.clone()),
        })
        .await?;
        let mut request = LaunchRequest::new(release, intent.count, &self.id, intent.token.clone());
        if let Some(key) = &self.inner.signing_key {
            request = request.signed(key);
        }
        let provider = self.inner.provider.clone();
        // A backend that honours the token as an idempotency key needs no look-up before a
        // fresh token's first attempt. After any doubt (a retry, a launch a dead process
        // journaled, or an id the caller chose, which an earlier run without a journal may have
        // launched under) the engine looks up by token first and adopts what exists.
        let reused_id = self.chosen_id && !self.resumed;
        let fresh = provider.capabilities().honours_token && !resumed_launch && !reused_id;
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        // A look-up by token right after an ambiguous failure may miss instances the cloud
        // has launched but not yet shows: it waits out the consistency window first, measured
        // from the first attempt (or, for a launch a dead process began, from now).
        let window = provider.capabilities().consistency_window;
        let first_attempt = Instant::now();
        let result = self
            .retrying("launch", || {
                let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;
                let (provider, request) = (&provider, &request);
                async move {
                    if first && fresh {
                        request.validate(&provider.capabilities())?;
                        provider.launch(request).await.map(|launched| (launched, 0))
                    } else {
                        if !window.is_zero() && (!first || resumed_launch) {
                            tokio::time::sleep_until(first_attempt + window).await;
                        }
                        provider.ensure_launched(request).await
                    }
                }
            })
            .instrument(span)
            .await;
        self.calls.launch += 1;
        if !fresh || attempts.load(Ordering::SeqCst) > 1 {
            self.calls.describe += 1;
        }
        let token = Some(intent.token.clone());
        let (instances, adopted) = match result {
            Ok(ok) => ok,
            Err(e) => {
                self.write_ahead(JournalEntry::Failed { step, token, error: e.to_string() }).await?;
                return Err(e);
            }
        };
        self.memory.launched(intent.wave, &instances);
        let ids: Vec<InstanceId> = instances.into_iter().map(|i| i.id).collect();
        self.write_ahead(JournalEntry::Applied { step, token, ids: ids.clone() }).await?;
        self.changed();
        self.pending.push_back(Event::Launched { wave: intent.wave, token: intent.token, ids, adopted });
        Ok(())
    }

    pub(super) fn changed(&mut self) {
        self.last_change_at = Some(self.elapsed());
        self.last_progress = Instant::now();
    }

    pub(super) fn violated(&mut self, violation: invariants::Violation) -> Error {
        tracing::error!(invariant = %violation.invariant, detail = %violation.detail, "invariant violation refused");
        self.pending
            .push_back(Event::InvariantViolated { invariant: violation.invariant, detail: violation.detail.clone() });
        violation.into()
    }
}

/// Whether a traffic change failed because an instance it named is gone (killed or stopped
/// by someone else since the observation). That is no failure of the deployment: nothing
/// changed, and the next observation shows the fleet as it is now.
fn vanished(result: &Result<()>) -> bool {
    match result {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            tracing::warn!(error = %e, "an instance vanished before the traffic change; observing again");
            true
        }
        _ => false,
    }
}
