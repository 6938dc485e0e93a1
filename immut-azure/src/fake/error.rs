//! Azure Resource Manager's errors, as types that render ARM's error body:
//! `{"error": {"code", "message", "target", "details": [...]}}`, with the headers that go with
//! them (`Retry-After` on a 429).

use immut_fake::CloudError;
use serde_json::json;

/// One ARM error: an HTTP status, a code (`ResourceNotFound`, `InvalidParameter`,
/// `TooManyRequests`, ...), a message, and optionally the field it is about and a
/// `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmError {
    /// HTTP status.
    pub status: u16,
    /// The machine-readable code.
    pub code: String,
    /// The message, worded as ARM words it.
    pub message: String,
    /// The field the error is about (`hardwareProfile.vmSize`), when there is one.
    pub target: Option<String>,
    /// Seconds the client should wait (429 and 503).
    pub retry_after: Option<u64>,
}

impl ArmError {
    /// An error with a status, a code and a message.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        ArmError { status, code: code.into(), message: message.into(), target: None, retry_after: None }
    }

    /// 404 `ResourceNotFound`, worded as ARM words it.
    pub fn not_found(kind: &str, name: &str, group: &str) -> Self {
        ArmError::new(
            404,
            "ResourceNotFound",
            format!(
                "The Resource '{kind}/{name}' under resource group '{group}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ),
        )
    }

    /// 404 for a path no resource provider serves.
    pub fn no_route(path: &str) -> Self {
        ArmError::new(
            404,
            "InvalidResourceType",
            format!("The resource type could not be found for the path '{path}'."),
        )
    }

    /// 400 `InvalidParameter` about one field.
    pub fn invalid_parameter(target: &str, message: impl Into<String>) -> Self {
        ArmError { target: Some(target.to_owned()), ..ArmError::new(400, "InvalidParameter", message) }
    }

    /// 400 for a body that is not the resource's JSON.
    pub fn bad_body(message: impl Into<String>) -> Self {
        ArmError::new(400, "InvalidRequestContent", message)
    }

    /// 400 `MissingApiVersionParameter`.
    pub fn missing_api_version() -> Self {
        ArmError::new(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    }

    /// 400 `NoRegisteredProviderFound` for an api-version the provider does not serve.
    pub fn unknown_api_version(namespace: &str, version: &str, supported: &[&str]) -> Self {
        ArmError::new(
            400,
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for location 'global' and API version '{version}' for type \
                 '{namespace}'. The supported api-versions are '{}'.",
                supported.join(", ")
            ),
        )
    }

    /// 401 without a bearer token.
    pub fn unauthenticated(message: &str) -> Self {
        ArmError::new(401, "AuthenticationFailed", format!("Authentication failed. {message}"))
    }

    /// 412 `PreconditionFailed`: an `If-Match` or `If-None-Match` condition does not hold.
    pub fn precondition_failed(detail: &str) -> Self {
        ArmError::new(
            412,
            "PreconditionFailed",
            format!("The condition specified using HTTP conditional header(s) is not met. {detail}"),
        )
    }

    /// 409 `Conflict` (a resource being deleted, ...).
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        ArmError::new(409, code, message)
    }

    /// 429 `TooManyRequests` with `Retry-After`, as ARM throttles a subscription.
    pub fn throttled(retry_after: u64) -> Self {
        ArmError {
            retry_after: Some(retry_after),
            ..ArmError::new(
                429,
                "TooManyRequests",
                "The request is being throttled as the limit has been reached for operation type - Write_ObservationWindow_00:00:01.",
            )
        }
    }

    /// A 5xx from ARM or the resource provider.
    pub fn server_error(status: u16) -> Self {
        let (code, message) = match status {
            503 => ("ServiceUnavailable", "The service is currently unavailable. Please try again later."),
            502 => (
                "BadGateway",
                "The gateway did not receive a response from 'Microsoft.Compute' within the specified time period.",
            ),
            504 => (
                "GatewayTimeout",
                "The gateway did not receive a response from 'Microsoft.Compute' within the specified time period.",
            ),
            _ => (
                "InternalServerError",
                "Encountered internal server error. Diagnostic information: timestamp '', subscription id '', tracking id ''.",
            ),
        };
        ArmError { retry_after: (status == 503).then_some(1), ..ArmError::new(status, code, message) }
    }
}

impl CloudError for ArmError {
    fn status(&self) -> u16 {
        self.status
    }

    fn body(&self) -> serde_json::Value {
        let mut error = json!({ "code": self.code, "message": self.message, "details": [] });
        if let Some(t) = &self.target {
            error["target"] = t.clone().into();
        }
        json!({ "error": error })
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut headers = vec![("x-ms-failure-cause".to_owned(), "gateway".to_owned())];
        if let Some(s) = self.retry_after {
            headers.push(("retry-after".to_owned(), s.to_string()));
        }
        headers
    }
}
