//! HTTP on tokio. Knows nothing of Postgres: the backend thread starts a `PageStream` and takes
//! pages from its bounded channel; the tokio side requests, parses and selects rows.

pub(crate) mod http;
mod oauth;
mod pager;
pub mod policy;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use reqwest::Client;
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use http::{send, Response};
use pager::{Pager, Step};
use policy::{NetworkPolicy, PolicyResolver};

use crate::error::{Error, Result, SqlState};
use crate::spec::{FetchSpec, RequestSpec};

/// Pages that may wait in the channel: memory is bounded by this times the page size.
const PAGE_BUFFER: usize = 2;

/// The process's runtime and clients, created on first use (never in the postmaster) and reused
/// by every call: one connection pool per network policy, keep-alive across calls. A client
/// carries its policy in its resolver and redirect rules, so each policy has its own.
pub struct Http {
    pub runtime: Runtime,
    clients: Mutex<Vec<(Arc<NetworkPolicy>, Client)>>,
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
        Ok(Http {
            runtime,
            clients: Mutex::new(Vec::new()),
        })
    }

    /// The client that enforces `policy`.
    pub fn client(&self, policy: &Arc<NetworkPolicy>) -> Result<Client> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, client)) = clients.iter().find(|(p, _)| **p == **policy) {
            return Ok(client.clone());
        }
        let redirects = policy.clone();
        let _entered = self.runtime.enter();
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error(format!("too many redirects (more than {MAX_REDIRECTS})"))
                } else if let Err(denied) = redirects.check_url(attempt.url()) {
                    attempt.error(denied)
                } else {
                    attempt.follow()
                }
            }))
            .dns_resolver(Arc::new(PolicyResolver(policy.clone())))
            .no_proxy()
            .gzip(true)
            .deflate(true)
            .brotli(true)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::internal(format!("could not build the HTTP client: {e}")))?;
        // Policies change rarely; keep the few most recent.
        if clients.len() >= 4 {
            clients.remove(0);
        }
        clients.push((policy.clone(), client.clone()));
        Ok(client)
    }
}

const MAX_REDIRECTS: usize = 10;

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
    pub requests: u32,
}

/// What crosses the channel: pages in order, then possibly the news that `max_pages` cut the data.
#[derive(Debug)]
pub enum Event {
    Page(Page),
    /// The page limit was reached while the API had more.
    Cut {
        max_pages: u32,
    },
    /// Paging ended by itself after `pages` pages, for `reason` (empty page, short page, ...).
    Finished {
        pages: u64,
        reason: &'static str,
    },
}

/// Pages produced on the runtime, consumed in order by the backend thread. Dropping it (the query
/// ended, was cancelled or failed) stops the requests.
pub struct PageStream {
    rx: mpsc::Receiver<Result<Event>>,
    task: JoinHandle<()>,
}

impl PageStream {
    pub fn start(http: &Http, spec: Arc<FetchSpec>) -> Result<PageStream> {
        let client = http.client(&spec.request.policy)?;
        let (tx, rx) = mpsc::channel(PAGE_BUFFER);
        let task = http.runtime.spawn(async move {
            if let Err(error) = produce(&client, &spec, &tx).await {
                // A closed channel means the reader is gone: nothing left to do.
                let _ = tx.send(Err(error)).await;
            }
        });
        Ok(PageStream { rx, task })
    }

    /// The next event, or `None` after the last one.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }
}

impl Drop for PageStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Sender = mpsc::Sender<Result<Event>>;

/// The reader went away: stop quietly.
struct Closed;

/// Fetches every page of `spec` in order into `tx`.
async fn produce(client: &Client, spec: &FetchSpec, tx: &Sender) -> Result<()> {
    let Some(paging) = &spec.paging else {
        let (page, _) = fetch_page(client, spec, &spec.request, None).await?;
        let _ = tx.send(Ok(Event::Page(page))).await;
        return Ok(());
    };
    let mut pager = Pager::new(paging, &spec.request);
    let mut request = pager.request_at(0);
    let mut index: u64 = 0;
    loop {
        let (page, facts) = fetch_page(client, spec, &request, Some(&pager)).await?;
        let rows = page.rows.len();
        let count = (index == 0 && spec.concurrency > 1)
            .then(|| pager.page_count(&facts))
            .flatten();
        let step = pager.after(index, rows, facts, &request);
        if deliver(tx, page).await.is_err() {
            return Ok(());
        }
        let next = match step {
            Step::Next(next) => next,
            Step::Stop(reason) => return finished(tx, index + 1, reason).await,
        };
        if index + 1 >= u64::from(spec.max_pages) {
            let _ = tx
                .send(Ok(Event::Cut {
                    max_pages: spec.max_pages,
                }))
                .await;
            return Ok(());
        }
        if let Some(count) = count {
            return concurrent(client, spec, &pager, count, tx).await;
        }
        request = *next;
        index += 1;
    }
}

