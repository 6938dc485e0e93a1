//! `immut guardrails`: the least-privilege policy of the deployer, or the policy that refuses
//! every other principal changes to managed instances, as JSON on stdout. The documents come
//! from the providers' libraries (`immut::aws::guardrails` and the GCP and Azure equivalents);
//! this file only maps arguments to their options.

use clap::{Args, ValueEnum};
use immut::guardrails::GuardrailSet;

use crate::exit::Exit;

/// A cloud whose guardrails can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cloud {
    /// IAM policies (identity policy or SCP).
    Aws,
    /// A custom role and an IAM deny policy.
    Gcp,
    /// A role definition and an Azure Policy definition.
    Azure,
}

/// Whom the documents are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum For {
    /// The pipeline: least privilege for every call immut makes.
    Deployer,
    /// Everyone else: refused changes to managed instances outside the pipeline.
    Others,
}

/// The arguments of `immut guardrails`.
#[derive(Debug, Clone, Args)]
pub struct GuardrailsArgs {
    /// The cloud.
    #[arg(long, value_enum)]
    pub provider: Cloud,
    /// Whom the documents are for.
    #[arg(long, value_enum, default_value_t = For::Deployer)]
    pub principal: For,
    /// Prints only the document (for `aws iam create-policy --policy-document file://…`),
    /// not the set with what it refuses and cannot refuse.
    #[arg(long)]
    pub document_only: bool,
    /// The state store the deployer writes (s3://, gs:// or az://bucket/prefix).
    #[arg(long, value_name = "URL")]
    pub state: Option<String>,
    /// Also what the demo stack needs (load balancer and target group creation).
    #[arg(long)]
    pub stack: bool,
    /// AWS: the region (default: any).
    #[arg(long, default_value = "*")]
    pub region: String,
    /// AWS: the 12-digit account id (default: any).
    #[arg(long, default_value = "*")]
    pub account: String,
    /// AWS: the partition.
    #[arg(long, default_value = "aws")]
    pub partition: String,
    /// AWS: a role the instance profiles carry (iam:PassRole to EC2); repeatable.
    #[arg(long = "pass-role", value_name = "ARN")]
    pub pass_roles: Vec<String>,
    /// A principal the "others" documents exempt (AWS: the deployer role's ARN, for an SCP;
    /// GCP: principal://… of the deployer's service account, required); repeatable.
    #[arg(long = "exempt-principal", value_name = "PRINCIPAL")]
    pub exempt_principals: Vec<String>,
    /// GCP: limit the deny policy to instances bound to this tag value (PARENT/KEY/VALUE).
    #[arg(long, value_name = "TAG")]
    pub managed_tag: Option<String>,
    /// Azure: the role's assignable scope (/subscriptions/ID/resourceGroups/RG).
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
}

/// Why the documents were not written: the exit code and the message.
pub type Failure = (Exit, String);

/// The JSON `immut guardrails` prints.
pub fn render(args: &GuardrailsArgs) -> Result<String, Failure> {
    let set = match args.provider {
        Cloud::Aws => aws(args)?,
        Cloud::Gcp => gcp(args)?,
        Cloud::Azure => azure(args)?,
    };
    let value = if args.document_only {
        match set.documents.as_slice() {
            [one] => one.document.clone(),
            many => serde_json::Value::Array(many.iter().map(|d| d.document.clone()).collect()),
        }
    } else {
        serde_json::to_value(&set).expect("guardrails serialise")
    };
    Ok(serde_json::to_string_pretty(&value).expect("JSON serialises"))
}

type Set = Result<GuardrailSet, Failure>;

#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
fn principal(args: &GuardrailsArgs) -> immut::guardrails::Principal {
    match args.principal {
        For::Deployer => immut::guardrails::Principal::Deployer,
        For::Others => immut::guardrails::Principal::Others,
    }
}

#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
fn bad(e: immut::Error) -> Failure {
    (Exit::BadInput, e.to_string())
}

#[cfg(not(all(feature = "aws", feature = "gcp", feature = "azure")))]
fn not_built(feature: &str) -> Failure {
    (
        Exit::BadInput,
        format!(
            "this immut was built without the {feature} provider: build it with `cargo install immut-cli --features {feature}` (cargo feature `{feature}`)"
        ),
    )
}

#[cfg(feature = "aws")]
fn aws(args: &GuardrailsArgs) -> Set {
    use immut::aws::guardrails::{AwsGuardrailOptions, guardrails};
    let options = AwsGuardrailOptions {
        partition: args.partition.clone(),
        region: args.region.clone(),
        account: args.account.clone(),
        state: args.state.clone(),
        pass_roles: args.pass_roles.clone(),
        stack: args.stack,
        exempt_principals: args.exempt_principals.clone(),
    };
    guardrails(principal(args), &options).map_err(bad)
}

#[cfg(not(feature = "aws"))]
fn aws(_: &GuardrailsArgs) -> Set {
    Err(not_built("aws"))
}

#[cfg(feature = "gcp")]
fn gcp(args: &GuardrailsArgs) -> Set {
    use immut::gcp::guardrails::{GcpGuardrailOptions, guardrails};
    let options = GcpGuardrailOptions {
        state: args.state.clone(),
        stack: args.stack,
        exempt_principals: args.exempt_principals.clone(),
        managed_tag: args.managed_tag.clone(),
    };
    guardrails(principal(args), &options).map_err(bad)
}

#[cfg(not(feature = "gcp"))]
fn gcp(_: &GuardrailsArgs) -> Set {
    Err(not_built("gcp"))
}

#[cfg(feature = "azure")]
fn azure(args: &GuardrailsArgs) -> Set {
    use immut::azure::guardrails::{AzureGuardrailOptions, guardrails};
    let options = AzureGuardrailOptions { scope: args.scope.clone(), state: args.state.clone() };
    guardrails(principal(args), &options).map_err(bad)
}

#[cfg(not(feature = "azure"))]
fn azure(_: &GuardrailsArgs) -> Set {
    Err(not_built("azure"))
}
