//! OAuth2 refresh tokens (`options.auth` of type oauth2_refresh_token). The access token is cached
//! per backend until shortly before it expires. To get one, a short-lived background worker locks
//! the secret holding the refresh token, exchanges it, stores the rotated one and commits — on its
//! own, so the rotation is durable even when the statement that asked is rolled back — and hands
//! the access token back through a dynamic shared memory segment. The row lock serialises
//! refreshes of one secret across backends: none uses a refresh token another has spent.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result, SqlState};
use crate::fetch::oauth::TokenEndpoint;
use crate::fetch::Http;
use crate::spec::{refresh_grant, RefreshGrant};
use crate::sql::OrRaise;

/// A cached token is renewed this long before it expires: a fetch that starts with it has this
/// long before the API may refuse it.
const MARGIN: Duration = Duration::from_secs(60);

/// The access tokens of this backend: per database, role and grant.
type Key = (Oid, Oid, RefreshGrant);
static TOKENS: Mutex<Vec<(Key, String, Instant)>> = Mutex::new(Vec::new());

/// Whether a fetch spec is built to make requests (the access token is got) or only to be
/// checked (create_job, alter_job: no exchange, which would spend a refresh token for nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokens {
    Exchange,
    CheckOnly,
}

/// The access token for `options.auth` when it is of type oauth2_refresh_token, for `role`
/// (whose secrets `stored` holds): cached, or exchanged now. `None` for any other auth.
pub fn access_token(
    role: Oid,
    options: Option<&Value>,
    stored: &HashMap<String, String>,
    tokens: Tokens,
) -> Option<String> {
    let auth_type = options
        .and_then(|o| o.get("auth"))
        .and_then(|auth| auth.get("type"))
        .and_then(Value::as_str);
    if auth_type != Some("oauth2_refresh_token") {
        return None;
    }
    let limits = crate::settings::limits().or_raise();
    let grant = refresh_grant(options, stored, &limits).or_raise()?;
    if !crate::sql::secrets::exists(role, &grant.refresh_token_secret) {
        crate::sql::raise(missing_secret(&grant.refresh_token_secret));
    }
    if tokens == Tokens::CheckOnly {
        return Some("unexchanged".into());
    }
    crate::route::may_request().or_raise();
    // SAFETY: reads a session global on the backend thread.
    let key = (unsafe { pg_sys::MyDatabaseId }, role, grant);
    if let Some(token) = cached(&key) {
        return Some(token);
    }
    let granted = exchange_in_worker(role, &key.2, &limits).or_raise();
    let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    tokens.retain(|(k, _, _)| *k != key);
    let until = Instant::now() + Duration::from_secs(granted.expires_in);
    tokens.push((key, granted.access_token.clone(), until));
    Some(granted.access_token)
}

fn cached(key: &Key) -> Option<String> {
    let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    let fresh = Instant::now() + MARGIN;
    tokens
        .iter()
        .find(|(k, _, until)| k == key && *until > fresh)
        .map(|(_, token, _)| token.clone())
}

fn missing_secret(name: &str) -> Error {
    Error::new(
        SqlState::UndefinedObject,
        format!("secret \"{name}\" does not exist"),
    )
    .with_hint(
        "store the refresh token with apisync.create_secret(name, value), as the role that uses it",
    )
}