/// Pages 2..=count of an addressable kind, `spec.concurrency` at a time, delivered in order.
async fn concurrent(
    client: &Client,
    spec: &FetchSpec,
    pager: &Pager<'_>,
    count: u64,
    tx: &Sender,
) -> Result<()> {
    let last = count.min(u64::from(spec.max_pages));
    let mut pages = stream::iter(1..last)
        .map(|index| {
            let request = pager.request_at(index);
            let page: Pin<Box<dyn Future<Output = _> + Send + '_>> =
                Box::pin(async move { fetch_page(client, spec, &request, None).await });
            page
        })
        .buffered(spec.concurrency as usize);
    let mut delivered = 1;
    while let Some(fetched) = pages.next().await {
        let (page, _) = fetched?;
        let empty = page.rows.is_empty();
        if deliver(tx, page).await.is_err() {
            return Ok(());
        }
        delivered += 1;
        if empty {
            return finished(tx, delivered, "empty page").await;
        }
    }
    if count > last {
        let _ = tx
            .send(Ok(Event::Cut {
                max_pages: spec.max_pages,
            }))
            .await;
        return Ok(());
    }
    finished(tx, delivered, "total pages reached").await
}

async fn finished(tx: &Sender, pages: u64, reason: &'static str) -> Result<()> {
    let _ = tx.send(Ok(Event::Finished { pages, reason })).await;
    Ok(())
}

async fn deliver(tx: &Sender, page: Page) -> std::result::Result<(), Closed> {
    tx.send(Ok(Event::Page(page))).await.map_err(|_| Closed)
}

/// One page: request, parse, read the paging facts, take the rows.
async fn fetch_page(
    client: &Client,
    spec: &FetchSpec,
    request: &RequestSpec,
    pager: Option<&Pager<'_>>,
) -> Result<(Page, pager::PageFacts)> {
    let response = send(client, request).await?;
    let bytes = response.body.len();
    let doc = parse_document(&response, request)?;
    let facts = pager
        .map(|p| p.facts(doc.as_ref(), &response.headers, &response.final_url))
        .unwrap_or_default();
    let rows = doc.map(|doc| spec.path.rows(doc)).unwrap_or_default();
    Ok((
        Page {
            rows,
            bytes,
            requests: response.attempts,
        },
        facts,
    ))
}

/// The JSON document of a successful response; `None` for 204 No Content.
pub fn parse_document(response: &Response, spec: &RequestSpec) -> Result<Option<Value>> {
    let url = spec.display_url();
    if !(200..300).contains(&response.status) {
        let tries = match response.attempts {
            0 | 1 => String::new(),
            n => format!(" (tried {n} times)"),
        };
        let status = format!("{} {}", response.status, response.reason);
        return Err(Error::new(
            SqlState::ExternalRoutineException,
            format!("HTTP {} from {url}{tries}", status.trim_end()),
        )
        .with_detail(format!("response body: {}", response.body_snippet()))
        .redact(&spec.secrets));
    }
    if response.status == 204 {
        return Ok(None);
    }
    // The first byte that is not white space tells empty and HTML apart, without a pass over the
    // whole body.
    let first = response
        .body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied();
    if first.is_none() {
        return Err(Error::new(
            SqlState::InvalidJsonText,
            format!("response from {url} has an empty body, not JSON"),
        ));
    }
    serde_json::from_slice(&response.body)
        .map(Some)
        .map_err(|e| {
            let error = if first == Some(b'<') {
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
    use crate::spec::{parse_request, test_limits, RequestArgs};
    use reqwest::header::HeaderMap;

    fn spec() -> RequestSpec {
        let limits = test_limits();
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
            attempts: 1,
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
