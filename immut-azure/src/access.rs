//! Sealed VMs on Azure: the check that a sealed baseline asks for no login key, the osProfile
//! a sealed launch carries, and what ARM reports of a VM's ways in, in the provider-neutral
//! shape the audit compares with a sealed baseline.

use azure_mgmt_compute::models;
use immut_core::model::{Access, AccessPath};
use immut_core::{Error, LaunchSpec, Result};
use serde_json::{Value, json};

/// The baseline param that installs an SSH public key for the admin user (refused when sealed).
pub const SSH_KEY_PARAM: &str = "ssh_public_key";

/// The SSH key a launch installs: the baseline's, else the provider's default. A sealed
/// baseline with either is refused before any call, naming where the key was set.
pub(crate) fn login_key<'a>(spec: &'a LaunchSpec, default: Option<&'a String>) -> Result<Option<&'a String>> {
    let key = spec.params.get(SSH_KEY_PARAM).or(default);
    if spec.sealed && key.is_some() {
        let field = if spec.params.contains_key(SSH_KEY_PARAM) {
            format!("baseline.params.{SSH_KEY_PARAM}")
        } else {
            SSH_KEY_PARAM.to_owned()
        };
        return Err(Error::invalid(
            &field,
            "installs an SSH key while baseline.sealed is true; a sealed VM has no login key: remove the key, or set baseline.sealed = false",
        )
        .with_provider("azure"));
    }
    Ok(key)
}

/// Seals an `osProfile`: password login off (it always is), and no extension operations, so
/// no agent can be told to run a command (Run Command, Custom Script, VMAccess).
pub(crate) fn seal(os_profile: &mut Value) {
    os_profile["linuxConfiguration"]["disablePasswordAuthentication"] = json!(true);
    os_profile["allowExtensionOperations"] = json!(false);
}

/// What ARM reports open on a VM: password login, SSH public keys, extension operations
/// allowed, and the extensions installed (the VM's child `resources`). Key contents are never
/// copied into the result.
pub(crate) fn access(vm: &models::VirtualMachine) -> Access {
    let os = vm.properties.as_ref().and_then(|p| p.os_profile.as_ref());
    let linux = os.and_then(|o| o.linux_configuration.as_ref());
    let keys = linux.and_then(|l| l.ssh.as_ref()).map_or(0, |s| s.public_keys.len());
    let password_off = linux.and_then(|l| l.disable_password_authentication) == Some(true);
    // ARM's default for allowExtensionOperations is true: only an explicit false is closed.
    let extensions_off = os.and_then(|o| o.allow_extension_operations) == Some(false);
    let mut access = Access::sealed()
        .with_if(keys > 0, AccessPath::LoginKey, || {
            format!("osProfile.linuxConfiguration.ssh.publicKeys holds {keys} key(s)")
        })
        .with_if(!password_off, AccessPath::PasswordLogin, || {
            "osProfile.linuxConfiguration.disablePasswordAuthentication is not true".to_owned()
        })
        .with_if(!extensions_off, AccessPath::Extensions, || "osProfile.allowExtensionOperations=true".to_owned());
    for ext in &vm.resources {
        let r = &ext.resource_with_optional_location;
        let name = r.name.clone().or_else(|| r.id.as_deref().and_then(|id| id.rsplit('/').next()).map(str::to_owned));
        let kind = ext
            .properties
            .as_ref()
            .map(|p| format!(" ({}/{})", p.publisher.as_deref().unwrap_or("?"), p.type_.as_deref().unwrap_or("?")));
        access = access.with(
            AccessPath::Extensions,
            format!("extension {}{}", name.unwrap_or_default(), kind.unwrap_or_default()),
        );
    }
    access
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(v: Value) -> models::VirtualMachine {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_sealed_profile_reads_back_sealed_and_every_way_in_is_named_without_key_text() {
        let mut os =
            json!({"adminUsername": "azureuser", "linuxConfiguration": {"disablePasswordAuthentication": true}});
        seal(&mut os);
        assert!(access(&vm(json!({"location": "westeurope", "properties": {"osProfile": os}}))).is_sealed());
        let opened = vm(json!({"location": "westeurope",
            "properties": {"osProfile": {"linuxConfiguration": {"disablePasswordAuthentication": false,
                "ssh": {"publicKeys": [{"path": "/home/a/.ssh/authorized_keys", "keyData": "ssh-rsa AAAAsecret"}]}}}},
            "resources": [{"id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/v/extensions/run",
                "properties": {"publisher": "Microsoft.CPlat.Core", "type": "RunCommandLinux"}}]}));
        let seen: Vec<String> = access(&opened).openings.iter().map(ToString::to_string).collect();
        assert_eq!(
            seen,
            [
                "login key (osProfile.linuxConfiguration.ssh.publicKeys holds 1 key(s))",
                "password login (osProfile.linuxConfiguration.disablePasswordAuthentication is not true)",
                "extensions (osProfile.allowExtensionOperations=true)",
                "extensions (extension run (Microsoft.CPlat.Core/RunCommandLinux))"
            ]
        );
        assert!(!seen.concat().contains("AAAA"));
    }

    #[test]
    fn a_key_with_a_sealed_baseline_is_refused_naming_where_it_was_set() {
        let mut spec = LaunchSpec { sealed: true, ..LaunchSpec::default() };
        assert_eq!(login_key(&spec, None).unwrap(), None);
        let default = "ssh-ed25519 AAAA".to_owned();
        let e = login_key(&spec, Some(&default)).unwrap_err();
        assert!(e.to_string().contains("ssh_public_key") && e.to_string().contains("baseline.sealed"), "{e}");
        spec.params.insert(SSH_KEY_PARAM.into(), "ssh-ed25519 BBBB".into());
        let e = login_key(&spec, None).unwrap_err();
        assert!(e.to_string().contains("baseline.params.ssh_public_key"), "{e}");
        spec.sealed = false;
        assert_eq!(login_key(&spec, Some(&default)).unwrap().map(String::as_str), Some("ssh-ed25519 BBBB"));
    }
}
