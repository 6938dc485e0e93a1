//! Guardrail policies for AWS, as IAM JSON.
//!
//! - [`deployer_policy`]: least privilege for every call this crate makes, derived from
//!   [`CALLS`], the one table of operations. The operation names are the ones the client paces,
//!   counts ([`crate::AwsProvider::calls`]) and maps errors under; a test scans this crate's
//!   sources and fails when a call is missing from the table. Each call belongs to a [`Grant`],
//!   which decides its resources and conditions: an instance launch without the managed tag is
//!   refused, and only instances that carry it are terminated.
//! - [`others_policy`]: for every other principal (attach it to their groups or roles, or
//!   use it as an SCP with [`AwsGuardrailOptions::exempt_principals`]): on instances and
//!   volumes tagged [`MANAGED_KEY`] it refuses stop, start, reboot, attribute and metadata
//!   changes, profile and volume swaps, and sessions (Instance Connect, serial console, SSM
//!   sessions and commands);
//!   anywhere it refuses adding or removing a provenance tag ([`PROVENANCE_KEYS`]) and launches
//!   that carry one. Termination stays allowed: it does not change what runs into something
//!   the pipeline did not build, watch restores the count, and it is the break-glass for a
//!   compromised instance.

use immut_core::guardrails::{
    Effect, Guardrail, GuardrailSet, IamPolicy, IamStatement, MANAGED_KEY, PROVENANCE_KEYS, Principal, StateAccess,
    StateLocation, state_accesses,
};
use immut_core::{Error, Result};

/// The AWS service a call goes to, by its IAM prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// EC2 (`ec2:`).
    Ec2,
    /// ELBv2 (`elasticloadbalancing:`).
    Elbv2,
    /// CloudWatch (`cloudwatch:`), for alarms.
    CloudWatch,
}

impl Service {
    /// The IAM action prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Service::Ec2 => "ec2",
            Service::Elbv2 => "elasticloadbalancing",
            Service::CloudWatch => "cloudwatch",
        }
    }
}

/// Which statement of the deployer policy a call's permission goes into: the statement
/// decides resources and conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Describe calls: IAM has no resource-level permissions for them (`*`).
    Read,
    /// RunInstances: instances and volumes only with the managed tag; the network, image and
    /// launch template it uses without conditions.
    Launch,
    /// CreateTags on instances and volumes (tag-on-create and adoption).
    Tag,
    /// TerminateInstances of managed instances only.
    Terminate,
    /// Target registration and the listener's forward.
    Traffic,
    /// CloudWatch alarms of the service.
    Alarms,
    /// The demo stack ([`crate::stack`]): load balancer, target groups and listener creation.
    Stack,
}

/// One call this crate makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The operation, as paced, counted and named in errors (`RunInstances`).
    pub operation: &'static str,
    /// Where it goes; the IAM action is `prefix:operation`.
    pub service: Service,
    /// Its statement.
    pub grant: Grant,
    /// Other actions the call needs (tag-on-create needs `ec2:CreateTags`).
    pub also: &'static [&'static str],
}

const fn call(operation: &'static str, service: Service, grant: Grant) -> Call {
    Call { operation, service, grant, also: &[] }
}

/// Every call of this crate: provider, traffic, health and the demo stack.
pub const CALLS: &[Call] = &[
    call("DescribeImages", Service::Ec2, Grant::Read),
    call("DescribeInstances", Service::Ec2, Grant::Read),
    call("DescribeInstanceStatus", Service::Ec2, Grant::Read),
    Call { operation: "RunInstances", service: Service::Ec2, grant: Grant::Launch, also: &["ec2:CreateTags"] },
    call("CreateTags", Service::Ec2, Grant::Tag),
    call("TerminateInstances", Service::Ec2, Grant::Terminate),
    call("DescribeTargetHealth", Service::Elbv2, Grant::Read),
    call("DescribeAlarms", Service::CloudWatch, Grant::Read),
    call("DescribeListeners", Service::Elbv2, Grant::Read),
    call("DescribeTargetGroupAttributes", Service::Elbv2, Grant::Read),
    call("RegisterTargets", Service::Elbv2, Grant::Traffic),
    call("DeregisterTargets", Service::Elbv2, Grant::Traffic),
    call("ModifyListener", Service::Elbv2, Grant::Traffic),
    call("DescribeVpcs", Service::Ec2, Grant::Stack),
    call("DescribeSubnets", Service::Ec2, Grant::Stack),
    call("DescribeLoadBalancers", Service::Elbv2, Grant::Stack),
    call("DescribeTargetGroups", Service::Elbv2, Grant::Stack),
    call("CreateLoadBalancer", Service::Elbv2, Grant::Stack),
    call("CreateTargetGroup", Service::Elbv2, Grant::Stack),
    call("ModifyTargetGroupAttributes", Service::Elbv2, Grant::Stack),
    call("CreateListener", Service::Elbv2, Grant::Stack),
];

