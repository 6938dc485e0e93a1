//! Fault injection: rules that make requests fail, operations end badly, or resources misbehave.
//!
//! A rule names the operation it applies to (the cloud's own method name, for example
//! `compute.instances.bulkInsert`, a prefix ending in `*`, or `*` for every call), optionally a
//! target (a substring of the request path, or of the resource the model asks about), how many
//! matching calls to let through first, and how many times to fire (`None`: every time).
//!
//! Request faults ([`Fault::RateLimited`], [`Fault::ServerError`], [`Fault::LoseResponse`]) are
//! applied by the server around every handler. Model faults ([`Fault::OperationError`],
//! [`Fault::SlowOperation`], [`Fault::Unhealthy`]) are asked for by the cloud's model where
//! its behaviour depends on them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// The call is throttled: the cloud's rate-limit error with this HTTP status (GCE: 403
    /// `rateLimitExceeded` or 429).
    RateLimited {
        /// HTTP status.
        status: u16,
    },
    /// The server fails: the cloud's error body with this 5xx status.
    ServerError {
        /// HTTP status.
        status: u16,
    },
    /// The call is applied, then its answer is lost: the connection closes without a response.
    LoseResponse,
    /// A long-running operation the call starts ends with this error code (GCE:
    /// `ZONE_RESOURCE_POOL_EXHAUSTED`, `QUOTA_EXCEEDED`), and changes nothing.
    OperationError {
        /// The cloud's error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// A long-running operation the call starts takes this much longer.
    SlowOperation {
        /// Extra time, in milliseconds.
        extra_ms: u64,
    },
    /// Resources matching the rule's target never pass their health checks.
    Unhealthy,
}

impl Fault {
    /// A short name, for counts: `rate_limited`, `server_error`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Fault::RateLimited { .. } => "rate_limited",
            Fault::ServerError { .. } => "server_error",
            Fault::LoseResponse => "lose_response",
            Fault::OperationError { .. } => "operation_error",
            Fault::SlowOperation { .. } => "slow_operation",
            Fault::Unhealthy => "unhealthy",
        }
    }

    /// Whether the server applies it around the handler (rather than the model).
    pub fn is_request_fault(&self) -> bool {
        matches!(self, Fault::RateLimited { .. } | Fault::ServerError { .. } | Fault::LoseResponse)
    }
}

/// When a fault fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    /// The operation: a method name, a prefix ending in `*`, or `*`.
    pub operation: String,
    /// A substring the request path (request faults) or the resource name (model faults) must
    /// contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The fault.
    pub fault: Fault,
    /// Matching calls let through before the rule fires.
    #[serde(default)]
    pub skip: u32,
    /// How many times it fires; `None` for every matching call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

impl FaultRule {
    /// A rule that fires `times` times for `operation`.
    pub fn new(operation: impl Into<String>, fault: Fault, times: u32) -> Self {
        FaultRule { operation: operation.into(), target: None, fault, skip: 0, times: Some(times) }
    }

    /// A rule that fires on every matching call.
    pub fn always(operation: impl Into<String>, fault: Fault) -> Self {
        FaultRule { operation: operation.into(), target: None, fault, skip: 0, times: None }
    }

    /// Narrows the rule to a target substring.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Lets `n` matching calls through first.
    pub fn skip(mut self, n: u32) -> Self {
        self.skip = n;
        self
    }

    fn matches(&self, operation: &str, target: &str) -> bool {
        let op = match self.operation.strip_suffix('*') {
            Some(prefix) => operation.starts_with(prefix),
            None => self.operation == operation,
        };
        op && self.target.as_deref().is_none_or(|t| target.contains(t))
    }
}

/// The set of fault rules, and how often each kind fired. Cheap to clone; clones share rules.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    rules: Vec<FaultRule>,
    fired: BTreeMap<String, u64>,
}

impl Faults {
    /// Adds a rule.
    pub fn add(&self, rule: FaultRule) {
        self.inner.lock().expect("faults poisoned").rules.push(rule);
    }

