use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the local provider. Every field has a default; [`LocalConfig::from_env`] reads
/// overrides from `IMMUT_LOCAL_*` variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalConfig {
    /// Where instance records and logs live (default `.immut`).
    pub state_dir: PathBuf,
    /// How long a terminated process gets between SIGTERM and SIGKILL (default 5 s).
    #[serde(with = "secs")]
    pub term_timeout: Duration,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig { state_dir: PathBuf::from(".immut"), term_timeout: Duration::from_secs(5) }
    }
}

impl LocalConfig {
    /// Defaults, overridden by `IMMUT_LOCAL_STATE_DIR` and `IMMUT_LOCAL_TERM_TIMEOUT_SECS`.
    /// A malformed value is reported by [`crate::LocalBuilder::build`], not ignored.
    pub fn from_env() -> Self {
        let mut config = LocalConfig::default();
        if let Ok(dir) = std::env::var("IMMUT_LOCAL_STATE_DIR") {
            config.state_dir = PathBuf::from(dir);
        }
        if let Ok(secs) = std::env::var("IMMUT_LOCAL_TERM_TIMEOUT_SECS") {
            config.term_timeout = secs.parse().map(Duration::from_secs).unwrap_or(Duration::MAX);
        }
        config
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}