/// What the caller hands the worker.
#[derive(Serialize, Deserialize)]
struct Request {
    database: u32,
    owner: u32,
    grant: Grant,
    timeout_ms: u64,
    max_response_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Grant {
    token_url: String,
    client_id: String,
    client_secret: String,
    refresh_token_secret: String,
    scope: Option<String>,
}

/// What the worker hands back.
#[derive(Serialize, Deserialize)]
enum Answer {
    Granted(Granted),
    Failed {
        state: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
}

#[derive(Serialize, Deserialize)]
struct Granted {
    access_token: String,
    /// Seconds the access token lives.
    expires_in: u64,
}

/// The shared segment: a header, the request, then the answer.
const SEGMENT_BYTES: usize = 64 * 1024;
const REQUEST_AT: usize = 16;
const ANSWER_AT: usize = 32 * 1024;

/// The header at the start of the segment.
#[repr(C)]
struct Header {
    /// Set (after the answer is written) once the worker answered.
    answered: AtomicU32,
    request_len: u32,
    answer_len: u32,
}

/// Exchanges the refresh token of `grant` in a worker and waits for its answer. A cancel stops
/// the wait, not the worker: a rotation it began is stored all the same.
fn exchange_in_worker(
    role: Oid,
    grant: &RefreshGrant,
    limits: &crate::spec::Limits,
) -> Result<Granted> {
    // SAFETY: reads of backend state on the backend thread.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Err(Error::new(
            SqlState::from_code("25006"),
            "an OAuth2 refresh token cannot be used on a standby: the rotated token could not be stored",
        )
        .with_hint("run the fetch on the primary"));
    }
    if holds_secret(role, &grant.refresh_token_secret) {
        return Err(Error::new(
            SqlState::from_code("55P03"),
            format!(
                "this transaction changed secret \"{}\", which the OAuth2 refresh would wait for",
                grant.refresh_token_secret
            ),
        )
        .with_hint("commit the secret first, then fetch"));
    }
    let request = serde_json::to_vec(&Request {
        // SAFETY: a session global on the backend thread.
        database: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        owner: role.to_u32(),
        grant: Grant {
            token_url: grant.token_url.to_string(),
            client_id: grant.client_id.clone(),
            client_secret: grant.client_secret.clone(),
            refresh_token_secret: grant.refresh_token_secret.clone(),
            scope: grant.scope.clone(),
        },
        timeout_ms: limits.http_timeout_ms,
        max_response_bytes: limits.max_response_bytes,
    })
    .map_err(|e| Error::internal(e.to_string()))?;
    if REQUEST_AT + request.len() > ANSWER_AT {
        return Err(Error::invalid(
            "options.auth of type oauth2_refresh_token is too long",
        ));
    }
    // SAFETY: a new segment of SEGMENT_BYTES, mapped in this backend until the resource owner
    // releases it; the worker attaches it by its handle.
    let (segment, handle) = unsafe {
        let segment = pg_sys::dsm_create(SEGMENT_BYTES, 0);
        let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
        std::ptr::write_bytes(base, 0, REQUEST_AT);
        std::ptr::copy_nonoverlapping(request.as_ptr(), base.add(REQUEST_AT), request.len());
        (*base.cast::<Header>()).request_len = request.len() as u32;
        (segment, pg_sys::dsm_segment_handle(segment))
    };
    // SAFETY: a session global on the backend thread.
    let pid = unsafe { pg_sys::MyProcPid };
    let worker = BackgroundWorkerBuilder::new("apisync OAuth2 refresh")
        .set_type("apisync oauth")
        .set_library("pg_apisync")
        .set_function("apisync_oauth_worker")
        .enable_spi_access()
        .set_argument(Some(pg_sys::Datum::from(handle)))
        .set_notify_pid(pid)
        .set_restart_time(None)
        .load_dynamic()
        .map_err(|_| {
            Error::new(
                SqlState::ConfigurationLimitExceeded,
                "could not start a background worker to refresh the OAuth2 token",
            )
            .with_hint("raise max_worker_processes")
        })?;
    // A cancel stops the wait, not the worker: it stores what it got.
    crate::interrupt::wait_for_worker(
        worker,
        "the OAuth2 refresh",
        crate::interrupt::OnCancel::LetFinish,
        Duration::from_millis(20),
    )?;
    // SAFETY: the worker has exited: what it wrote is complete; the segment is still mapped here.
    let answer = unsafe {
        let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
        let header = &*base.cast::<Header>();
        let answer = (header.answered.load(Ordering::Acquire) == 1).then(|| {
            std::slice::from_raw_parts(base.add(ANSWER_AT), header.answer_len as usize).to_vec()
        });
        pg_sys::dsm_detach(segment);
        answer
    };
    let answer = answer.ok_or_else(|| {
        Error::internal("the OAuth2 refresh worker ended without an answer")
            .with_hint("the server log may say more")
    })?;
    match serde_json::from_slice(&answer).map_err(|e| Error::internal(e.to_string()))? {
        Answer::Granted(granted) => Ok(granted),
        Answer::Failed {
            state,
            message,
            detail,
            hint,
        } => {
            let mut error = Error::new(SqlState::from_code(&state), message);
            error.detail = detail;
            error.hint = hint;
            Err(error)
        }
    }
}

/// Whether this transaction wrote or locked `role`'s secret `name` (the worker would wait for it).
fn holds_secret(role: Oid, name: &str) -> bool {
    crate::jobs::catalog::touched_by_this_transaction(
        "SELECT xmin::pg_catalog.text, xmax::pg_catalog.text FROM apisync.secrets
         WHERE owner OPERATOR(pg_catalog.=) $1::pg_catalog.regrole AND name OPERATOR(pg_catalog.=) $2",
        &[role.into(), name.into()],
    )
}