    /// The rules still armed.
    pub fn rules(&self) -> Vec<FaultRule> {
        self.inner.lock().expect("faults poisoned").rules.clone()
    }

    /// Removes every rule and forgets the counts.
    pub fn clear(&self) {
        let mut inner = self.inner.lock().expect("faults poisoned");
        inner.rules.clear();
        inner.fired.clear();
    }

    /// How many times faults fired, by `operation:fault` (for example
    /// `compute.instances.bulkInsert:lose_response`).
    pub fn fired(&self) -> BTreeMap<String, u64> {
        self.inner.lock().expect("faults poisoned").fired.clone()
    }

    /// The first armed request fault for this call, consumed.
    pub fn take_request_fault(&self, operation: &str, path: &str) -> Option<Fault> {
        self.take(operation, path, Fault::is_request_fault)
    }

    /// The first armed fault for which `wanted` holds, consumed: what a model asks for where
    /// its behaviour depends on a fault.
    pub fn take(&self, operation: &str, target: &str, wanted: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut inner = self.inner.lock().expect("faults poisoned");
        let index = inner.rules.iter_mut().position(|rule| {
            if !wanted(&rule.fault) || !rule.matches(operation, target) {
                return false;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                return false;
            }
            true
        })?;
        let rule = &mut inner.rules[index];
        let fault = rule.fault.clone();
        if let Some(times) = &mut rule.times {
            *times -= 1;
            if *times == 0 {
                inner.rules.remove(index);
            }
        }
        *inner.fired.entry(format!("{operation}:{}", fault.name())).or_default() += 1;
        Some(fault)
    }

    /// Whether a standing fault of this kind covers the target, without consuming it (an
    /// instance that never becomes healthy stays unhealthy at every check).
    pub fn covers(&self, operation: &str, target: &str, wanted: impl Fn(&Fault) -> bool) -> bool {
        let inner = self.inner.lock().expect("faults poisoned");
        inner.rules.iter().any(|rule| wanted(&rule.fault) && rule.matches(operation, target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_skip_fire_count_and_expire() {
        let faults = Faults::default();
        faults.add(FaultRule::new("compute.instances.*", Fault::ServerError { status: 503 }, 2).skip(1));
        let take = || faults.take_request_fault("compute.instances.list", "/compute/v1/projects/p");
        assert_eq!(take(), None, "the first call is let through");
        assert_eq!(take(), Some(Fault::ServerError { status: 503 }));
        assert_eq!(take(), Some(Fault::ServerError { status: 503 }));
        assert_eq!(take(), None, "fired twice, then gone");
        assert!(faults.rules().is_empty());
        assert_eq!(faults.fired()["compute.instances.list:server_error"], 2);
    }

    #[test]
    fn model_faults_are_not_taken_as_request_faults() {
        let faults = Faults::default();
        faults.add(FaultRule::always("*", Fault::Unhealthy).target("web-v3"));
        assert_eq!(faults.take_request_fault("compute.instances.get", "/x/web-v3"), None);
        assert!(faults.covers("getHealth", "web-v3-0001", |f| *f == Fault::Unhealthy));
        assert!(!faults.covers("getHealth", "web-v2-0001", |f| *f == Fault::Unhealthy));
        assert_eq!(faults.rules().len(), 1, "covers never consumes");
    }

    #[test]
    fn rules_round_trip_as_json() {
        let rule = FaultRule::new(
            "compute.instances.bulkInsert",
            Fault::OperationError { code: "ZONE_RESOURCE_POOL_EXHAUSTED".into(), message: "no".into() },
            1,
        );
        let json = serde_json::to_string(&rule).unwrap();
        assert!(json.contains("\"kind\":\"operation_error\""), "{json}");
        assert_eq!(serde_json::from_str::<FaultRule>(&json).unwrap(), rule);
        let parsed: FaultRule =
            serde_json::from_str(r#"{"operation":"*","fault":{"kind":"rate_limited","status":429}}"#).unwrap();
        assert_eq!(parsed.times, None);
    }
}
