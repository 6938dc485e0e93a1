//! Guardrail policies: what the deployer may do, and what every other principal may not do to
//! managed instances. The providers write the documents (`immut_aws::guardrails` and the GCP
//! and Azure equivalents); this module holds what they share: the principals, the provenance
//! keys a policy protects (from [`label_keys`], never retyped), the state store's requests, the
//! AWS IAM document model, and the set of documents a provider returns.
//!
//! Each provider derives its deployer permissions from one table of the calls it makes, keyed
//! by the operation names it uses for pacing, call counts and error mapping; a test in each
//! provider crate scans its sources for operation names and fails when one is not in the table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::label_keys;

/// Whom a document is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    /// The pipeline's identity: least privilege for every call immut makes.
    Deployer,
    /// Everyone else: refused changes to managed instances outside the pipeline.
    Others,
}

impl std::str::FromStr for Principal {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "deployer" => Ok(Principal::Deployer),
            "others" => Ok(Principal::Others),
            other => Err(Error::invalid("principal", format!("{other:?}: use deployer or others"))),
        }
    }
}

/// Every provenance label key, the signature's included: a guardrail refuses edits of these.
/// A test checks it against what [`crate::Provenance::signed_labels`] writes.
pub const PROVENANCE_KEYS: &[&str] = &[
    label_keys::SERVICE,
    label_keys::RELEASE,
    label_keys::ARTIFACT,
    label_keys::VERSION,
    label_keys::BASELINE,
    label_keys::DEPLOYMENT,
    label_keys::TOKEN,
    label_keys::SIGNATURE,
];

/// The key whose presence marks an instance as managed by immut (every launch sets it).
pub const MANAGED_KEY: &str = label_keys::SERVICE;

/// What a state store request needs from the storage service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateAccess {
    /// Creates an object (create-only put; state is append-only, nothing is overwritten or deleted).
    Create,
    /// Reads an object or its metadata.
    Read,
    /// Lists keys under a prefix.
    List,
}

/// One request kind of the state store ([`crate::state::StateStore`]): the `object_store`
/// method it calls and the access that needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateCall {
    /// The `ObjectStore` method.
    pub method: &'static str,
    /// What it needs.
    pub access: StateAccess,
}

/// Every request the state store makes (journal, lease and ledger alike). A test scans the
/// store's source for `object_store` calls and fails on one that is not listed here.
pub const STATE_CALLS: &[StateCall] = &[
    StateCall { method: "put_opts", access: StateAccess::Create },
    StateCall { method: "get", access: StateAccess::Read },
    StateCall { method: "head", access: StateAccess::Read },
    StateCall { method: "list", access: StateAccess::List },
    StateCall { method: "list_with_delimiter", access: StateAccess::List },
];

/// The accesses the state store needs, each once, in order.
pub fn state_accesses() -> Vec<StateAccess> {
    let mut accesses: Vec<StateAccess> = STATE_CALLS.iter().map(|c| c.access).collect();
    accesses.sort();
    accesses.dedup();
    accesses
}

/// A state store location on a cloud: `s3://bucket/prefix`, `gs://bucket/prefix` or
/// `az://container/prefix`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLocation {
    /// `s3`, `gs` or `az`.
    pub scheme: String,
    /// The bucket or container.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (empty for the whole bucket).
    pub prefix: String,
}

impl StateLocation {
    /// Parses a state URL of `scheme`; the error names the `state` setting and the form.
    pub fn parse(url: &str, scheme: &str) -> Result<StateLocation> {
        let form = format!("use {scheme}://bucket/prefix");
        let rest = url
            .strip_prefix(&format!("{scheme}://"))
            .ok_or_else(|| Error::invalid("state", format!("{url:?} is not a {scheme}:// URL; {form}")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.contains(['*', '?']) {
            return Err(Error::invalid("state", format!("{url:?} names no bucket; {form}")));
        }
        Ok(StateLocation {
            scheme: scheme.to_owned(),
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }

    /// The prefix with a trailing `/`, or empty.
    pub fn key_prefix(&self) -> String {
        if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) }
    }
}

/// An AWS IAM policy document (identity policy or SCP), serialised as AWS reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IamPolicy {
    /// Always `2012-10-17` (the version that has policy variables).
    #[serde(rename = "Version")]
    pub version: String,
    /// The statements.
    #[serde(rename = "Statement")]
    pub statements: Vec<IamStatement>,
}

impl IamPolicy {
    /// A policy of these statements.
    pub fn new(statements: Vec<IamStatement>) -> IamPolicy {
        IamPolicy { version: "2012-10-17".to_owned(), statements }
    }

