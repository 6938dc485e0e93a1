//! VM extensions (`.../virtualMachines/{vm}/extensions/{name}`: `CreateOrUpdate`, `Get`,
//! `List`) and the part of a VM `Update` (PATCH) that touches `osProfile`, as the 2024-07-01
//! reference gives them: an extension is a child resource the VM reports in its `resources`;
//! `osProfile.allowExtensionOperations` false refuses extension operations, and "may only be
//! set to False when no extensions are present"; the rest of `osProfile` is set at creation.

use super::*;

/// The `resources` a VM reports: its extensions.
pub(super) fn resources(vm: &Vm) -> Value {
    let vm_path = vm_id(&vm.sub, &vm.group, &vm.name);
    Value::Array(vm.extensions.iter().map(|(name, ext)| extension_json(&vm_path, name, ext)).collect())
}

fn extension_json(vm_path: &str, name: &str, ext: &Value) -> Value {
    let mut v = ext.clone();
    v["name"] = name.into();
    v["id"] = format!("{vm_path}/extensions/{name}").into();
    v["type"] = "Microsoft.Compute/virtualMachines/extensions".into();
    v
}

fn extensions_allowed(os_profile: &Value) -> bool {
    os_profile.get("allowExtensionOperations").and_then(Value::as_bool) != Some(false)
}

/// Applies a PATCH's `osProfile` to a VM's: `allowExtensionOperations` may change (to false
/// only without extensions); any other property that differs from the VM's is refused.
pub(super) fn patch_os_profile(current: &mut Value, patch: &Value, has_extensions: bool) -> Result<()> {
    let Some(patch) = patch.as_object() else {
        return Err(ArmError::invalid_parameter("osProfile", "osProfile must be an object."));
    };
    for (key, value) in patch {
        if key == "allowExtensionOperations" {
            if value.as_bool().is_none() {
                return Err(ArmError::invalid_parameter("osProfile.allowExtensionOperations", "must be a boolean."));
            }
            if value == &json!(false) && has_extensions {
                return Err(ArmError::conflict(
                    "OperationNotAllowed",
                    "allowExtensionOperations may only be set to false when no extensions are present on the virtual machine.",
                ));
            }
        } else if current.get(key) != Some(value) {
            return Err(ArmError::conflict(
                "PropertyChangeNotAllowed",
                format!("Changing property 'osProfile.{key}' is not allowed."),
            ));
        }
    }
    for (key, value) in patch {
        current[key] = value.clone();
    }
    Ok(())
}

impl ArmApi {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn serve_extension(
        &self,
        m: &mut Model,
        req: &Request,
        env: &Env,
        (sub, group, vm_name): (&str, &str, &str),
        name: Option<&str>,
        api: &str,
        now: Duration,
    ) -> Result<Response> {
        let key = Key::new(sub, group, vm_name);
        let missing = || ArmError::not_found("Microsoft.Compute/virtualMachines", vm_name, group);
        let vm_path = vm_id(sub, group, vm_name);
        match (req.method.as_str(), name) {
            ("GET", None) => {
                let vm = m.vms.get(&key).ok_or_else(missing)?;
                Ok(Response::ok(&json!({ "value": resources(vm) })))
            }
            ("GET", Some(name)) => {
                let vm = m.vms.get(&key).ok_or_else(missing)?;
                let ext = vm
                    .extensions
                    .get(name)
                    .ok_or_else(|| ArmError::not_found("Microsoft.Compute/virtualMachines/extensions", name, group))?;
                Ok(Response::ok(&extension_json(&vm_path, name, ext)))
            }
            ("PUT", Some(name)) => {
                let b = Value::Object(body(req)?);
                let vm = m.vms.get(&key).ok_or_else(missing)?;
                if vm.deleting.is_some() {
                    return Err(ArmError::conflict("OperationNotAllowed", "The virtual machine is being deleted."));
                }
                if !extensions_allowed(&vm.os_profile) {
                    return Err(ArmError::conflict(
                        "OperationNotAllowed",
                        "Extension operations are disallowed on this virtual machine: osProfile.allowExtensionOperations is false.",
                    ));
                }
                let props = &b["properties"];
                for field in ["publisher", "type", "typeHandlerVersion"] {
                    if props.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
                        return Err(ArmError::invalid_parameter(
                            &format!("properties.{field}"),
                            format!("Required parameter '{field}' is missing (null)."),
                        ));
                    }
                }
                let location = vm.location.clone();
                let created = !vm.extensions.contains_key(name);
                // Protected settings are write-only: kept out of every answer.
                let mut properties = props.clone();
                if let Some(p) = properties.as_object_mut() {
                    p.remove("protectedSettings");
                    p.insert("provisioningState".into(), "Succeeded".into());
                }
                let mut ext = json!({ "location": b.get("location").cloned().unwrap_or(location.clone().into()), "properties": properties });
                if let Some(tags) = b.get("tags") {
                    ext["tags"] = tags.clone();
                }
                let took = Duration::from_millis(m.settings.lb_update_ms);
                let target = format!("{vm_path}/extensions/{name}");
                let op = m.start_op("Microsoft.Compute", &location, took, now, None, Effect::None, target);
                let vm = m.vms.get_mut(&key).ok_or_else(missing)?;
                vm.extensions.insert(name.to_owned(), ext.clone());
                let mut answer = extension_json(&vm_path, name, &ext);
                answer["properties"]["provisioningState"] = if created { "Creating" } else { "Updating" }.into();
                let mut r = Response::json(if created { 201 } else { 200 }, &answer);
                r.headers.extend(Self::lro_headers(env, m, sub, "Microsoft.Compute", &location, &op, api));
                Ok(r)
            }
            _ => Err(ArmError::no_route(&req.path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allow_extension_operations_changes_and_not_to_false_over_extensions() {
        let mut os = json!({"adminUsername": "azureuser", "allowExtensionOperations": false});
        patch_os_profile(&mut os, &json!({"allowExtensionOperations": true}), false).unwrap();
        assert_eq!(os["allowExtensionOperations"], true);
        let e = patch_os_profile(&mut os, &json!({"allowExtensionOperations": false}), true).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (409, "OperationNotAllowed"));
        let e = patch_os_profile(&mut os, &json!({"adminUsername": "root"}), false).unwrap_err();
        assert_eq!(e.code, "PropertyChangeNotAllowed");
        assert!(e.message.contains("osProfile.adminUsername"), "{e:?}");
        patch_os_profile(&mut os, &json!({"adminUsername": "azureuser"}), false).unwrap();
        assert!(extensions_allowed(&json!({})), "ARM's default is true");
        assert!(!extensions_allowed(&json!({"allowExtensionOperations": false})));
    }
}
