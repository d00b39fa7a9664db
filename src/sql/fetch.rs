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
use crate::fetch::{Event, Http, Page, PageStream};
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

fn count_page(page: &Page) {
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

thread_local! {
    /// While a run accepts rejects: how many it may set aside, and those set aside so far.
    static REJECTS: RefCell<Option<(u64, Vec<Rejected>)>> = const { RefCell::new(None) };
}

/// From now on, rows that fail conversion are set aside, up to `max` (then the fetch fails).
pub fn collect_rejects(max: u64) {
    REJECTS.with(|r| *r.borrow_mut() = Some((max, Vec::new())));
}

/// The rows set aside so far.
pub fn rejects() -> Vec<Rejected> {
    REJECTS.with(|r| {
        r.borrow()
            .as_ref()
            .map(|(_, rows)| rows.clone())
            .unwrap_or_default()
    })
}

/// Sets `rejected` aside when rejects are collected; `false` when they are not. Raises once more
/// rows are rejected than allowed.
pub fn reject(rejected: Rejected) -> bool {
    let over = REJECTS.with(|r| {
        let mut sink = r.borrow_mut();
        let (max, rows) = sink.as_mut()?;
        rows.push(rejected.clone());
        Some((rows.len() as u64 > *max).then_some(*max))
    });
    match over {
        None => false,
        Some(None) => true,
        Some(Some(max)) => too_many_rejects(max, &rejected),
    }
}

/// Fails the run: more than `max` rows were rejected, `last` the last of them.
pub fn too_many_rejects(max: u64, last: &Rejected) -> ! {
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
#[pg_extern(volatile, parallel_unsafe)]
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
    let spec = fetch_spec(args, path, paging.as_ref());
    // SAFETY: fcinfo is this call's, and the argument exists.
    let typoid = unsafe { pgrx::pg_getarg_type(fcinfo, ROW_TYPE_ARG) };
    let columns = spec.columns.clone();
    let maker = RowMaker::new(typoid, columns).or_raise();
    let http = Http::get().or_raise();
    let stream = PageStream::start(http, Arc::new(spec)).or_raise();
    SetOfIterator::new(Rows {
        runtime: &http.runtime,
        stream,
        maker,
        page: Vec::new().into_iter(),
        number: 0,
        finished: false,
    })
}

/// The rows of the pages, in order. Dropped with the SRF's memory context, which stops the
/// requests when the query ends early or fails.
struct Rows {
    runtime: &'static Runtime,
    stream: PageStream,
    maker: RowMaker,
    page: std::vec::IntoIter<Value>,
    number: u64,
    finished: bool,
}

impl Iterator for Rows {
    type Item = Option<AnyElement>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.page.next() {
                self.number += 1;
                let datum = match self.maker.make(self.number, &row) {
                    Ok(datum) => datum,
                    Err(error) => {
                        let rejected = Rejected {
                            row_number: self.number as i64,
                            raw: row,
                            error: error.message.clone(),
                            sqlstate: error.state.code(),
                        };
                        if reject(rejected) {
                            continue;
                        }
                        super::raise(error)
                    }
                };
                // SAFETY: the Datum was made for exactly this type.
                return Some(datum.and_then(|d| unsafe {
                    AnyElement::from_polymorphic_datum(d, false, self.maker.typoid())
                }));
            }
            if self.finished {
                return None;
            }
            match interrupt::wait(self.runtime, self.stream.next()).or_raise() {
                Some(event) => match event.or_raise() {
                    Event::Page(page) => {
                        count_page(&page);
                        self.page = page.rows.into_iter();
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
                },
                None => self.finished = true,
            }
        }
    }
}
