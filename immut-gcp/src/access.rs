//! Sealed instances on GCE: the metadata a sealed launch carries, the check that a baseline
//! does not ask for a login key with it, and what an instance's metadata shows of its ways in,
//! in the provider-neutral shape the audit compares with a sealed baseline.

use google_cloud_compute_v1::model;
use immut_core::model::{Access, AccessPath};
use immut_core::{Error, LaunchSpec, Result};

/// The metadata keys GCE's guest environment and serial console read.
pub mod keys {
    /// Public keys the guest agent installs for SSH, `user:ssh-rsa ...` per line.
    pub const SSH_KEYS: &str = "ssh-keys";
    /// `TRUE`: the project's SSH keys are not installed on this instance.
    pub const BLOCK_PROJECT_SSH_KEYS: &str = "block-project-ssh-keys";
    /// `TRUE`: the interactive serial console accepts connections.
    pub const SERIAL_PORT_ENABLE: &str = "serial-port-enable";
}

/// The baseline param that sets the instance's `ssh-keys` metadata (refused when sealed).
pub const SSH_KEYS_PARAM: &str = "ssh_keys";

/// Refuses a sealed baseline that also asks for a login key, before any call.
pub(crate) fn check(spec: &LaunchSpec) -> Result<()> {
    if spec.sealed && spec.params.contains_key(SSH_KEYS_PARAM) {
        return Err(Error::invalid(
            &format!("baseline.params.{SSH_KEYS_PARAM}"),
            "sets the ssh-keys metadata while baseline.sealed is true; a sealed instance has no login key: remove ssh_keys, or set baseline.sealed = false",
        )
        .with_provider("gcp"));
    }
    Ok(())
}

/// The metadata items a launch adds for its access: a sealed one blocks the project's keys
/// and turns the serial console off; an unsealed one carries the baseline's `ssh_keys`.
pub(crate) fn launch_items(spec: &LaunchSpec) -> Vec<(&'static str, String)> {
    if spec.sealed {
        vec![(keys::BLOCK_PROJECT_SSH_KEYS, "TRUE".to_owned()), (keys::SERIAL_PORT_ENABLE, "FALSE".to_owned())]
    } else {
        spec.params.get(SSH_KEYS_PARAM).map(|k| vec![(keys::SSH_KEYS, k.clone())]).unwrap_or_default()
    }
}

/// GCE reads these booleans as `TRUE`/`true`/`1`.
fn truthy(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// What the instance's metadata opens: an `ssh-keys` item, project keys not blocked, the
/// serial console on. Key contents are never copied into the result.
pub(crate) fn access(vm: &model::Instance) -> Access {
    let value = |key: &str| {
        vm.metadata.as_ref()?.items.iter().find(|i| i.key.as_deref() == Some(key)).map(|i| i.value.as_deref())
    };
    let keys = value(keys::SSH_KEYS).flatten().map(|v| v.lines().filter(|l| !l.trim().is_empty()).count());
    let block = value(keys::BLOCK_PROJECT_SSH_KEYS).flatten();
    let serial = value(keys::SERIAL_PORT_ENABLE).flatten();
    Access::sealed()
        .with_if(keys.is_some_and(|n| n > 0), AccessPath::LoginKey, || {
            format!("metadata {} holds {} key(s)", keys::SSH_KEYS, keys.unwrap_or_default())
        })
        .with_if(!truthy(block), AccessPath::ProjectKeys, || {
            format!("metadata {}={}", keys::BLOCK_PROJECT_SSH_KEYS, block.unwrap_or("(unset)"))
        })
        .with_if(truthy(serial), AccessPath::SerialConsole, || {
            format!("metadata {}={}", keys::SERIAL_PORT_ENABLE, serial.unwrap_or_default())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(items: &[(&str, &str)]) -> model::Instance {
        model::Instance::new().set_metadata(
            model::Metadata::new()
                .set_items(items.iter().map(|(k, v)| model::metadata::Items::new().set_key(*k).set_value(*v))),
        )
    }

    fn sealed_spec(params: &[(&str, &str)]) -> LaunchSpec {
        LaunchSpec {
            sealed: true,
            params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..LaunchSpec::default()
        }
    }

    #[test]
    fn a_sealed_launch_blocks_project_keys_and_the_console_and_reads_back_sealed() {
        let items = launch_items(&sealed_spec(&[]));
        assert_eq!(items, vec![("block-project-ssh-keys", "TRUE".into()), ("serial-port-enable", "FALSE".into())]);
        let pairs: Vec<(&str, &str)> = items.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert!(access(&vm(&pairs)).is_sealed());
    }

    #[test]
    fn keys_project_keys_and_the_console_are_openings_without_the_key_text() {
        let opened = access(&vm(&[("ssh-keys", "ops:ssh-ed25519 AAAAsecret ops\n"), ("serial-port-enable", "1")]));
        let seen: Vec<String> = opened.openings.iter().map(ToString::to_string).collect();
        assert_eq!(
            seen,
            [
                "login key (metadata ssh-keys holds 1 key(s))",
                "project keys (metadata block-project-ssh-keys=(unset))",
                "serial console (metadata serial-port-enable=1)"
            ]
        );
        assert!(!seen.concat().contains("AAAA"), "key material stays out of the report");
    }

    #[test]
    fn ssh_keys_with_a_sealed_baseline_is_refused_naming_both() {
        let e = check(&sealed_spec(&[("ssh_keys", "ops:ssh-ed25519 AAAA")])).unwrap_err();
        assert!(e.to_string().contains("baseline.params.ssh_keys") && e.to_string().contains("baseline.sealed"), "{e}");
        check(&sealed_spec(&[])).unwrap();
        let open = LaunchSpec { params: sealed_spec(&[("ssh_keys", "k")]).params, ..LaunchSpec::default() };
        check(&open).unwrap();
        assert_eq!(launch_items(&open), vec![("ssh-keys", "k".into())]);
    }
}
