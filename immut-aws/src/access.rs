//! What DescribeInstances shows of an instance's ways in, in the provider-neutral shape the
//! audit compares with a sealed baseline.

use aws_sdk_ec2::types::{HttpTokensState, Instance as Ec2Instance, InstanceMetadataEndpointState};
use immut_core::model::{Access, AccessPath};

/// The key pair and the metadata options EC2 reports. Instance Connect and Session Manager
/// leave no trace on the instance; the guardrails deny them instead.
pub(crate) fn access(i: &Ec2Instance) -> Access {
    let mut access = Access::sealed();
    if let Some(key) = i.key_name().filter(|k| !k.is_empty()) {
        access = access.with(AccessPath::LoginKey, format!("KeyName={key}"));
    }
    if let Some(m) = i.metadata_options() {
        let endpoint_on = m.http_endpoint() != Some(&InstanceMetadataEndpointState::Disabled);
        access = access
            .with_if(
                endpoint_on && m.http_tokens() == Some(&HttpTokensState::Optional),
                AccessPath::MetadataWithoutToken,
                || "HttpTokens=optional".to_owned(),
            )
            .with_if(
                endpoint_on && m.http_put_response_hop_limit().is_some_and(|h| h > 1),
                AccessPath::MetadataWithoutToken,
                || format!("HttpPutResponseHopLimit={}", m.http_put_response_hop_limit().unwrap_or_default()),
            );
    }
    access
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::InstanceMetadataOptionsResponse;

    use super::*;

    fn options(tokens: HttpTokensState, hops: i32) -> InstanceMetadataOptionsResponse {
        InstanceMetadataOptionsResponse::builder()
            .http_tokens(tokens)
            .http_put_response_hop_limit(hops)
            .http_endpoint(InstanceMetadataEndpointState::Enabled)
            .build()
    }

    #[test]
    fn a_key_pair_and_imdsv1_are_openings_and_imdsv2_on_one_hop_is_sealed() {
        let sealed = Ec2Instance::builder().metadata_options(options(HttpTokensState::Required, 1)).build();
        assert!(access(&sealed).is_sealed());
        let opened =
            Ec2Instance::builder().key_name("ops").metadata_options(options(HttpTokensState::Optional, 2)).build();
        let seen: Vec<String> = access(&opened).openings.iter().map(ToString::to_string).collect();
        assert_eq!(
            seen,
            [
                "login key (KeyName=ops)",
                "metadata without token (HttpTokens=optional)",
                "metadata without token (HttpPutResponseHopLimit=2)"
            ]
        );
        let off = InstanceMetadataOptionsResponse::builder()
            .http_tokens(HttpTokensState::Optional)
            .http_endpoint(InstanceMetadataEndpointState::Disabled)
            .build();
        assert!(access(&Ec2Instance::builder().metadata_options(off).build()).is_sealed());
    }
}
