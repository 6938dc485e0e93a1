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

    /// Moves traffic from `detach` to `attach` in one step where the backend can (a listener
    /// switch); the default attaches, then detaches.
    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        self.attach(attach).await?;
        self.detach(detach).await
    }
}