/// The worker: attaches the caller's segment, exchanges under the secret's row lock, commits, and
/// answers. Its answer is written after the commit: an access token is handed back only when the
/// refresh token it came with is stored.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn apisync_oauth_worker(arg: pg_sys::Datum) {
    // SAFETY: signal setup of a background worker, before unblocking signals.
    unsafe {
        pg_sys::pqsignal(libc::SIGTERM, Some(crate::jobs::run::on_sigterm));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let handle = arg.value() as pg_sys::dsm_handle;
    // SAFETY: attaches the caller's segment; a caller gone before this left none (no exchange).
    let segment = unsafe { pg_sys::dsm_attach(handle) };
    if segment.is_null() {
        return;
    }
    // SAFETY: the caller wrote the header and request before starting this worker.
    let (base, request) = unsafe {
        let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
        let len = (*base.cast::<Header>()).request_len as usize;
        (
            base,
            std::slice::from_raw_parts(base.add(REQUEST_AT), len).to_vec(),
        )
    };
    let answer = match serde_json::from_slice::<Request>(&request) {
        Ok(request) => {
            BackgroundWorker::connect_worker_to_spi_by_oid(Some(Oid::from(request.database)), None);
            PgTryBuilder::new(AssertUnwindSafe(|| {
                let granted = crate::jobs::run::transaction(|| exchange(&request));
                match granted {
                    Ok(granted) => Answer::Granted(granted),
                    Err(error) => failed(error),
                }
            }))
            .catch_others(|caught| {
                let (message, state) = crate::jobs::run::describe(caught);
                failed(Error::new(
                    SqlState::from_code(&state),
                    format!("the OAuth2 refresh failed: {message}"),
                ))
            })
            .execute()
        }
        Err(e) => failed(Error::internal(format!("bad OAuth2 refresh request: {e}"))),
    };
    let answer = serde_json::to_vec(&answer).unwrap_or_default();
    // SAFETY: the answer area is this worker's to write; the flag is set after it, and the caller
    // reads it only after this process exits.
    unsafe {
        let len = answer.len().min(SEGMENT_BYTES - ANSWER_AT);
        std::ptr::copy_nonoverlapping(answer.as_ptr(), base.add(ANSWER_AT), len);
        let header = &mut *base.cast::<Header>();
        header.answer_len = len as u32;
        header.answered.store(1, Ordering::Release);
        pg_sys::dsm_detach(segment);
    }
}

fn failed(error: Error) -> Answer {
    Answer::Failed {
        state: error.state.code(),
        message: error.message,
        detail: error.detail,
        hint: error.hint,
    }
}

/// In the worker's transaction: locks the secret row, exchanges its refresh token, stores the one
/// the endpoint rotated it to.
fn exchange(request: &Request) -> Result<Granted> {
    let owner = Oid::from(request.owner);
    let grant = &request.grant;
    let name = grant.refresh_token_secret.as_str();
    let locked = Spi::get_one_with_args::<String>(
        "SELECT value FROM apisync.secrets
         WHERE owner OPERATOR(pg_catalog.=) $1::pg_catalog.regrole AND name OPERATOR(pg_catalog.=) $2
         FOR UPDATE",
        &[owner.into(), name.into()],
    );
    let refresh_token = match locked {
        Ok(Some(value)) => value,
        Ok(None) | Err(pgrx::spi::Error::InvalidPosition) => return Err(missing_secret(name)),
        Err(e) => {
            return Err(Error::internal(format!(
                "could not read secret \"{name}\": {e}"
            )))
        }
    };
    let mut secrets = vec![grant.client_secret.clone(), refresh_token.clone()];
    let token_url =
        url::Url::parse(&grant.token_url).map_err(|e| Error::internal(e.to_string()))?;
    let limits = crate::settings::limits()?;
    limits
        .policy
        .check_url(&token_url)
        .map_err(|denied| denied.into_error())?;
    let http = Http::get()?;
    let client = http.client(&limits.policy)?;
    let endpoint = TokenEndpoint {
        url: &token_url,
        client_id: &grant.client_id,
        client_secret: &grant.client_secret,
        timeout: Duration::from_millis(request.timeout_ms),
        max_response_bytes: request.max_response_bytes,
    };
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.as_str()),
    ];
    if let Some(scope) = &grant.scope {
        form.push(("scope", scope));
    }
    let granted =
        crate::interrupt::wait(&http.runtime, endpoint.exchange(&client, &form, &secrets))??;
    if let Some(rotated) = granted.refresh_token.filter(|t| *t != refresh_token) {
        secrets.push(rotated.clone());
        crate::sql::run(
            "UPDATE apisync.secrets SET value = $3, created_at = pg_catalog.now()
             WHERE owner OPERATOR(pg_catalog.=) $1::pg_catalog.regrole AND name OPERATOR(pg_catalog.=) $2",
            &[owner.into(), name.into(), rotated.as_str().into()],
        )
        .map_err(|e| {
            Error::internal(format!("could not store the rotated refresh token: {e}")).redact(&secrets)
        })?;
    }
    Ok(Granted {
        access_token: granted.access_token,
        expires_in: granted.lifetime.as_secs(),
    })
}
