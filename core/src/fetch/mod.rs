//! HTTP on tokio. Knows nothing of Postgres: the backend thread starts a `PageStream` and takes
//! pages from its bounded channel; the tokio side requests, parses and selects rows.

mod body;
pub mod decode;
pub(crate) mod http;
pub mod oauth;
mod pager;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use futures_util::FutureExt;
use reqwest::Client;
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::extract::cells::{self, Compact, Plan};
use crate::extract::tape::Tape;
use crate::policy::{NetworkPolicy, PolicyResolver};
use body::BodyStream;
use decode::{BadRecord, Decoder, Shape};
pub use http::{send, Response};
use http::{Attempts, Head};
use pager::{PageFacts, Pager, Step};
pub use reqwest::header::HeaderMap;

use crate::error::{Error, Result, SqlState};
use crate::spec::{FanOut, FetchSpec, ParamSet, RequestSpec};

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

/// Rows of a page, with what they cost: a whole page, or a part of one whose body is still
/// arriving (`continues`).
#[derive(Debug)]
pub struct Page {
    pub rows: PageRows,
    /// Body bytes read for these rows.
    pub bytes: usize,
    /// Requests made for these rows (retries included): counted on a page's first part.
    pub requests: u32,
    /// More parts of this page follow.
    pub continues: bool,
    /// The parameter set of the request (with params).
    pub params: Option<ParamSet>,
    /// The request was skipped by `options.on_status`: what it answered.
    pub skipped: Option<String>,
}

/// A page's rows: as JSON values, or in cells when the fetch has a plan and the page fits it;
/// or one row that could not be read (a bad line or record).
#[derive(Debug)]
pub enum PageRows {
    Values(Vec<Value>),
    Compact(Compact),
    /// Rows as JSON tokens, for jsonb rows (`PageStream::start` with `tape`).
    Tape(Tape),
    Bad(BadRecord),
}

impl Page {
    /// A part of a page whose body is still arriving: its counts are filled in as it is sent.
    fn part(rows: PageRows) -> Page {
        Page {
            rows,
            bytes: 0,
            requests: 0,
            continues: true,
            params: None,
            skipped: None,
        }
    }
}

impl PageRows {
    pub fn len(&self) -> usize {
        match self {
            PageRows::Values(rows) => rows.len(),
            PageRows::Compact(page) => page.len(),
            PageRows::Tape(tape) => tape.len(),
            PageRows::Bad(_) => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `at` as the API sent it (a bad one: its raw text).
    pub fn row_value(&self, at: usize) -> Value {
        match self {
            PageRows::Values(rows) => rows[at].clone(),
            PageRows::Compact(page) => page.row_value(at),
            PageRows::Tape(tape) => tape.row_value(at),
            PageRows::Bad(bad) => bad.raw.clone(),
        }
    }

    /// Keeps the first `len` rows.
    fn truncate(&mut self, len: usize) {
        match self {
            PageRows::Values(rows) => rows.truncate(len),
            PageRows::Compact(page) => page.truncate(len),
            PageRows::Tape(tape) => tape.truncate(len),
            PageRows::Bad(_) if len == 0 => *self = PageRows::default(),
            PageRows::Bad(_) => {}
        }
    }

    #[cfg(test)]
    pub fn into_values(self) -> Vec<Value> {
        match self {
            PageRows::Values(rows) => rows,
            PageRows::Compact(page) => page.into_values(),
            PageRows::Tape(tape) => (0..tape.len()).map(|i| tape.row_value(i)).collect(),
            PageRows::Bad(bad) => vec![bad.raw],
        }
    }
}

impl Default for PageRows {
    fn default() -> Self {
        PageRows::Values(Vec::new())
    }
}

/// What crosses the channel: pages in order, then possibly the news that a limit cut the data.
#[derive(Debug)]
pub enum Event {
    Page(Box<Page>),
    /// A limit was reached while the API had more.
    Cut(Cut),
    /// Paging ended by itself after `pages` pages, for `reason` (empty page, short page, ...).
    Finished {
        pages: u64,
        reason: &'static str,
    },
}

/// The limit that stopped a fetch while the API had more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// `max_pages` pages were fetched.
    MaxPages(u32),
    /// `options.max_rows` rows were delivered.
    MaxRows(u64),
}

impl Cut {
    /// The option's name, as run rows and messages say it.
    pub fn option(&self) -> &'static str {
        match self {
            Cut::MaxPages(_) => "max_pages",
            Cut::MaxRows(_) => "max_rows",
        }
    }
}

