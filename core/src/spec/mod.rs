//! The request spec: the SQL arguments of `api_request` / `api_fetch`, parsed and validated once,
//! before any request is made. Plain Rust; the SQL layer reads settings into `Limits` first.

pub mod format;
pub mod paging;
pub mod template;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use crate::error::{Error, Result, SqlState};
use crate::extract::RowPath;
use crate::policy::NetworkPolicy;

pub use format::{BodyFormat, CsvDialect, Decompress, Format};
pub use paging::{Paging, PagingKind, ParamPlace};
pub use template::{FanOut, ParamSet, ParamSets};

/// What the session's settings allow; read on the backend thread before anything else.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `apisync.http_timeout_ms`: the default and the most a call may ask for.
    pub http_timeout_ms: u64,
    /// `apisync.max_response_bytes`: the default and the most a call may ask for.
    pub max_response_bytes: u64,
    /// `apisync.user_agent`.
    pub user_agent: String,
    /// `apisync.max_pages`: the default page limit of a paged fetch.
    pub max_pages: u32,
    /// `apisync.allowed_hosts` and `apisync.denied_networks`.
    pub policy: Arc<NetworkPolicy>,
    /// `apisync.max_requests_in_flight`: the places every process shares, if capped.
    pub gate: Option<Arc<dyn RequestGate>>,
}

/// A cap on the requests in flight that other processes share (`apisync.max_requests_in_flight`,
/// kept in shared memory): a request takes a place before it is sent and gives it back once its
/// response is read or dropped.
pub trait RequestGate: Send + Sync + std::fmt::Debug {
    /// Takes a place; `false` while every place is taken.
    fn try_enter(&self) -> bool;
    /// Gives a place back.
    fn leave(&self);
}

/// The SQL arguments shared by `api_request` and `api_fetch`, as Rust values.
#[derive(Debug, Default)]
pub struct RequestArgs<'a> {
    pub url: Option<&'a str>,
    pub method: Option<&'a str>,
    pub body: Option<Value>,
    pub headers: Option<Value>,
    pub options: Option<Value>,
    /// The values of the secrets `options` names, looked up by the SQL layer (`secret_names`).
    pub secrets: HashMap<String, String>,
    /// For `options.auth` of type oauth2_refresh_token: the access token the SQL layer got for
    /// its `RefreshGrant`.
    pub access_token: Option<String>,
}

/// One HTTP request, ready to send.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Body,
    pub timeout: Duration,
    pub max_response_bytes: u64,
    /// Values that must never be shown: scrubbed from every error.
    pub secrets: Vec<String>,
    pub retry: RetryPolicy,
    /// OAuth2 client credentials: the token is fetched (and cached) when sending.
    pub oauth: Option<Arc<OAuth2>>,
    pub policy: Arc<NetworkPolicy>,
    /// What carries credentials, and the one origin they are sent to.
    pub credentials: Arc<Credentials>,
    /// The cap on requests in flight across the server, if any.
    pub gate: Option<Arc<dyn RequestGate>>,
}

/// A request's credentials belong to the origin (scheme, host, port) of the URL they were given
/// for: requests to any other origin — a next page on another host, a redirect, a downgrade to
/// http — go without them.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub origin: Option<url::Origin>,
    /// Headers that carry credentials: Authorization, API keys, cookies.
    pub headers: Vec<HeaderName>,
    /// An API key sent in the query (`options.auth` with `"in": "query"`): added to each request
    /// to the origin, so it is never part of a page's URL.
    pub query: Option<(String, String)>,
}

impl Credentials {
    /// Whether a request to `url` carries the credentials.
    pub fn go_to(&self, url: &Url) -> bool {
        self.origin
            .as_ref()
            .is_some_and(|origin| *origin == url.origin())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    None,
    /// Kept as JSON so that paging can set parameters inside it; shared by every request that
    /// sends it unchanged (a page copies it only to set its own parameter).
    Json {
        value: Arc<Value>,
        content_type: String,
    },
    Bytes {
        content: bytes::Bytes,
        content_type: String,
    },
}

/// Retries of 408, 429, 500, 502, 503, 504 and transient connection failures.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retries: u32,
    /// The first backoff; doubled each retry, with jitter.
    pub backoff: Duration,
    /// The most one wait may be, Retry-After included.
    pub max_wait: Duration,
    /// `options.rate_limit`: requests per second, shared by all requests of one call.
    pub rate: Option<Arc<RateLimit>>,
}

/// Spaces requests `interval` apart.
#[derive(Debug)]
pub struct RateLimit {
    pub interval: Duration,
    pub next: std::sync::Mutex<Option<std::time::Instant>>,
}

/// `options.auth` of type oauth2_client_credentials, resolved.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct OAuth2 {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: String,
    pub scope: Option<String>,
}

/// Everything `api_fetch` needs besides the row type.
#[derive(Debug)]
pub struct FetchSpec {
    /// The request; with `fan_out`, the first parameter set's (each set has its own).
    pub request: RequestSpec,
    pub path: RowPath,
    /// `options.columns`: column name → a JSONPath relative to the row, or a parameter.
    pub columns: Vec<(String, ColumnSource)>,
    /// `params`: one request (with its pages) per parameter set.
    pub fan_out: Option<FanOut>,
    /// `options.on_status`: error statuses whose request yields no rows.
    pub skip: SkipStatuses,
    /// None: one request.
    pub paging: Option<Paging>,
    pub max_pages: u32,
    /// `options.max_rows`: no more rows than this, and no request once they are in.
    pub max_rows: Option<u64>,
    /// Pages fetched at once when the page count is known.
    pub concurrency: u32,
    /// `options.format`, `options.csv`, `options.decompress`.
    pub body_format: BodyFormat,
}

