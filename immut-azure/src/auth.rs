//! Tokens for ARM: a client-credentials sign-in against Microsoft Entra ID (what
//! `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` are for), a static token (the
//! fake), or any `azure_core` credential; all behind one cache that keeps a token until shortly
//! before it expires, so it is not fetched per request (azure_mgmt_* ask for one on every
//! call). Secrets and tokens never appear in `Debug` output, logs or errors.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::auth::{AccessToken, Secret, TokenCredential};
use time::OffsetDateTime;

/// How long before its expiry a cached token is replaced.
pub(crate) const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The default Microsoft Entra authority.
pub(crate) const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// The scope of Azure Resource Manager.
pub(crate) const ARM_SCOPE: &str = "https://management.azure.com/.default";

/// Where tokens come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// One token, for the fake: it never expires.
    Static(Secret),
    /// The OAuth 2.0 client-credentials grant of Microsoft Entra ID.
    ClientSecret {
        authority: String,
        tenant: String,
        client_id: String,
        secret: Secret,
        http: Arc<dyn azure_core::HttpClient>,
    },
    /// Any credential of the azure_core family.
    Credential(Arc<dyn TokenCredential>),
}

/// A credential that caches the token of its source until [`REFRESH_MARGIN`] before expiry.
pub(crate) struct Cached {
    source: Source,
    cached: tokio::sync::Mutex<Option<AccessToken>>,
    fetched: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.source {
            Source::Static(_) => "static token",
            Source::ClientSecret { .. } => "client secret",
            Source::Credential(_) => "credential",
        };
        f.debug_struct("Cached").field("source", &kind).field("token", &"<redacted>").finish()
    }
}