    /// Every action any statement names, sorted, each once.
    pub fn actions(&self) -> Vec<String> {
        let mut all: Vec<String> = self.statements.iter().flat_map(|s| s.actions.iter().cloned()).collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Grants.
    Allow,
    /// Refuses, whatever else grants.
    Deny,
}

/// One IAM statement. Conditions map an operator (`StringEquals`, `Null`, ...) to keys and
/// their values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IamStatement {
    /// What the statement is for, in CamelCase (IAM allows letters and digits only).
    #[serde(rename = "Sid")]
    pub sid: String,
    /// Allow or deny.
    #[serde(rename = "Effect")]
    pub effect: Effect,
    /// `service:Operation` actions.
    #[serde(rename = "Action")]
    pub actions: Vec<String>,
    /// Resource ARNs (or `*`).
    #[serde(rename = "Resource")]
    pub resources: Vec<String>,
    /// Operator → key → values.
    #[serde(rename = "Condition", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub condition: BTreeMap<String, BTreeMap<String, ConditionValues>>,
}

/// The values of one condition key: one value is written as a string (some linters read `Null`
/// and `Bool` only that way), more as a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConditionValues {
    /// One value.
    One(String),
    /// Any of these.
    Many(Vec<String>),
}

impl ConditionValues {
    /// The values, however they are written.
    pub fn values(&self) -> Vec<&str> {
        match self {
            ConditionValues::One(v) => vec![v.as_str()],
            ConditionValues::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }
}

impl IamStatement {
    /// A statement without conditions; the actions are sorted and deduplicated.
    pub fn new(sid: &str, effect: Effect, actions: Vec<String>, resources: Vec<String>) -> IamStatement {
        let mut actions = actions;
        actions.sort();
        actions.dedup();
        IamStatement { sid: sid.to_owned(), effect, actions, resources, condition: BTreeMap::new() }
    }

    /// Adds a condition: `operator` on `key` with `values`.
    pub fn when(mut self, operator: &str, key: &str, values: &[&str]) -> IamStatement {
        let values = match values {
            [one] => ConditionValues::One((*one).to_owned()),
            many => ConditionValues::Many(many.iter().map(|v| (*v).to_owned()).collect()),
        };
        self.condition.entry(operator.to_owned()).or_default().insert(key.to_owned(), values);
        self
    }
}

/// One generated document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guardrail {
    /// A name to create it under.
    pub name: String,
    /// What kind of document it is, as the cloud calls it (`aws-iam-policy`,
    /// `gcp-custom-role`, `gcp-deny-policy`, `azure-role-definition`, `azure-policy-definition`).
    pub kind: String,
    /// Whom it is for.
    pub principal: Principal,
    /// How to apply it.
    pub apply: String,
    /// What it refuses.
    pub refuses: Vec<String>,
    /// What it cannot refuse, and why.
    pub cannot_refuse: Vec<String>,
    /// The document, as the cloud's API or CLI takes it.
    pub document: serde_json::Value,
}

/// The documents of one provider for one principal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailSet {
    /// `aws`, `gcp` or `azure`.
    pub provider: String,
    /// The documents.
    pub documents: Vec<Guardrail>,
}

impl GuardrailSet {
    /// The document of `kind`, if there is one.
    pub fn document(&self, kind: &str) -> Option<&serde_json::Value> {
        self.documents.iter().find(|d| d.kind == kind).map(|d| &d.document)
    }
}

