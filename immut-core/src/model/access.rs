//! What a provider can see of the interactive ways into an instance, in one shape for every
//! cloud: the audit compares it with a sealed baseline ([`LaunchSpec::sealed`](super::LaunchSpec::sealed)).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A kind of interactive way into an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessPath {
    /// A login key is installed: an EC2 key pair, a GCE `ssh-keys` metadata item, an Azure
    /// `ssh.publicKeys` entry.
    LoginKey,
    /// Password login is allowed (Azure `disablePasswordAuthentication` is not true).
    PasswordLogin,
    /// Project-wide SSH keys reach the instance (GCE `block-project-ssh-keys` is not TRUE).
    ProjectKeys,
    /// The interactive serial console is enabled (GCE `serial-port-enable`).
    SerialConsole,
    /// The metadata service answers without a session token (EC2 `HttpTokens` optional), or
    /// further than the instance itself (a hop limit above 1).
    MetadataWithoutToken,
    /// Agents may run commands on the instance: Azure `allowExtensionOperations`, or an
    /// extension installed on the VM.
    Extensions,
}

impl AccessPath {
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            AccessPath::LoginKey => "login key",
            AccessPath::PasswordLogin => "password login",
            AccessPath::ProjectKeys => "project keys",
            AccessPath::SerialConsole => "serial console",
            AccessPath::MetadataWithoutToken => "metadata without token",
            AccessPath::Extensions => "extensions",
        }
    }
}

/// One way in that a provider saw open, with what it saw (a field and its value, never a key's
/// content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    /// The kind of way in.
    pub path: AccessPath,
    /// What the provider reported, for example `KeyName=ops` or `metadata ssh-keys`.
    pub detail: String,
}

impl fmt::Display for Opening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path.name(), self.detail)
    }
}

/// The access settings a provider could see of one instance. An empty list means every way in
/// the provider knows of is closed; what the provider cannot see is absent from
/// [`Observed::access`](super::Observed::access) altogether.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// The ways in that are open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub openings: Vec<Opening>,
}

impl Access {
    /// Nothing open.
    pub fn sealed() -> Self {
        Access::default()
    }

    /// This access with one more way in.
    pub fn with(mut self, path: AccessPath, detail: impl Into<String>) -> Self {
        self.openings.push(Opening { path, detail: detail.into() });
        self
    }

    /// Adds a way in when `open` holds.
    pub fn with_if(self, open: bool, path: AccessPath, detail: impl FnOnce() -> String) -> Self {
        if open { self.with(path, detail()) } else { self }
    }

    /// Whether no way in is open.
    pub fn is_sealed(&self) -> bool {
        self.openings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings_read_as_what_was_seen() {
        let a = Access::sealed().with(AccessPath::LoginKey, "KeyName=ops").with_if(
            false,
            AccessPath::SerialConsole,
            || unreachable!(),
        );
        assert!(!a.is_sealed());
        assert_eq!(a.openings[0].to_string(), "login key (KeyName=ops)");
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["openings"][0]["path"], "login_key");
        assert!(Access::sealed().is_sealed());
        assert_eq!(serde_json::to_string(&Access::sealed()).unwrap(), "{}");
    }
}
