//! The example specs `immut init` writes, one per provider. Each is complete and valid: the
//! tests parse every one.

use crate::cli::InitProvider;

const COMMON_TAIL: &str = r#"
# How instances are judged healthy.
[health]
http = "/healthz"                # GET this path on each instance; 2xx is healthy
timeout = "500ms"
provider_status = true           # the provider must also report the instance running
# verify = "/version"            # each instance must say it runs the artifact's executable (its digest)
# healthy_threshold = 1          # verdicts in a row to count as healthy
# unhealthy_threshold = 2        # ... and as unhealthy again

# The engine's timing. Durations: "500ms", "30s", "5m", "1h".
[rollout]
min_ready = "1s"                 # a new instance must stay healthy this long before it counts
progress_deadline = "30s"        # no progress for this long: roll back
poll_interval = "200ms"          # how often the engine looks while it waits
# instance_deadline = "15s"      # a new instance not healthy by then is replaced
# replacement_budget_per_wave = "10%"         # failed instances replaced before giving up
# replacement_budget_per_deployment = "10%"

# What `immut watch` does: audit at an interval, repair what drifted by replacement.
[watch]
interval = "30s"                 # time between two audits
# grace = "30s"                  # an unhealthy instance is replaced after this long (default: the interval)
# max_repairs = 1                # the most instances one interval replaces
# breaker_threshold = 3          # failed repairs in a row before the watch stops repairing
# unmanaged = "report"           # report, replace (a repair drains and removes them) or terminate
# unmanaged_scope = "serving"    # serving (in the service's balancer) or service (also idle copies)

# Analysis: with promotion = "analysis" under [strategy], these metrics decide each gate (each
# canary step; a blue/green's switch, measured on the idle set, and its bake). A measurement is
# successful, failed, inconclusive (no data, no traffic) or an error; the limits decide the run.
# [analysis]
# smoke_load = { rate = 20, duration = "1s" }   # blue/green: load the idle set before measuring
#
# [[analysis.metrics]]
# name = "error-ratio"
# provider = "scrape"            # scrape: the instances' /metrics (share of 5xx requests)
#                                # webhook: POSTs the deployment to url; 2xx passes, 4xx refuses
#                                # prometheus: url, query; judge: url, query, window, step
# interval = "2s"
# count = 3
# success = "< 0.01"             # <, <=, > or >= and a number; also failure = ">= 0.05"
# failure_limit = 0              # also inconclusive_limit = 0, consecutive_error_limit = 4
"#;

const LOCAL: &str = r#"# immut service spec: the sample service built into immut, as real local processes.
# Every value can be overridden for one run: immut deploy --set artifact.version=2.0.0

service = "web"                  # 1 to 40 lowercase letters, digits or '-'
desired = 3                      # how many instances serve
state = ".immut/state"           # journal, lease, ledger, approvals: a directory, or a URL shared
                                 # by every deploying machine, s3://bucket/prefix (feature state-s3)
# signing_key_env = "IMMUT_SIGNING_KEY"   # the NAME of a variable holding a signing key (16+ bytes)

[provider]
kind = "local"                   # local, sim; aws and gcp when immut is built with them

[provider.local]
state_dir = ".immut/local"       # instance records and logs
listen = "127.0.0.1:0"           # the balancer's address while a command runs (0: any free port)
drain_timeout = "2s"             # the longest a detach waits for in-flight requests
term_timeout = "5s"              # between SIGTERM and SIGKILL

# The artifact: what runs. For the local provider, an executable (its sha256 is checked before
# every launch), or "builtin:sample", the sample HTTP service inside this immut binary.
[artifact]
name = "sample"
version = "1.0.0"                # semver; a lower version than what serves needs --rollback
image = "builtin:sample"
# digest = "sha256:..."          # optional: refuse to launch a file with another digest

