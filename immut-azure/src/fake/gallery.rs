//! Compute Gallery image versions (`GalleryImageVersions_Get`, `_CreateOrUpdate`, `_Delete` of
//! the GalleryRP reference, api-version 2023-07-03 and earlier). A PUT publishes or updates a
//! version (its `publishingProfile.endOfLifeDate` and `excludeFromLatest`) and answers it
//! `Succeeded` at once (201 new, 200 updated); a DELETE removes it (200; 204 when it was not
//! there). Both are long-running in the reference; answering them finished is one of the
//! answers it allows.

use immut_fake::{Request, Response};
use serde_json::{Value, json};

use super::error::ArmError;
use super::model::{Image, Model};

type Result<T> = std::result::Result<T, ArmError>;

/// The names in a version's path.
#[derive(Debug, Clone)]
pub struct VersionPath {
    /// Subscription.
    pub sub: String,
    /// Resource group.
    pub group: String,
    /// Gallery.
    pub gallery: String,
    /// Image definition.
    pub image: String,
    /// Version (`1.0.0`).
    pub version: String,
}

impl VersionPath {
    fn id(&self) -> String {
        let VersionPath { sub, group, gallery, image, version } = self;
        format!(
            "/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/galleries/{gallery}/images/{image}/versions/{version}"
        )
    }
}

fn version_json(path: &VersionPath, found: &Image) -> Value {
    let mut profile = json!({
        "targetRegions": [{ "name": found.location, "regionalReplicaCount": 1, "storageAccountType": "Standard_LRS" }],
        "replicaCount": 1,
        "excludeFromLatest": found.exclude_from_latest,
        "storageAccountType": "Standard_LRS",
    });
    if let Some(end) = &found.end_of_life {
        profile["endOfLifeDate"] = end.clone().into();
    }
    json!({
        "id": found.id, "name": path.version, "type": "Microsoft.Compute/galleries/images/versions",
        "location": found.location,
        "properties": {
            "provisioningState": "Succeeded",
            "publishingProfile": profile,
            "storageProfile": { "osDiskImage": { "sizeInGB": 30, "hostCaching": "ReadWrite" } },
            "safetyProfile": { "allowDeletionOfReplicatedLocations": true },
        },
    })
}

/// `endOfLifeDate` must be an RFC 3339 date-time, as the reference's `format: date-time` says.
fn date_time(value: &str) -> bool {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).is_ok()
}

/// Serves a version by method.
pub fn serve(m: &mut Model, req: &Request, path: &VersionPath) -> Result<Response> {
    let id = path.id();
    let missing = || {
        ArmError::not_found(
            "Microsoft.Compute/galleries/images/versions",
            &format!("{}/{}/{}", path.gallery, path.image, path.version),
            &path.group,
        )
    };
    match req.method.as_str() {
        "GET" => Ok(Response::ok(&version_json(path, m.image(&id).ok_or_else(missing)?))),
        "DELETE" => Ok(match m.images.remove(&id.to_ascii_lowercase()) {
            Some(_) => Response { status: 200, headers: Vec::new(), body: Vec::new() },
            None => Response { status: 204, headers: Vec::new(), body: Vec::new() },
        }),
        _ => {
            let body: Value = req.json().map_err(|e| {
                ArmError::bad_body(format!("The request content was invalid and could not be deserialized: {e}"))
            })?;
            let location = body.get("location").and_then(Value::as_str).ok_or_else(|| {
                ArmError::new(400, "LocationRequired", "The location property is required for this definition.")
            })?;
            let properties = &body["properties"];
            if !properties.get("storageProfile").is_some_and(Value::is_object) {
                return Err(ArmError::invalid_parameter(
                    "properties.storageProfile",
                    "The gallery image version needs a storageProfile with its source.",
                ));
            }
            let profile = &properties["publishingProfile"];
            let end_of_life = match profile.get("endOfLifeDate") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if date_time(s) => Some(s.clone()),
                Some(other) => {
                    return Err(ArmError::invalid_parameter(
                        "properties.publishingProfile.endOfLifeDate",
                        format!("The value {other} is not a valid date-time."),
                    ));
                }
            };
            let created = m.image(&id).is_none();
            let image = Image {
                end_of_life,
                exclude_from_latest: profile.get("excludeFromLatest").and_then(Value::as_bool).unwrap_or(false),
                ..Image::new(&id, location)
            };
            let answer = version_json(path, &image);
            m.images.insert(id.to_ascii_lowercase(), image);
            let mut response = Response::ok(&answer);
            if created {
                response.status = 201;
            }
            Ok(response)
        }
    }
}
