//! An OAuth2 provider that rotates refresh tokens (as Xero, QuickBooks and HubSpot-style APIs
//! do): each refresh token works once and comes back replaced; using a spent one is an
//! `invalid_grant` that names it. Clients are independent: client `c` starts with refresh token
//! `rt-c-1`, and authenticates with secret `c-secret` (client_secret_basic).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, Response, StatusCode};
use serde_json::json;

use crate::{json_response, parse_query, Body};

#[derive(Default)]
pub struct Provider {
    clients: Mutex<HashMap<String, Client>>,
}

#[derive(Default)]
struct Client {
    /// The refresh token that works now.
    current: String,
    spent: Vec<String>,
    revoked: bool,
    exchanges: u64,
    /// Spent refresh tokens presented again.
    reused: u64,
    access: Vec<String>,
}

impl Provider {
    /// `/rotating/{action}`: `token` (POST, form), `revoke?client=`, `stats?client=`, and any
    /// other path as the API, which wants a Bearer access token.
    pub async fn serve(
        &self,
        action: &str,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
        body: &str,
    ) -> Response<Body> {
        let client = query.get("client").cloned().unwrap_or_default();
        match action {
            "token" => {
                // Slow on request, so that two refreshes would overlap if nothing serialised them.
                let ms = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.token(headers, &parse_query(body))
            }
            "revoke" => {
                self.with(&client, |c| c.revoked = true);
                json_response(StatusCode::OK, &json!({"revoked": client}))
            }
            "stats" => {
                let stats = self.with(
                    &client,
                    |c| json!({"exchanges": c.exchanges, "reused": c.reused, "current": c.current}),
                );
                json_response(StatusCode::OK, &stats)
            }
            _ => {
                let bearer = headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
                match clients
                    .iter()
                    .find(|(_, c)| c.access.iter().any(|a| a == bearer))
                {
                    Some((name, c)) => json_response(
                        StatusCode::OK,
                        &json!({"data": [{"client": name, "exchanges": c.exchanges}, {"client": name, "token": bearer}]}),
                    ),
                    None => {
                        json_response(StatusCode::UNAUTHORIZED, &json!({"error": "invalid_token"}))
                    }
                }
            }
        }
    }

    fn with<R>(&self, client: &str, f: impl FnOnce(&mut Client) -> R) -> R {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let entry = clients.entry(client.to_string()).or_insert_with(|| Client {
            current: format!("rt-{client}-1"),
            ..Client::default()
        });
        f(entry)
    }

    fn token(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> Response<Body> {
        let basic = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .unwrap_or_default();
        let Some(client) = self.client_of(basic) else {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "invalid_client"}),
            );
        };
        if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "unsupported_grant_type"}),
            );
        }
        let given = form.get("refresh_token").cloned().unwrap_or_default();
        self.with(&client, |c| {
            let invalid = |description: String| {
                json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "invalid_grant", "error_description": description}),
                )
            };
            if given != c.current {
                if c.spent.contains(&given) {
                    c.reused += 1;
                    return invalid(format!("refresh token {given} was already used"));
                }
                return invalid(format!("unknown refresh token {given}"));
            }
            if c.revoked {
                return invalid("Token has been expired or revoked.".into());
            }
            c.exchanges += 1;
            c.spent.push(std::mem::take(&mut c.current));
            c.current = format!("rt-{client}-{}", c.exchanges + 1);
            let access = format!("at-{client}-{}", c.exchanges);
            c.access.push(access.clone());
            json_response(
                StatusCode::OK,
                &json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600, "refresh_token": c.current}),
            )
        })
    }

    /// The client whose Basic credentials are `client:c-secret`.
    fn client_of(&self, basic: &str) -> Option<String> {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .ok()?;
        let (client, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        (secret == "c-secret").then(|| client.to_string())
    }
}
