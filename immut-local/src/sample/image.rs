//! The cloud image this machine booted from, as its metadata service says: what the sample
//! reports as `image` when [`super::IMAGE_FROM`] names a cloud. The launcher has no say in the
//! answer: the metadata service speaks for the cloud, which knows what the boot disk was made
//! from.

use std::time::Duration;

/// `SAMPLE_METADATA_ENDPOINT`: the metadata service's base URL, for tests; by default each
/// cloud's own (after its standard override: `AWS_EC2_METADATA_SERVICE_ENDPOINT`,
/// `GCE_METADATA_HOST`).
pub const METADATA_ENDPOINT: &str = "SAMPLE_METADATA_ENDPOINT";

/// Which metadata service to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// EC2's IMDSv2: a session token (`PUT /latest/api/token`), then `GET
    /// /latest/meta-data/ami-id`.
    Ec2,
    /// Compute Engine: `GET /computeMetadata/v1/instance/image` with `Metadata-Flavor: Google`.
    Gce,
    /// Azure IMDS: `GET /metadata/instance?api-version=2021-02-01` with `Metadata: true`, and
    /// its `compute.storageProfile.imageReference.id`.
    Azure,
}

impl Cloud {
    /// Parses the setting's value.
    pub fn parse(text: &str) -> Result<Cloud, String> {
        match text {
            "ec2" => Ok(Cloud::Ec2),
            "gce" => Ok(Cloud::Gce),
            "azure" => Ok(Cloud::Azure),
            other => Err(format!("{}={other:?}: use ec2, gce or azure", super::IMAGE_FROM)),
        }
    }

    fn endpoint(self) -> String {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let base = var(METADATA_ENDPOINT).or_else(|| match self {
            Cloud::Ec2 => var("AWS_EC2_METADATA_SERVICE_ENDPOINT"),
            Cloud::Gce => var("GCE_METADATA_HOST").map(|host| format!("http://{host}")),
            Cloud::Azure => None,
        });
        let base = base.unwrap_or_else(|| match self {
            Cloud::Gce => "http://metadata.google.internal".into(),
            Cloud::Ec2 | Cloud::Azure => "http://169.254.169.254".into(),
        });
        base.trim_end_matches('/').to_owned()
    }
}

/// Asks the metadata service of `cloud` for the boot image, a few times over a few seconds (a
/// fresh machine's network may not be up yet).
pub async fn read(cloud: Cloud) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        // The metadata service is link-local: a proxy must never see these requests.
        .no_proxy()
        .build()
        .map_err(|e| format!("no HTTP client: {e}"))?;
    let base = cloud.endpoint();
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match ask(&client, cloud, &base).await {
            Ok(image) => return Ok(image),
            Err(e) => last = e,
        }
    }
    Err(format!("the metadata service at {base} did not name the boot image: {last}"))
}

async fn ask(client: &reqwest::Client, cloud: Cloud, base: &str) -> Result<String, String> {
    // One metadata request, with the header its service requires: the answer's text.
    let call = |request: reqwest::RequestBuilder, (name, value): (&'static str, String)| async move {
        let answer = request.header(name, value).send().await.map_err(|e| e.to_string())?;
        let status = answer.status();
        let body = answer.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", body.trim()));
        }
        Ok(body.trim().to_owned())
    };
    let image = match cloud {
        Cloud::Ec2 => {
            let ttl = ("X-aws-ec2-metadata-token-ttl-seconds", "60".to_owned());
            let token = call(client.put(format!("{base}/latest/api/token")), ttl).await?;
            let ami = client.get(format!("{base}/latest/meta-data/ami-id"));
            call(ami, ("X-aws-ec2-metadata-token", token)).await?
        }
        Cloud::Gce => {
            let image = client.get(format!("{base}/computeMetadata/v1/instance/image"));
            call(image, ("Metadata-Flavor", "Google".to_owned())).await?
        }
        Cloud::Azure => {
            let instance = client.get(format!("{base}/metadata/instance?api-version=2021-02-01"));
            let body = call(instance, ("Metadata", "true".to_owned())).await?;
            let value: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| format!("the answer is not JSON: {e}"))?;
            let field = |name: &str| {
                let pointer = format!("/compute/storageProfile/imageReference/{name}");
                value.pointer(&pointer).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned()
            };
            match field("id") {
                // A marketplace image has no id: its URN names it.
                id if id.is_empty() && !field("publisher").is_empty() => {
                    format!("{}:{}:{}:{}", field("publisher"), field("offer"), field("sku"), field("version"))
                }
                id => id,
            }
        }
    };
    if image.is_empty() {
        return Err("it named no image".into());
    }
    Ok(image)
}
