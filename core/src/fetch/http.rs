//! One HTTP exchange: send a `RequestSpec`, read the body within its size limit, and turn every
//! failure into an `Error` that says what happened without leaking secrets.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Client, Method, StatusCode};

use super::oauth;
use crate::error::{Error, Result, SqlState};
use crate::policy::PolicyDenied;
use crate::spec::{RateLimit, RequestSpec};

/// Statuses worth another try: the server says it may work later.
const RETRY_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

/// A complete response, body read and decompressed.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub final_url: String,
    pub elapsed: Duration,
    /// Requests it took, retries included.
    pub attempts: u32,
}

impl Response {
    /// The start of the body as text, for error details, without `secrets`.
    pub fn body_snippet(&self, secrets: &[String]) -> String {
        crate::error::body_snippet(&self.body, secrets)
    }
}

/// Sends `spec`, retrying what is worth retrying (`spec.retry`), spacing requests by the rate
/// limit, and with a fresh OAuth2 token once when the API refuses the cached one.
pub async fn send(client: &Client, spec: &RequestSpec) -> Result<Response> {
    let mut attempt: u32 = 0;
    let mut token_refreshed = false;
    loop {
        if let Some(rate) = &spec.retry.rate {
            rate.acquire().await;
        }
        let bearer = match &spec.oauth {
            Some(oauth) => Some(oauth::token(client, oauth, spec).await?),
            None => None,
        };
        // The access token is a secret too: never in an error.
        let result = send_once(client, spec, bearer.as_deref())
            .await
            .map_err(|e| e.redact(bearer.as_slice()));
        let wait = match &result {
            Ok(response) if response.status == 401 && !token_refreshed => {
                if let Some(oauth) = &spec.oauth {
                    oauth::forget(oauth);
                    token_refreshed = true;
                    continue;
                }
                None
            }
            Ok(response) if RETRY_STATUSES.contains(&response.status) => {
                Some(retry_after(&response.headers).unwrap_or_else(|| backoff(spec, attempt)))
            }
            Err(error) if error.transient => Some(backoff(spec, attempt)),
            _ => None,
        };
        match wait {
            Some(wait) if attempt < spec.retry.retries => {
                tokio::time::sleep(wait.min(spec.retry.max_wait)).await;
                attempt += 1;
            }
            _ => {
                let attempts = attempt + 1;
                return match result {
                    Ok(response) => Ok(Response {
                        attempts,
                        ..response
                    }),
                    Err(error) if attempts > 1 => {
                        Err(error.with_detail(format!("tried {attempts} times")))
                    }
                    Err(error) => Err(error),
                };
            }
        }
    }
}

/// Exponential backoff from `retry.backoff`, with jitter so that clients do not retry in step.
fn backoff(spec: &RequestSpec, attempt: u32) -> Duration {
    let base = spec.retry.backoff.saturating_mul(1 << attempt.min(16));
    let jitter = 0.5 + 0.5 * random_fraction();
    base.mul_f64(jitter)
}

fn random_fraction() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let mut x = u64::from(nanos) ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x % 10_000) as f64 / 10_000.0
}