/// Pages produced on the runtime, consumed in order by the backend thread. Dropping it (the query
/// ended, was cancelled or failed) stops the requests.
pub struct PageStream {
    rx: mpsc::Receiver<Result<Event>>,
    /// Rows the reader is done with, back to the fetch task to free (`recycle`).
    done: mpsc::UnboundedSender<PageRows>,
    task: JoinHandle<()>,
    /// A last event (`Finished`, `Cut` or an error) came: the channel may close now.
    ended: bool,
}

impl PageStream {
    /// Starts fetching; with a `plan`, pages that fit it are parsed into cells; with `tape`
    /// (jsonb rows), streamed batches are parsed into JSON tokens.
    pub fn start(
        http: &Http,
        spec: Arc<FetchSpec>,
        plan: Option<Plan>,
        tape: bool,
    ) -> Result<PageStream> {
        let client = http.client(&spec.request.policy)?;
        let (events, rx) = mpsc::channel(PAGE_BUFFER);
        let (done, returned) = mpsc::unbounded_channel();
        let tx = Sender {
            events,
            returned: Mutex::new(returned),
            max_rows: spec.max_rows.map(|max| (max, AtomicU64::new(max))),
        };
        let task = http.runtime.spawn(async move {
            let route = cells::route_of(&spec.path, spec.paging.as_ref());
            let fetch = Fetch {
                client: &client,
                spec: &spec,
                plan: plan.as_ref(),
                tape,
                ends: cells::keeps_ends(&spec.path, spec.paging.as_ref()),
                route: route.as_ref(),
            };
            if let Err(error) = produce(fetch, &tx).await {
                // A closed channel means the reader is gone: nothing left to do.
                let _ = tx.send(Err(error)).await;
            }
        });
        Ok(PageStream {
            rx,
            done,
            task,
            ended: false,
        })
    }

    /// Hands rows the reader is done with back to the fetch task, which frees them on the thread
    /// that made them (freeing a page's many small allocations here takes the other thread's
    /// allocator lock) before it sends more: what waits to be freed stays as bounded as what waits
    /// to be read.
    pub fn recycle(&self, rows: PageRows) {
        // Once the task is gone, the rows come back and are freed here.
        let _ = self.done.send(rows);
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

/// The fetch task's end of the channel: events go out; rows the reader is done with come back.
struct Sender {
    events: mpsc::Sender<Result<Event>>,
    returned: Mutex<mpsc::UnboundedReceiver<PageRows>>,
    /// `options.max_rows`, and the rows that may still go to the reader.
    max_rows: Option<(u64, AtomicU64)>,
}

impl Sender {
    /// Frees the rows that came back, then sends `event` (waiting while the channel is full).
    async fn send(
        &self,
        event: Result<Event>,
    ) -> std::result::Result<(), mpsc::error::SendError<Result<Event>>> {
        {
            let mut returned = self.returned.lock().unwrap_or_else(|e| e.into_inner());
            while let Ok(rows) = returned.try_recv() {
                drop(rows);
            }
        }
        self.events.send(event).await
    }

    /// Cuts `rows` to what `options.max_rows` still lets through; `Err` when rows were dropped.
    fn take(&self, rows: &mut PageRows) -> Flow<()> {
        let Some((max, left)) = &self.max_rows else {
            return Ok(());
        };
        // One task sends: no other update comes between the load and the store.
        let have = left.load(Ordering::Relaxed);
        let len = rows.len() as u64;
        left.store(have.saturating_sub(len), Ordering::Relaxed);
        if len <= have {
            return Ok(());
        }
        rows.truncate(have as usize);
        Err(Stop::MaxRows(*max))
    }

    /// `options.max_rows` rows went to the reader.
    fn exhausted(&self) -> bool {
        self.max_rows
            .as_ref()
            .is_some_and(|(_, left)| left.load(Ordering::Relaxed) == 0)
    }
}

/// Why a fetch stops before its data ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// The reader went away: stop quietly.
    ReaderGone,
    /// `options.max_rows` rows went to the reader, and more were there.
    MaxRows(u64),
}

impl From<Stop> for Ending {
    fn from(stop: Stop) -> Ending {
        match stop {
            Stop::ReaderGone => Ending::ReaderGone,
            Stop::MaxRows(max) => Ending::Cut(Cut::MaxRows(max)),
        }
    }
}

/// A step that goes on, or the reason it stops.
type Flow<T> = std::result::Result<T, Stop>;

/// What every page of one fetch shares.
#[derive(Clone, Copy)]
struct Fetch<'a> {
    client: &'a Client,
    spec: &'a FetchSpec,
    plan: Option<&'a Plan>,
    /// Rows as JSON tokens (jsonb rows).
    tape: bool,
    /// A streamed body keeps its first and last rows for the paging values.
    ends: bool,
    /// The names that lead to the rows, when a JSON body can stream (`cells::route_of`).
    route: Option<&'a (Vec<String>, bool)>,
}

