//! The one error type of immut: a kind, a retryable flag and context.

use std::fmt;

use crate::model::InstanceId;

/// What went wrong, independent of the backend that reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The named resource does not exist.
    NotFound,
    /// The backend throttled the call; retry later.
    RateLimited,
    /// A quota or capacity limit was hit. Not retried: the deployment fails closed.
    QuotaExceeded,
    /// The request itself is wrong; the message names the field and the fix.
    InvalidInput,
    /// The backend cannot do what was asked.
    Unsupported,
    /// The request conflicts with current state (for example a lock held by another deployment).
    Conflict,
    /// The backend is temporarily unavailable (5xx, connection refused, timeout).
    Unavailable,
    /// Credentials are missing or were refused.
    PermissionDenied,
    /// An engine invariant would be or was violated.
    InvariantViolated,
    /// A deadline elapsed before progress was made.
    DeadlineExceeded,
    /// A gate (manual promotion, canary analysis) rejected the release.
    GateRejected,
    /// The release's instances did not become healthy, or the strategy gave up on them.
    Unhealthy,
    /// The operation was cancelled.
    Cancelled,
    /// The previous release can no longer be launched (rollback readiness), so the deployment
    /// would destroy its last way back; `accept_no_way_back` overrides.
    NoWayBack,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Whether an operation that failed with this kind may succeed when tried again.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::RateLimited | ErrorKind::Unavailable)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The error type of every immut API.
///
/// It carries a [`ErrorKind`], a message meant for a person (naming the field and the fix for
/// bad input), and context: the provider, the operation and the instance ids involved.
/// It never carries credentials: providers map backend errors through one function each, which
/// keeps only the backend's error code and message.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    provider: Option<String>,
    operation: Option<String>,
    ids: Vec<InstanceId>,
    retryable: Option<bool>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            provider: None,
            operation: None,
            ids: Vec::new(),
            retryable: None,
            source: None,
        }
    }

    /// Shorthand for an [`ErrorKind::InvalidInput`] error naming `field` and the fix.
    pub fn invalid(field: &str, problem: impl fmt::Display) -> Self {
        Error::new(ErrorKind::InvalidInput, format!("{field}: {problem}"))
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The provider that reported the error, if any.
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// The operation that failed, if known.
    pub fn operation(&self) -> Option<&str> {
        self.operation.as_deref()
    }

    /// The instance ids involved.
    pub fn ids(&self) -> &[InstanceId] {
        &self.ids
    }

    /// Whether retrying the same call may succeed. Defaults to the kind's answer.
    pub fn is_retryable(&self) -> bool {
        self.retryable.unwrap_or_else(|| self.kind.is_retryable())
    }

    /// Names the provider.
    pub fn with_provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = Some(provider.into());
        self
    }

    /// Names the operation.
    pub fn with_operation(mut self, operation: impl Into<String>) -> Self {
        self.operation = Some(operation.into());
        self
    }

    /// Adds instance ids.
    pub fn with_ids(mut self, ids: impl IntoIterator<Item = InstanceId>) -> Self {
        self.ids.extend(ids);
        self
    }

    /// Overrides whether the error is retryable.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = Some(retryable);
        self
    }

    /// Names the input field this error is about: the message becomes `field: message`. The
    /// kind, the retryable flag, the context and the source are kept.
    pub fn with_field(mut self, field: &str) -> Self {
        self.message = format!("{field}: {}", self.message);
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(p) = &self.provider {
            write!(f, " [{p}")?;
            if let Some(op) = &self.operation {
                write!(f, " {op}")?;
            }
            write!(f, "]")?;
        } else if let Some(op) = &self.operation {
            write!(f, " [{op}]")?;
        }
        write!(f, ": {}", self.message)?;
        if !self.ids.is_empty() {
            let shown: Vec<&str> = self.ids.iter().take(5).map(|i| i.as_str()).collect();
            write!(f, " (instances: {}", shown.join(", "))?;
            if self.ids.len() > 5 {
                write!(f, ", and {} more", self.ids.len() - 5)?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// The result type of every immut API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_follows_kind_unless_overridden() {
        assert!(Error::new(ErrorKind::RateLimited, "slow down").is_retryable());
        assert!(!Error::new(ErrorKind::QuotaExceeded, "no capacity").is_retryable());
        assert!(!Error::new(ErrorKind::Unavailable, "x").with_retryable(false).is_retryable());
    }

    #[test]
    fn display_carries_context() {
        let e = Error::new(ErrorKind::NotFound, "no such instance")
            .with_provider("sim")
            .with_operation("terminate")
            .with_ids([InstanceId::new("i-1")]);
        assert_eq!(e.to_string(), "NotFound [sim terminate]: no such instance (instances: i-1)");
        let e = Error::invalid("desired", "must be at least 1; set desired(1) or more");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("desired: must be at least 1"));
    }

    #[test]
    fn with_field_keeps_kind_context_flag_and_source() {
        let io = std::io::Error::other("disk full");
        let e = Error::new(ErrorKind::Unavailable, "cannot write")
            .with_provider("local")
            .with_operation("launch")
            .with_ids([InstanceId::new("i-1")])
            .with_retryable(false)
            .with_source(io)
            .with_field("state_dir");
        assert_eq!(e.message(), "state_dir: cannot write");
        assert_eq!((e.kind(), e.provider(), e.operation()), (ErrorKind::Unavailable, Some("local"), Some("launch")));
        assert_eq!(e.ids(), &[InstanceId::new("i-1")]);
        assert!(!e.is_retryable());
        assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "disk full");
    }
}
