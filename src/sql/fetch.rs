//! `api_fetch`: rows from an API as a set (DESIGN.md §2.1). Pages stream from the fetch task over
//! a bounded channel; each row becomes a Datum only when the executor asks for it.

use std::cell::RefCell;
use std::sync::Arc;

use pgrx::prelude::*;
use pgrx::{AnyElement, FromDatum, JsonB, PgLogLevel, PgSqlErrorCode};
use serde_json::Value;
use tokio::runtime::Runtime;

use super::rows::RowMaker;
use super::{request_args, OrRaise};
use crate::extract::RowPath;
use crate::fetch::compact::Plan;
use crate::fetch::{Event, Http, Page, PageRows, PageStream};
use crate::spec::{FetchSpec, RequestArgs};
use crate::{interrupt, settings};

/// What the fetches of a job run cost, counted while a run worker tracks them.
#[derive(Debug, Default, Clone, Copy)]
pub struct FetchStats {
    pub requests: u64,
    pub pages: u64,
    pub bytes: u64,
    pub rows: u64,
}

thread_local! {
    /// The run being tracked (its id) and its counts so far.
    static TRACKED: RefCell<Option<(i64, FetchStats)>> = const { RefCell::new(None) };
}

/// Counts the fetches of this process from now on for run `run_id`, reporting progress in
/// pg_stat_activity.
pub fn track_run(run_id: i64) {
    TRACKED.with(|t| *t.borrow_mut() = Some((run_id, FetchStats::default())));
}

/// The counts of the tracked run.
pub fn tracked() -> FetchStats {
    TRACKED.with(|t| t.borrow().map(|(_, stats)| stats).unwrap_or_default())
}

pub(crate) fn count_page(page: &Page) {
    TRACKED.with(|t| {
        if let Some((run_id, stats)) = t.borrow_mut().as_mut() {
            stats.pages += 1;
            stats.requests += u64::from(page.requests);
            stats.bytes += page.bytes as u64;
            stats.rows += page.rows.len() as u64;
            let progress = format!(
                "apisync run {run_id}: {} pages, {} rows, {} bytes so far",
                stats.pages, stats.rows, stats.bytes
            );
            if let Ok(text) = std::ffi::CString::new(progress) {
                // SAFETY: reports this backend's activity, on the backend thread.
                unsafe {
                    pg_sys::pgstat_report_activity(
                        pg_sys::BackendState::STATE_RUNNING,
                        text.as_ptr(),
                    )
                };
            }
        }
    });
}

/// The spec of a fetch under the session's settings; raises what is wrong with it.
pub fn fetch_spec(args: RequestArgs<'_>, path: Option<&str>, paging: Option<&JsonB>) -> FetchSpec {
    settings::limits()
        .and_then(|limits| {
            FetchSpec::parse(args, path.unwrap_or("$"), paging.map(|p| &p.0), &limits)
        })
        .or_raise()
}

/// A row a run set aside instead of failing (`options.max_rejected`).
#[derive(Debug, Clone)]
pub struct Rejected {
    pub row_number: i64,
    pub raw: Value,
    pub error: String,
    pub sqlstate: String,
}

/// The rows a run sets aside: at most `max` over the whole run; `rows` not yet saved.
struct RejectSink {
    max: u64,
    seen: u64,
    rows: Vec<Rejected>,
}

thread_local! {
    static REJECTS: RefCell<Option<RejectSink>> = const { RefCell::new(None) };
}

/// From now on, rows that fail are set aside (`reject`), up to `max` in all.
pub fn collect_rejects(max: u64) {
    REJECTS.with(|r| {
        *r.borrow_mut() = Some(RejectSink {
            max,
            seen: 0,
            rows: Vec::new(),
        })
    });
}

/// The rows set aside since the last call, to be saved.
pub fn take_rejects() -> Vec<Rejected> {
    REJECTS.with(|r| {
        r.borrow_mut()
            .as_mut()
            .map(|sink| std::mem::take(&mut sink.rows))
            .unwrap_or_default()
    })
}

/// Sets `rejected` aside when rejects are collected; `false` when they are not. Raises once more
/// rows are rejected than allowed.
pub fn reject(rejected: Rejected) -> bool {
    let over = REJECTS.with(|r| {
        let mut sink = r.borrow_mut();
        let sink = sink.as_mut()?;
        sink.seen += 1;
        sink.rows.push(rejected.clone());
        Some((sink.seen > sink.max).then_some(sink.max))
    });
    match over {
        None => false,
        Some(None) => true,
        Some(Some(max)) => too_many_rejects(max, &rejected),
    }
}

/// Fails the run: more than `max` rows were rejected, `last` the last of them.
fn too_many_rejects(max: u64, last: &Rejected) -> ! {
    super::raise(crate::error::Error::new(
        crate::error::SqlState::from_code(&last.sqlstate),
        format!(
            "more than {max} rows were rejected (options.max_rejected); the last, row {}: {}",
            last.row_number, last.error
        ),
    ))
}

/// The position of `row_type` among the arguments: its type is the type of the rows.
const ROW_TYPE_ARG: usize = 7;