/// Changes to a running instance that only the pipeline may make (by replacing it): refused
/// to everyone else on managed instances.
pub const INSTANCE_CHANGES: &[&str] = &[
    "ec2:StopInstances",
    "ec2:StartInstances",
    "ec2:RebootInstances",
    "ec2:ModifyInstanceAttribute",
    "ec2:ModifyInstanceMetadataOptions",
    "ec2:ModifyInstancePlacement",
    "ec2:ModifyInstanceMaintenanceOptions",
    "ec2:AssociateIamInstanceProfile",
    "ec2:ReplaceIamInstanceProfileAssociation",
    "ec2:AttachVolume",
    "ec2:DetachVolume",
    "ec2:AttachNetworkInterface",
];

/// Changes to a managed instance's volumes.
pub const VOLUME_CHANGES: &[&str] = &["ec2:ModifyVolume", "ec2:AttachVolume", "ec2:DetachVolume"];

/// Interactive ways into an instance, refused on managed ones: a session can change anything.
pub const SESSIONS: &[&str] =
    &["ec2-instance-connect:SendSSHPublicKey", "ec2-instance-connect:SendSerialConsoleSSHPublicKey"];

/// Session Manager's ways into an instance (a shell, or a command run as root), refused on
/// managed ones. SSM conditions an instance's tags as `ssm:resourceTag/<key>`, so these get a
/// statement of their own.
pub const SSM_SESSIONS: &[&str] = &["ssm:SendCommand", "ssm:StartSession"];

/// Where the documents apply, and what the deployment uses besides instances and target groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsGuardrailOptions {
    /// The partition (`aws`, `aws-cn`, `aws-us-gov`).
    pub partition: String,
    /// The region, or `*`.
    pub region: String,
    /// The 12-digit account id, or `*`.
    pub account: String,
    /// The state store, `s3://bucket/prefix`: the deployer may read, list and create objects
    /// under it (state is append-only, so no overwrite or delete is granted).
    pub state: Option<String>,
    /// Roles of the instance profiles the launches name (`iam:PassRole` to EC2 only).
    pub pass_roles: Vec<String>,
    /// Also grant what [`crate::stack`] needs (demos and tests; a real account keeps its load
    /// balancer in its infrastructure code).
    pub stack: bool,
    /// Principal ARNs (wildcards allowed) the "others" statements do not apply to, so the
    /// document can serve as an SCP over the whole account: the deployer's role.
    pub exempt_principals: Vec<String>,
}

impl Default for AwsGuardrailOptions {
    fn default() -> Self {
        AwsGuardrailOptions {
            partition: "aws".into(),
            region: "*".into(),
            account: "*".into(),
            state: None,
            pass_roles: Vec::new(),
            stack: false,
            exempt_principals: Vec::new(),
        }
    }
}

