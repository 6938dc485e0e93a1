use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use immut_core::{Error, Result};

use crate::balancer::LocalBalancer;
use crate::client;
use crate::config::LocalConfig;
use crate::provider::LocalProvider;

/// Builds a [`LocalProvider`]. Setters never fail; [`LocalBuilder::build`] checks everything.
#[derive(Debug, Clone, Default)]
pub struct LocalBuilder {
    config: LocalConfig,
}

impl LocalBuilder {
    /// Starts from [`LocalConfig::default`].
    pub fn new() -> Self {
        LocalBuilder::default()
    }

    /// Starts from a configuration (for example [`LocalConfig::from_env`]).
    pub fn from_config(config: LocalConfig) -> Self {
        LocalBuilder { config }
    }

    /// Where instance records and logs live.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = dir.into();
        self
    }

    /// Time between SIGTERM and SIGKILL.
    pub fn term_timeout(mut self, timeout: Duration) -> Self {
        self.config.term_timeout = timeout;
        self
    }

    /// Checks the settings and that the state directory is writable.
    pub fn build(self) -> Result<LocalProvider> {
        if self.config.term_timeout > Duration::from_secs(3600) {
            return Err(Error::invalid(
                "term_timeout",
                "is over an hour or malformed; set IMMUT_LOCAL_TERM_TIMEOUT_SECS to a whole number of seconds",
            ));
        }
        client::prepare_state_dir(&self.config.state_dir)?;
        Ok(LocalProvider::new(self.config))
    }
}

/// Builds a [`LocalBalancer`]. Setters never fail; [`BalancerBuilder::build`] binds the port.
#[derive(Debug, Clone)]
pub struct BalancerBuilder {
    pub(crate) listen: SocketAddr,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) drain_timeout: Duration,
}

impl Default for BalancerBuilder {
    fn default() -> Self {
        BalancerBuilder {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir: None,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl BalancerBuilder {
    /// Where to listen (default `127.0.0.1:0`, any free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Persist the serving set here, so a new balancer resumes it (default: not persisted).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The longest a detach waits for in-flight connections (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Binds the listening socket and starts serving.
    pub async fn build(self) -> Result<LocalBalancer> {
        LocalBalancer::start(self).await
    }
}