/// Fetches every page of `spec` in order into `tx` (with params, of every parameter set).
async fn produce(fetch: Fetch<'_>, tx: &Sender) -> Result<()> {
    let ending = match &fetch.spec.fan_out {
        None => produce_one(fetch, &fetch.spec.request, &mut Sink::Channel(tx), None).await?,
        Some(fan) => fan_out(fetch, fan, tx).await?,
    };
    let event = match ending {
        Ending::Finished { pages, reason } => Event::Finished { pages, reason },
        Ending::Cut(cut) => Event::Cut(cut),
        Ending::ReaderGone => return Ok(()),
    };
    let _ = tx.send(Ok(event)).await;
    Ok(())
}

/// How the pages of one request ended.
#[derive(Debug)]
enum Ending {
    Finished {
        pages: u64,
        reason: &'static str,
    },
    /// A limit was reached while the API had more.
    Cut(Cut),
    ReaderGone,
}

/// Every page of `request` in order into `sink`; `params`: the set it belongs to.
async fn produce_one(
    fetch: Fetch<'_>,
    request: &RequestSpec,
    sink: &mut Sink<'_>,
    params: Option<&ParamSet>,
) -> Result<Ending> {
    let spec = fetch.spec;
    let Some(paging) = &spec.paging else {
        return Ok(
            match fetch_page(fetch, request, None, sink, params).await? {
                Ok(_) => Ending::Finished {
                    pages: 1,
                    reason: "one request",
                },
                Err(stop) => stop.into(),
            },
        );
    };
    let mut pager = Pager::new(paging, request);
    let mut page_request = pager.request_at(0);
    let mut index: u64 = 0;
    // Rows this request's pages gave: past max_rows, no page is worth requesting.
    let mut produced: u64 = 0;
    loop {
        let (rows, facts) =
            match fetch_page(fetch, &page_request, Some(&pager), sink, params).await? {
                Ok(fetched) => fetched,
                Err(stop) => return Ok(stop.into()),
            };
        produced += rows as u64;
        // With params, concurrency runs sets at once, and each set's pages follow one another.
        let count = (index == 0 && spec.concurrency > 1 && spec.fan_out.is_none())
            .then(|| pager.page_count(&facts))
            .flatten();
        let next = match pager.after(index, rows, facts, &page_request) {
            Step::Next(next) => next,
            Step::Stop(reason) => {
                return Ok(Ending::Finished {
                    pages: index + 1,
                    reason,
                })
            }
        };
        if let Some(max) = spec.max_rows.filter(|max| produced >= *max) {
            return Ok(Ending::Cut(Cut::MaxRows(max)));
        }
        if index + 1 >= u64::from(spec.max_pages) {
            return Ok(Ending::Cut(Cut::MaxPages(spec.max_pages)));
        }
        if let Some(count) = count {
            return concurrent(fetch, &pager, count, sink).await;
        }
        page_request = *next;
        index += 1;
    }
}