/// `options`: every key of DESIGN.md §2.1; anything else is an error, so a typo is never ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Options {
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    retry_backoff_ms: Option<u64>,
    max_retry_wait_ms: Option<u64>,
    rate_limit: Option<f64>,
    query: Option<Map<String, Value>>,
    auth: Option<Auth>,
    max_pages: Option<u32>,
    max_rows: Option<u64>,
    max_response_bytes: Option<u64>,
    concurrency: Option<u32>,
    /// Read by `FetchSpec::parse` before the rest; named here so that it is a known key.
    #[serde(rename = "columns")]
    _columns: Option<serde::de::IgnoredAny>,
    form: Option<Map<String, Value>>,
    body_text: Option<String>,
    content_type: Option<String>,
    format: Option<String>,
    csv: Option<format::CsvOptions>,
    decompress: Option<String>,
    on_status: Option<Map<String, Value>>,
}

/// Where a column of `options.columns` takes its value.
#[derive(Debug, Clone)]
pub enum ColumnSource {
    /// A JSONPath relative to the row.
    Path(RowPath),
    /// A parameter of the row's parameter set (`"{name}"`).
    Param(String),
}

/// `options.on_status`: 4xx answers (other than 408 and 429, which are retried) that skip their
/// request instead of failing the call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SkipStatuses {
    codes: Vec<u16>,
    /// Codes that stay errors under `"4xx": "skip"`.
    kept: Vec<u16>,
    any_4xx: bool,
}

impl SkipStatuses {
    fn parse(rules: Option<&Map<String, Value>>) -> Result<SkipStatuses> {
        let mut skip = SkipStatuses::default();
        for (status, action) in rules.into_iter().flatten() {
            let skipping = match action.as_str() {
                Some("skip") => true,
                Some("error") => false,
                _ => {
                    return Err(Error::invalid(format!(
                        "options.on_status.{status} must be \"skip\" or \"error\""
                    )))
                }
            };
            if status == "4xx" {
                skip.any_4xx = skipping;
                continue;
            }
            let code = status
                .parse::<u16>()
                .ok()
                .filter(|c| (400..500).contains(c) && *c != 408 && *c != 429)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "options.on_status takes 4xx statuses other than 408 and 429 (which are retried), and \"4xx\"; not \"{status}\""
                    ))
                })?;
            if skipping {
                skip.codes.push(code);
            } else {
                skip.kept.push(code);
            }
        }
        Ok(skip)
    }

    /// Whether an answer with `status` skips its request.
    pub fn skips(&self, status: u16) -> bool {
        if self.codes.contains(&status) {
            return true;
        }
        self.any_4xx
            && (400..500).contains(&status)
            && status != 408
            && status != 429
            && !self.kept.contains(&status)
    }
}

/// `options.auth` (DESIGN.md §2.5). Secrets by name and OAuth2 come with the secrets store.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Auth {
    Bearer {
        token: Option<String>,
        secret: Option<String>,
    },
    Basic {
        username: String,
        password: Option<String>,
        secret: Option<String>,
    },
    ApiKey {
        name: String,
        #[serde(rename = "in", default)]
        place: ApiKeyPlace,
        value: Option<String>,
        secret: Option<String>,
    },
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: Option<String>,
        secret: Option<String>,
        scope: Option<String>,
    },
    #[serde(rename = "oauth2_refresh_token")]
    OAuth2RefreshToken {
        token_url: String,
        client_id: String,
        client_secret: Option<String>,
        secret: Option<String>,
        /// The secret that holds the refresh token, replaced when the endpoint rotates it.
        refresh_token_secret: String,
        scope: Option<String>,
    },
}

/// `options.auth` of type oauth2_refresh_token, resolved: what the SQL layer exchanges (in a
/// worker that commits a rotated refresh token at once) for the access token the request sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefreshGrant {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: String,
    /// The name of the caller's secret holding the refresh token.
    pub refresh_token_secret: String,
    pub scope: Option<String>,
}

/// The refresh grant `options.auth` describes, if it is of type oauth2_refresh_token: checked
/// (its token URL by the network policy) before any exchange. `stored`: the values of
/// `secret_names`.
pub fn refresh_grant(
    options: Option<&Value>,
    stored: &HashMap<String, String>,
    limits: &Limits,
) -> Result<Option<RefreshGrant>> {
    let Some(auth) = options.and_then(|o| o.get("auth")) else {
        return Ok(None);
    };
    // A malformed auth is reported by the options' own parse, with every other key.
    let Ok(Auth::OAuth2RefreshToken {
        token_url,
        client_id,
        client_secret,
        secret,
        refresh_token_secret,
        scope,
    }) = Auth::deserialize(auth)
    else {
        return Ok(None);
    };
    let client_secret = stored_or_inline(
        "oauth2_refresh_token",
        "client_secret",
        &client_secret,
        &secret,
        stored,
    )?;
    let token_url = parse_token_url(&token_url)?;
    limits.policy.check_url(&token_url).map_err(|denied| {
        denied
            .into_error()
            .redact(std::slice::from_ref(&client_secret))
    })?;
    Ok(Some(RefreshGrant {
        token_url,
        client_id,
        client_secret,
        refresh_token_secret,
        scope,
    }))
}

/// `options.auth.token_url`, parsed.
fn parse_token_url(text: &str) -> Result<Url> {
    parse_url(Some(text)).map_err(|e| Error {
        message: format!("options.auth.token_url: {}", e.message),
        ..e
    })
}

