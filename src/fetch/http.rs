//! One HTTP exchange: send a `RequestSpec`, read the body within its size limit, and turn every
//! failure into an `Error` that says what happened without leaking secrets.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::Client;

use crate::error::{snippet, Error, Result, SqlState};
use crate::spec::{Body, RequestSpec};

/// A complete response, body read and decompressed.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub final_url: String,
    pub elapsed: Duration,
}

impl Response {
    /// The start of the body as text, for error details.
    pub fn body_snippet(&self) -> String {
        snippet(String::from_utf8_lossy(&self.body).trim(), 200)
    }
}

pub async fn send(client: &Client, spec: &RequestSpec) -> Result<Response> {
    let started = Instant::now();
    let mut request = client
        .request(spec.method.clone(), spec.url.clone())
        .headers(spec.headers.clone())
        .timeout(spec.timeout);
    if let Body::Bytes { content, .. } = &spec.body {
        if !spec.headers.contains_key(CONTENT_TYPE) {
            if let Some(content_type) = spec.body.content_type_header() {
                request = request.header(CONTENT_TYPE, content_type);
            }
        }
        request = request.body(content.clone());
    }
    let mut response = request.send().await.map_err(|e| transport_error(e, spec))?;
    let status = response.status();
    let headers = response.headers().clone();
    let final_url = response.url().to_string();

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
    } else {
        Error::new(
            SqlState::ConnectionFailure,
            format!("request to {url} failed: {reason}"),
        )
    };
    error.redact(&spec.secrets)
}

/// "a: b: c" from an error and its sources, each said once.
fn causes(err: &dyn std::error::Error) -> String {
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
