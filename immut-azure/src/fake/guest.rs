//! Azure's Instance Metadata Service (IMDS) as one VM sees it: `GET /metadata/instance` with
//! `Metadata: true` and an `api-version`, answering the VM's compute and network metadata in
//! the shape of the IMDS reference (`Instances_GetMetadata`), or one part of it under a longer
//! path (`/metadata/instance/compute/storageProfile/imageReference/id?format=text`).

use std::sync::{Arc, Mutex};

use immut_fake::guest::TextAnswer;
use immut_fake::{Api, Env, Fault, Request, Response};
use serde_json::{Value, json};

use super::model::{Key, Model};

/// The versions IMDS accepts, newest first (the reference's stable versions).
const VERSIONS: [&str; 12] = [
    "2023-07-01",
    "2021-12-13",
    "2021-11-15",
    "2021-11-01",
    "2021-10-01",
    "2021-05-01",
    "2021-03-01",
    "2021-02-01",
    "2021-01-01",
    "2020-12-01",
    "2020-10-01",
    "2020-09-01",
];

/// The IMDS of the VM `key`.
#[derive(Clone)]
pub(super) struct GuestApi {
    pub model: Arc<Mutex<Model>>,
    pub key: Key,
}

/// An IMDS error: a JSON body `{"error": "..."}`, with the newest versions when the version is
/// what is wrong.
fn refusal(status: u16, message: &str, versions: bool) -> TextAnswer {
    let mut body = json!({ "error": message });
    if versions {
        body["newest-versions"] = json!(VERSIONS[..3]);
    }
    TextAnswer::new(status, body.to_string(), &[])
}

impl GuestApi {
    fn instance(&self) -> Result<Value, TextAnswer> {
        let m = self.model.lock().expect("model poisoned");
        let Some(vm) = m.vms.get(&self.key) else {
            return Err(refusal(503, "Service unavailable: the VM no longer exists", false));
        };
        let field = |name: &str| vm.image.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        let resource_id = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
            vm.sub, vm.group, vm.name
        );
        let tags: Vec<String> = vm.tags.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        Ok(json!({
            "compute": {
                "azEnvironment": "AzurePublicCloud",
                "location": vm.location,
                "name": vm.name,
                "osType": "Linux",
                "provider": "Microsoft.Compute",
                "resourceGroupName": vm.group,
                "resourceId": resource_id,
                "subscriptionId": vm.sub,
                "vmId": vm.vm_id,
                "vmSize": vm.size,
                "zone": vm.zones.first().cloned().unwrap_or_default(),
                "tags": tags.join(";"),
                "tagsList": vm.tags.iter().map(|(k, v)| json!({ "name": k, "value": v })).collect::<Vec<_>>(),
                "publisher": field("publisher"),
                "offer": field("offer"),
                "sku": field("sku"),
                "version": field("version"),
                "storageProfile": {
                    "imageReference": {
                        "id": field("id"),
                        "publisher": field("publisher"),
                        "offer": field("offer"),
                        "sku": field("sku"),
                        "version": field("version"),
                    },
                    "osDisk": { "name": vm.disk, "osType": "Linux", "createOption": "FromImage" },
                },
            },
            "network": {
                "interface": [{
                    "ipv4": { "ipAddress": [{ "privateIpAddress": vm.ip, "publicIpAddress": "" }], "subnet": [] },
                    "ipv6": { "ipAddress": [] },
                    "macAddress": "000D3A000000",
                }],
            },
        }))
    }
}

impl Api for GuestApi {
    type Route = Vec<String>;
    type Error = TextAnswer;

    fn route(&self, request: &Request) -> Result<(String, Vec<String>), TextAnswer> {
        let segments = request.segments();
        if segments.first() != Some(&"metadata") || segments.get(1) != Some(&"instance") || request.method != "GET" {
            return Err(refusal(404, "Not found", false));
        }
        if request.headers.iter().any(|(k, _)| k == "x-forwarded-for") {
            // IMDS refuses what came through a proxy.
            return Err(refusal(400, "Bad request. X-Forwarded-For header is not allowed.", false));
        }
        let metadata = request.headers.iter().find(|(k, _)| k == "metadata").map(|(_, v)| v.as_str());
        if metadata != Some("true") {
            return Err(refusal(400, "Bad request. Required metadata header not specified", false));
        }
        match request.param("api-version") {
            None => {
                return Err(refusal(
                    400,
                    "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
                    true,
                ));
            }
            Some(v) if !VERSIONS.contains(&v) => {
                return Err(refusal(
                    400,
                    "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds",
                    true,
                ));
            }
            Some(_) => {}
        }
        let path: Vec<String> = segments[2..].iter().map(|s| (*s).to_owned()).collect();
        let operation =
            ["Instances_GetMetadata".to_owned()].into_iter().chain(path.iter().cloned()).collect::<Vec<_>>();
        Ok((operation.join("."), path))
    }

    fn handle(&self, path: Vec<String>, request: &Request, _env: &Env) -> Result<Response, TextAnswer> {
        let instance = self.instance()?;
        let mut value = &instance;
        for segment in &path {
            let next = match value {
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                other => other.get(segment),
            };
            value = next.ok_or_else(|| refusal(404, "Not found", false))?;
        }
        if request.param("format") == Some("text") {
            return match value {
                Value::String(text) => {
                    Ok(TextAnswer::new(200, text.clone(), &[]).response("text/plain; charset=utf-8"))
                }
                _ => Err(refusal(400, "Bad request. Query parameter format=text is only valid for a leaf node", false)),
            };
        }
        Ok(Response::ok(value))
    }

    fn fault_error(&self, _fault: &Fault) -> TextAnswer {
        refusal(503, "Service unavailable", false)
    }

    fn reset(&self) {}

    fn state(&self, _env: &Env) -> Value {
        json!({ "subscription": self.key.sub, "resourceGroup": self.key.group, "vm": self.key.name })
    }

    fn settings(&self) -> Value {
        json!({})
    }

    fn configure(&self, _settings: Value) -> Result<(), String> {
        Err("IMDS has no settings".into())
    }
}