#[allow(clippy::too_many_arguments)]
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"
CREATE FUNCTION api_fetch(
    url text,
    method text DEFAULT 'GET',
    body jsonb DEFAULT NULL,
    path text DEFAULT '$',
    headers jsonb DEFAULT '{}',
    paging jsonb DEFAULT NULL,
    options jsonb DEFAULT '{}',
    row_type anyelement DEFAULT NULL::jsonb
) RETURNS SETOF anyelement
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_fetch_dispatch';
"#
)]
fn api_fetch(
    url: Option<&str>,
    method: default!(Option<&str>, "'GET'"),
    body: default!(Option<JsonB>, "NULL"),
    path: default!(Option<&str>, "'$'"),
    headers: default!(Option<JsonB>, "'{}'"),
    paging: default!(Option<JsonB>, "NULL"),
    options: default!(Option<JsonB>, "'{}'"),
    row_type: default!(Option<AnyElement>, "NULL::jsonb"),
    fcinfo: pg_sys::FunctionCallInfo,
) -> SetOfIterator<'static, Option<AnyElement>> {
    let _ = row_type; // only its type matters
    let args = request_args(url, method, body, headers, options);
    SetOfIterator::new(start(fcinfo, args, path, paging.as_ref()))
}

/// Checks the call and starts the requests.
fn start(
    fcinfo: pg_sys::FunctionCallInfo,
    args: RequestArgs<'_>,
    path: Option<&str>,
    paging: Option<&JsonB>,
) -> Rows {
    let spec = fetch_spec(args, path, paging);
    // SAFETY: fcinfo is this call's, and the argument exists.
    let typoid = unsafe { pgrx::pg_getarg_type(fcinfo, ROW_TYPE_ARG) };
    let columns = spec.columns.clone();
    let maker = RowMaker::new(typoid, columns).or_raise();
    let plan = maker
        .layout()
        .and_then(|layout| Plan::new(layout, &spec.path, spec.paging.as_ref()));
    let http = Http::get().or_raise();
    let stream = PageStream::start(http, Arc::new(spec), plan).or_raise();
    Rows {
        runtime: &http.runtime,
        stream: Some(stream),
        maker,
        page: PageRows::default(),
        at: 0,
        number: 0,
    }
}

/// `api_fetch`'s entry point. In FROM, PostgreSQL stores every row of a set-returning function
/// in a tuplestore before the query reads any, and says it would rather the function filled the
/// store itself (SFRM_Materialize_Preferred): then rows go straight in, with no tuple formed and
/// copied per row. Elsewhere (a select list, which streams and where a LIMIT stops the paging)
/// rows go one per call, through pgrx's wrapper of `api_fetch`.
///
/// # Safety
/// Called by PostgreSQL as a version-1 C function.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn api_fetch_dispatch(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fcinfo is PostgreSQL's; resultinfo, when set, is a node.
    unsafe {
        let rsinfo = (*fcinfo).resultinfo.cast::<pg_sys::ReturnSetInfo>();
        let preferred = !rsinfo.is_null()
            && (*rsinfo).type_ == pg_sys::NodeTag::T_ReturnSetInfo
            && (*rsinfo).allowedModes
                & pg_sys::SetFunctionReturnMode::SFRM_Materialize_Preferred as i32
                != 0;
        if preferred {
            materialize(fcinfo, rsinfo)
        } else {
            api_fetch_wrapper(fcinfo)
        }
    }
}

#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_api_fetch_dispatch() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// Rows converted per reset of their memory context when filling a tuplestore.
const ROWS_PER_RESET: u64 = 1024;

