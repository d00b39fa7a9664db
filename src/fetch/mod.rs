//! HTTP on tokio. Knows nothing of Postgres: the backend thread starts a `PageStream` and takes
//! pages from its bounded channel; the tokio side requests, parses and selects rows.

mod http;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::Client;
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use http::{send, Response};

use crate::error::{Error, Result, SqlState};
use crate::spec::{FetchSpec, RequestSpec};

/// Pages that may wait in the channel: memory is bounded by this times the page size.
const PAGE_BUFFER: usize = 2;

/// The process's runtime and client, created together on first use (never in the postmaster)
/// and reused by every call: one connection pool, keep-alive across calls.
pub struct Http {
    pub runtime: Runtime,
    pub client: Client,
}

static HTTP: OnceLock<Http> = OnceLock::new();

impl Http {
    pub fn get() -> Result<&'static Http> {
        if let Some(http) = HTTP.get() {
            return Ok(http);
        }
        let http = Http::build()?;
        Ok(HTTP.get_or_init(|| http))
    }

    fn build() -> Result<Http> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("apisync-http")
            .on_thread_start(block_signals)
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("could not start the HTTP runtime: {e}")))?;
        let client = {
            let _entered = runtime.enter();
            Client::builder()
                .redirect(reqwest::redirect::Policy::limited(10))
                .no_proxy()
                .gzip(true)
                .deflate(true)
                .brotli(true)
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| Error::internal(format!("could not build the HTTP client: {e}")))?
        };
        Ok(Http { runtime, client })
    }
}

/// Postgres's signal handlers belong to the backend thread; a signal delivered to a runtime thread
/// would run them there. Blocking all signals here sends every one to the backend thread.
fn block_signals() {
    // SAFETY: plain libc calls on a local sigset, affecting only the calling (new) thread.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

/// One page of rows, with what it cost.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<Value>,
    pub bytes: usize,
}

/// Pages produced on the runtime, consumed in order by the backend thread. Dropping it (the query
/// ended, was cancelled or failed) stops the requests.
pub struct PageStream {
    rx: mpsc::Receiver<Result<Page>>,
    task: JoinHandle<()>,
}

impl PageStream {
    pub fn start(http: &Http, spec: Arc<FetchSpec>) -> PageStream {
        let (tx, rx) = mpsc::channel(PAGE_BUFFER);
        let client = http.client.clone();
        let task = http.runtime.spawn(async move {
            let page = fetch_page(&client, &spec).await;
            // A closed channel means the reader is gone: nothing left to do.
            let _ = tx.send(page).await;
        });
        PageStream { rx, task }
    }

    /// The next page, or `None` after the last one.
    pub async fn next(&mut self) -> Option<Result<Page>> {
        self.rx.recv().await
    }
}

impl Drop for PageStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fetch_page(client: &Client, spec: &FetchSpec) -> Result<Page> {
    let response = send(client, &spec.request).await?;
    let bytes = response.body.len();
    let doc = parse_document(&response, &spec.request)?;
    let rows = match doc {
        Some(doc) => spec.path.rows(doc),
        None => Vec::new(),
    };
    Ok(Page { rows, bytes })
}

/// The JSON document of a successful response; `None` for 204 No Content.
pub fn parse_document(response: &Response, spec: &RequestSpec) -> Result<Option<Value>> {
    let url = spec.display_url();
    if !(200..300).contains(&response.status) {
        return Err(Error::new(
            SqlState::ExternalRoutineException,
            format!(
                "HTTP {} from {url}",
                format!("{} {}", response.status, response.reason).trim_end()
            ),
        )
        .with_detail(format!("response body: {}", response.body_snippet()))
        .redact(&spec.secrets));
    }
    if response.status == 204 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&response.body);
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(Error::new(
            SqlState::InvalidJsonText,
            format!("response from {url} has an empty body, not JSON"),
        ));
    }
    serde_json::from_slice(&response.body)
        .map(Some)
        .map_err(|e| {
            let error = if trimmed.starts_with('<') {
                Error::new(
                    SqlState::InvalidJsonText,
                    format!("response from {url} is HTML, not JSON"),
                )
                .with_hint(
                    "check the URL: servers answer with an HTML page for wrong paths and logins",
                )
            } else if e.is_eof() {
                Error::new(
                    SqlState::InvalidJsonText,
                    format!("response from {url} is not valid JSON: it ends too early ({e})"),
                )
            } else {
                Error::new(
                    SqlState::InvalidJsonText,
                    format!("response from {url} is not valid JSON: {e}"),
                )
            };
            error
                .with_detail(format!("response body: {}", response.body_snippet()))
                .redact(&spec.secrets)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse_request, Limits, RequestArgs};
    use reqwest::header::HeaderMap;

    fn spec() -> RequestSpec {
        let limits = Limits {
            http_timeout_ms: 1000,
            max_response_bytes: 1000,
            user_agent: String::new(),
        };
        let args = RequestArgs {
            url: Some("http://127.0.0.1:1/api?k=tok"),
            ..Default::default()
        };
        let mut spec = parse_request(args, &limits).unwrap();
        spec.secrets.push("tok".into());
        spec
    }

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            reason: "",
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
            final_url: String::new(),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn error_statuses_carry_status_and_body_but_no_secret() {
        let err =
            parse_document(&response(404, "{\"error\": \"no tok here\"}"), &spec()).unwrap_err();
        assert_eq!(err.state, SqlState::ExternalRoutineException);
        assert_eq!(err.message, "HTTP 404 from http://127.0.0.1:1/api?k=***");
        assert_eq!(
            err.detail.as_deref(),
            Some("response body: {\"error\": \"no *** here\"}")
        );
    }

    #[test]
    fn html_truncated_and_empty_bodies_are_named() {
        let err = parse_document(&response(200, "<!doctype html><p>login"), &spec()).unwrap_err();
        assert!(
            err.message.ends_with("is HTML, not JSON"),
            "{}",
            err.message
        );
        let err = parse_document(&response(200, "{\"data\": [1, 2"), &spec()).unwrap_err();
        assert!(err.message.contains("ends too early"), "{}", err.message);
        let err = parse_document(&response(200, "  "), &spec()).unwrap_err();
        assert!(err.message.contains("empty body"), "{}", err.message);
        assert_eq!(parse_document(&response(204, ""), &spec()).unwrap(), None);
    }
}