/// Pages 2..=count of an addressable kind, `spec.concurrency` at a time, delivered in order.
/// Fetched pages wait in a queue of `concurrency` while the reader is busy, so that the requests
/// in flight go on meanwhile (a stream of futures only runs while it is polled).
async fn concurrent(
    fetch: Fetch<'_>,
    pager: &Pager<'_>,
    count: u64,
    sink: &mut Sink<'_>,
) -> Result<Ending> {
    let spec = fetch.spec;
    let last = count.min(u64::from(spec.max_pages));
    let mut pages = stream::iter(1..last)
        .map(|index| {
            let request = pager.request_at(index);
            let page: Pin<Box<dyn Future<Output = _> + Send + '_>> = Box::pin(async move {
                let mut collected = Sink::Collect(Vec::new());
                let fetched = fetch_page(fetch, &request, None, &mut collected, None).await?;
                let Sink::Collect(parts) = collected else {
                    unreachable!("a collecting sink")
                };
                Ok::<_, Error>((parts, fetched.map_or(0, |(rows, _)| rows)))
            });
            page
        })
        .buffered(spec.concurrency as usize);
    let (fetched_tx, mut fetched_rx) = mpsc::channel(spec.concurrency as usize);
    let producer = async move {
        while let Some(fetched) = pages.next().await {
            if fetched_tx.send(fetched).await.is_err() {
                return;
            }
        }
    };
    let consumer = async {
        let mut delivered = 1;
        while let Some(fetched) = fetched_rx.recv().await {
            let (parts, rows) = fetched?;
            for part in parts {
                if let Err(stop) = sink.put(part).await {
                    return Ok(stop.into());
                }
            }
            delivered += 1;
            if rows == 0 {
                return Ok(Ending::Finished {
                    pages: delivered,
                    reason: "empty page",
                });
            }
            if let Some(max) = spec
                .max_rows
                .filter(|_| sink.exhausted() && delivered < count)
            {
                return Ok(Ending::Cut(Cut::MaxRows(max)));
            }
        }
        if count > last {
            return Ok(Ending::Cut(Cut::MaxPages(spec.max_pages)));
        }
        Ok(Ending::Finished {
            pages: delivered,
            reason: "total pages reached",
        })
    };
    alongside(producer, consumer).await
}

/// Runs `producer` alongside `consumer` until the consumer is done (the producer may end first;
/// it is dropped, its work abandoned, when the consumer ends).
async fn alongside<T>(producer: impl Future<Output = ()>, consumer: impl Future<Output = T>) -> T {
    let mut producer = std::pin::pin!(producer);
    let mut consumer = std::pin::pin!(consumer);
    let mut producing = true;
    loop {
        tokio::select! {
            () = &mut producer, if producing => producing = false,
            done = &mut consumer => return done,
        }
    }
}

/// What a parameter set's fetch sends to the merge: parts of its pages, then how it ended.
enum SetEvent {
    Part(Page),
    End(Result<Ending>),
}

/// Every parameter set's request, `concurrency` sets at once, merged in `params` order. A set
/// runs ahead only until its small channel is full, and no set starts more than `concurrency`
/// sets ahead of the one being read: memory stays bounded however many sets there are.
async fn fan_out(fetch: Fetch<'_>, fan: &FanOut, tx: &Sender) -> Result<Ending> {
    let window = tokio::sync::Semaphore::new(fetch.spec.concurrency as usize);
    let (started_tx, mut started) = mpsc::unbounded_channel::<mpsc::Receiver<SetEvent>>();
    let producers = async {
        let mut running = stream::FuturesUnordered::new();
        let mut next = 0;
        loop {
            tokio::select! {
                permit = window.acquire(), if next < fan.sets.len() => {
                    let Ok(permit) = permit else { break };
                    permit.forget();
                    let (set_tx, set_rx) = mpsc::channel(PAGE_BUFFER);
                    if started_tx.send(set_rx).is_err() {
                        break;
                    }
                    running.push(produce_set(fetch, fan, next, set_tx));
                    next += 1;
                }
                Some(()) = running.next(), if !running.is_empty() => {}
                else => break,
            }
        }
        drop(started_tx);
    };
    let merge = async {
        let mut pages = 0;
        let mut cut = None;
        while let Some(mut set) = started.recv().await {
            if let Some(max) = fetch.spec.max_rows.filter(|_| tx.exhausted()) {
                // Another set follows the rows max_rows let through.
                return Ok(Ending::Cut(Cut::MaxRows(max)));
            }
            loop {
                match set.recv().await {
                    Some(SetEvent::Part(page)) => {
                        if let Err(stop) = deliver(tx, page).await {
                            return Ok(stop.into());
                        }
                    }
                    Some(SetEvent::End(Ok(Ending::Finished { pages: n, .. }))) => {
                        pages += n;
                        break;
                    }
                    Some(SetEvent::End(Ok(Ending::Cut(by)))) => {
                        cut = Some(by);
                        break;
                    }
                    Some(SetEvent::End(Ok(Ending::ReaderGone))) => return Ok(Ending::ReaderGone),
                    Some(SetEvent::End(Err(error))) => return Err(error),
                    None => {
                        return Err(Error::internal(
                            "a parameter set's fetch ended without finishing",
                        ))
                    }
                }
            }
            window.add_permits(1);
        }
        Ok(match cut {
            Some(by) => Ending::Cut(by),
            None => Ending::Finished {
                pages,
                reason: "every parameter set fetched",
            },
        })
    };
    alongside(producers, merge).await
}

