//! The paging, auth and failure shapes of real APIs, over the demo users: the FineDataLink Data
//! Service is in lib.rs; here GitHub (Link header), Stripe (cursor, bearer), Django REST framework
//! (next URL), a plain offset/limit API, OAuth2 client credentials, and APIs that misbehave.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use hyper::header::{HeaderValue, AUTHORIZATION, LINK, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use hyper::Response;

use crate::{data, json_response, Body, State};

type Query = HashMap<String, String>;

fn number(query: &Query, name: &str, default: u64) -> u64 {
    query
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn host(headers: &HeaderMap) -> String {
    headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string()
}

/// GitHub: a top-level array, `page` and `per_page`, and `Link: <...>; rel="next"`.
pub fn github(path: &str, headers: &HeaderMap, query: &Query) -> Response<Body> {
    let page = number(query, "page", 1).max(1);
    let per_page = number(query, "per_page", 30).clamp(1, 100);
    let users = data::users();
    let last = (users.len() as u64).div_ceil(per_page);
    let rows: Vec<Value> = users
        .into_iter()
        .skip(((page - 1) * per_page) as usize)
        .take(per_page as usize)
        .collect();
    let mut response = json_response(StatusCode::OK, &Value::Array(rows));
    let base = format!("http://{}{path}", host(headers));
    let mut links = vec![format!(
        "<{base}?page=1&per_page={per_page}>; rel=\"first\""
    )];
    if page < last {
        links.push(format!(
            "<{base}?page={}&per_page={per_page}>; rel=\"next\"",
            page + 1
        ));
        links.push(format!(
            "<{base}?page={last}&per_page={per_page}>; rel=\"last\""
        ));
    }
    response
        .headers_mut()
        .insert(LINK, HeaderValue::from_str(&links.join(", ")).unwrap());
    response
}

/// Stripe: bearer auth, `limit` and `starting_after`, `{"data": [...], "has_more"}`.
pub fn stripe(headers: &HeaderMap, query: &Query) -> Response<Body> {
    if bearer(headers) != Some("sk_test_4eC39HqLyjWDarjtT1zdp7dc") {
        return unauthorized("Invalid API Key provided");
    }
    let limit = number(query, "limit", 10).clamp(1, 100) as usize;
    let users = data::users();
    let start = match query.get("starting_after") {
        Some(after) => users
            .iter()
            .position(|u| u["id"].as_u64() == after.parse::<u64>().ok())
            .map_or(users.len(), |i| i + 1),
        None => 0,
    };
    let rows: Vec<Value> = users.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + rows.len() < users.len();
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": rows, "has_more": has_more, "url": "/v1/customers"}),
    )
}

/// Django REST framework: `page`, `{"count", "next", "previous", "results"}` with absolute URLs.
pub fn drf(path: &str, headers: &HeaderMap, query: &Query) -> Response<Body> {
    const PAGE_SIZE: u64 = 10;
    let page = number(query, "page", 1).max(1);
    let users = data::users();
    let count = users.len() as u64;
    let rows: Vec<Value> = users
        .into_iter()
        .skip(((page - 1) * PAGE_SIZE) as usize)
        .take(PAGE_SIZE as usize)
        .collect();
    let base = format!("http://{}{path}", host(headers));
    let next = (page * PAGE_SIZE < count).then(|| format!("{base}?page={}", page + 1));
    let previous = (page > 1).then(|| format!("{base}?page={}", page - 1));
    json_response(
        StatusCode::OK,
        &json!({"count": count, "next": next, "previous": previous, "results": rows}),
    )
}

/// A plain offset/limit API: `{"total", "items"}`.
pub fn offset(query: &Query) -> Response<Body> {
    let offset = number(query, "offset", 0) as usize;
    let limit = number(query, "limit", 10) as usize;
    let users = data::users();
    let total = users.len();
    let rows: Vec<Value> = users.into_iter().skip(offset).take(limit).collect();
    json_response(StatusCode::OK, &json!({"total": total, "items": rows}))
}

/// Misbehaving pagers: a cursor that never changes, a next URL pointing at itself, and pages that
/// never end.
pub fn endless(kind: &str, headers: &HeaderMap, query: &Query) -> Response<Body> {
    let page = number(query, "page", 1);
    let rows: Vec<Value> = (0..3).map(|i| json!({"page": page, "i": i})).collect();
    match kind {
        "cursor" => json_response(
            StatusCode::OK,
            &json!({"data": rows, "cursor": "same", "has_more": true}),
        ),
        "next" => {
            let own = format!("http://{}/endless/next?page={page}", host(headers));
            json_response(StatusCode::OK, &json!({"data": rows, "next": own}))
        }
        _ => json_response(StatusCode::OK, &json!({"data": rows})),
    }
}

