//! One HTTP exchange: send a `RequestSpec`, read the body within its size limit, and turn every
//! failure into an `Error` that says what happened without leaking secrets.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Client, Method, StatusCode};

use super::oauth;
use crate::error::{Error, Result, SqlState};
use crate::policy::PolicyDenied;
use crate::spec::{RateLimit, RequestGate, RequestSpec};

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

/// A response whose head was read; the caller reads its body (`BodyStream`).
pub struct Head {
    pub status: u16,
    pub reason: &'static str,
    pub headers: HeaderMap,
    pub final_url: String,
    pub started: Instant,
    /// Requests it took, retries included.
    pub attempts: u32,
    pub response: reqwest::Response,
    /// Its place among the requests in flight, held until the body is read or dropped.
    pub(crate) place: Place,
}

/// A place among the requests in flight across the server (`RequestGate`), given back on drop.
#[derive(Debug)]
pub struct Place(Option<Arc<dyn RequestGate>>);

impl Place {
    /// Waits for a free place (checking every 5 ms; a cancel drops the wait with the future).
    async fn take(gate: &Option<Arc<dyn RequestGate>>) -> Place {
        let Some(gate) = gate else {
            return Place(None);
        };
        while !gate.try_enter() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Place(Some(gate.clone()))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(gate) = &self.0 {
            gate.leave();
        }
    }
}

impl Head {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The whole body, as sent (no file decompression), within the size limit.
    pub async fn read_all(self, spec: &RequestSpec) -> Result<Response> {
        let length = self.response.content_length();
        // Checked against the limit first: the capacity is reserved only for a body within it.
        let mut stream = super::body::BodyStream::new(self.response, self.place, spec, None)?;
        let mut body = Vec::with_capacity(length.unwrap_or(0) as usize);
        while let Some(piece) = stream.next().await? {
            body.extend_from_slice(&piece);
        }
        Ok(Response {
            status: self.status,
            reason: self.reason,
            headers: self.headers,
            body,
            final_url: self.final_url,
            elapsed: self.started.elapsed(),
            attempts: self.attempts,
        })
    }
}

/// Sends `spec` and reads the whole body: what `api_request` and error statuses need.
pub async fn send(client: &Client, spec: &RequestSpec) -> Result<Response> {
    let mut attempts = Attempts::new(spec);
    loop {
        let head = attempts.head(client).await?;
        match head.read_all(spec).await {
            Ok(response) => return Ok(response),
            Err(error) => attempts.again(error).await?,
        }
    }
}

/// The tries of one request: retrying what is worth retrying (`spec.retry`), spacing requests by
/// the rate limit, and with a fresh OAuth2 token once when the API refuses the cached one.
pub struct Attempts<'a> {
    spec: &'a RequestSpec,
    /// Tries made so far.
    made: u32,
    token_refreshed: bool,
}

impl<'a> Attempts<'a> {
    pub fn new(spec: &'a RequestSpec) -> Attempts<'a> {
        Attempts {
            spec,
            made: 0,
            token_refreshed: false,
        }
    }

    /// Sends the request until its answer is final: a status not worth retrying, or the last try.
    pub async fn head(&mut self, client: &Client) -> Result<Head> {
        let spec = self.spec;
        loop {
            if let Some(rate) = &spec.retry.rate {
                rate.acquire().await;
            }
            let bearer = match &spec.oauth {
                Some(oauth) => Some(oauth::token(client, oauth, spec).await?),
                None => None,
            };
            self.made += 1;
            // The access token is a secret too: never in an error.
            let result = send_once(client, spec, bearer.as_deref())
                .await
                .map_err(|e| e.redact(bearer.as_slice()));
            let wait = match &result {
                Ok(head) if head.status == 401 && !self.token_refreshed => {
                    if let Some(oauth) = &spec.oauth {
                        oauth::forget(oauth);
                        self.token_refreshed = true;
                        self.made -= 1;
                        continue;
                    }
                    None
                }
                Ok(head) if RETRY_STATUSES.contains(&head.status) => {
                    Some(retry_after(&head.headers).unwrap_or_else(|| backoff(spec, self.made - 1)))
                }
                Err(error) if error.transient => Some(backoff(spec, self.made - 1)),
                _ => None,
            };
            match wait {
                Some(wait) if self.made <= spec.retry.retries => {
                    tokio::time::sleep(wait.min(spec.retry.max_wait)).await;
                }
                _ => {
                    return match result {
                        Ok(head) => Ok(Head {
                            attempts: self.made,
                            ..head
                        }),
                        Err(error) => Err(self.tried(error)),
                    };
                }
            }
        }
    }

    /// After `error` reading a body: `Ok` once it is worth another try (after the backoff),
    /// the error otherwise.
    pub async fn again(&mut self, error: Error) -> Result<()> {
        if error.transient && self.made <= self.spec.retry.retries {
            let wait = backoff(self.spec, self.made - 1);
            tokio::time::sleep(wait.min(self.spec.retry.max_wait)).await;
            return Ok(());
        }
        Err(self.tried(error))
    }

    fn tried(&self, error: Error) -> Error {
        match self.made {
            0 | 1 => error,
            made => error.with_detail(format!("tried {made} times")),
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

async fn send_once(client: &Client, spec: &RequestSpec, bearer: Option<&str>) -> Result<Head> {
    // Waiting for a place is not the request's time: its timeout starts once it has one.
    let place = Place::take(&spec.gate).await;
    let started = Instant::now();
    let mut url = spec.url.clone();
    let mut method = spec.method.clone();
    let mut with_body = true;
    let mut hops = 0;
    // Redirects are followed here, not by the client: each hop is checked against the policy,
    // and credentials go only to their own origin (no Referer is ever sent).
    let response = loop {
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
        let mut request = client.request(method.clone(), target).headers(headers);
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
        // The timeout bounds connecting and the head, over every hop; the body is read piece by
        // piece, each within it again (`BodyStream`), so a long healthy transfer never times out.
        let left = spec
            .timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let response = match tokio::time::timeout(left, request.send()).await {
            Ok(sent) => sent.map_err(|e| transport_error(e, spec))?,
            Err(_) => return Err(timed_out(spec)),
        };
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
    Ok(Head {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or(""),
        headers,
        // The last hop as requested, without the query key the request carried.
        final_url: url.to_string(),
        started,
        attempts: 1,
        response,
        place,
    })
}

fn timed_out(spec: &RequestSpec) -> Error {
    Error::new(
        SqlState::ConnectionFailure,
        format!(
            "request to {} timed out after {} ms",
            spec.display_url(),
            spec.timeout.as_millis()
        ),
    )
    .with_hint("raise options.timeout_ms (up to apisync.http_timeout_ms)")
    .redact(&spec.secrets)
}

/// Classifies a reqwest error. Its own text names the URL, which may carry secrets, so the URL is
/// stripped and the redacted one put in its place.
pub(super) fn transport_error(err: reqwest::Error, spec: &RequestSpec) -> Error {
    let url = spec.display_url();
    if let Some(denied) = find_source::<PolicyDenied>(&err) {
        return denied.clone().into_error().redact(&spec.secrets);
    }
    let is_timeout = err.is_timeout();
    let connect = err.is_connect();
    let redirect = err.is_redirect();
    let body = err.is_body() || err.is_decode();
    let reason = causes(&err.without_url());
    let error = if is_timeout {
        return timed_out(spec);
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