/// The pages of parameter set `index` into `tx`, then how they ended.
async fn produce_set(fetch: Fetch<'_>, fan: &FanOut, index: usize, tx: mpsc::Sender<SetEvent>) {
    let ending = async {
        let set = fan.sets.get(index)?;
        let mut request = fan.request(&set)?;
        // One rate limit for the whole call.
        request.retry.rate = fetch.spec.request.retry.rate.clone();
        produce_one(fetch, &request, &mut Sink::Set(&tx), Some(&set)).await
    }
    .await;
    let _ = tx.send(SetEvent::End(ending)).await;
}

/// Sends `page` to the reader, cut to what `options.max_rows` still lets through.
async fn deliver(tx: &Sender, mut page: Page) -> Flow<()> {
    let taken = tx.take(&mut page.rows);
    if taken.is_err() {
        // The last part the reader gets: it ends its page.
        page.continues = false;
    }
    tx.send(Ok(Event::Page(Box::new(page))))
        .await
        .map_err(|_| Stop::ReaderGone)?;
    taken
}

/// Where a page's rows go: to the reader as they come (one page at a time), or kept until the
/// page is complete (pages fetched at once, delivered in order).
enum Sink<'a> {
    Channel(&'a Sender),
    Collect(Vec<Page>),
    /// A parameter set's channel to the merge.
    Set(&'a mpsc::Sender<SetEvent>),
}

impl Sink<'_> {
    async fn put(&mut self, page: Page) -> Flow<()> {
        match self {
            Sink::Channel(tx) => deliver(tx, page).await,
            Sink::Collect(parts) => {
                parts.push(page);
                Ok(())
            }
            Sink::Set(tx) => tx
                .send(SetEvent::Part(page))
                .await
                .map_err(|_| Stop::ReaderGone),
        }
    }

    /// `options.max_rows` rows went to the reader (known where the sink is the reader's).
    fn exhausted(&self) -> bool {
        matches!(self, Sink::Channel(tx) if tx.exhausted())
    }

    /// Parts collected so far (a retry drops what the failed try collected).
    fn collected(&self) -> usize {
        match self {
            Sink::Collect(parts) => parts.len(),
            _ => 0,
        }
    }

    fn drop_from(&mut self, from: usize) {
        if let Sink::Collect(parts) = self {
            parts.truncate(from);
        }
    }
}