/// Pages that each take `ms` to answer: `{"data": [...], "total_pages"}`, for concurrency; page
/// `fail_page` answers 500.
pub async fn slow_pages(query: &Query) -> Response<Body> {
    let page = number(query, "page", 1);
    let size = number(query, "size", 10);
    tokio::time::sleep(Duration::from_millis(number(query, "ms", 100))).await;
    if query.get("fail_page").and_then(|p| p.parse::<u64>().ok()) == Some(page) {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": "page failed"}),
        );
    }
    let rows: Vec<Value> = (0..size)
        .map(|i| json!({"id": (page - 1) * size + i, "page": page}))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"data": rows, "total_pages": number(query, "pages", 100)}),
    )
}

/// Fails the first `fail` requests for `key` with `status` (503 by default), with Retry-After in
/// seconds (`retry_after`) or as an HTTP date (`retry_after_date`), then answers.
pub fn flaky(state: &State, key: &str, query: &Query) -> Response<Body> {
    let seen = {
        let mut counts = state.flaky.lock().unwrap_or_else(|e| e.into_inner());
        let seen = counts.entry(key.to_string()).or_default();
        *seen += 1;
        *seen
    };
    if seen <= number(query, "fail", 2) {
        let status = StatusCode::from_u16(number(query, "status", 503) as u16)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut response = json_response(status, &json!({"error": "try again", "attempt": seen}));
        if let Some(seconds) = query.get("retry_after") {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_str(seconds).unwrap());
        }
        if let Some(seconds) = query
            .get("retry_after_date")
            .and_then(|s| s.parse::<u64>().ok())
        {
            let when = httpdate(SystemTime::now() + Duration::from_secs(seconds));
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_str(&when).unwrap());
        }
        return response;
    }
    json_response(StatusCode::OK, &json!({"data": [{"attempt": seen}]}))
}

/// The three auth schemes, each with one accepted credential.
pub fn auth(kind: &str, headers: &HeaderMap, query: &Query) -> Response<Body> {
    let ok = match kind {
        "bearer" => bearer(headers) == Some("tok-secret"),
        // "ann:pw-secret" in base64.
        "basic" => {
            headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
                == Some("Basic YW5uOnB3LXNlY3JldA==")
        }
        "key" => {
            headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some("k-secret")
                || query.get("api_key").map(String::as_str) == Some("k-secret")
        }
        _ => false,
    };
    if ok {
        json_response(StatusCode::OK, &json!({"data": [{"auth": kind}]}))
    } else {
        unauthorized("bad credentials")
    }
}

/// OAuth2 client credentials: `/oauth/token` (client "client", secret "c-secret", HTTP Basic)
/// issues tokens; `/oauth/data` wants the newest one; `/oauth/revoke` makes it stale.
pub fn oauth(state: &State, action: &str, headers: &HeaderMap, body: &str) -> Response<Body> {
    let mut tokens = state.oauth.lock().unwrap_or_else(|e| e.into_inner());
    match action {
        "token" => {
            let basic = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
            // "client:c-secret" in base64.
            if basic != Some("Basic Y2xpZW50OmMtc2VjcmV0")
                || !body.contains("grant_type=client_credentials")
            {
                return json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "invalid_client"}),
                );
            }
            tokens.issued += 1;
            tokens.current = Some(format!("at-{}", tokens.issued));
            json_response(
                StatusCode::OK,
                &json!({"access_token": tokens.current, "token_type": "Bearer", "expires_in": 3600}),
            )
        }
        "revoke" => {
            tokens.current = None;
            json_response(StatusCode::OK, &json!({"revoked": true}))
        }
        _ => {
            if tokens.current.is_some() && bearer(headers) == tokens.current.as_deref() {
                json_response(
                    StatusCode::OK,
                    &json!({"data": [{"token": tokens.current, "issued": tokens.issued}]}),
                )
            } else {
                unauthorized("token expired")
            }
        }
    }
}

#[derive(Default)]
pub struct Tokens {
    issued: u64,
    current: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn unauthorized(message: &str) -> Response<Body> {
    let mut response = json_response(StatusCode::UNAUTHORIZED, &json!({"error": message}));
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// IMF-fixdate (RFC 9110 §5.6.7).
fn httpdate(when: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = when
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let days = secs / 86_400;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}