/// Fills a tuplestore with every row, the materialize protocol of set-returning functions.
///
/// # Safety
/// fcinfo is api_fetch's call; rsinfo its ReturnSetInfo, which allows SFRM_Materialize.
unsafe fn materialize(
    fcinfo: pg_sys::FunctionCallInfo,
    rsinfo: *mut pg_sys::ReturnSetInfo,
) -> pg_sys::Datum {
    // SAFETY: the arguments are api_fetch's, by position.
    let mut rows = unsafe {
        let text = |n| pgrx::pg_getarg::<&str>(fcinfo, n);
        let json = |n| pgrx::pg_getarg::<JsonB>(fcinfo, n);
        let args = request_args(text(0), text(1), json(2), json(4), json(6));
        start(fcinfo, args, text(3), json(5).as_ref())
    };
    // SAFETY: the store and its descriptor live in the query's memory, as the protocol asks;
    // converted values in a context of their own, reset as rows are stored (the store copies).
    unsafe {
        let query_memory = (*(*rsinfo).econtext).ecxt_per_query_memory;
        let caller = pg_sys::MemoryContextSwitchTo(query_memory);
        let random = (*rsinfo).allowedModes
            & pg_sys::SetFunctionReturnMode::SFRM_Materialize_Random as i32
            != 0;
        let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem);
        let tupdesc = pg_sys::CreateTupleDescCopy(rows.maker.tupdesc());
        let values = pg_sys::AllocSetContextCreateExtended(
            caller,
            c"api_fetch rows".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        pg_sys::MemoryContextSwitchTo(values);
        while rows.advance() {
            rows.maker.put(store);
            if rows.number % ROWS_PER_RESET == 0 {
                pg_sys::MemoryContextReset(values);
            }
        }
        pg_sys::MemoryContextSwitchTo(caller);
        pg_sys::MemoryContextDelete(values);
        (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = tupdesc;
        drop(rows);
        (*fcinfo).isnull = true;
        pg_sys::Datum::from(0)
    }
}

/// The rows of the pages, in order. Dropped with the SRF's memory context, which stops the
/// requests when the query ends early or fails.
struct Rows {
    runtime: &'static Runtime,
    /// `None` once the last page is in (or for a chunk, which has no stream).
    stream: Option<PageStream>,
    maker: RowMaker,
    /// The page being read, `at` its next row. Rows stay in place until the whole page is read,
    /// then the page is freed on the runtime, the thread that allocated it: freeing a page's
    /// many small allocations here cost a third of this thread's time (glibc arena locks).
    page: PageRows,
    at: usize,
    number: u64,
}

impl Drop for Rows {
    fn drop(&mut self) {
        self.next_page(PageRows::default());
    }
}

impl Rows {
    /// Reads `rows` next; the page read so far is freed on the runtime.
    fn next_page(&mut self, rows: PageRows) {
        let done = std::mem::replace(&mut self.page, rows);
        self.at = 0;
        if !done.is_empty() {
            self.runtime.spawn(async move { drop(done) });
        }
    }

    /// Converts the next row into the maker's values: rows that fail are set aside when the run
    /// collects rejects, and raise otherwise. `false` after the last row.
    fn advance(&mut self) -> bool {
        loop {
            if self.at < self.page.len() {
                let at = self.at;
                self.at += 1;
                self.number += 1;
                let filled = match &self.page {
                    PageRows::Values(rows) => self.maker.fill(self.number, &rows[at]),
                    PageRows::Compact(page) => self.maker.fill_compact(self.number, page, at),
                };
                match filled {
                    Ok(()) => return true,
                    Err(error) => {
                        let raw = match &self.page {
                            PageRows::Values(rows) => rows[at].clone(),
                            PageRows::Compact(page) => page.row_value(at),
                        };
                        let rejected = Rejected {
                            row_number: self.number as i64,
                            raw,
                            error: error.message.clone(),
                            sqlstate: error.state.code(),
                        };
                        if reject(rejected) {
                            continue;
                        }
                        super::raise(error)
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                return false;
            };
            match next_page(self.runtime, stream) {
                Some(page) => self.next_page(page.rows),
                None => {
                    self.stream = None;
                    self.next_page(PageRows::default());
                }
            }
        }
    }
}

impl Iterator for Rows {
    type Item = Option<AnyElement>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.advance() {
            return None;
        }
        // SAFETY: the Datum was made for exactly this type.
        Some(self.maker.datum().and_then(|d| unsafe {
            AnyElement::from_polymorphic_datum(d, false, self.maker.typoid())
        }))
    }
}

/// The next page of `stream`, saying what the other events mean; `None` after the last page.
pub fn next_page(runtime: &Runtime, stream: &mut PageStream) -> Option<Page> {
    loop {
        match interrupt::wait(runtime, stream.next())
            .or_raise()?
            .or_raise()
        {
            Event::Page(page) => {
                count_page(&page);
                return Some(page);
            }
            Event::Cut { max_pages } => pgrx::ereport!(
                PgLogLevel::WARNING,
                PgSqlErrorCode::ERRCODE_WARNING,
                format!("api_fetch stopped after {max_pages} pages (max_pages): the data was cut"),
                "raise max_pages in the paging spec, or apisync.max_pages"
            ),
            Event::Finished { pages, reason } => {
                pgrx::debug1!("api_fetch: paging ended after {pages} pages: {reason}")
            }
        }
    }
}

thread_local! {
    /// The rows a chunked job run hands to `apisync._chunk_rows` for one transaction.
    static CHUNK: RefCell<Option<Chunk>> = const { RefCell::new(None) };
}

/// Rows for the next `apisync._chunk_rows` call of this process.
pub struct Chunk {
    pub rows: Vec<Value>,
    pub columns: Vec<(String, RowPath)>,
    /// The fetch's row number of the row before the first.
    pub numbered_after: u64,
}

pub fn set_chunk(chunk: Chunk) {
    CHUNK.with(|c| *c.borrow_mut() = Some(chunk));
}

/// The rows of the chunk set by this process's run, typed by `typoid` as api_fetch types them.
pub fn chunk_rows(typoid: pg_sys::Oid) -> SetOfIterator<'static, Option<AnyElement>> {
    let chunk = CHUNK.with(|c| c.borrow_mut().take());
    let Some(chunk) = chunk else {
        return SetOfIterator::empty();
    };
    let maker = RowMaker::new(typoid, chunk.columns).or_raise();
    SetOfIterator::new(Rows {
        runtime: &Http::get().or_raise().runtime,
        stream: None,
        maker,
        page: PageRows::Values(chunk.rows),
        at: 0,
        number: chunk.numbered_after,
    })
}