/// One page: the request, then its rows as the body arrives, into `sink`; its row count and
/// paging facts, `None` when the reader went away. A transfer that breaks before any of its
/// rows reached the reader is tried again (as a failed request is); after, it is an error: rows
/// would repeat.
async fn fetch_page(
    fetch: Fetch<'_>,
    request: &RequestSpec,
    pager: Option<&Pager<'_>>,
    sink: &mut Sink<'_>,
    params: Option<&ParamSet>,
) -> Result<Flow<(usize, PageFacts)>> {
    let mut attempts = Attempts::new(request);
    let start = sink.collected();
    loop {
        let head = attempts.head(fetch.client).await?;
        let requests = head.attempts;
        let mut page = PageRead {
            sink: &mut *sink,
            params,
            skipped: None,
            requests,
            rows: 0,
            read: 0,
            reported: 0,
            reached_reader: false,
        };
        match read_page(fetch, request, pager, head, &mut page).await {
            Ok(Ok(facts)) => {
                let rows = page.rows;
                let closing = Page {
                    continues: false,
                    skipped: page.skipped.take(),
                    ..Page::part(PageRows::default())
                };
                return Ok(page.put(closing).await.map(|()| (rows, facts)));
            }
            Ok(Err(stop)) => return Ok(Err(stop)),
            Err(error) if page.reached_reader => return Err(error),
            Err(error) => {
                sink.drop_from(start);
                attempts.again(error).await?;
            }
        }
    }
}

/// The parts of one page as they are read.
struct PageRead<'s, 't> {
    sink: &'s mut Sink<'t>,
    params: Option<&'s ParamSet>,
    /// What a skipped request answered.
    skipped: Option<String>,
    /// Requests made, reported with the first part.
    requests: u32,
    rows: usize,
    /// Body bytes read, and reported with the parts so far.
    read: u64,
    reported: u64,
    /// Some rows went to the reader.
    reached_reader: bool,
}

impl PageRead<'_, '_> {
    /// Puts every batch of `ready`, as parts of the page.
    async fn put_all(&mut self, ready: &mut Vec<PageRows>) -> Flow<()> {
        for rows in ready.drain(..) {
            self.put(Page::part(rows)).await?;
        }
        Ok(())
    }

    async fn put(&mut self, mut page: Page) -> Flow<()> {
        page.requests = std::mem::take(&mut self.requests);
        page.params = self.params.cloned();
        page.bytes = self.read.saturating_sub(self.reported) as usize;
        self.reported = self.read;
        self.rows += page.rows.len();
        // Rows sent on (to the reader or the merge) cannot be taken back: no retry after them.
        if !page.rows.is_empty() && !matches!(self.sink, Sink::Collect(_)) {
            self.reached_reader = true;
        }
        self.sink.put(page).await
    }
}

/// Reads a page's body in its format; the paging facts, or why it stopped early.
async fn read_page(
    fetch: Fetch<'_>,
    request: &RequestSpec,
    pager: Option<&Pager<'_>>,
    head: Head,
    page: &mut PageRead<'_, '_>,
) -> Result<Flow<PageFacts>> {
    let facts = |doc: Option<&Value>, headers: &HeaderMap, url: &str| {
        pager
            .map(|p| p.facts(doc, headers, url))
            .unwrap_or_default()
    };
    if !head.is_success() || head.status == 204 {
        // An error status (raised with its body, unless options.on_status skips it), or no
        // content: no rows.
        let response = head.read_all(request).await?;
        if fetch.spec.skip.skips(response.status) {
            page.skipped = Some(format!(
                "HTTP {} from {}",
                response.status,
                request.display_url()
            ));
        } else {
            parse_document(&response, request)?;
        }
        page.read = response.body.len() as u64;
        return Ok(Ok(facts(None, &response.headers, &response.final_url)));
    }
    let spec = fetch.spec;
    let content_type = head
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = spec.body_format.of(content_type);
    crate::spec::format::check(&format, spec.path.text(), spec.paging.as_ref())?;
    let shape = Shape {
        plan: fetch.plan,
        tape: fetch.tape,
        ends: fetch.ends,
        path: &spec.path,
        request,
    };
    let decoder = Decoder::new(&format, shape, fetch.route.cloned());
    let Head {
        headers,
        final_url,
        response,
        place,
        ..
    } = head;
    let mut body = BodyStream::new(response, place, request, Some(spec.body_format.decompress))?;
    let Some(mut decoder) = decoder else {
        // A path that cannot stream: the body is read whole, as one part.
        let mut whole = Vec::new();
        while let Some(piece) = body.next().await? {
            whole.extend_from_slice(&piece);
        }
        let (rows, facts) = whole_page(fetch, request, whole, &headers, &final_url, facts)?;
        page.read = body.read;
        return Ok(page.put(Page::part(rows)).await.map(|()| facts));
    };
    let mut ready = Vec::new();
    loop {
        let piece = match body.next().now_or_never() {
            Some(piece) => piece?,
            None => {
                // The network paused: the rows read so far go to the reader now.
                decoder.flush(&mut ready)?;
                page.read = body.read;
                if let Err(stop) = page.put_all(&mut ready).await {
                    return Ok(Err(stop));
                }
                body.next().await?
            }
        };
        let doc = match &piece {
            Some(piece) => {
                decoder.feed(piece, &mut ready)?;
                None
            }
            None => Some(decoder.finish(&mut ready)),
        };
        page.read = body.read;
        if let Err(stop) = page.put_all(&mut ready).await {
            return Ok(Err(stop));
        }
        if let Some(doc) = doc {
            return Ok(Ok(facts(doc?.as_ref(), &headers, &final_url)));
        }
    }
}