# The baseline: the known-good launch configuration, versioned.
[baseline]
name = "sample"
version = "1.0.0"
# args = ["--port", "{port}"]    # the process's arguments ({port}: the instance's port)
# env = { LOG_LEVEL = "info" }
# user_data_file = "user-data.sh"  # read at deploy time; part of the baseline's fingerprint
labels = { team = "platform" }   # extra labels on every instance
# params = { port = "20000-20099" }
sealed = true                    # no interactive way in; a local process has none to close,
                                 # so this means nothing here (it does on aws, gcp and azure)

# How releases replace each other:
#   blue_green: bake, keep_old, promotion
#   rolling:    max_surge, max_unavailable (counts or percents: 1, "25%"), pause
#   canary:     steps (for example [1, "25%", "50%"]), pause, promotion
# promotion = "manual": each gate (the switch, each canary step) waits for `immut promote`;
# promotion = "analysis": the metrics of [analysis] (below) decide each gate
[strategy]
kind = "blue_green"
bake = "2s"                      # the new fleet serves this long before the old one goes
keep_old = "0s"                  # then the old fleet idles this long, ready to switch back
"#;

const LOCAL_PLAN: &str = r#"
# The latencies `immut plan` assumes (it runs the engine on the simulator, in virtual time).
[plan]
api = "5ms"
launch_to_running = "200ms"
boot_to_healthy = "300ms"
drain = "100ms"
"#;

const SIM: &str = r#"# immut service spec on the simulator: an in-memory cloud whose fleet is kept in a file
# between commands. For trying strategies, tests and demos; nothing real is launched.

service = "web"
desired = 4
state = ".immut/state"

[provider]
kind = "sim"

[provider.sim]
fleet = ".immut/sim-fleet.json"  # the simulated fleet between commands
api = "2ms"                      # latencies of the simulated cloud, in real time
launch_to_running = "20ms"
boot_to_healthy = "20ms"
drain = "5ms"
seed = 0
# never_healthy_versions = ["2.0.0"]   # these versions never turn healthy: a rollback
# fail_launch_calls = [2]              # launch calls (from 1, per command) that fail
# fail_launch_kind = "quota_exceeded"  # or "unavailable", "permission_denied"
# throttle_rate = 0.0                  # probability that a call is throttled

[artifact]
name = "web"
version = "1.0.0"
image = "img-web-1"              # any reference: the simulator runs nothing

[baseline]
name = "web-base"
version = "1.0.0"
machine_type = "m5.large"
sealed = true                    # no interactive way in (the audit flags an instance opened later)

[strategy]
kind = "rolling"
max_surge = "25%"
max_unavailable = 0

[health]
provider_status = true

[rollout]
min_ready = "10ms"
progress_deadline = "10s"
poll_interval = "10ms"

# The latencies `immut plan` assumes: here, the simulated cloud's own.
[plan]
api = "2ms"
launch_to_running = "20ms"
boot_to_healthy = "20ms"
drain = "5ms"
"#;

const AWS: &str = r#"# immut service spec on EC2 behind ELBv2. Credentials come from the AWS SDK's default chain
# (environment, profile, instance role), never from this file.

service = "web"
desired = 6
state = ".immut/state"
# signing_key_env = "IMMUT_SIGNING_KEY"

[provider]
kind = "aws"                     # needs immut built with --features aws

[provider.aws]
region = "eu-west-1"             # default: the SDK's chain, or IMMUT_AWS_REGION
subnet = "subnet-0abc"           # default: IMMUT_AWS_SUBNET
# endpoint = "http://127.0.0.1:5000"   # moto, or a proxy
# Blue/green: a listener and two target groups (a rollback is one switch back).
listener = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/web/0123456789abcdef/0123456789abcdef"
blue_target_group = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web-blue/0123456789abcdef"
green_target_group = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web-green/0123456789abcdef"
# Rolling and canary: one target group instead.
# target_group = "arn:aws:elasticloadbalancing:...:targetgroup/web/..."
drain_timeout = "30s"            # the target groups' deregistration delay

[artifact]
name = "web"
version = "1.0.0"
image = "ami-0123456789abcdef0"

