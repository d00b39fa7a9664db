//! The one fetch route (DESIGN.md §3): `api_fetch` and every job run start a `Fetch` here — the
//! spec, the network privilege, the page stream, extraction into rows of a type. Pages stream from
//! the fetch task over a bounded channel; rows become Datums as the executor (or the tuplestore
//! the function fills) takes them. A job run lends its `Fetch` to its statements through
//! `apisync._job_rows`, and reads its counts back from it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use pgrx::prelude::*;
use pgrx::{AnyElement, FromDatum, PgLogLevel, PgSqlErrorCode};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::extract::cells::Plan;
use crate::fetch::{Cut, Event, Http, Page, PageRows, PageStream};
use crate::spec::{FetchSpec, ParamSet, RequestArgs};
use crate::sql::rows::RowMaker;
use crate::sql::{raise, OrRaise};
use crate::{interrupt, settings};

/// What the fetches of a job run cost.
#[derive(Debug, Default, Clone, Copy)]
pub struct FetchStats {
    pub requests: u64,
    /// Requests whose answer `options.on_status` skipped.
    pub skipped: u64,
    pub pages: u64,
    pub bytes: u64,
    pub rows: u64,
}

impl FetchStats {
    /// What one page (or part of a page) adds.
    pub fn of(page: &Page) -> FetchStats {
        FetchStats {
            requests: u64::from(page.requests),
            skipped: u64::from(page.skipped.is_some()),
            pages: u64::from(!page.continues),
            bytes: page.bytes as u64,
            rows: page.rows.len() as u64,
        }
    }

    fn add(&mut self, step: &FetchStats) {
        self.requests += step.requests;
        self.skipped += step.skipped;
        self.pages += step.pages;
        self.bytes += step.bytes;
        self.rows += step.rows;
    }
}

/// Whether this backend may make requests now: the kill switch is on, and the database is no
/// Citus worker node. Asked first by every way a request starts (the fetch route, api_request,
/// an OAuth2 token exchange).
pub fn may_request() -> crate::error::Result<()> {
    settings::require_enabled()?;
    crate::citus::require_coordinator("a request")
}

/// The spec of a fetch under the session's settings; raises what is wrong with it.
pub fn fetch_spec(
    args: RequestArgs<'_>,
    path: Option<&str>,
    paging: Option<&Value>,
    params: Option<crate::spec::ParamSets>,
) -> FetchSpec {
    settings::limits()
        .and_then(|limits| FetchSpec::parse(args, path.unwrap_or("$"), paging, params, &limits))
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

/// A job run's part of its fetch: its counts (shown in pg_stat_activity as they grow), the rows it
/// set aside, and whether a limit (`max_pages`, `max_rows`) cut it. An explicit value the run hands down and reads back.
#[derive(Debug, Default)]
pub struct RunTally {
    pub run_id: i64,
    pub stats: FetchStats,
    /// At most this many rows may be set aside over the whole run; `None`: a failing row fails.
    pub max_rejected: Option<u64>,
    pub rejected_total: u64,
    /// Set aside since the run last saved them.
    pub rejected: Vec<Rejected>,
    /// The limit that cut the fetch, if one did.
    pub cut: Option<Cut>,
}

impl RunTally {
    fn count_page(&mut self, page: &Page) {
        let stats = &mut self.stats;
        stats.add(&FetchStats::of(page));
        let progress = format!(
            "apisync run {}: {} pages, {} rows, {} bytes so far",
            self.run_id, stats.pages, stats.rows, stats.bytes
        );
        if let Ok(text) = std::ffi::CString::new(progress) {
            // SAFETY: reports this backend's activity, on the backend thread.
            unsafe {
                pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, text.as_ptr())
            };
        }
    }

    /// Sets `rejected` aside when the run collects rejects (`Ok(true)`), `Ok(false)` when it does
    /// not; the error once more rows are rejected than allowed.
    fn reject(&mut self, rejected: Rejected) -> Result<bool, crate::error::Error> {
        let Some(max) = self.max_rejected else {
            return Ok(false);
        };
        self.rejected_total += 1;
        if self.rejected_total > max {
            return Err(crate::error::Error::new(
                crate::error::SqlState::from_code(&rejected.sqlstate),
                format!(
                    "more than {max} rows were rejected (options.max_rejected); the last, row {}: {}",
                    rejected.row_number, rejected.error
                ),
            ));
        }
        self.rejected.push(rejected);
        Ok(true)
    }
}