/// The rows and facts of a body read whole: in cells when the plan fits, else as JSON values.
fn whole_page(
    fetch: Fetch<'_>,
    request: &RequestSpec,
    body: Vec<u8>,
    headers: &HeaderMap,
    final_url: &str,
    facts: impl Fn(Option<&Value>, &HeaderMap, &str) -> PageFacts,
) -> Result<(PageRows, PageFacts)> {
    let body = match fetch.plan {
        Some(plan) => match cells::parse(body, plan) {
            Ok((doc, page)) => {
                return Ok((
                    PageRows::Compact(page),
                    facts(Some(&doc), headers, final_url),
                ))
            }
            Err(body) => body,
        },
        None => body,
    };
    let doc = parse_json(&body, request)?;
    let facts = facts(Some(&doc), headers, final_url);
    Ok((PageRows::Values(fetch.spec.path.rows(doc)), facts))
}

/// The JSON document of a successful response; `None` for 204 No Content.
pub fn parse_document(response: &Response, spec: &RequestSpec) -> Result<Option<Value>> {
    if !(200..300).contains(&response.status) {
        let tries = match response.attempts {
            0 | 1 => String::new(),
            n => format!(" (tried {n} times)"),
        };
        let status = format!("{} {}", response.status, response.reason);
        return Err(Error::new(
            SqlState::ExternalRoutineException,
            format!(
                "HTTP {} from {}{tries}",
                status.trim_end(),
                spec.display_url()
            ),
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
    parse_json(&response.body, spec).map(Some)
}

/// A successful response's body as JSON.
fn parse_json(body: &[u8], spec: &RequestSpec) -> Result<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(not_json(spec, body, None));
    }
    serde_json::from_slice(body).map_err(|e| not_json(spec, body, Some(&e)))
}

/// Why a successful response's body is not the JSON it should be — empty, HTML, cut short or
/// malformed — from its first bytes (`start`, also the detail, without secrets) and serde's error.
/// Bodies read whole and bodies streamed say it alike.
pub(crate) fn not_json(
    spec: &RequestSpec,
    start: &[u8],
    cause: Option<&serde_json::Error>,
) -> Error {
    let url = spec.display_url();
    // The first byte that is not white space tells empty and HTML apart.
    let first = start.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let error = match (first, cause) {
        (None, _) => {
            return Error::new(
                SqlState::InvalidJsonText,
                format!("response from {url} has an empty body, not JSON"),
            )
        }
        (Some(b'<'), _) => Error::new(
            SqlState::InvalidJsonText,
            format!("response from {url} is HTML, not JSON"),
        )
        .with_hint("check the URL: servers answer with an HTML page for wrong paths and logins"),
        (_, Some(e)) if e.is_eof() => Error::new(
            SqlState::InvalidJsonText,
            format!("response from {url} is not valid JSON: it ends too early ({e})"),
        ),
        (_, Some(e)) => Error::new(
            SqlState::InvalidJsonText,
            format!("response from {url} is not valid JSON: {e}"),
        ),
        (_, None) => Error::new(
            SqlState::InvalidJsonText,
            format!("response from {url} is not valid JSON"),
        ),
    };
    error
        .with_detail(format!(
            "response body: {}",
            crate::error::body_snippet(start, &spec.secrets)
        ))
        .redact(&spec.secrets)
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