[baseline]
name = "web-base"
version = "1.0.0"
machine_type = "t3.small"        # the instance type
# user_data_file = "user-data.sh"
labels = { team = "platform" }
sealed = true                    # no key pair, IMDSv2 only on one hop: no interactive way in
                                 # (key_name or imdsv2 = "optional" in params are then refused)

[strategy]
kind = "blue_green"
bake = "5m"
keep_old = "10m"

[health]
http = "/healthz"                # probed on each instance's private address
timeout = "2s"
provider_status = true           # EC2 status checks; target health always counts
# verify = "/version"            # each instance must name the AMI it booted from (from IMDSv2)

[rollout]
min_ready = "30s"
progress_deadline = "15m"
"#;

const GCP: &str = r#"# immut service spec on Compute Engine behind a backend service. Credentials are Application
# Default Credentials, never this file.

service = "web"
desired = 6
state = ".immut/state"

[provider]
kind = "gcp"                     # needs immut built with --features gcp

[provider.gcp]
project = "my-project"           # default: GOOGLE_CLOUD_PROJECT
zones = ["us-central1-a", "us-central1-b"]   # default: IMMUT_GCP_ZONES
# endpoint = "http://127.0.0.1:8085"         # the fake Compute API
# anonymous = true                           # no credentials (the fake)
zone_fallback = false
backend_service = "web"
# Blue/green: two colours of unmanaged groups (one per zone each).
blue_group = "web-blue"
green_group = "web-green"
# Rolling and canary: one group instead.
# group = "web"

[artifact]
name = "web"
version = "1.0.0"
image = "projects/my-project/global/images/web-1-0-0"

[baseline]
name = "web-base"
version = "1.0.0"
machine_type = "e2-small"
network = "default"
labels = { team = "platform" }
sealed = true                    # no ssh-keys, project keys blocked, serial console off

[strategy]
kind = "blue_green"
bake = "5m"

[health]
http = "/healthz"
timeout = "2s"
# verify = "/version"            # each instance must name the image it booted from (metadata server)

[rollout]
min_ready = "30s"
progress_deadline = "15m"
"#;

/// The commented example spec for a provider.
pub fn template(provider: InitProvider) -> String {
    match provider {
        InitProvider::Local => format!("{LOCAL}{COMMON_TAIL}{LOCAL_PLAN}"),
        InitProvider::Sim => SIM.to_owned(),
        InitProvider::Aws => AWS.to_owned(),
        InitProvider::Gcp => GCP.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_template_is_a_valid_spec_where_its_provider_is_built() {
        for (p, kind) in [
            (InitProvider::Local, "local"),
            (InitProvider::Sim, "sim"),
            (InitProvider::Aws, "aws"),
            (InitProvider::Gcp, "gcp"),
        ] {
            let text = template(p);
            let parsed = crate::spec::parse(&text, Path::new("immut.toml"), Path::new("/tmp"), &[]);
            if crate::spec::PROVIDER_KINDS.contains(&kind) {
                let spec = parsed.unwrap_or_else(|e| panic!("{kind}: {e}"));
                assert_eq!(spec.provider.kind(), kind);
                assert!(spec.launch.sealed, "{kind}: a new spec launches sealed instances");
            } else {
                let e = parsed.unwrap_err().to_string();
                assert!(e.contains("built without the") && e.contains(&format!("--features {kind}")), "{e}");
            }
        }
    }

    #[test]
    fn the_commented_analysis_is_a_valid_section_once_uncommented() {
        let text = template(InitProvider::Local);
        let start = text.find("# [analysis]").unwrap();
        let end = start + text[start..].find("\n\n# The latencies").unwrap();
        let section: String = text[start..end]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .collect::<Vec<_>>()
            .join("\n");
        let text = format!("{}{}\n{}", &text[..start], section, &text[end..]);
        let spec = crate::spec::parse(
            &text,
            Path::new("immut.toml"),
            Path::new("/tmp"),
            &["strategy.promotion=analysis".into()],
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(spec.analysis.unwrap().analysis.metrics[0].name, "error-ratio");
    }
}
