//! HTTP on tokio. Knows nothing of Postgres: the backend thread starts a `PageStream` and takes
//! pages from its bounded channel; the tokio side requests, parses and selects rows.

pub(crate) mod http;
mod oauth;
mod pager;

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

use crate::extract::cells::{self, Compact, Plan};
use crate::policy::{NetworkPolicy, PolicyResolver};
pub use http::{send, Response};
use pager::{Pager, Step};
pub use reqwest::header::HeaderMap;

use crate::error::{Error, Result, SqlState};
use crate::spec::{FetchSpec, RequestSpec};

/// Pages that may wait in the channel: memory is bounded by this times the page size.
const PAGE_BUFFER: usize = 2;

/// The process's runtime and clients, created on first use (never in the postmaster) and reused
/// by every call: one connection pool per network policy, keep-alive across calls. A client
/// carries its policy in its resolver, so each policy has its own.
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
        let _entered = self.runtime.enter();
        // Redirects are followed by `http::send`, hop by hop: credentials stay with their origin.
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
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
    pub rows: PageRows,
    pub bytes: usize,
    pub requests: u32,
}

/// A page's rows: as JSON values, or in cells when the fetch has a plan and the page fits it.
#[derive(Debug)]
pub enum PageRows {
    Values(Vec<Value>),
    Compact(Compact),
}

impl PageRows {
    pub fn len(&self) -> usize {
        match self {
            PageRows::Values(rows) => rows.len(),
            PageRows::Compact(page) => page.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn into_values(self) -> Vec<Value> {
        match self {
            PageRows::Values(rows) => rows,
            PageRows::Compact(page) => page.into_values(),
        }
    }
}

impl Default for PageRows {
    fn default() -> Self {
        PageRows::Values(Vec::new())
    }
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
    /// A last event (`Finished`, `Cut` or an error) came: the channel may close now.
    ended: bool,
}

impl PageStream {
    /// Starts fetching; with a `plan`, pages that fit it are parsed into cells.
    pub fn start(http: &Http, spec: Arc<FetchSpec>, plan: Option<Plan>) -> Result<PageStream> {
        let client = http.client(&spec.request.policy)?;
        let (tx, rx) = mpsc::channel(PAGE_BUFFER);
        let task = http.runtime.spawn(async move {
            let fetch = Fetch {
                client: &client,
                spec: &spec,
                plan: plan.as_ref(),
            };
            if let Err(error) = produce(fetch, &tx).await {
                // A closed channel means the reader is gone: nothing left to do.
                let _ = tx.send(Err(error)).await;
            }
        });
        Ok(PageStream {
            rx,
            task,
            ended: false,
        })
    }

    /// The next event, or `None` after the last one. A channel that closes before its last event
    /// (the task panicked) is an error, never an early end of the data.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        if self.ended {
            return None;
        }
        let event = self.rx.recv().await;
        self.ended = !matches!(event, Some(Ok(Event::Page(_))));
        match event {
            None => Some(Err(Error::internal(
                "the fetch ended without finishing: its task on the HTTP runtime failed",
            )
            .with_hint("this is a bug in pg_apisync; the server log may say more"))),
            event => event,
        }
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

/// What every page of one fetch shares.
#[derive(Clone, Copy)]
struct Fetch<'a> {
    client: &'a Client,
    spec: &'a FetchSpec,
    plan: Option<&'a Plan>,
}

/// Fetches every page of `spec` in order into `tx`.
async fn produce(fetch: Fetch<'_>, tx: &Sender) -> Result<()> {
    let spec = fetch.spec;
    let Some(paging) = &spec.paging else {
        let (page, _) = fetch_page(fetch, &spec.request, None).await?;
        if deliver(tx, page).await.is_ok() {
            finished(tx, 1, "one request").await?;
        }
        return Ok(());
    };
    let mut pager = Pager::new(paging, &spec.request);
    let mut request = pager.request_at(0);
    let mut index: u64 = 0;
    loop {
        let (page, facts) = fetch_page(fetch, &request, Some(&pager)).await?;
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
            return concurrent(fetch, &pager, count, tx).await;
        }
        request = *next;
        index += 1;
    }
}

/// Pages 2..=count of an addressable kind, `spec.concurrency` at a time, delivered in order.
async fn concurrent(fetch: Fetch<'_>, pager: &Pager<'_>, count: u64, tx: &Sender) -> Result<()> {
    let spec = fetch.spec;
    let last = count.min(u64::from(spec.max_pages));
    let mut pages = stream::iter(1..last)
        .map(|index| {
            let request = pager.request_at(index);
            let page: Pin<Box<dyn Future<Output = _> + Send + '_>> =
                Box::pin(async move { fetch_page(fetch, &request, None).await });
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
    fetch: Fetch<'_>,
    request: &RequestSpec,
    pager: Option<&Pager<'_>>,
) -> Result<(Page, pager::PageFacts)> {
    let mut response = send(fetch.client, request).await?;
    let bytes = response.body.len();
    let facts = |doc: Option<&Value>, response: &Response| {
        pager
            .map(|p| p.facts(doc, &response.headers, &response.final_url))
            .unwrap_or_default()
    };
    let (rows, facts) = match fetch.plan.filter(|_| (200..300).contains(&response.status)) {
        Some(plan) if response.status != 204 => {
            match cells::parse(std::mem::take(&mut response.body), plan) {
                Ok((doc, page)) => (PageRows::Compact(page), facts(Some(&doc), &response)),
                Err(body) => {
                    response.body = body;
                    general(fetch.spec, &response, request, facts)?
                }
            }
        }
        _ => general(fetch.spec, &response, request, facts)?,
    };
    Ok((
        Page {
            rows,
            bytes,
            requests: response.attempts,
        },
        facts,
    ))
}

/// A page's rows as JSON values, and its paging facts.
fn general(
    spec: &FetchSpec,
    response: &Response,
    request: &RequestSpec,
    facts: impl Fn(Option<&Value>, &Response) -> pager::PageFacts,
) -> Result<(PageRows, pager::PageFacts)> {
    let doc = parse_document(response, request)?;
    let facts = facts(doc.as_ref(), response);
    let rows = doc.map(|doc| spec.path.rows(doc)).unwrap_or_default();
    Ok((PageRows::Values(rows), facts))
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
        .with_detail(format!(
            "response body: {}",
            response.body_snippet(&spec.secrets)
        ))
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
                .with_detail(format!(
                    "response body: {}",
                    response.body_snippet(&spec.secrets)
                ))
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