/// The client-credentials token request: `POST {authority}/{tenant}/oauth2/v2.0/token`, a
/// form body with the grant, the client id and secret and ARM's scope.
pub(crate) fn token_request(
    authority: &str,
    tenant: &str,
    client_id: &str,
    secret: &Secret,
) -> azure_core::Result<azure_core::Request> {
    let url = azure_core::Url::parse(&format!("{}/{tenant}/oauth2/v2.0/token", authority.trim_end_matches('/')))?;
    let mut request = azure_core::Request::new(url, azure_core::Method::Post);
    request.insert_header("content-type", "application/x-www-form-urlencoded");
    request.insert_header("accept", "application/json");
    let body = azure_core::Url::parse("http://form.invalid")
        .map(|mut u| {
            u.query_pairs_mut()
                .append_pair("grant_type", "client_credentials")
                .append_pair("client_id", client_id)
                .append_pair("client_secret", secret.secret())
                .append_pair("scope", ARM_SCOPE);
            u.query().unwrap_or_default().to_owned()
        })
        .unwrap_or_default();
    request.set_body(body);
    Ok(request)
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Reads Entra ID's answer: a token and its lifetime, or its error code and description
/// (which never repeat the secret).
pub(crate) fn parse_token(status: u16, body: &[u8], now: OffsetDateTime) -> azure_core::Result<AccessToken> {
    let answer: TokenAnswer = serde_json::from_slice(body).map_err(|_| {
        azure_core::Error::message(
            azure_core::error::ErrorKind::Credential,
            format!("the token endpoint answered HTTP {status} with a body that is not JSON"),
        )
    })?;
    match (status, answer.access_token) {
        (200, Some(token)) => {
            let secs = match answer.expires_in {
                Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(3600),
                Some(serde_json::Value::String(s)) => s.parse().unwrap_or(3600),
                _ => 3600,
            };
            Ok(AccessToken::new(Secret::new(token), now + time::Duration::seconds(secs)))
        }
        _ => Err(azure_core::Error::message(
            azure_core::error::ErrorKind::Credential,
            format!(
                "Microsoft Entra ID refused the client credentials (HTTP {status}): {}: {}",
                answer.error.unwrap_or_else(|| "no error code".into()),
                answer.error_description.unwrap_or_default().lines().next().unwrap_or_default()
            ),
        )),
    }
}

impl Cached {
    pub(crate) fn new(source: Source) -> Self {
        Cached { source, cached: tokio::sync::Mutex::new(None), fetched: std::sync::atomic::AtomicU64::new(0) }
    }

    /// How many tokens were fetched from the source.
    pub(crate) fn fetched(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn fetch(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        self.fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.source {
            Source::Static(token) => {
                Ok(AccessToken::new(token.clone(), OffsetDateTime::now_utc() + time::Duration::days(3650)))
            }
            Source::Credential(c) => c.get_token(scopes).await,
            Source::ClientSecret { authority, tenant, client_id, secret, http } => {
                let request = token_request(authority, tenant, client_id, secret)?;
                let response = http.execute_request(&request).await?;
                let (status, _, body) = response.deconstruct();
                let body = body.collect().await?;
                parse_token(u16::from(status), &body, OffsetDateTime::now_utc())
            }
        }
    }
}

#[async_trait]
impl TokenCredential for Cached {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && token.expires_on - OffsetDateTime::now_utc() > time::Duration::try_from(REFRESH_MARGIN).expect("small")
        {
            return Ok(token.clone());
        }
        let token = self.fetch(scopes).await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cached.lock().await = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP client that answers the token endpoint from memory: no network.
    #[derive(Debug)]
    struct Entra {
        expires_in: i64,
        calls: std::sync::atomic::AtomicU64,
    }

    #[async_trait]
    impl azure_core::HttpClient for Entra {
        async fn execute_request(&self, request: &azure_core::Request) -> azure_core::Result<azure_core::Response> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let n = self.calls.load(std::sync::atomic::Ordering::SeqCst);
            let body = match request.body() {
                azure_core::Body::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            };
            let json = if body.contains("client_secret=right") {
                format!(r#"{{"token_type":"Bearer","expires_in":{},"access_token":"token-{n}"}}"#, self.expires_in)
            } else {
                r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"}"#.to_owned()
            };
            let status = if json.contains("access_token") {
                azure_core::StatusCode::Ok
            } else {
                azure_core::StatusCode::Unauthorized
            };
            Ok(azure_core::Response::new(
                status,
                azure_core::headers::Headers::new(),
                Box::pin(azure_core::BytesStream::new(json)),
            ))
        }
    }

    fn source(secret: &str, expires_in: i64) -> (Cached, Arc<Entra>) {
        let http = Arc::new(Entra { expires_in, calls: Default::default() });
        let source = Source::ClientSecret {
            authority: "https://login.microsoftonline.com/".into(),
            tenant: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "00000000-1111-2222-3333-444444444444".into(),
            secret: Secret::new(secret.to_owned()),
            http: http.clone(),
        };
        (Cached::new(source), http)
    }

    #[test]
    fn the_client_credentials_request_is_the_entra_token_request() {
        let secret = Secret::new("s3cr3t&=+");
        let r = token_request("https://login.microsoftonline.com/", "tenant-1", "client-1", &secret).unwrap();
        assert_eq!(r.url().as_str(), "https://login.microsoftonline.com/tenant-1/oauth2/v2.0/token");
        assert_eq!(*r.method(), azure_core::Method::Post);
        assert_eq!(
            r.headers().get_optional_str(&azure_core::headers::HeaderName::from_static("content-type")),
            Some("application/x-www-form-urlencoded")
        );
        let azure_core::Body::Bytes(body) = r.body() else { panic!("a form body") };
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(
            body,
            "grant_type=client_credentials&client_id=client-1&client_secret=s3cr3t%26%3D%2B&scope=https%3A%2F%2Fmanagement.azure.com%2F.default"
        );
        let sovereign = token_request("https://login.microsoftonline.us", "t", "c", &secret).unwrap();
        assert!(sovereign.url().as_str().starts_with("https://login.microsoftonline.us/t/"));
    }

    #[tokio::test]
    async fn a_token_is_cached_until_shortly_before_it_expires() {
        let (cached, http) = source("right", 3599);
        for _ in 0..5 {
            assert_eq!(cached.get_token(&[ARM_SCOPE]).await.unwrap().token.secret(), "token-1");
        }
        assert_eq!(http.calls.load(std::sync::atomic::Ordering::SeqCst), 1, "one sign-in for many calls");
        // A token within the refresh margin of its expiry is replaced.
        let (short, http) = source("right", 120);
        short.get_token(&[ARM_SCOPE]).await.unwrap();
        assert_eq!(short.get_token(&[ARM_SCOPE]).await.unwrap().token.secret(), "token-2");
        assert_eq!(http.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(short.fetched(), 2);
    }

    #[tokio::test]
    async fn a_refused_secret_is_an_error_that_never_shows_it() {
        let (cached, _) = source("wrong-secret-value", 3599);
        let e = cached.get_token(&[ARM_SCOPE]).await.unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(text.contains("invalid_client") && text.contains("AADSTS7000215"), "{text}");
        assert!(!text.contains("wrong-secret-value") && !text.contains("Trace ID"), "{text}");
        assert!(!format!("{cached:?}").contains("wrong-secret-value"));
    }
}
