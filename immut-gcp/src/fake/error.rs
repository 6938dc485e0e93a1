//! Compute Engine's errors, as types that render Google's error body:
//! `{"error": {"code", "message", "errors": [{"message", "domain", "reason"}]}}`.

use immut_fake::CloudError;

/// One Compute API error: an HTTP status, a reason (`notFound`, `invalid`,
/// `rateLimitExceeded`, ...), its domain and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceError {
    /// HTTP status.
    pub status: u16,
    /// The machine-readable reason.
    pub reason: &'static str,
    /// `global` for most, `usageLimits` for rate limits.
    pub domain: &'static str,
    /// The message, worded as the API words it.
    pub message: String,
}

impl GceError {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        GceError { status, reason, domain: "global", message: message.into() }
    }

    /// 404: `The resource 'projects/p/zones/z/instances/x' was not found`.
    pub fn not_found(resource: &str) -> Self {
        GceError::new(404, "notFound", format!("The resource '{resource}' was not found"))
    }

    /// 409: the resource already exists.
    pub fn already_exists(resource: &str) -> Self {
        GceError::new(409, "alreadyExists", format!("The resource '{resource}' already exists"))
    }

    /// 400: `Invalid value for field 'resource.name': 'Foo'. ...`.
    pub fn invalid_field(field: &str, value: &str, why: &str) -> Self {
        GceError::new(400, "invalid", format!("Invalid value for field '{field}': '{value}'. {why}"))
    }

    /// 400 with a free message (`required`, `badRequest`, ...).
    pub fn bad_request(reason: &'static str, message: impl Into<String>) -> Self {
        GceError::new(400, reason, message)
    }

    /// 412: the fingerprint is stale.
    pub fn condition_not_met(message: impl Into<String>) -> Self {
        GceError::new(412, "conditionNotMet", message)
    }

    /// 403 or 429 `rateLimitExceeded`, as the per-minute rate quotas answer.
    pub fn rate_limited(status: u16) -> Self {
        GceError {
            status,
            reason: "rateLimitExceeded",
            domain: "usageLimits",
            message: "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' of service \
                      'compute.googleapis.com' for consumer 'project_number:0'."
                .into(),
        }
    }

    /// 5xx `backendError`.
    pub fn backend_error(status: u16) -> Self {
        let message = match status {
            503 => "The service is currently unavailable.",
            _ => "Internal error. Please try again or contact Google Support.",
        };
        GceError::new(status, "backendError", message)
    }
}

impl CloudError for GceError {
    fn status(&self) -> u16 {
        self.status
    }

    fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{ "message": self.message, "domain": self.domain, "reason": self.reason }],
            }
        })
    }
}
