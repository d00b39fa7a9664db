//! OAuth2 client credentials (RFC 6749 §4.4): a token per (token URL, client, scope), cached in
//! the backend until shortly before it expires, fetched again once when an API answers 401.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Client;
use serde_json::Value;

use crate::error::{Error, Result, SqlState};
use crate::spec::{base64_encode, OAuth2, RequestSpec};

/// Tokens are renewed this long before they expire.
const MARGIN: Duration = Duration::from_secs(30);
/// When the server does not say how long a token lives.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

static TOKENS: Mutex<Vec<(Arc<OAuth2>, String, Instant)>> = Mutex::new(Vec::new());

/// A valid access token: the cached one, or a new one from the token URL.
pub async fn token(client: &Client, oauth: &Arc<OAuth2>, spec: &RequestSpec) -> Result<String> {
    if let Some(token) = cached(oauth) {
        return Ok(token);
    }
    let (token, lifetime) = request_token(client, oauth, spec).await?;
    let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    tokens.retain(|(key, _, _)| **key != **oauth);
    tokens.push((
        oauth.clone(),
        token.clone(),
        Instant::now() + lifetime.saturating_sub(MARGIN),
    ));
    Ok(token)
}

/// Drops the cached token (the API refused it).
pub fn forget(oauth: &OAuth2) {
    TOKENS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(key, _, _)| **key != *oauth);
}

fn cached(oauth: &OAuth2) -> Option<String> {
    let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    tokens
        .iter()
        .find(|(key, _, until)| **key == *oauth && *until > now)
        .map(|(_, token, _)| token.clone())
}

async fn request_token(
    client: &Client,
    oauth: &OAuth2,
    spec: &RequestSpec,
) -> Result<(String, Duration)> {
    spec.policy
        .check_url(&oauth.token_url)
        .map_err(|d| d.into_error())?;
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(scope) = &oauth.scope {
        form.push(("scope", scope));
    }
    let endpoint = TokenEndpoint {
        url: &oauth.token_url,
        client_id: &oauth.client_id,
        client_secret: &oauth.client_secret,
        timeout: spec.timeout,
        max_response_bytes: spec.max_response_bytes,
    };
    let answer = endpoint.exchange(client, &form, &spec.secrets).await?;
    Ok((answer.access_token, answer.lifetime))
}

/// A token endpoint and the client's credentials for it (client_secret_basic).
pub struct TokenEndpoint<'a> {
    pub url: &'a url::Url,
    pub client_id: &'a str,
    pub client_secret: &'a str,
    pub timeout: Duration,
    pub max_response_bytes: u64,
}

/// What a token endpoint granted.
#[derive(Debug)]
pub struct Granted {
    pub access_token: String,
    /// How long the access token lives (`expires_in`, a day at most, an hour when not given).
    pub lifetime: Duration,
    /// A new refresh token, when the endpoint rotates them.
    pub refresh_token: Option<String>,
}

impl TokenEndpoint<'_> {
    /// Posts `form` (RFC 6749 §4.4 or §6) and reads the grant. An error status is 38000 with the
    /// endpoint's `error` and `error_description`; `secrets` are scrubbed from every error.
    pub async fn exchange(
        &self,
        client: &Client,
        form: &[(&str, &str)],
        secrets: &[String],
    ) -> Result<Granted> {
        let url = self.url.as_str();
        let fail = |message: String| {
            Error::new(
                SqlState::ExternalRoutineException,
                format!("OAuth2 token request to {url} failed: {message}"),
            )
            .redact(secrets)
        };
        let body = {
            let mut encoded = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in form {
                encoded.append_pair(name, value);
            }
            encoded.finish()
        };
        let credentials =
            base64_encode(format!("{}:{}", self.client_id, self.client_secret).as_bytes());
        let response = client
            .post(self.url.clone())
            .header(AUTHORIZATION, format!("Basic {credentials}"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .timeout(self.timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| fail(crate::fetch::http::causes(&e.without_url())))?;
        let status = response.status();
        let mut response = response;
        // Read within the size limit, as every body is.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fail(crate::fetch::http::causes(&e.without_url())))?
        {
            if (body.len() + chunk.len()) as u64 > self.max_response_bytes {
                return Err(Error::new(
                    SqlState::ProgramLimitExceeded,
                    format!(
                        "OAuth2 token response from {url} is larger than the limit of {} bytes",
                        self.max_response_bytes
                    ),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let doc: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            // RFC 6749 §5.2: `error`, and perhaps `error_description`.
            let said = doc.as_ref().and_then(|doc| {
                let error = doc.get("error")?.as_str()?;
                Some(match doc.get("error_description").and_then(Value::as_str) {
                    Some(description) => format!(": {error}: {description}"),
                    None => format!(": {error}"),
                })
            });
            return Err(fail(format!("HTTP {status}{}", said.unwrap_or_default()))
                .with_detail(format!(
                    "response body: {}",
                    crate::error::body_snippet(&body, secrets)
                ))
                .redact(secrets));
        }
        let doc = doc.ok_or_else(|| fail("the answer is not JSON".into()))?;
        let access_token = doc["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail("the answer has no access_token".into()))?;
        let lifetime = doc["expires_in"]
            .as_u64()
            // A day at most: a huge lifetime would overflow the cache's clock.
            .map(|seconds| Duration::from_secs(seconds.min(86_400)))
            .unwrap_or(DEFAULT_LIFETIME);
        Ok(Granted {
            access_token: access_token.to_string(),
            lifetime,
            refresh_token: doc["refresh_token"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        })
    }
}