/// A credential given inline (`value`) or by the name of a stored secret: exactly one of them.
fn stored_or_inline(
    kind: &str,
    field: &str,
    value: &Option<String>,
    secret: &Option<String>,
    stored: &HashMap<String, String>,
) -> Result<String> {
    match (value, secret) {
        (Some(value), None) => Ok(value.clone()),
        (None, Some(name)) => stored.get(name).cloned().ok_or_else(|| {
            Error::new(
                SqlState::UndefinedObject,
                format!("secret \"{name}\" does not exist"),
            )
            .with_hint(
                "create it with apisync.create_secret(name, value), as the role that uses it",
            )
        }),
        _ => Err(Error::invalid(format!(
            "options.auth of type {kind} needs exactly one of \"{field}\" and \"secret\""
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ApiKeyPlace {
    #[default]
    Header,
    Query,
}

const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// Headers the client owns: setting them by hand would corrupt the exchange.
const MANAGED_HEADERS: [&str; 4] = ["content-length", "transfer-encoding", "connection", "host"];

impl RequestSpec {
    /// The URL as errors show it: no user info, and query values that carry secrets masked.
    pub fn display_url(&self) -> String {
        display_url(&self.url, &self.secrets)
    }

    /// The URL as other sessions may see it (`apisync.fetch_progress`): as errors show it, and
    /// the values of query parameters named like credentials (`api_key`, `token`) masked too.
    pub fn shown_url(&self) -> String {
        let mut shown = self.url.clone();
        if shown.query_pairs().any(|(name, _)| key_like(&name)) {
            let pairs: Vec<(String, String)> = shown
                .query_pairs()
                .map(|(name, value)| {
                    let value = if key_like(&name) {
                        "***".into()
                    } else {
                        value.into_owned()
                    };
                    (name.into_owned(), value)
                })
                .collect();
            shown.query_pairs_mut().clear().extend_pairs(pairs);
        }
        display_url(&shown, &self.secrets)
    }
}

/// Parses the arguments of `api_request`; `api_fetch` adds its own on top (see `FetchSpec::parse`).
/// `api_request` returns what the server said, so it retries only when `options.retries` asks.
pub fn parse_request(args: RequestArgs<'_>, limits: &Limits) -> Result<RequestSpec> {
    if let Some(key) = format::names_fetch_option(args.options.as_ref()) {
        return Err(Error::invalid(format!(
            "options.{key} is for api_fetch: api_request returns the body as it was sent"
        )));
    }
    let (mut spec, options) = parse_common(args, limits)?;
    if options.retries.is_none() {
        spec.retry.retries = 0;
    }
    Ok(spec)
}

impl FetchSpec {
    /// `params` (a JSON array of parameter sets, or NULL) makes one request per set.
    pub fn parse(
        args: RequestArgs<'_>,
        path: &str,
        paging: Option<&Value>,
        params: Option<ParamSets>,
        limits: &Limits,
    ) -> Result<FetchSpec> {
        let path = RowPath::parse(path)?;
        let paging = match paging {
            None | Some(Value::Null) => None,
            Some(value) => Some(Paging::parse(value)?),
        };
        let given_columns = args
            .options
            .as_ref()
            .and_then(|o| o.get("columns"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let columns = given_columns
            .into_iter()
            .map(|(column, source)| match source {
                Value::String(text) => match template::column_param(&text) {
                    Some(name) => Ok((column, ColumnSource::Param(name.to_string()))),
                    None => Ok((column, ColumnSource::Path(RowPath::parse(&text)?))),
                },
                other => Err(Error::invalid(format!(
                    "options.columns.{column} must be a JSONPath or \"{{parameter}}\" string, not {}",
                    json_kind(&other)
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        let column_params: Vec<String> = columns
            .iter()
            .filter_map(|(_, source)| match source {
                ColumnSource::Param(name) => Some(name.clone()),
                ColumnSource::Path(_) => None,
            })
            .collect();
        let fan_out = match params {
            None => {
                if let Some(name) = column_params.first() {
                    return Err(Error::invalid(format!(
                        "options.columns takes parameter \"{name}\", but the call has no params"
                    )));
                }
                None
            }
            Some(params) => Some(FanOut::new(params, &args, &column_params, limits)?),
        };
        // With params, the arguments are checked as the first set (or, with none, a placeholder
        // set) expands them; each set's request is made the same way when its turn comes.
        let mut expanded_url = String::new();
        let args = match &fan_out {
            None => args,
            Some(fan) => {
                let first = match fan.sets.is_empty() {
                    true => Arc::new(fan.placeholder()),
                    false => fan.sets.get(0)?,
                };
                fan.args(&first, &mut expanded_url)?
            }
        };
        let (request, mut options) = parse_common(args, limits)?;
        let body_format = BodyFormat::parse(
            options.format.as_deref(),
            options.csv.take(),
            options.decompress.as_deref(),
        )?;
        if let Some(given) = &body_format.format {
            format::check(given, path.text(), paging.as_ref())?;
        }
        let skip = SkipStatuses::parse(options.on_status.as_ref())?;
        let max_pages = paging
            .as_ref()
            .and_then(|p| p.max_pages)
            .or(options.max_pages)
            .unwrap_or(limits.max_pages);
        if max_pages == 0 {
            return Err(Error::invalid("max_pages must be positive"));
        }
        if options.max_rows == Some(0) {
            return Err(Error::invalid("options.max_rows must be positive"));
        }
        let concurrency = paging
            .as_ref()
            .and_then(|p| p.concurrency)
            .or(options.concurrency)
            .unwrap_or(1);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return Err(Error::invalid(format!(
                "concurrency must be between 1 and {MAX_CONCURRENCY}"
            )));
        }
        if let Some(paging) = &paging {
            // With params, concurrency runs parameter sets at once; a set's pages follow one
            // another.
            let paged_at_once = if fan_out.is_some() { 1 } else { concurrency };
            paging.check_against(&request, paged_at_once)?;
        } else if options.max_pages.is_some()
            || (options.concurrency.is_some() && fan_out.is_none())
        {
            return Err(Error::invalid(
                "options.max_pages and options.concurrency need a paging spec (or, for concurrency, params)",
            ));
        }
        Ok(FetchSpec {
            request,
            path,
            columns,
            fan_out,
            skip,
            paging,
            max_pages,
            max_rows: options.max_rows,
            concurrency,
            body_format,
        })
    }
}

/// Pages in flight at once, at most.
const MAX_CONCURRENCY: u32 = 64;

/// The names of the secrets `options` refers to (`options.auth.secret`), for the SQL layer to
/// look up before parsing.
pub fn secret_names(options: Option<&Value>) -> Vec<String> {
    options
        .and_then(|o| o.get("auth"))
        .and_then(|auth| auth.get("secret"))
        .and_then(Value::as_str)
        .map(|name| vec![name.to_string()])
        .unwrap_or_default()
}

pub(crate) fn parse_common(
    args: RequestArgs<'_>,
    limits: &Limits,
) -> Result<(RequestSpec, Options)> {
    let options = parse_options(args.options)?;
    let method = parse_method(args.method.unwrap_or("GET"))?;
    let mut url = parse_url(args.url)?;
    let mut secrets = Vec::new();
    let mut headers = parse_headers(args.headers, &mut secrets)?;

    if let Some(query) = &options.query {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in query {
            for text in query_values(name, value)? {
                pairs.append_pair(name, &text);
            }
        }
    }
    let mut credentials = Credentials {
        origin: Some(url.origin()),
        headers: headers
            .keys()
            .filter(|name| CREDENTIAL_HEADERS.contains(&name.as_str()))
            .cloned()
            .collect(),
        query: None,
    };
    let oauth = match &options.auth {
        Some(auth) => apply_auth(
            auth,
            &args.secrets,
            args.access_token.as_deref(),
            &mut credentials,
            &mut headers,
            &mut secrets,
        )?,
        None => None,
    };
    if let Some(password) = url.password() {
        secrets.push(password.to_string());
        // As sent: the Basic credentials of the user info, base64-encoded.
        let userinfo = format!("{}:{password}", url.username());
        secrets.push(base64_encode(userinfo.as_bytes()));
    }
    for checked in std::iter::once(&url).chain(oauth.as_ref().map(|o| &o.token_url)) {
        limits
            .policy
            .check_url(checked)
            .map_err(|denied| denied.into_error().redact(&secrets))?;
    }

    let body = parse_body(args.body, &options)?;
    check_content_type(&body)?;
    let timeout_ms = bounded(
        "timeout_ms",
        options.timeout_ms,
        limits.http_timeout_ms,
        "apisync.http_timeout_ms",
    )?;
    let max_response_bytes = bounded(
        "max_response_bytes",
        options.max_response_bytes,
        limits.max_response_bytes,
        "apisync.max_response_bytes",
    )?;
    if !headers.contains_key(reqwest::header::USER_AGENT) && !limits.user_agent.is_empty() {
        let agent = HeaderValue::from_str(&limits.user_agent)
            .map_err(|_| Error::invalid("apisync.user_agent is not a valid header value"))?;
        headers.insert(reqwest::header::USER_AGENT, agent);
    }
    // Every request of a fetch shares the body, so it is held once; still, it has the size limit
    // of a response.
    if body.len() as u64 > max_response_bytes {
        return Err(Error::new(
            SqlState::ProgramLimitExceeded,
            format!(
                "the request body is larger than the limit of {max_response_bytes} bytes (options.max_response_bytes)"
            ),
        ));
    }
    let retry = parse_retry(&options)?;
    let spec = RequestSpec {
        method,
        url,
        headers,
        body,
        timeout: Duration::from_millis(timeout_ms),
        max_response_bytes,
        secrets,
        retry,
        oauth: oauth.map(Arc::new),
        policy: limits.policy.clone(),
        credentials: Arc::new(credentials),
        gate: limits.gate.clone(),
    };
    Ok((spec, options))
}

fn parse_retry(options: &Options) -> Result<RetryPolicy> {
    let rate =
        match options.rate_limit {
            None => None,
            // At least one request an hour: a smaller rate would overflow the limiter's clock.
            Some(rate) if rate.is_finite() && (1.0 / 3600.0..=1_000_000.0).contains(&rate) => {
                Some(Arc::new(RateLimit {
                    interval: Duration::from_secs_f64(1.0 / rate),
                    next: std::sync::Mutex::new(None),
                }))
            }
            Some(_) => return Err(Error::invalid(
                "options.rate_limit must be a number of requests per second from 1/3600 to 1000000",
            )),
        };
    // Range-checked so that no backoff arithmetic can overflow.
    let within = |value: Option<u64>, max: u64, name: &str| match value {
        Some(v) if v > max => Err(Error::invalid(format!(
            "options.{name} must be from 0 to {max}"
        ))),
        _ => Ok(()),
    };
    within(options.retries.map(u64::from), 100, "retries")?;
    within(options.retry_backoff_ms, 3_600_000, "retry_backoff_ms")?;
    within(options.max_retry_wait_ms, 86_400_000, "max_retry_wait_ms")?;
    Ok(RetryPolicy {
        retries: options.retries.unwrap_or(3),
        backoff: Duration::from_millis(options.retry_backoff_ms.unwrap_or(200)),
        max_wait: Duration::from_millis(options.max_retry_wait_ms.unwrap_or(60_000)),
        rate,
    })
}

fn parse_options(options: Option<Value>) -> Result<Options> {
    match options {
        None | Some(Value::Null) => Ok(Options::default()),
        Some(value @ Value::Object(_)) => {
            Options::deserialize(value).map_err(|e| Error::invalid(format!("invalid options: {e}")))
        }
        Some(other) => Err(Error::invalid(format!(
            "options must be a JSON object, not {}",
            json_kind(&other)
        ))),
    }
}

fn parse_method(method: &str) -> Result<Method> {
    let upper = method.trim().to_ascii_uppercase();
    if !METHODS.contains(&upper.as_str()) {
        return Err(
            Error::invalid(format!("unsupported HTTP method \"{method}\""))
                .with_hint(format!("use one of {}", METHODS.join(", "))),
        );
    }
    Method::from_bytes(upper.as_bytes()).map_err(|_| Error::internal("method table is wrong"))
}

fn parse_url(url: Option<&str>) -> Result<Url> {
    let text = url.map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Err(Error::new(
            crate::error::SqlState::NullValueNotAllowed,
            "url must not be NULL or empty",
        ));
    }
    let parsed = Url::parse(text).map_err(|e| {
        let err = Error::invalid(format!("invalid url \"{}\": {e}", display_raw_url(text)));
        match e {
            url::ParseError::RelativeUrlWithoutBase => {
                err.with_hint("give an absolute URL, such as http://127.0.0.1:8080/api/users")
            }
            _ => err,
        }
    })?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            return Err(Error::invalid(format!(
                "unsupported URL scheme \"{other}\": only http and https are allowed"
            )))
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid("invalid url: it has no host"));
    }
    Ok(parsed)
}

/// Headers whose values are credentials (lower case): kept out of errors like auth values, and out
/// of job rows.
pub const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
];

fn parse_headers(headers: Option<Value>, secrets: &mut Vec<String>) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    let object = match headers {
        None | Some(Value::Null) => return Ok(map),
        Some(Value::Object(object)) => object,
        Some(other) => {
            return Err(Error::invalid(format!(
                "headers must be a JSON object of strings, not {}",
                json_kind(&other)
            )))
        }
    };
    for (name, value) in object {
        let Value::String(text) = value else {
            return Err(Error::invalid(format!(
                "header \"{name}\" must be a string, not {}",
                json_kind(&value)
            )));
        };
        if name.contains(['\r', '\n']) || text.contains(['\r', '\n']) {
            return Err(Error::invalid(format!(
                "header \"{}\" contains a line break (CR or LF), which is not allowed",
                name.escape_default()
            )));
        }
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::invalid(format!("invalid header name \"{name}\"")))?;
        if MANAGED_HEADERS.contains(&header.as_str()) {
            return Err(Error::invalid(format!(
                "header \"{name}\" is set by the HTTP client and cannot be given"
            )));
        }
        let mut value = HeaderValue::from_str(&text)
            .map_err(|_| Error::invalid(format!("invalid value for header \"{name}\"")))?;
        if CREDENTIAL_HEADERS.contains(&header.as_str()) {
            value.set_sensitive(true);
            // The credential after a scheme ("Bearer x") may be echoed alone.
            secrets.extend(
                text.split_once(' ')
                    .map(|(_, credential)| credential.trim().to_string()),
            );
            secrets.push(text);
        }
        map.append(header, value);
    }
    Ok(map)
}

fn parse_body(body: Option<Value>, options: &Options) -> Result<Body> {
    let given = [
        ("body", body.is_some()),
        ("options.form", options.form.is_some()),
        ("options.body_text", options.body_text.is_some()),
    ];
    let named: Vec<&str> = given
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
    if named.len() > 1 {
        return Err(Error::invalid(format!(
            "give only one request body, not {}",
            named.join(" and ")
        )));
    }
    let content_type = options.content_type.clone();
    if let Some(form) = &options.form {
        if content_type.is_some() {
            return Err(Error::invalid(
                "options.content_type cannot be combined with options.form",
            ));
        }
        let mut encoder = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in form {
            for text in query_values(name, value)? {
                encoder.append_pair(name, &text);
            }
        }
        return Ok(Body::Bytes {
            content: encoder.finish().into_bytes().into(),
            content_type: "application/x-www-form-urlencoded".into(),
        });
    }
    if let Some(text) = &options.body_text {
        return Ok(Body::Bytes {
            content: text.clone().into_bytes().into(),
            content_type: content_type.unwrap_or_else(|| "text/plain; charset=utf-8".into()),
        });
    }
    match body {
        Some(json) => Ok(Body::Json {
            value: Arc::new(json),
            content_type: content_type.unwrap_or_else(|| "application/json".into()),
        }),
        None if content_type.is_some() => Err(Error::invalid(
            "options.content_type needs a body: give body or options.body_text",
        )),
        None => Ok(Body::None),
    }
}

impl Body {
    pub fn content_type(&self) -> Option<&str> {
        match self {
            Body::None => None,
            Body::Json { content_type, .. } | Body::Bytes { content_type, .. } => {
                Some(content_type)
            }
        }
    }

    /// The bytes to send.
    /// The bytes to send: JSON serialised for this request, other bodies shared.
    pub fn content(&self) -> Option<bytes::Bytes> {
        match self {
            Body::None => None,
            Body::Json { value, .. } => Some(value.to_string().into_bytes().into()),
            Body::Bytes { content, .. } => Some(content.clone()),
        }
    }

    /// The size of the body as sent.
    fn len(&self) -> usize {
        self.content().map_or(0, |c| c.len())
    }
}

/// Validates the content type up front so that sending never fails on it.
fn check_content_type(body: &Body) -> Result<()> {
    if let Some(content_type) = body.content_type() {
        HeaderValue::from_str(content_type).map_err(|_| {
            Error::invalid(format!("invalid options.content_type \"{content_type}\""))
        })?;
    }
    Ok(())
}

/// The text values a query or form parameter stands for: scalars as text, arrays repeated.
fn query_values(name: &str, value: &Value) -> Result<Vec<String>> {
    match value {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Number(number) => Ok(vec![number.to_string()]),
        Value::Bool(flag) => Ok(vec![flag.to_string()]),
        Value::Null => Ok(vec![]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Array(_) | Value::Object(_) => Err(Error::invalid(format!(
                    "parameter \"{name}\" may hold scalars only"
                ))),
                _ => Ok(query_values(name, item)?.pop().unwrap_or_default()),
            })
            .collect(),
        Value::Object(_) => Err(Error::invalid(format!(
            "parameter \"{name}\" must be a scalar or an array of scalars, not an object"
        ))),
    }
}

fn apply_auth(
    auth: &Auth,
    stored: &HashMap<String, String>,
    access_token: Option<&str>,
    credentials: &mut Credentials,
    headers: &mut HeaderMap,
    secrets: &mut Vec<String>,
) -> Result<Option<OAuth2>> {
    let inline = |kind: &str, field: &str, value: &Option<String>, secret: &Option<String>| {
        stored_or_inline(kind, field, value, secret, stored)
    };
    match auth {
        Auth::Bearer { token, secret } => {
            let token = inline("bearer", "token", token, secret)?;
            secrets.push(token.clone());
            let value = format!("Bearer {token}");
            credential_header(headers, credentials, reqwest::header::AUTHORIZATION, value)?;
        }
        Auth::Basic {
            username,
            password,
            secret,
        } => {
            let password = inline("basic", "password", password, secret)?;
            let encoded = base64_encode(format!("{username}:{password}").as_bytes());
            secrets.push(password);
            secrets.push(encoded.clone());
            let value = format!("Basic {encoded}");
            credential_header(headers, credentials, reqwest::header::AUTHORIZATION, value)?;
        }
        Auth::ApiKey {
            name,
            place,
            value,
            secret,
        } => {
            let value = inline("api_key", "value", value, secret)?;
            secrets.push(value.clone());
            match place {
                ApiKeyPlace::Header => {
                    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        Error::invalid(format!("invalid header name \"{name}\" in options.auth"))
                    })?;
                    credential_header(headers, credentials, header, value)?;
                }
                ApiKeyPlace::Query => {
                    credentials.query = Some((name.clone(), value.clone()));
                    // The encoded form is what appears in URLs.
                    let encoded: String =
                        url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
                    secrets.push(encoded);
                }
            }
        }
        Auth::OAuth2ClientCredentials {
            token_url,
            client_id,
            client_secret,
            secret,
            scope,
        } => {
            let client_secret = inline(
                "oauth2_client_credentials",
                "client_secret",
                client_secret,
                secret,
            )?;
            secrets.push(client_secret.clone());
            let token_url = parse_token_url(token_url)?;
            return Ok(Some(OAuth2 {
                token_url,
                client_id: client_id.clone(),
                client_secret,
                scope: scope.clone(),
            }));
        }
        Auth::OAuth2RefreshToken {
            token_url,
            client_secret,
            secret,
            ..
        } => {
            let client_secret = inline(
                "oauth2_refresh_token",
                "client_secret",
                client_secret,
                secret,
            )?;
            secrets.push(client_secret);
            parse_token_url(token_url)?;
            let token = access_token.ok_or_else(|| {
                Error::internal("options.auth of type oauth2_refresh_token has no access token")
            })?;
            secrets.push(token.to_string());
            let value = format!("Bearer {token}");
            credential_header(headers, credentials, reqwest::header::AUTHORIZATION, value)?;
        }
    }
    Ok(None)
}

/// Sets a header that carries a credential: marked sensitive, and sent only to its origin.
fn credential_header(
    headers: &mut HeaderMap,
    credentials: &mut Credentials,
    name: HeaderName,
    text: String,
) -> Result<()> {
    let mut value = HeaderValue::from_str(&text)
        .map_err(|_| Error::invalid("options.auth holds a value that is not a valid header"))?;
    value.set_sensitive(true);
    headers.insert(name.clone(), value);
    credentials.headers.push(name);
    Ok(())
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A per-call value: absent means the setting; present must be positive and within the setting.
fn bounded(key: &str, given: Option<u64>, setting: u64, setting_name: &str) -> Result<u64> {
    match given {
        None => Ok(setting),
        Some(0) => Err(Error::invalid(format!("options.{key} must be positive"))),
        Some(value) if value > setting => Err(Error::invalid(format!(
            "options.{key} {value} is above the maximum {setting} set by {setting_name}"
        ))
        .with_hint(format!("a superuser can raise {setting_name}"))),
        Some(value) => Ok(value),
    }
}

/// Settings for plain unit tests: a 1 s timeout, 1000 bytes, no user agent, 10 pages, the default
/// denied networks.
#[cfg(test)]
pub fn test_limits() -> Limits {
    Limits {
        http_timeout_ms: 1000,
        max_response_bytes: 1000,
        user_agent: String::new(),
        max_pages: 10,
        policy: Arc::new(
            NetworkPolicy::parse("*", "169.254.0.0/16, fe80::/10, 0.0.0.0/8").unwrap(),
        ),
        gate: None,
    }
}

/// A JSON value as a query parameter or setting takes it: a string as it is, anything else as its
/// JSON text.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn display_url(url: &Url, secrets: &[String]) -> String {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    let mut text = shown.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret.as_str(), "***");
    }
    text
}

/// Query parameter names that carry credentials by convention.
pub fn key_like(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace(['-', '_'], "");
    [
        "apikey",
        "key",
        "token",
        "accesstoken",
        "secret",
        "clientsecret",
        "password",
        "signature",
        "sig",
    ]
    .contains(&name.as_str())
}

/// A URL that did not parse, shown without anything that looks like user info.
fn display_raw_url(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***@{}", &text[..scheme_end + 3], &text[at + 1..])
        }
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::SqlState;
    use serde_json::json;

    fn limits() -> Limits {
        Limits {
            http_timeout_ms: 30_000,
            max_response_bytes: 1 << 20,
            user_agent: "ua/1".into(),
            ..test_limits()
        }
    }

    #[test]
    fn a_refresh_grant_is_resolved_and_its_access_token_sent_as_bearer() {
        let options = json!({"auth": {"type": "oauth2_refresh_token", "token_url": "http://127.0.0.1:1/token",
            "client_id": "c", "secret": "client", "refresh_token_secret": "rt"}});
        let stored: HashMap<String, String> = [("client".to_string(), "s3cret".to_string())].into();
        let grant = refresh_grant(Some(&options), &stored, &limits())
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                grant.client_secret.as_str(),
                grant.refresh_token_secret.as_str()
            ),
            ("s3cret", "rt")
        );
        // Any other auth is no refresh grant; a missing client secret is 42704.
        let bearer = json!({"auth": {"type": "bearer", "token": "t"}});
        assert_eq!(
            refresh_grant(Some(&bearer), &stored, &limits()).unwrap(),
            None
        );
        let err = refresh_grant(Some(&options), &HashMap::new(), &limits()).unwrap_err();
        assert_eq!(err.state, SqlState::UndefinedObject);
        let spec = parse_request(
            RequestArgs {
                url: Some("http://127.0.0.1:1/api"),
                options: Some(options),
                secrets: stored,
                access_token: Some("at-1".into()),
                ..Default::default()
            },
            &limits(),
        )
        .unwrap();
        assert_eq!(spec.headers[reqwest::header::AUTHORIZATION], "Bearer at-1");
        assert!(
            spec.secrets.contains(&"at-1".to_string())
                && spec.secrets.contains(&"s3cret".to_string())
        );
    }

    fn request(url: &str, options: Value) -> Result<RequestSpec> {
        parse_request(
            RequestArgs {
                url: Some(url),
                options: Some(options),
                ..Default::default()
            },
            &limits(),
        )
    }

    #[test]
    fn defaults_come_from_the_settings() {
        let spec = request("http://127.0.0.1:9/x", json!({})).unwrap();
        assert_eq!(spec.method, Method::GET);
        assert_eq!(spec.timeout, Duration::from_secs(30));
        assert_eq!(spec.max_response_bytes, 1 << 20);
        assert_eq!(spec.headers["user-agent"], "ua/1");
        assert_eq!(spec.body, Body::None);
    }

    #[test]
    fn bad_urls_are_rejected_with_reasons() {
        for (url, state, needle) in [
            (
                "",
                SqlState::NullValueNotAllowed,
                "must not be NULL or empty",
            ),
            (
                "/api/users",
                SqlState::InvalidParameterValue,
                "relative URL",
            ),
            (
                "ftp://example.com/x",
                SqlState::InvalidParameterValue,
                "scheme \"ftp\"",
            ),
            (
                "http://exa mple.com/",
                SqlState::InvalidParameterValue,
                "invalid url",
            ),
            (
                "file:///etc/passwd",
                SqlState::InvalidParameterValue,
                "scheme \"file\"",
            ),
        ] {
            let err = request(url, json!({})).unwrap_err();
            assert_eq!(err.state, state, "{url}");
            assert!(err.message.contains(needle), "{url}: {}", err.message);
        }
    }

    #[test]
    fn unknown_and_mistyped_options_are_errors() {
        let err = request("http://h/", json!({"timout_ms": 5})).unwrap_err();
        assert_eq!(err.state, SqlState::InvalidParameterValue);
        assert!(
            err.message.contains("unknown field `timout_ms`"),
            "{}",
            err.message
        );
        let err = request("http://h/", json!({"timeout_ms": "fast"})).unwrap_err();
        assert!(err.message.contains("invalid type"), "{}", err.message);
        let err = request("http://h/", json!([1])).unwrap_err();
        assert!(
            err.message.contains("must be a JSON object"),
            "{}",
            err.message
        );
    }

    #[test]
    fn per_call_limits_cannot_exceed_the_settings() {
        let err = request("http://h/", json!({"timeout_ms": 60_000})).unwrap_err();
        assert!(
            err.message.contains("above the maximum 30000"),
            "{}",
            err.message
        );
        let spec = request(
            "http://h/",
            json!({"timeout_ms": 250, "max_response_bytes": 10}),
        )
        .unwrap();
        assert_eq!(spec.timeout, Duration::from_millis(250));
        assert_eq!(spec.max_response_bytes, 10);
    }

    #[test]
    fn methods_are_checked_and_case_folded() {
        for method in ["get", "HEAD", "Post", "put", "patch", "DELETE"] {
            let args = RequestArgs {
                url: Some("http://h/"),
                method: Some(method),
                ..Default::default()
            };
            assert_eq!(
                parse_request(args, &limits()).unwrap().method.as_str(),
                method.to_uppercase()
            );
        }
        let args = RequestArgs {
            url: Some("http://h/"),
            method: Some("FETCH"),
            ..Default::default()
        };
        let err = parse_request(args, &limits()).unwrap_err();
        assert!(err.message.contains("unsupported HTTP method \"FETCH\""));
    }

    #[test]
    fn headers_must_be_an_object_of_safe_strings() {
        let parse = |headers: Value| {
            parse_request(
                RequestArgs {
                    url: Some("http://h/"),
                    headers: Some(headers),
                    ..Default::default()
                },
                &limits(),
            )
        };
        assert!(parse(json!({"X-A": 1}))
            .unwrap_err()
            .message
            .contains("must be a string"));
        assert!(parse(json!(["X-A"]))
            .unwrap_err()
            .message
            .contains("object of strings"));
        assert!(parse(json!({"X-A": "a\r\nX-Injected: 1"}))
            .unwrap_err()
            .message
            .contains("line break"));
        assert!(parse(json!({"Content-Length": "5"}))
            .unwrap_err()
            .message
            .contains("set by the HTTP client"));
        let spec = parse(json!({"X-A": "b", "User-Agent": "mine"})).unwrap();
        assert_eq!(spec.headers["x-a"], "b");
        assert_eq!(spec.headers["user-agent"], "mine");
        assert!(spec.secrets.is_empty());
        let spec = parse(json!({"Authorization": "Token abc123"})).unwrap();
        assert!(spec.headers["authorization"].is_sensitive());
        let err = Error::invalid("got Token abc123, then abc123").redact(&spec.secrets);
        assert_eq!(err.message, "got ***, then ***");
    }

    #[test]
    fn query_and_form_encode_scalars_and_arrays() {
        let spec = request(
            "http://h/p?a=1",
            json!({"query": {"b": "x y", "c": [1, true], "d": null}}),
        )
        .unwrap();
        assert_eq!(spec.url.as_str(), "http://h/p?a=1&b=x+y&c=1&c=true");
        let spec = request("http://h/", json!({"form": {"q": "a&b"}})).unwrap();
        assert_eq!(
            spec.body,
            Body::Bytes {
                content: bytes::Bytes::from_static(b"q=a%26b"),
                content_type: "application/x-www-form-urlencoded".into()
            }
        );
        assert!(request("http://h/", json!({"query": {"o": {"x": 1}}})).is_err());
    }

    #[test]
    fn one_body_only() {
        let args = RequestArgs {
            url: Some("http://h/"),
            body: Some(json!({"a": 1})),
            options: Some(json!({"body_text": "x"})),
            ..Default::default()
        };
        let err = parse_request(args, &limits()).unwrap_err();
        assert!(
            err.message.contains("only one request body"),
            "{}",
            err.message
        );
        let spec = request(
            "http://h/",
            json!({"body_text": "<a/>", "content_type": "text/xml"}),
        )
        .unwrap();
        assert_eq!(
            spec.body,
            Body::Bytes {
                content: bytes::Bytes::from_static(b"<a/>"),
                content_type: "text/xml".into()
            }
        );
    }

    #[test]
    fn auth_values_become_headers_and_are_secret() {
        let spec = request(
            "http://h/",
            json!({"auth": {"type": "bearer", "token": "tok"}}),
        )
        .unwrap();
        assert_eq!(spec.headers["authorization"], "Bearer tok");
        assert!(spec.headers["authorization"].is_sensitive());
        assert!(spec.secrets.contains(&"tok".to_string()));

        let spec = request(
            "http://h/",
            json!({"auth": {"type": "basic", "username": "Aladdin", "password": "open sesame"}}),
        )
        .unwrap();
        assert_eq!(
            spec.headers["authorization"],
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );

        let spec = request(
            "http://h/",
            json!({"auth": {"type": "api_key", "name": "key", "in": "query", "value": "k/1"}}),
        )
        .unwrap();
        // Added to each request to the origin, never part of a page's URL.
        assert_eq!(spec.display_url(), "http://h/");
        assert_eq!(
            spec.credentials.query,
            Some(("key".to_string(), "k/1".to_string()))
        );
        assert!(spec
            .credentials
            .go_to(&Url::parse("http://h/next").unwrap()));
        assert!(!spec.credentials.go_to(&Url::parse("https://h/").unwrap()));
        assert!(!spec
            .credentials
            .go_to(&Url::parse("http://h:8080/").unwrap()));

        let err = request("http://h/", json!({"auth": {"type": "bearer"}})).unwrap_err();
        assert!(
            err.message
                .contains("exactly one of \"token\" and \"secret\""),
            "{}",
            err.message
        );
        let err = request("http://h/", json!({"auth": {"type": "digest"}})).unwrap_err();
        assert!(
            err.message.contains("unknown variant `digest`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn user_info_never_shows() {
        let spec = request("http://u:pw@h/x", json!({})).unwrap();
        assert_eq!(spec.display_url(), "http://h/x");
        let err = request("http://u:pw@h:bad/x", json!({})).unwrap_err();
        assert!(!err.message.contains("pw"), "{}", err.message);
    }

    #[test]
    fn fetch_spec_checks_path_columns_and_paging() {
        let args = || RequestArgs {
            url: Some("http://h/"),
            ..Default::default()
        };
        let err = FetchSpec::parse(args(), "$.data[", None, None, &limits()).unwrap_err();
        assert_eq!(err.state, SqlState::SyntaxError);
        let err = FetchSpec::parse(
            args(),
            "$",
            Some(&json!({"type": "pages"})),
            None,
            &limits(),
        )
        .unwrap_err();
        assert!(err.message.contains("unknown paging type \"pages\""));
        let concurrent =
            json!({"type": "cursor", "cursor_path": "$.c", "cursor_param": "c", "concurrency": 4});
        let err = FetchSpec::parse(args(), "$", Some(&concurrent), None, &limits()).unwrap_err();
        assert!(err
            .message
            .contains("needs page_number or offset paging with a known page count"));
        let counted = json!({"type": "page_number", "page_param": "p", "page_size": 10, "total_path": "$.total", "concurrency": 4});
        let spec = FetchSpec::parse(args(), "$", Some(&counted), None, &limits()).unwrap();
        assert_eq!((spec.concurrency, spec.max_pages), (4, 10));
        let err = FetchSpec::parse(args(), "$", None, None, &limits());
        assert!(err.is_ok());
        let lone = RequestArgs {
            url: Some("http://h/"),
            options: Some(json!({"max_pages": 3})),
            ..Default::default()
        };
        let err = FetchSpec::parse(lone, "$", None, None, &limits()).unwrap_err();
        assert!(
            err.message.contains("need a paging spec"),
            "{}",
            err.message
        );
        let metadata = RequestArgs {
            url: Some("http://169.254.169.254/latest"),
            ..Default::default()
        };
        let err = FetchSpec::parse(metadata, "$", None, None, &limits()).unwrap_err();
        assert_eq!(err.state, SqlState::InsufficientPrivilege);
        let with_columns = RequestArgs {
            url: Some("http://h/"),
            options: Some(json!({"columns": {"b": "$.x.y", "a": "$.z"}})),
            ..Default::default()
        };
        let spec = FetchSpec::parse(with_columns, "$.data", None, None, &limits()).unwrap();
        let mut mapped: Vec<(&str, &str)> = spec
            .columns
            .iter()
            .map(|(name, source)| match source {
                ColumnSource::Path(path) => (name.as_str(), path.text()),
                ColumnSource::Param(param) => (name.as_str(), param.as_str()),
            })
            .collect();
        mapped.sort();
        assert_eq!(mapped, [("a", "$.z"), ("b", "$.x.y")]);
        let unparameterized = RequestArgs {
            url: Some("http://h/"),
            options: Some(json!({"columns": {"user_id": "{id}"}})),
            ..Default::default()
        };
        let err = FetchSpec::parse(unparameterized, "$", None, None, &limits()).unwrap_err();
        assert!(err.message.contains("has no params"), "{}", err.message);
    }

    #[test]
    fn on_status_skips_only_4xx_that_are_not_retried() {
        let skip = |rules: Value| SkipStatuses::parse(rules.as_object());
        let rules = skip(json!({"404": "skip", "4xx": "skip", "403": "error"})).unwrap();
        assert!(rules.skips(404) && rules.skips(410) && !rules.skips(403));
        assert!(!rules.skips(429) && !rules.skips(408) && !rules.skips(500));
        for bad in [
            json!({"429": "skip"}),
            json!({"500": "skip"}),
            json!({"404": "ignore"}),
            json!({"x": "skip"}),
        ] {
            assert!(skip(bad.clone()).is_err(), "{bad}");
        }
    }
}