/// Retry-After as seconds or as an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl RateLimit {
    /// Waits for this request's slot.
    async fn acquire(&self) {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Redirects followed at most, each hop checked against the network policy before it is sent.
pub const MAX_REDIRECTS: usize = 10;

async fn send_once(client: &Client, spec: &RequestSpec, bearer: Option<&str>) -> Result<Response> {
    let started = Instant::now();
    let mut url = spec.url.clone();
    let mut method = spec.method.clone();
    let mut with_body = true;
    let mut hops = 0;
    // Redirects are followed here, not by the client: each hop is checked against the policy,
    // and credentials go only to their own origin (no Referer is ever sent).
    let mut response = loop {
        spec.policy
            .check_url(&url)
            .map_err(|d| d.into_error().redact(&spec.secrets))?;
        let credentials = spec.credentials.go_to(&url);
        let mut target = url.clone();
        let mut headers = spec.headers.clone();
        if credentials {
            if let Some((name, value)) = &spec.credentials.query {
                target.query_pairs_mut().append_pair(name, value);
            }
        } else {
            for name in &spec.credentials.headers {
                headers.remove(name);
            }
        }
        let mut request = client
            .request(method.clone(), target)
            .headers(headers)
            .timeout(
                spec.timeout
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1)),
            );
        if let Some(token) = bearer.filter(|_| credentials) {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                Error::invalid("the OAuth2 server sent a token that is not a valid header")
            })?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        if let Some(content) = spec.body.content().filter(|_| with_body) {
            if !spec.headers.contains_key(CONTENT_TYPE) {
                if let Some(content_type) = spec.body.content_type() {
                    request = request.header(CONTENT_TYPE, content_type);
                }
            }
            request = request.body(content);
        }
        let response = request.send().await.map_err(|e| transport_error(e, spec))?;
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_string);
        let Some(location) = location.filter(|_| status.is_redirection() && status != 304) else {
            break response;
        };
        hops += 1;
        if hops > MAX_REDIRECTS {
            return Err(Error::new(
                SqlState::ConnectionFailure,
                format!(
                    "request to {} failed: too many redirects (more than {MAX_REDIRECTS})",
                    spec.display_url()
                ),
            )
            .with_hint("at most 10 redirects are followed")
            .redact(&spec.secrets));
        }
        url = url.join(&location).map_err(|e| {
            Error::new(
                SqlState::ConnectionFailure,
                format!(
                    "request to {} failed: invalid redirect location: {e}",
                    spec.display_url()
                ),
            )
            .redact(&spec.secrets)
        })?;
        // 303, and 301/302 after a POST, continue as GET without a body (as browsers do).
        if status == StatusCode::SEE_OTHER
            || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                && method == Method::POST)
        {
            method = Method::GET;
            with_body = false;
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    // The last hop as requested, without the query key the request carried.
    let final_url = url.to_string();

    let limit = spec.max_response_bytes;
    if let Some(length) = response.content_length() {
        if length > limit {
            return Err(too_large(spec, limit, Some(length)));
        }
    }
    let mut body = Vec::with_capacity(response.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(e, spec))?
    {
        // Counted after decompression: a small gzip cannot inflate past the limit.
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large(spec, limit, None));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or(""),
        headers,
        body,
        final_url,
        elapsed: started.elapsed(),
        attempts: 1,
    })
}

fn too_large(spec: &RequestSpec, limit: u64, length: Option<u64>) -> Error {
    let size = match length {
        Some(length) => format!(" (Content-Length {length})"),
        None => String::new(),
    };
    Error::new(
        SqlState::ProgramLimitExceeded,
        format!(
            "response from {} is larger than the limit of {limit} bytes{size}",
            spec.display_url()
        ),
    )
    .with_hint(
        "raise options.max_response_bytes (up to apisync.max_response_bytes), or page the API",
    )
}

/// Classifies a reqwest error. Its own text names the URL, which may carry secrets, so the URL is
/// stripped and the redacted one put in its place.
fn transport_error(err: reqwest::Error, spec: &RequestSpec) -> Error {
    let url = spec.display_url();
    if let Some(denied) = find_source::<PolicyDenied>(&err) {
        return denied.clone().into_error().redact(&spec.secrets);
    }
    let timed_out = err.is_timeout();
    let connect = err.is_connect();
    let redirect = err.is_redirect();
    let body = err.is_body() || err.is_decode();
    let reason = causes(&err.without_url());
    let error = if timed_out {
        Error::new(
            SqlState::ConnectionFailure,
            format!(
                "request to {url} timed out after {} ms",
                spec.timeout.as_millis()
            ),
        )
        .with_hint("raise options.timeout_ms (up to apisync.http_timeout_ms)")
    } else if connect {
        Error::new(
            SqlState::UnableToConnect,
            format!("could not connect to {url}: {reason}"),
        )
        .transient()
    } else if redirect {
        Error::new(
            SqlState::ConnectionFailure,
            format!("request to {url} failed: {reason}"),
        )
        .with_hint("at most 10 redirects are followed")
    } else if body {
        Error::new(
            SqlState::ConnectionFailure,
            format!("could not read the response from {url}: {reason}"),
        )
        .transient()
    } else {
        Error::new(
            SqlState::ConnectionFailure,
            format!("request to {url} failed: {reason}"),
        )
    };
    error.redact(&spec.secrets)
}

/// The first error of type `T` in the chain of `err`.
fn find_source<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// "a: b: c" from an error and its sources, each said once.
pub(crate) fn causes(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}