/// Operation names quoted in `source` right after one of `markers` (for example
/// `pace(Pace::Describe, ` or `map_error(e, `): how a provider's test finds every call its
/// code names, to check them against its table. Only string literals count.
pub fn quoted_after(source: &str, markers: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for marker in markers {
        let mut rest = source;
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            let trimmed = rest.trim_start();
            if let Some(literal) = trimmed.strip_prefix('"')
                && let Some(end) = literal.find('"')
            {
                found.push(literal[..end].to_owned());
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Method names called on `receiver` in `source` (`receiver.method(` or `receiver\n    .method(`,
/// the receiver as a whole word): how a provider's test finds SDK calls that name no operation.
pub fn methods_called_on(source: &str, receiver: &str) -> Vec<String> {
    let bytes = source.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = source[from..].find(receiver) {
        let start = from + at;
        let end = start + receiver.len();
        from = end;
        if start > 0 && is_ident(bytes[start - 1]) || end < bytes.len() && is_ident(bytes[end]) {
            continue;
        }
        let rest = source[end..].trim_start();
        let Some(rest) = rest.strip_prefix('.') else { continue };
        let rest = rest.trim_start();
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() && rest[name.len()..].starts_with('(') {
            found.push(name);
        }
    }
    found.sort();
    found.dedup();
    found
}

/// `describe_instance_status` → `DescribeInstanceStatus`.
pub fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeploymentId, LabelCharset, LaunchToken, Provenance, ReleaseId};

    #[test]
    fn the_provenance_keys_are_every_key_a_signed_launch_writes() {
        let p = Provenance {
            service: "web".into(),
            release: ReleaseId::new("r1"),
            artifact: "web".into(),
            artifact_version: semver::Version::new(1, 0, 0),
            baseline_fingerprint: "b".into(),
            deployment: DeploymentId::new("d1"),
            token: LaunchToken::new("t1"),
        };
        let written: Vec<String> = p.signed_labels(LabelCharset::Any, Some("sig")).into_keys().collect();
        let mut listed: Vec<String> = PROVENANCE_KEYS.iter().map(|k| (*k).to_owned()).collect();
        listed.sort();
        assert_eq!(written, listed, "PROVENANCE_KEYS must list every key Provenance::signed_labels writes");
        assert!(PROVENANCE_KEYS.contains(&MANAGED_KEY));
    }

    #[test]
    fn every_object_store_call_of_the_state_store_is_listed() {
        let source = include_str!("state/mod.rs");
        let called = methods_called_on(source, "store");
        // `self.inner.store.…` and the builder's locals: only ObjectStore methods of the
        // store field matter; the others are the crate's own.
        let own = ["block", "run", "create", "exists", "host", "writer", "clone", "with_host", "location"];
        for method in called.iter().filter(|m| !own.contains(&m.as_str())) {
            assert!(
                STATE_CALLS.iter().any(|c| c.method == method),
                "the state store calls ObjectStore::{method}, which STATE_CALLS does not list: add it with its access"
            );
        }
        for call in STATE_CALLS {
            assert!(called.iter().any(|m| m == call.method), "STATE_CALLS lists {}, which is not called", call.method);
        }
        assert_eq!(state_accesses(), vec![StateAccess::Create, StateAccess::Read, StateAccess::List]);
    }

    #[test]
    fn scanners_find_calls_across_lines_and_only_whole_words() {
        let source = "self.pace(Pace::Describe, \"DescribeInstances\").await;\n let x = self\n   .ec2\n   .run_instances()\n; my_ec2.nope(); ec2x.nope(); ec2.describe_vpcs().send()";
        assert_eq!(quoted_after(source, &["pace(Pace::Describe, "]), vec!["DescribeInstances"]);
        assert_eq!(methods_called_on(source, "ec2"), vec!["describe_vpcs", "run_instances"]);
        assert_eq!(pascal_case("describe_instance_status"), "DescribeInstanceStatus");
    }

    #[test]
    fn state_urls_split_into_bucket_and_prefix() {
        let l = StateLocation::parse("s3://bucket/team/web/", "s3").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str(), l.key_prefix()), ("bucket", "team/web", "team/web/".into()));
        assert_eq!(StateLocation::parse("s3://bucket", "s3").unwrap().key_prefix(), "");
        let e = StateLocation::parse("gs://bucket/x", "s3").unwrap_err();
        assert!(e.to_string().contains("state") && e.to_string().contains("s3://bucket/prefix"), "{e}");
        assert!("nobody".parse::<Principal>().unwrap_err().to_string().contains("deployer or others"));
    }

    #[test]
    fn iam_documents_serialise_as_aws_reads_them() {
        let s = IamStatement::new(
            "Read",
            Effect::Allow,
            vec!["ec2:B".into(), "ec2:A".into(), "ec2:A".into()],
            vec!["*".into()],
        )
        .when("Null", "aws:ResourceTag/immut-service", &["false"]);
        let v = serde_json::to_value(IamPolicy::new(vec![s])).unwrap();
        assert_eq!(v["Version"], "2012-10-17");
        assert_eq!(v["Statement"][0]["Action"], serde_json::json!(["ec2:A", "ec2:B"]));
        assert_eq!(v["Statement"][0]["Effect"], "Allow");
        assert_eq!(v["Statement"][0]["Condition"]["Null"]["aws:ResourceTag/immut-service"], "false");
        let two = IamStatement::new("Two", Effect::Deny, vec!["ec2:A".into()], vec!["*".into()]).when(
            "StringEquals",
            "aws:TagKeys",
            &["a", "b"],
        );
        assert_eq!(
            serde_json::to_value(&two).unwrap()["Condition"]["StringEquals"]["aws:TagKeys"],
            serde_json::json!(["a", "b"])
        );
    }
}