/// Who a fetch's requests are made for; the network privilege is checked here, on the one route
/// every caller takes, before the first request.
pub enum Requester {
    /// A call of `api_fetch`: the executor checked the caller's EXECUTE on it.
    Caller,
    /// A job run for its owner, or `suggest_table` and `create_target` for their caller: checked
    /// by `roles::require_network_privilege`.
    Role(pg_sys::Oid),
}

/// Starts the one fetch route: spec → page stream → extraction into rows of `typoid`.
pub fn start(
    spec: FetchSpec,
    typoid: pg_sys::Oid,
    requester: Requester,
    run: Option<RunTally>,
) -> Fetch {
    may_request().or_raise();
    if let Requester::Role(owner) = requester {
        crate::roles::require_network_privilege(owner).or_raise();
    }
    let columns = spec.columns.clone();
    let secrets = spec.request.secrets.clone();
    let maker = RowMaker::new(typoid, columns).or_raise();
    let plan = maker
        .layout()
        .and_then(|layout| Plan::new(layout, &spec.path, spec.paging.as_ref()));
    let http = Http::get().or_raise();
    let tape = maker.wants_tape();
    let progress = crate::shmem::Progress::start(crate::shmem::Started {
        kind: match (&requester, &run) {
            (Requester::Caller, _) => crate::shmem::Kind::ApiFetch,
            (Requester::Role(_), Some(_)) => crate::shmem::Kind::Run,
            (Requester::Role(_), None) => crate::shmem::Kind::Sample,
        },
        role: match requester {
            // SAFETY: reads the session's current user on the backend thread.
            Requester::Caller => unsafe { pg_sys::GetUserId() },
            Requester::Role(owner) => owner,
        },
        run_id: run.as_ref().map(|r| r.run_id),
        url: &spec.request.shown_url(),
        sets: spec.fan_out.as_ref().map(|f| f.sets.len() as u64),
    });
    let stream = PageStream::start(http, Arc::new(spec), plan, tape).or_raise();
    Fetch {
        runtime: &http.runtime,
        stream: Some(stream),
        maker,
        page: PageRows::default(),
        at: 0,
        params: None,
        number: 0,
        run,
        step_pages: None,
        secrets,
        warn_cut: true,
        progress,
    }
}

