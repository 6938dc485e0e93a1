//! Fencing: the provider and the balancer as the engine sees them while it holds a lease.
//! Every mutating call (launch, terminate, attach, detach, prepare, switch) first confirms the
//! lease ([`Lease::confirm`]), on every attempt, retries included; reads pass straight through.

use std::sync::Arc;

use async_trait::async_trait;

use super::Lease;
use crate::error::Result;
use crate::model::{Instance, InstanceId};
use crate::provider::{Capabilities, LaunchRequest, PacingStats, Provider, Query};
use crate::traffic::Traffic;

/// A provider whose mutations need the lease.
#[derive(Debug)]
pub(crate) struct FencedProvider {
    pub(crate) inner: Arc<dyn Provider>,
    pub(crate) lease: Lease,
}

#[async_trait]
impl Provider for FencedProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        self.lease.confirm().await?;
        self.inner.launch(request).await
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        self.inner.describe(query).await
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        self.lease.confirm().await?;
        self.inner.terminate(ids).await
    }

    fn next_change(&self) -> Option<tokio::time::Instant> {
        self.inner.next_change()
    }

    async fn readiness(&self, release: &crate::model::Release) -> Result<crate::provider::Readiness> {
        self.inner.readiness(release).await
    }

    fn pacing(&self) -> PacingStats {
        self.inner.pacing()
    }
}

/// A balancer whose changes need the lease.
#[derive(Debug)]
pub(crate) struct FencedTraffic {
    pub(crate) inner: Arc<dyn Traffic>,
    pub(crate) lease: Lease,
}

#[async_trait]
impl Traffic for FencedTraffic {
    async fn serving(&self) -> Result<Vec<InstanceId>> {
        self.inner.serving().await
    }

    async fn attach(&self, instances: &[Instance]) -> Result<()> {
        self.lease.confirm().await?;
        self.inner.attach(instances).await
    }

    async fn detach(&self, ids: &[InstanceId]) -> Result<()> {
        self.lease.confirm().await?;
        self.inner.detach(ids).await
    }

    async fn prepare(&self, instances: &[Instance]) -> Result<()> {
        self.lease.confirm().await?;
        self.inner.prepare(instances).await
    }

    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        self.lease.confirm().await?;
        self.inner.switch(attach, detach).await
    }
}