impl AwsGuardrailOptions {
    fn check(&self) -> Result<()> {
        if !["aws", "aws-cn", "aws-us-gov"].contains(&self.partition.as_str()) {
            return Err(Error::invalid("partition", format!("{:?}: use aws, aws-cn or aws-us-gov", self.partition)));
        }
        let region_ok = self.region == "*"
            || (!self.region.is_empty()
                && self.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        if !region_ok {
            return Err(Error::invalid("region", format!("{:?}: use a region such as us-east-1, or *", self.region)));
        }
        if self.account != "*" && (self.account.len() != 12 || !self.account.bytes().all(|b| b.is_ascii_digit())) {
            return Err(Error::invalid("account", format!("{:?}: use the 12-digit account id, or *", self.account)));
        }
        for (field, arns) in [("pass_roles", &self.pass_roles), ("exempt_principals", &self.exempt_principals)] {
            if let Some(bad) = arns.iter().find(|a| !a.starts_with("arn:")) {
                return Err(Error::invalid(field, format!("{bad:?} is not an ARN (arn:aws:iam::123456789012:role/…)")));
            }
        }
        Ok(())
    }

    fn arn(&self, service: &str, resource: &str) -> String {
        format!("arn:{}:{service}:{}:{}:{resource}", self.partition, self.region, self.account)
    }

    fn ec2(&self, resource: &str) -> String {
        self.arn("ec2", resource)
    }

    fn elb(&self, resource: &str) -> String {
        self.arn("elasticloadbalancing", resource)
    }
}

fn actions(grant: Grant, stack: bool) -> Vec<String> {
    CALLS
        .iter()
        .filter(|c| c.grant == grant || (stack && grant == Grant::Read && c.grant == Grant::Stack && is_read(c)))
        .flat_map(|c| std::iter::once(format!("{}:{}", c.service.prefix(), c.operation)).chain(own(c.also)))
        .collect()
}

fn own(also: &[&str]) -> impl Iterator<Item = String> {
    also.iter().map(|a| (*a).to_owned())
}

fn is_read(c: &Call) -> bool {
    c.operation.starts_with("Describe")
}

fn tag(key: &str, kind: &str) -> String {
    format!("aws:{kind}/{key}")
}

/// The deployer's least-privilege policy: every call in [`CALLS`] (the demo stack's only with
/// [`AwsGuardrailOptions::stack`]), plus the state store and instance-profile roles when given.
pub fn deployer_policy(options: &AwsGuardrailOptions) -> Result<IamPolicy> {
    options.check()?;
    let o = options;
    let mut statements = Vec::new();
    // Launch and Tag actions are spread over statements of their own resources below; every
    // other grant is one statement.
    let launch = actions(Grant::Launch, false);
    let (run, launch_also): (Vec<String>, Vec<String>) = launch.into_iter().partition(|a| a == "ec2:RunInstances");
    statements.push(IamStatement::new(
        "ReadFleetImagesAndTraffic",
        Effect::Allow,
        actions(Grant::Read, o.stack),
        vec!["*".into()],
    ));
    statements.push(IamStatement::new(
        "LaunchFromImagesIntoTheNetwork",
        Effect::Allow,
        run.clone(),
        vec![
            o.ec2("instance/*"),
            o.ec2("volume/*"),
            format!("arn:{}:ec2:{}::image/*", o.partition, o.region),
            o.ec2("subnet/*"),
            o.ec2("security-group/*"),
            o.ec2("network-interface/*"),
            o.ec2("launch-template/*"),
            o.ec2("spot-instances-request/*"),
        ],
    ));
    // One Allow over every resource RunInstances touches (as linters expect), and a Deny for an
    // instance without the managed tag, so the deployer launches only what it will manage.
    statements.push(
        IamStatement::new("RefuseLaunchesWithoutTheManagedTag", Effect::Deny, run, vec![o.ec2("instance/*")]).when(
            "Null",
            &tag(MANAGED_KEY, "RequestTag"),
            &["true"],
        ),
    );
    let tagging: Vec<String> = actions(Grant::Tag, false).into_iter().chain(launch_also).collect();
    statements.push(IamStatement::new(
        "TagInstancesAndVolumes",
        Effect::Allow,
        tagging,
        vec![o.ec2("instance/*"), o.ec2("volume/*")],
    ));
    statements.push(
        IamStatement::new(
            "TerminateOnlyManagedInstances",
            Effect::Allow,
            actions(Grant::Terminate, false),
            vec![o.ec2("instance/*")],
        )
        .when("Null", &tag(MANAGED_KEY, "ResourceTag"), &["false"]),
    );
    statements.push(IamStatement::new(
        "MoveTraffic",
        Effect::Allow,
        actions(Grant::Traffic, false),
        vec![o.elb("targetgroup/*/*"), o.elb("listener/app/*/*/*"), o.elb("listener/net/*/*/*")],
    ));
    let alarms = actions(Grant::Alarms, false);
    if !alarms.is_empty() {
        statements.push(IamStatement::new(
            "ServiceAlarms",
            Effect::Allow,
            alarms,
            vec![o.arn("cloudwatch", "alarm:*")],
        ));
    }
    if o.stack {
        let creates: Vec<String> = CALLS
            .iter()
            .filter(|c| c.grant == Grant::Stack && !is_read(c))
            .map(|c| format!("{}:{}", c.service.prefix(), c.operation))
            .collect();
        statements.push(IamStatement::new(
            "CreateTheDemoStack",
            Effect::Allow,
            creates,
            vec![o.elb("loadbalancer/app/*/*"), o.elb("targetgroup/*/*"), o.elb("listener/app/*/*/*")],
        ));
    }
    if !o.pass_roles.is_empty() {
        statements.push(
            IamStatement::new(
                "PassInstanceRolesToEc2",
                Effect::Allow,
                vec!["iam:PassRole".into()],
                o.pass_roles.clone(),
            )
            .when("StringEquals", "iam:PassedToService", &["ec2.amazonaws.com"]),
        );
    }
    if let Some(url) = &o.state {
        statements.extend(state_statements(&StateLocation::parse(url, "s3")?, &o.partition));
    }
    Ok(IamPolicy::new(statements))
}

/// The S3 statements of the state store: one per resource kind (objects, the bucket).
fn state_statements(at: &StateLocation, partition: &str) -> Vec<IamStatement> {
    let mut objects = Vec::new();
    let mut list = false;
    for access in state_accesses() {
        match access {
            StateAccess::Create => objects.push("s3:PutObject".to_owned()),
            StateAccess::Read => objects.push("s3:GetObject".to_owned()),
            StateAccess::List => list = true,
        }
    }
    let prefix = at.key_prefix();
    let mut statements = vec![IamStatement::new(
        "ReadAndCreateStateObjects",
        Effect::Allow,
        objects,
        vec![format!("arn:{partition}:s3:::{}/{prefix}*", at.bucket)],
    )];
    if list {
        let mut s = IamStatement::new(
            "ListState",
            Effect::Allow,
            vec!["s3:ListBucket".into()],
            vec![format!("arn:{partition}:s3:::{}", at.bucket)],
        );
        if !prefix.is_empty() {
            s = s.when("StringLike", "s3:prefix", &[&format!("{prefix}*")]);
        }
        statements.push(s);
    }
    statements
}

/// The policy for every other principal (see the module docs).
pub fn others_policy(options: &AwsGuardrailOptions) -> Result<IamPolicy> {
    options.check()?;
    let o = options;
    let managed = tag(MANAGED_KEY, "ResourceTag");
    let deny = |sid: &str, actions: &[&str], resources: Vec<String>| {
        let s = IamStatement::new(sid, Effect::Deny, actions.iter().map(|a| (*a).to_owned()).collect(), resources);
        if o.exempt_principals.is_empty() {
            s
        } else {
            let exempt: Vec<&str> = o.exempt_principals.iter().map(String::as_str).collect();
            s.when("ArnNotLike", "aws:PrincipalArn", &exempt)
        }
    };
    let (instances, volumes) = (o.ec2("instance/*"), o.ec2("volume/*"));
    Ok(IamPolicy::new(vec![
        deny("NoChangesToManagedInstances", INSTANCE_CHANGES, vec![instances.clone()]).when(
            "Null",
            &managed,
            &["false"],
        ),
        deny("NoChangesToManagedVolumes", VOLUME_CHANGES, vec![volumes.clone()]).when("Null", &managed, &["false"]),
        deny("NoSessionsOnManagedInstances", SESSIONS, vec![instances.clone()]).when("Null", &managed, &["false"]),
        deny("NoSsmSessionsOnManagedInstances", SSM_SESSIONS, vec![instances.clone()]).when(
            "Null",
            &format!("ssm:resourceTag/{MANAGED_KEY}"),
            &["false"],
        ),
        deny(
            "NoEditsOfProvenanceTags",
            &["ec2:CreateTags", "ec2:DeleteTags"],
            vec![instances.clone(), volumes.clone()],
        )
        .when("ForAnyValue:StringEquals", "aws:TagKeys", PROVENANCE_KEYS),
        // DeleteTags without keys deletes every tag: no aws:TagKeys to match above.
        deny("NoRemovalOfAllTagsOfManagedInstances", &["ec2:DeleteTags"], vec![instances.clone(), volumes.clone()])
            .when("Null", &managed, &["false"])
            .when("Null", "aws:TagKeys", &["true"]),
        deny("NoLaunchesWithProvenanceTags", &["ec2:RunInstances"], vec![instances, volumes]).when(
            "ForAnyValue:StringEquals",
            "aws:TagKeys",
            PROVENANCE_KEYS,
        ),
    ]))
}

/// The documents for `principal`, with what each refuses and cannot refuse.
pub fn guardrails(principal: Principal, options: &AwsGuardrailOptions) -> Result<GuardrailSet> {
    let document = match principal {
        Principal::Deployer => Guardrail {
            name: "immut-deployer".into(),
            kind: "aws-iam-policy".into(),
            principal,
            apply: "attach to the pipeline's role: aws iam create-policy --policy-name immut-deployer --policy-document file://deployer.json".into(),
            refuses: vec![
                "everything immut does not call: it allows only the calls in immut_aws::guardrails::CALLS".into(),
                format!("launching an instance without the {MANAGED_KEY} tag, and terminating one without it"),
            ],
            cannot_refuse: vec![
                "a launch template or EBS key the pipeline names is trusted as it is: a customer-managed KMS key must grant the role kms:CreateGrant in its key policy".into(),
                "launches with a key pair are not granted (sealed instances); add key-pair/* to LaunchFromImagesIntoTheNetwork if a launch template names one".into(),
            ],
            document: serde_json::to_value(deployer_policy(options)?).expect("policies serialise"),
        },
        Principal::Others => Guardrail {
            name: "immut-others".into(),
            kind: "aws-iam-policy".into(),
            principal,
            apply: if options.exempt_principals.is_empty() {
                "attach to every other principal's group or role (or as a permissions boundary); or pass --exempt-principal ARN of the deployer role and attach it as an SCP".into()
            } else {
                "attach as a service control policy to the account or OU: the exempt principals (the deployer) are not refused".into()
            },
            refuses: vec![
                format!("on instances tagged {MANAGED_KEY}: {}", INSTANCE_CHANGES.join(", ")),
                format!("on their volumes: {}", VOLUME_CHANGES.join(", ")),
                format!("sessions on managed instances: {}, {}", SESSIONS.join(", "), SSM_SESSIONS.join(", ")),
                format!("adding or removing a provenance tag ({}) anywhere", PROVENANCE_KEYS.join(", ")),
                "DeleteTags without keys (which removes every tag) on managed instances".into(),
                "launches that carry a provenance tag".into(),
            ],
            cannot_refuse: vec![
                "termination (allowed on purpose: watch restores the count; it is the break-glass for a compromised instance)".into(),
                "SSM sessions through a document that targets instances by other means than the instance resource (hybrid managed-instance ARNs): add them to the deny if hybrid nodes are managed".into(),
                "changes through the instance itself (a process with root on it); sealed instances close the ways in".into(),
                "tags a launch template adds: deny ec2:CreateLaunchTemplate* with the provenance keys too if principals may create templates".into(),
                "principals the policy is not attached to (and the root user, unless it is an SCP)".into(),
            ],
            document: serde_json::to_value(others_policy(options)?).expect("policies serialise"),
        },
    };
    Ok(GuardrailSet { provider: "aws".into(), documents: vec![document] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use immut_core::guardrails::{methods_called_on, pascal_case, quoted_after};

    /// Every source file of this crate, so a new file's calls are found too.
    fn sources() -> Vec<(String, String)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut files = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("guardrails.rs") {
                    files.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        files
    }

    #[test]
    fn every_call_the_crate_makes_is_in_the_table_and_every_entry_is_called() {
        let markers = [
            "pace(Pace::Describe, ",
            "pace(Pace::Mutate, ",
            "map_error(e, ",
            "with_operation(",
            "retried(",
            "wait(&self.run_instances, ",
            ".entry(",
        ];
        let mut named = std::collections::BTreeSet::new();
        for (file, source) in sources() {
            // Tests name operations of their own (error-mapping cases).
            let code = source.split("#[cfg(test)]").next().unwrap();
            for op in quoted_after(code, &markers) {
                assert!(
                    CALLS.iter().any(|c| c.operation == op),
                    "{file} calls {op}, which immut_aws::guardrails::CALLS does not list: add it with its grant, or the deployer policy will refuse it"
                );
                named.insert(op);
            }
            for receiver in ["ec2", "elb"] {
                for method in methods_called_on(code, receiver) {
                    let op = pascal_case(&method);
                    assert!(
                        CALLS.iter().any(|c| c.operation == op),
                        "{file} calls {receiver}.{method}() ({op}), which immut_aws::guardrails::CALLS does not list"
                    );
                    named.insert(op);
                }
            }
        }
        for c in CALLS {
            assert!(named.contains(c.operation), "CALLS lists {}, which the crate no longer calls", c.operation);
        }
    }

    #[test]
    fn every_call_is_in_the_deployer_policy_and_launches_need_the_managed_tag() {
        let o = AwsGuardrailOptions { stack: true, ..AwsGuardrailOptions::default() };
        let policy = deployer_policy(&o).unwrap();
        for c in CALLS {
            let action = format!("{}:{}", c.service.prefix(), c.operation);
            assert!(policy.actions().contains(&action), "{action} is missing");
        }
        let without_stack = deployer_policy(&AwsGuardrailOptions::default()).unwrap();
        assert!(!without_stack.actions().contains(&"elasticloadbalancing:CreateLoadBalancer".to_owned()));
        let refuse = policy.statements.iter().find(|s| s.sid == "RefuseLaunchesWithoutTheManagedTag").unwrap();
        assert_eq!(refuse.condition["Null"]["aws:RequestTag/immut-service"].values(), vec!["true"]);
        assert_eq!(refuse.actions, vec!["ec2:RunInstances"]);
        let denies: Vec<&str> =
            policy.statements.iter().filter(|s| s.effect == Effect::Deny).map(|s| s.sid.as_str()).collect();
        assert_eq!(denies, vec![refuse.sid.as_str()], "the only Deny is the launch without the tag");
        assert!(!policy.actions().iter().any(|a| a.contains('*')), "no wildcard actions: {:?}", policy.actions());
    }

    #[test]
    fn the_deployer_policy_grants_no_way_into_an_instance() {
        let o = AwsGuardrailOptions { stack: true, ..AwsGuardrailOptions::default() };
        let policy = deployer_policy(&o).unwrap();
        for action in policy.actions() {
            assert!(
                !action.starts_with("ec2-instance-connect:") && !action.starts_with("ssm:"),
                "the deployer may not open sessions: {action}"
            );
            assert!(!SESSIONS.contains(&action.as_str()) && !SSM_SESSIONS.contains(&action.as_str()));
        }
        let resources: Vec<&String> = policy.statements.iter().flat_map(|s| &s.resources).collect();
        assert!(!resources.iter().any(|r| r.contains("key-pair")), "launches with a key pair are not granted");
        let others = others_policy(&AwsGuardrailOptions::default()).unwrap();
        let ssm = others.statements.iter().find(|s| s.sid == "NoSsmSessionsOnManagedInstances").unwrap();
        assert_eq!(ssm.actions, SSM_SESSIONS);
        assert_eq!(ssm.condition["Null"]["ssm:resourceTag/immut-service"].values(), vec!["false"]);
    }

    #[test]
    fn the_state_store_gets_read_list_and_create_under_its_prefix_only() {
        let o = AwsGuardrailOptions { state: Some("s3://state-bucket/team/web".into()), ..Default::default() };
        let policy = deployer_policy(&o).unwrap();
        let objects = policy.statements.iter().find(|s| s.sid == "ReadAndCreateStateObjects").unwrap();
        assert_eq!(objects.actions, vec!["s3:GetObject", "s3:PutObject"]);
        assert_eq!(objects.resources, vec!["arn:aws:s3:::state-bucket/team/web/*"]);
        let list = policy.statements.iter().find(|s| s.sid == "ListState").unwrap();
        assert_eq!(list.condition["StringLike"]["s3:prefix"].values(), vec!["team/web/*"]);
        assert!(!policy.actions().contains(&"s3:DeleteObject".to_owned()), "state is append-only");
    }

    #[test]
    fn bad_options_name_the_field() {
        for (o, field) in [
            (AwsGuardrailOptions { account: "12".into(), ..Default::default() }, "account"),
            (AwsGuardrailOptions { region: "US East".into(), ..Default::default() }, "region"),
            (AwsGuardrailOptions { partition: "azure".into(), ..Default::default() }, "partition"),
            (
                AwsGuardrailOptions { exempt_principals: vec!["deployer".into()], ..Default::default() },
                "exempt_principals",
            ),
            (AwsGuardrailOptions { state: Some("gs://b/p".into()), ..Default::default() }, "state"),
        ] {
            let e = deployer_policy(&o).and_then(|_| others_policy(&o)).unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn the_others_policy_only_denies_and_names_every_provenance_key() {
        let policy = others_policy(&AwsGuardrailOptions::default()).unwrap();
        assert!(policy.statements.iter().all(|s| s.effect == Effect::Deny));
        let tags = policy.statements.iter().find(|s| s.sid == "NoEditsOfProvenanceTags").unwrap();
        assert_eq!(tags.condition["ForAnyValue:StringEquals"]["aws:TagKeys"].values(), PROVENANCE_KEYS);
        let scp = others_policy(&AwsGuardrailOptions {
            exempt_principals: vec!["arn:aws:iam::123456789012:role/immut-deployer".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(scp.statements.iter().all(|s| s.condition["ArnNotLike"]["aws:PrincipalArn"].values().len() == 1));
    }
}