/// The call's ReturnSetInfo when the caller prefers that the function fill a tuplestore.
///
/// # Safety
/// fcinfo is PostgreSQL's; resultinfo, when set, is a node.
pub unsafe fn materialize_mode(
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<*mut pg_sys::ReturnSetInfo> {
    // SAFETY: as the caller promises.
    unsafe {
        let rsinfo = (*fcinfo).resultinfo.cast::<pg_sys::ReturnSetInfo>();
        let preferred = !rsinfo.is_null()
            && (*rsinfo).type_ == pg_sys::NodeTag::T_ReturnSetInfo
            && (*rsinfo).allowedModes
                & pg_sys::SetFunctionReturnMode::SFRM_Materialize_Preferred as i32
                != 0;
        preferred.then_some(rsinfo)
    }
}

/// Rows converted per reset of their memory context when filling a tuplestore.
const ROWS_PER_RESET: u64 = 1024;

/// Fills a tuplestore with every row `fetch` gives (up to the end of its step), the materialize
/// protocol of set-returning functions.
///
/// # Safety
/// fcinfo is the call; rsinfo its ReturnSetInfo, which allows SFRM_Materialize.
pub unsafe fn materialize(
    fcinfo: pg_sys::FunctionCallInfo,
    rsinfo: *mut pg_sys::ReturnSetInfo,
    fetch: &mut Fetch,
) -> pg_sys::Datum {
    // SAFETY: the store and its descriptor live in the query's memory, as the protocol asks;
    // converted values in a context of their own, reset as rows are stored (the store copies).
    unsafe {
        let query_memory = (*(*rsinfo).econtext).ecxt_per_query_memory;
        let caller = pg_sys::MemoryContextSwitchTo(query_memory);
        let random = (*rsinfo).allowedModes
            & pg_sys::SetFunctionReturnMode::SFRM_Materialize_Random as i32
            != 0;
        let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem);
        let tupdesc = pg_sys::CreateTupleDescCopy(fetch.maker.tupdesc());
        let values = pg_sys::AllocSetContextCreateExtended(
            caller,
            c"api_fetch rows".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        pg_sys::MemoryContextSwitchTo(values);
        let mut stored: u64 = 0;
        while fetch.advance() {
            fetch.maker.put(store);
            stored += 1;
            if stored.is_multiple_of(ROWS_PER_RESET) {
                pg_sys::MemoryContextReset(values);
            }
        }
        pg_sys::MemoryContextSwitchTo(caller);
        pg_sys::MemoryContextDelete(values);
        (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = tupdesc;
        (*fcinfo).isnull = true;
        pg_sys::Datum::from(0)
    }
}

/// The one fetch route's rows, in order: pages from the stream, converted for the row type.
/// Dropped with the SRF's memory context (or by the run that owns it), which stops the requests.
pub struct Fetch {
    runtime: &'static Runtime,
    /// `None` once the last page is in.
    stream: Option<PageStream>,
    maker: RowMaker,
    /// The page being read, `at` its next row. Rows stay in place until the whole page is read,
    /// then the page is freed on the runtime, the thread that allocated it: freeing a page's
    /// many small allocations here cost a third of this thread's time (glibc arena locks).
    page: PageRows,
    at: usize,
    /// The parameter set of the page being read (with params).
    params: Option<ParamSet>,
    number: u64,
    /// A job run's counts, rejects and cut; `None` for `api_fetch`.
    pub run: Option<RunTally>,
    /// Pages this fetch may still take before it pauses (a step of a run with commit_every).
    step_pages: Option<u32>,
    /// The request's credentials: a value the API echoes into a row never shows in an error.
    secrets: Vec<String>,
    /// Whether a cut by `max_pages` is news (a WARNING); a sample asks for its first page.
    warn_cut: bool,
    /// Its row in `apisync.fetch_progress` (with the preload).
    progress: Option<crate::shmem::Progress>,
}

impl Drop for Fetch {
    fn drop(&mut self) {
        self.next_page(PageRows::default());
    }
}

impl Fetch {
    /// Sets a row aside in the run's tally (see `RunTally::reject`), without the request's
    /// credentials: the run keeps it in the catalog.
    pub fn reject(&mut self, rejected: Rejected) -> Result<bool, crate::error::Error> {
        let Some(run) = self.run.as_mut() else {
            return Ok(false);
        };
        run.reject(Rejected {
            raw: scrub_json(rejected.raw, &self.secrets),
            error: crate::error::scrub(&rejected.error, &self.secrets),
            ..rejected
        })
    }

    /// The type of the rows.
    pub fn typoid(&self) -> pg_sys::Oid {
        self.maker.typoid()
    }

    /// A sample: its `max_pages` stops it where it asked, which is no news.
    pub fn expect_cut(&mut self) {
        self.warn_cut = false;
    }

    /// Lets the fetch take `pages` more pages, then pause (until the next step).
    pub fn allow_pages(&mut self, pages: u32) {
        self.step_pages = Some(pages);
    }

    /// The last page was read: nothing more will come.
    pub fn finished(&self) -> bool {
        self.stream.is_none() && self.at >= self.page.len()
    }

    /// Reads `rows` next; the page read so far is freed on the runtime (by the fetch task while it
    /// runs).
    fn next_page(&mut self, rows: PageRows) {
        let done = std::mem::replace(&mut self.page, rows);
        self.at = 0;
        if done.is_empty() {
            return;
        }
        match &self.stream {
            Some(stream) => stream.recycle(done),
            None => {
                self.runtime.spawn(async move { drop(done) });
            }
        }
    }

    /// Converts the next row into the maker's values (in the current memory context): rows that
    /// fail are set aside when the run collects rejects, and raise otherwise. `false` after the
    /// last row (or of this step).
    pub fn advance(&mut self) -> bool {
        loop {
            if self.at < self.page.len() {
                let at = self.at;
                self.at += 1;
                self.number += 1;
                let params = self.params.as_deref();
                let filled = match &self.page {
                    PageRows::Values(rows) => match self.maker.with_params(&rows[at], params) {
                        Some(row) => self.maker.fill(self.number, &row),
                        None => self.maker.fill(self.number, &rows[at]),
                    },
                    PageRows::Compact(page) => self.maker.fill_compact(self.number, page, at),
                    PageRows::Tape(tape) => self.maker.fill_tape(self.number, tape, at),
                    PageRows::Bad(bad) => Err(bad.error.clone()),
                }
                .and_then(|()| self.maker.fill_params(self.number, params));
                let Err(error) = filled else {
                    return true;
                };
                let error = error.redact(&self.secrets);
                if self.run.is_none() {
                    raise(error)
                }
                let raw = self.page.row_value(at);
                let rejected = Rejected {
                    row_number: self.number as i64,
                    raw,
                    error: error.message.clone(),
                    sqlstate: error.state.code(),
                };
                if !self.reject(rejected).or_raise() {
                    raise(error)
                }
                continue;
            }
            if !self.turn_page() {
                return false;
            }
        }
    }

    /// Puts the row `advance` converted into `slot`, whose descriptor is the row type's.
    ///
    /// # Safety
    /// `slot` is a cleared slot of the row type's relation.
    pub unsafe fn store_row(&self, slot: *mut pg_sys::TupleTableSlot) {
        // SAFETY: as the caller promises.
        unsafe { self.maker.store(slot) }
    }

    /// Puts the values at `positions` of the row `advance` converted into the first columns of
    /// `slot`.
    ///
    /// # Safety
    /// `slot` is a cleared slot with at least `positions.len()` columns of those types.
    pub unsafe fn store_row_at(&self, slot: *mut pg_sys::TupleTableSlot, positions: &[usize]) {
        // SAFETY: as the caller promises.
        unsafe { self.maker.store_at(slot, positions) }
    }

    /// The next row as the API sent it (a bad line or record raises): for a sample.
    pub fn next_value(&mut self) -> Option<Value> {
        loop {
            if self.at < self.page.len() {
                let at = self.at;
                self.at += 1;
                self.number += 1;
                if let PageRows::Bad(bad) = &self.page {
                    raise(bad.error.clone().redact(&self.secrets))
                }
                return Some(self.page.row_value(at));
            }
            if !self.turn_page() {
                return None;
            }
        }
    }

    /// Takes the next page (or part) to read; `false` when none comes (the end, or of the step).
    fn turn_page(&mut self) -> bool {
        if self.step_pages == Some(0) {
            return false;
        }
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        if let Some(progress) = &self.progress {
            progress.waiting();
        }
        match next_page(self.runtime, stream, self.run.as_mut(), self.warn_cut) {
            Some(page) => {
                if let Some(progress) = &self.progress {
                    progress.count(&FetchStats::of(&page), page.params.as_ref());
                }
                // A step ends with a page, not inside one whose body is still arriving.
                if let Some(pages) = self.step_pages.as_mut().filter(|_| !page.continues) {
                    *pages -= 1;
                }
                self.params = page.params;
                self.next_page(page.rows)
            }
            None => {
                self.stream = None;
                if let Some(progress) = &self.progress {
                    progress.finished();
                }
                self.next_page(PageRows::default());
            }
        }
        true
    }
}

impl Iterator for Fetch {
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
fn next_page(
    runtime: &Runtime,
    stream: &mut PageStream,
    mut run: Option<&mut RunTally>,
    warn_cut: bool,
) -> Option<Page> {
    loop {
        match interrupt::wait(runtime, stream.next())
            .or_raise()?
            .or_raise()
        {
            Event::Page(page) => {
                if let Some(run) = run.as_mut() {
                    run.count_page(&page);
                }
                if let Some(answer) = &page.skipped {
                    pgrx::debug1!("api_fetch: skipped {answer} (options.on_status)");
                }
                return Some(*page);
            }
            Event::Cut(cut) => {
                if let Some(run) = run.as_mut() {
                    run.cut = Some(cut);
                }
                // max_rows asks for a sample, as a sample's max_pages does: getting it is no news.
                let max_pages = match cut {
                    Cut::MaxPages(max_pages) if warn_cut => max_pages,
                    _ => {
                        pgrx::debug1!("api_fetch stopped by {}", cut.option());
                        continue;
                    }
                };
                pgrx::ereport!(
                    PgLogLevel::WARNING,
                    PgSqlErrorCode::ERRCODE_WARNING,
                    format!(
                        "api_fetch stopped after {max_pages} pages (max_pages): the data was cut"
                    ),
                    "raise max_pages in the paging spec, or apisync.max_pages"
                )
            }
            Event::Finished { pages, reason } => {
                pgrx::debug1!("api_fetch: paging ended after {pages} pages: {reason}")
            }
        }
    }
}

thread_local! {
    /// The fetch of the run this process is running, lent to the statements that write it (the
    /// one handoff from a run to SQL it executes: `apisync._job_rows`).
    static LENT: RefCell<Option<Rc<RefCell<Fetch>>>> = const { RefCell::new(None) };
}

/// Runs `body` (which executes a statement reading `apisync._job_rows`) with `fetch` lent to it.
pub fn lend<R>(fetch: &Rc<RefCell<Fetch>>, body: impl FnOnce() -> R) -> R {
    struct Return;
    impl Drop for Return {
        fn drop(&mut self) {
            LENT.with(|l| l.borrow_mut().take());
        }
    }
    LENT.with(|l| *l.borrow_mut() = Some(fetch.clone()));
    let _return = Return;
    body()
}

/// The rows of the lent fetch, for `apisync._job_rows`: only inside a run's own statements.
///
/// # Safety
/// fcinfo is `_job_rows`'s call.
pub unsafe fn lent_rows(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let lent = LENT.with(|l| l.borrow().clone());
    let Some(fetch) = lent else {
        raise(crate::error::Error::new(
            crate::error::SqlState::InsufficientPrivilege,
            "apisync._job_rows is internal: only a job run's own statements read it",
        ))
    };
    // SAFETY: as the caller promises.
    let rsinfo = unsafe { materialize_mode(fcinfo) }.unwrap_or_else(|| {
        raise(crate::error::Error::internal(
            "apisync._job_rows must be called in FROM",
        ))
    });
    let mut fetch = fetch.borrow_mut();
    // SAFETY: fcinfo is this call's, and the argument exists.
    let typoid = unsafe { pgrx::pg_getarg_type(fcinfo, 0) };
    if typoid != fetch.typoid() {
        raise(crate::error::Error::internal(
            "apisync._job_rows was called for another row type than its run's",
        ));
    }
    // SAFETY: as the caller promises; materialize mode was checked above.
    unsafe { materialize(fcinfo, rsinfo, &mut fetch) }
}

/// `value` with every secret in its text replaced by `***` (a rejected row is kept in the catalog).
fn scrub_json(value: Value, secrets: &[String]) -> Value {
    let text = value.to_string();
    let scrubbed = crate::error::scrub(&text, secrets);
    if scrubbed == text {
        return value;
    }
    serde_json::from_str(&scrubbed).unwrap_or(Value::String(scrubbed))
}
