//! The Compute Engine metadata server as one instance sees it (`/computeMetadata/v1/...`): what
//! the software on that instance may ask about the instance, such as the image its boot disk
//! was made from. Every request must carry `Metadata-Flavor: Google` and every answer does.

use std::sync::{Arc, Mutex};

use immut_fake::guest::TextAnswer;
use immut_fake::{Api, Env, Fault, Request, Response};

use super::model::Model;

const FLAVOR: (&str, &str) = ("metadata-flavor", "Google");

/// The metadata server of the instance `name` in `project`'s `zone`.
#[derive(Clone)]
pub(super) struct GuestApi {
    pub model: Arc<Mutex<Model>>,
    pub project: String,
    pub zone: String,
    pub name: String,
}

impl GuestApi {
    /// The value of `key` (a path under `/computeMetadata/v1/`), while the instance exists.
    fn value(&self, key: &str) -> Result<String, TextAnswer> {
        let mut m = self.model.lock().expect("model poisoned");
        let p = m.project(&self.project);
        let Some(vm) = p.instances.get(&(self.zone.clone(), self.name.clone())) else {
            // The machine is gone: nobody is left to ask.
            return Err(TextAnswer::new(503, "the instance no longer exists", &[FLAVOR]));
        };
        let found = match key {
            "instance/image" => Some(vm.image.clone()),
            "instance/id" => Some(vm.id.to_string()),
            "instance/name" => Some(vm.name.clone()),
            "instance/hostname" => Some(format!("{}.{}.c.{}.internal", vm.name, vm.zone, self.project)),
            "instance/zone" => Some(format!("projects/{}/zones/{}", self.project, vm.zone)),
            "instance/machine-type" => Some(format!("projects/{}/machineTypes/{}", self.project, vm.machine_type)),
            "instance/network-interfaces/0/ip" => Some(vm.network_ip.clone()),
            "project/project-id" => Some(self.project.clone()),
            other => other
                .strip_prefix("instance/attributes/")
                .and_then(|k| vm.metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())),
        };
        found.ok_or_else(|| TextAnswer::new(404, not_found(key), &[FLAVOR]))
    }
}

fn not_found(key: &str) -> String {
    format!("<!DOCTYPE html><title>404 Not Found</title><p>The requested URL /computeMetadata/v1/{key} was not found.")
}

impl Api for GuestApi {
    type Route = String;
    type Error = TextAnswer;

    fn route(&self, request: &Request) -> Result<(String, String), TextAnswer> {
        let key = request.path.strip_prefix("/computeMetadata/v1/").unwrap_or_default().trim_end_matches('/');
        if key.is_empty() || request.method != "GET" {
            return Err(TextAnswer::new(404, not_found(key), &[FLAVOR]));
        }
        let flavor = request.headers.iter().find(|(k, _)| k == "metadata-flavor").map(|(_, v)| v.as_str());
        if flavor != Some("Google") {
            // The server refuses what a browser or an SSRF'd proxy would send.
            return Err(TextAnswer::new(
                403,
                "<!DOCTYPE html><title>403 Forbidden</title><p>Your client does not have permission to get URL \
                 from this server. Missing Metadata-Flavor:Google header.",
                &[],
            ));
        }
        Ok((format!("metadata.{}", key.replace('/', ".")), key.to_owned()))
    }

    fn handle(&self, key: String, _request: &Request, _env: &Env) -> Result<Response, TextAnswer> {
        let value = self.value(&key)?;
        Ok(TextAnswer::new(200, value, &[FLAVOR]).response("application/text"))
    }

    fn fault_error(&self, _fault: &Fault) -> TextAnswer {
        TextAnswer::new(503, "the metadata server is unavailable", &[FLAVOR])
    }

    fn reset(&self) {}

    fn state(&self, _env: &Env) -> serde_json::Value {
        serde_json::json!({ "project": self.project, "zone": self.zone, "instance": self.name })
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    fn configure(&self, _settings: serde_json::Value) -> Result<(), String> {
        Err("the metadata server has no settings".into())
    }
}
