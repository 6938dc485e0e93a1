//! Asking a gate with the deployment's context, and journaling the analysis measurements it
//! took: each is an event, and each counts as progress for the progress deadline.

use std::collections::BTreeMap;

use super::*;

impl Deployment {
    pub(super) async fn ask_gate(&mut self, name: &str, view: &FleetView, obs: &Observation) -> Result<GateVerdict> {
        let context = GateContext {
            service: self.release.service().to_owned(),
            release: Some(self.release.id().clone()),
            version: Some(self.release.artifact().version.to_string()),
            deployment: Some(self.id.clone()),
            addresses: self
                .fleet
                .instances
                .iter()
                .chain(&obs.stand_ins)
                .filter_map(|i| i.address.clone().map(|a| (i.id.clone(), a)))
                .collect::<BTreeMap<_, _>>(),
            stable_release: self.previous.clone(),
            stable_version: self.previous.as_ref().and_then(|previous| {
                self.fleet
                    .instances
                    .iter()
                    .find(|i| i.release() == Some(previous))
                    .and_then(|i| i.provenance.as_ref())
                    .map(|p| p.artifact_version.to_string())
            }),
        };
        let verdict = self.inner.gate.evaluate_in(name, view, &context).await;
        let measurements = self.inner.gate.take_measurements();
        if !measurements.is_empty() {
            self.last_progress = Instant::now();
        }
        for measurement in measurements {
            self.write_ahead(JournalEntry::Measured(measurement.clone())).await?;
            self.pending.push_back(Event::Measured { measurement });
        }
        Ok(verdict)
    }
}
