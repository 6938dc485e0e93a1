//! The traffic contract: which instances receive requests.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{Instance, InstanceId};

/// A load balancer in front of one service: an ELBv2 target group, a GCE backend service, an
/// Azure backend pool, the local TCP balancer.
#[async_trait]
pub trait Traffic: Send + Sync + Debug {
    /// The instances that currently receive new requests.
    async fn serving(&self) -> Result<Vec<InstanceId>>;

    /// Starts sending new requests to these instances. Unknown instances are
    /// [`crate::ErrorKind::NotFound`]; attaching a serving instance again is `Ok`.
    async fn attach(&self, instances: &[Instance]) -> Result<()>;

    /// Stops sending new requests to these instances and returns once their in-flight
    /// requests have drained. Detaching an instance that does not serve is `Ok`.
    async fn detach(&self, ids: &[InstanceId]) -> Result<()>;

    /// The longest [`Traffic::detach`] or [`Traffic::switch`] may wait for in-flight requests,
    /// when the backend bounds it. [`DeployerBuilder::build`](crate::DeployerBuilder::build)
    /// refuses a progress deadline that could not hold it.
    fn drain_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Makes new instances known to the balancer so that its own health checks probe them,
    /// without sending them any traffic: an ALB target group at weight 0, a GCE backend at
    /// capacity 0, an Azure rule on a test port. A balancer checks only what it serves, so
    /// without this a switch would send traffic to instances it never checked. The engine calls
    /// it once for each new instance of the release it moves to, when the instance first runs.
    /// Idempotent; the default does nothing.
    async fn prepare(&self, instances: &[Instance]) -> Result<()> {
        let _ = instances;
        Ok(())
    }

    /// Moves traffic from `detach` to `attach` in one step where the backend can (a listener
    /// switch); the default attaches, then detaches.
    ///
    /// Drain has one meaning on every backend: like [`Traffic::detach`], `switch` returns only
    /// once the detached instances receive no new requests **and** their in-flight requests
    /// have drained (or the backend's drain timeout has passed). The engine relies on it: it
    /// may terminate what `switch` detached as soon as the bake allows, without waiting itself.
    /// A backend that keeps the old instances registered for a fast switch back (an idle target
    /// group) still waits out its drain before returning.
    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        self.attach(attach).await?;
        self.detach(detach).await
    }
}
