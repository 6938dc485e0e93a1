use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use immut_core::{Error, Result};

use crate::balancer::{LocalBalancer, Protocol};
use crate::client;
use crate::config::LocalConfig;
use crate::provider::LocalProvider;

/// Fault injection for crash tests: where a launch SIGKILLs its own process. Spawns are
/// counted from 0 over the provider's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnCrash {
    /// After the record of spawn `n` is written ahead, before its process starts.
    BeforeSpawn(usize),
    /// After the process of spawn `n` started, before its record is completed.
    AfterSpawn(usize),
}

/// Builds a [`LocalProvider`]. Setters never fail; [`LocalBuilder::build`] checks everything.
#[derive(Debug, Clone, Default)]
pub struct LocalBuilder {
    config: LocalConfig,
    crash: Option<SpawnCrash>,
}

impl LocalBuilder {
    /// Starts from [`LocalConfig::default`].
    pub fn new() -> Self {
        LocalBuilder::default()
    }

    /// Starts from a configuration (for example [`LocalConfig::from_env`]).
    pub fn from_config(config: LocalConfig) -> Self {
        LocalBuilder { config, crash: None }
    }

    /// Where instance records, logs and balancers live.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = dir.into();
        self
    }

    /// Time between SIGTERM and SIGKILL.
    pub fn term_timeout(mut self, timeout: Duration) -> Self {
        self.config.term_timeout = timeout;
        self
    }

    /// Fault injection for crash tests: the provider SIGKILLs its own process at this point of
    /// its launches. Never set it outside a test.
    pub fn crash_at_spawn(mut self, at: SpawnCrash) -> Self {
        self.crash = Some(at);
        self
    }

    /// Checks the settings, the platform (Linux only) and that the state directory is
    /// writable.
    pub fn build(self) -> Result<LocalProvider> {
        client::check_platform()?;
        if self.config.term_timeout > Duration::from_secs(3600) {
            return Err(Error::invalid(
                "term_timeout",
                "is over an hour or malformed; set IMMUT_LOCAL_TERM_TIMEOUT_SECS to a whole number of seconds",
            ));
        }
        client::prepare_state_dir(&self.config.state_dir)?;
        Ok(LocalProvider::new(self.config, self.crash))
    }
}

/// Builds a [`LocalBalancer`]: finds the service's running balancer process, or starts it.
/// Setters never fail; [`BalancerBuilder::build`] checks everything.
#[derive(Debug, Clone)]
pub struct BalancerBuilder {
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) service: Option<String>,
    pub(crate) drain_timeout: Duration,
    pub(crate) protocol: Protocol,
    pub(crate) executable: Option<PathBuf>,
}

impl Default for BalancerBuilder {
    fn default() -> Self {
        BalancerBuilder {
            listen: None,
            state_dir: None,
            service: None,
            drain_timeout: Duration::from_secs(10),
            protocol: Protocol::Http,
            executable: None,
        }
    }
}

impl BalancerBuilder {
    /// The service it balances (required): one balancer process per service, with state of
    /// its own.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// Where it listens when it is first started (default `127.0.0.1:0`, any free port). The
    /// address is then kept in the state directory: every later start listens there again.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// The state directory it lives in (required; [`LocalProvider::balancer`] sets it).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The longest a detach waits for the detached instances' in-flight requests (default
    /// 10 s). It must fit in the deployer's progress deadline.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// What it proxies (default [`Protocol::Http`]), fixed when the balancer is first started.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The executable started as the balancer process (default: this program,
    /// `std::env::current_exe()`). It must call [`crate::serve_if_requested`] first thing in
    /// `main`; a test harness points this at a binary that does, such as `immut` or `immut-sample`.
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.executable = Some(path.into());
        self
    }

    /// Connects to the service's balancer process, starting it if none runs.
    pub async fn build(self) -> Result<LocalBalancer> {
        LocalBalancer::connect(self).await
    }
}
