//! A run, in a dynamic background worker. The worker connects as the bootstrap superuser and
//! records the run in the catalog; the fetch and the writes run with exactly the job owner's
//! rights (`roles::as_role`, which also serves NOLOGIN owners). One transaction records the run
//! as running (or skipped), one writes the target and the run's success together (so the target
//! shows all of a run or none of it) — or, with commit_every, one per step — and a failure is
//! recorded in a transaction of its own.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, DynamicBackgroundWorker};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::JsonB;

use super::catalog::{self, JobRow, Outcome, Written};
use super::functions::{build_fetch_spec, check, Checked, FetchRequest};
use super::write::WriteSql;
use super::WriteMethod;
use crate::error::{Error, Result, SqlState};
use crate::fetch::Cut;
use crate::oauth::Tokens;
use crate::roles::{as_role, is_superuser, quote, role_name};
use crate::route::{lend, start, Fetch, FetchStats, Rejected, Requester, RunTally};
use crate::settings;
use crate::sql::OrRaise;

/// What a run worker is started with (its `bgw_extra`): the database, the job, the run's id and
/// what started it.
#[derive(Debug, PartialEq, Eq)]
pub struct RunRequest {
    pub database: Oid,
    pub job_id: i64,
    pub run_id: i64,
    pub trigger: Trigger,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    Schedule,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
        }
    }
}

impl RunRequest {
    fn encode(&self) -> String {
        format!(
            "{} {} {} {}",
            self.database.to_u32(),
            self.job_id,
            self.run_id,
            self.trigger.name()
        )
    }

    fn decode(text: &str) -> std::result::Result<RunRequest, String> {
        let malformed = || format!("malformed run request \"{text}\"");
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [database, job_id, run_id, trigger] = fields[..] else {
            return Err(malformed());
        };
        Ok(RunRequest {
            database: Oid::from(database.parse::<u32>().map_err(|_| malformed())?),
            job_id: job_id.parse().map_err(|_| malformed())?,
            run_id: run_id.parse().map_err(|_| malformed())?,
            trigger: match trigger {
                "manual" => Trigger::Manual,
                "schedule" => Trigger::Schedule,
                _ => return Err(malformed()),
            },
        })
    }
}

/// Whether any job may run here now: the kill switch is on, the database is no Citus worker
/// node, and the server is no standby (a run writes its target and the catalog).
pub fn may_run_here() -> Result<()> {
    settings::require_enabled()?;
    crate::citus::require_coordinator("a job run")?;
    // SAFETY: reads shared state on the backend thread.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Err(Error::new(
            SqlState::from_code("25006"),
            "this server is a standby: a run writes its target and the catalog, so jobs run on the primary",
        ));
    }
    Ok(())
}

/// Whether `job` may run at all: its owner exists, and is no superuser while
/// apisync.enable_superuser_jobs is off. Checked where a run starts and again in the worker.
pub fn check_owner(job: &JobRow) -> Result<()> {
    may_run_here()?;
    if role_name(job.owner).is_none() {
        return Err(Error::new(
            SqlState::UndefinedObject,
            format!(
                "apisync job \"{}\": its owner (role OID {}) no longer exists, so it never runs",
                job.name,
                job.owner.to_u32()
            ),
        )
        .with_hint(
            "a superuser hands it to another role with apisync.alter_job(name, owner => ...)",
        ));
    }
    if is_superuser(job.owner) && !settings::ENABLE_SUPERUSER_JOBS.get() {
        return Err(Error::new(
            SqlState::InsufficientPrivilege,
            format!(
                "apisync job \"{}\" is owned by a superuser, and apisync.enable_superuser_jobs is off",
                job.name
            ),
        ));
    }
    Ok(())
}

/// Starts a run worker for `job` with a new run id; `notify` is the process that waits for it
/// (run_job), if any.
pub fn start_worker(
    job: &JobRow,
    trigger: Trigger,
    notify: Option<i32>,
) -> Result<(DynamicBackgroundWorker, i64)> {
    let run_id = catalog::next_run_id()?;
    let request = RunRequest {
        // SAFETY: reads a session global on the backend thread.
        database: unsafe { pg_sys::MyDatabaseId },
        job_id: job.job_id,
        run_id,
        trigger,
    };
    let mut builder =
        BackgroundWorkerBuilder::new(&format!("apisync run {run_id} of job {}", job.job_id))
            .set_type("apisync run")
            .set_library("pg_apisync")
            .set_function("apisync_run_worker")
            .enable_spi_access()
            .set_extra(&request.encode())
            .set_restart_time(None);
    if let Some(pid) = notify {
        builder = builder.set_notify_pid(pid);
    }
    let worker = builder.load_dynamic().map_err(|_| {
        Error::new(
            SqlState::ConfigurationLimitExceeded,
            "could not start a background worker for the run",
        )
        .with_hint("raise max_worker_processes")
    })?;
    Ok((worker, run_id))
}

/// What of the caller's transaction the run — a transaction of its own — would trip over: the
/// job created or changed in it (the run cannot see that), or a lock on the target (the run
/// would wait for it, and the caller for the run).
fn conflict_with_caller(job: &JobRow) -> Result<()> {
    let job_changed = catalog::touched_by_this_transaction(
        "SELECT xmin::pg_catalog.text, xmax::pg_catalog.text FROM apisync.jobs
         WHERE job_id OPERATOR(pg_catalog.=) $1",
        &[job.job_id.into()],
    );
    let target_locked = || {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks
                            WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()
                              AND relation OPERATOR(pg_catalog.=) $1 AND granted)",
            &[job.target.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    };
    let (code, what, hint) = if job_changed {
        (
            "55000",
            " was created or changed in this transaction, which its run cannot see",
            "commit the job first: the run works in a transaction of its own",
        )
    } else if target_locked() {
        (
            "55P03",
            ": this transaction holds a lock on the target table, which the run would wait for",
            "call run_job in a transaction that has not touched the target",
        )
    } else {
        return Ok(());
    };
    Err(Error::new(
        SqlState::from_code(code),
        format!("apisync job \"{}\"{what}", job.name),
    )
    .with_hint(hint))
}

/// run_job: starts a run of `job` and waits for its worker (a cancel stops the worker too);
/// returns the run id, whose row the worker wrote.
pub fn run_and_wait(job: &JobRow) -> Result<i64> {
    // SAFETY: reads a session variable on the backend thread.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(Error::new(
            SqlState::InvalidTransactionState,
            "run_job needs READ COMMITTED: the run commits in its own transaction",
        ));
    }
    check_owner(job)?;
    conflict_with_caller(job)?;
    // SAFETY: reads a session global on the backend thread.
    let pid = unsafe { pg_sys::MyProcPid };
    let (worker, run_id) = start_worker(job, Trigger::Manual, Some(pid))?;
    crate::interrupt::wait_for_worker(
        worker,
        "the run",
        crate::interrupt::OnCancel::Stop,
        Duration::from_millis(100),
    )?;
    Ok(run_id)
}

/// The worker's entry point.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn apisync_run_worker(_arg: pg_sys::Datum) {
    let request = RunRequest::decode(BackgroundWorker::get_extra())
        .unwrap_or_else(|e| error!("apisync run worker: {e}"));
    // SAFETY: signal setup of a background worker, before unblocking signals.
    unsafe {
        pg_sys::pqsignal(libc::SIGTERM, Some(on_sigterm));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    // As the bootstrap superuser: the catalog is written with its rights, the run with the owner's.
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(request.database), None);
    let run_id = request.run_id;
    crate::interrupt::set_run_deadline(settings::MAX_RUN_TIME.get().max(0) as u32);
    let Some(job) = transaction(|| begin(&request)) else {
        return;
    };
    // What committed steps wrote, for a run with commit_every that fails part way, and the
    // fetch, whose counts the failure records.
    let committed = RefCell::new(Written::default());
    let fetch: RefCell<Option<Rc<RefCell<Fetch>>>> = RefCell::new(None);
    let outcome = PgTryBuilder::new(AssertUnwindSafe(|| {
        run(&job, run_id, &committed, &fetch);
        None
    }))
    .catch_others(|caught| Some(describe(caught)))
    .execute();
    if let Some((message, sqlstate)) = outcome {
        // SAFETY: leaves the failed transaction, as a worker's error recovery does.
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        let stats = fetch.borrow().as_ref().map(stats_of).unwrap_or_default();
        let failed = Outcome::Failed {
            message: &message,
            sqlstate: &sqlstate,
        };
        transaction(|| catalog::record(run_id, &stats, &committed.borrow(), failed).or_raise());
    }
}

/// The counts of a run's fetch (none while a statement still holds it, after a failure in it).
fn stats_of(fetch: &Rc<RefCell<Fetch>>) -> FetchStats {
    fetch
        .try_borrow()
        .ok()
        .and_then(|f| f.run.as_ref().map(|r| r.stats))
        .unwrap_or_default()
}

/// SIGTERM (run_job cancelled, DROP DATABASE, shutdown) ends the run as `die` ends a backend's
/// query: at the next interrupt check, which every wait makes within 50 ms.
pub(crate) unsafe extern "C-unwind" fn on_sigterm(_signal: i32) {
    // SAFETY: sig_atomic_t flags, which is all a signal handler may touch.
    unsafe {
        std::ptr::write_volatile(&raw mut pg_sys::InterruptPending, 1);
        std::ptr::write_volatile(&raw mut pg_sys::ProcDiePending, 1);
    }
}

/// A transaction of the worker, with every statement's search_path pinned and lock waits on the
/// catalog bounded.
pub(crate) fn transaction<R>(body: impl FnOnce() -> R) -> R {
    // SAFETY: a plain transaction of a connected background worker.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    crate::sql::run(
        "SET LOCAL search_path = pg_catalog, pg_temp; SET LOCAL lock_timeout = '10s'",
        &[],
    )
    .unwrap_or_else(|e| error!("apisync run: {e}"));
    let result = body();
    // SAFETY: closes what was opened above.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    result
}

/// Takes the job's run lock and records the run as running; without the lock, records it as
/// skipped and returns `None`. Runs of the job still marked running hold no lock: their worker
/// is gone, so they failed.
fn begin(request: &RunRequest) -> Option<JobRow> {
    let job = catalog::read(request.job_id)
        .or_raise()
        .unwrap_or_else(|| error!("apisync run {}: the job was dropped", request.run_id));
    let locked = catalog::try_lock_run(job.job_id);
    if locked {
        catalog::fail_interrupted_runs(Some(job.job_id));
    }
    catalog::begin_run(&job, request.run_id, request.trigger.name(), locked).or_raise();
    locked.then_some(job)
}

/// The run: checked again as at create_job, then fetched and written with the owner's rights.
fn run(
    job: &JobRow,
    run_id: i64,
    committed: &RefCell<Written>,
    slot: &RefCell<Option<Rc<RefCell<Fetch>>>>,
) {
    let owner = job.owner;
    // The first (or only) transaction: checks, the cursor, the fetch started.
    let first = || {
        check_owner(job).or_raise();
        let checked = check(owner, job.target, job.args.clone()).or_raise();
        // An incremental cursor changes the first request, for_each gives the parameter sets;
        // otherwise the checked spec is fetched.
        let cursor = incremental_cursor(&checked);
        let (request, sets) = match &checked.spec.options.for_each {
            Some(query) => {
                let joined = cursor
                    .as_ref()
                    .map(|(incremental, value)| (incremental.param.as_str(), value));
                let sets = super::for_each::sets(query, joined).or_raise();
                let request = cursor.map(|(incremental, value)| {
                    incremental_request(&checked, incremental, value, true)
                });
                (request, Some(sets))
            }
            None => {
                let request = cursor.map(|(incremental, value)| {
                    incremental_request(&checked, incremental, value, false)
                });
                (request, None)
            }
        };
        let spec = build_fetch_spec(owner, &checked.spec, request, sets, Tokens::Exchange);
        let tally = RunTally {
            run_id,
            max_rejected: (checked.spec.options.max_rejected > 0)
                .then_some(checked.spec.options.max_rejected),
            ..RunTally::default()
        };
        // The fetch outlives this transaction when the run commits in steps.
        // SAFETY: the worker's top context lives as long as the process; the fetch is dropped
        // before the worker exits.
        let fetch = unsafe {
            pgrx::PgMemoryContexts::TopMemoryContext.switch_to(|_| {
                start(
                    spec,
                    checked.target.rowtype,
                    Requester::Role(owner),
                    Some(tally),
                )
            })
        };
        let fetch = Rc::new(RefCell::new(fetch));
        *slot.borrow_mut() = Some(fetch.clone());
        (checked, fetch)
    };
    // Without commit_every, the one transaction also writes everything and records the success.
    let stepped = transaction(|| {
        as_role(owner, || {
            let (checked, fetch) = first();
            if let Some(every) = checked.spec.options.commit_every {
                return Some((checked, fetch, every));
            }
            let mut written = write(&checked, &fetch);
            let cut_by = cut_by(&checked, &fetch);
            written.rejected = save_rejects(run_id, owner, &fetch);
            let stats = stats_of(&fetch);
            let outcome = Outcome::Succeeded { cut_by };
            catalog::record(run_id, &stats, &written, outcome).or_raise();
            None
        })
    });
    let Some((checked, fetch, every)) = stepped else {
        return;
    };
    loop {
        fetch.borrow_mut().allow_pages(every);
        let finished = transaction(|| {
            as_role(owner, || {
                let mut written = write(&checked, &fetch);
                written.rejected = save_rejects(run_id, owner, &fetch);
                let mut total = committed.borrow_mut();
                total.add(&written);
                let finished = fetch.borrow().finished();
                let outcome = if finished {
                    Outcome::Succeeded {
                        cut_by: cut_by(&checked, &fetch),
                    }
                } else {
                    Outcome::Running
                };
                let stats = stats_of(&fetch);
                catalog::record(run_id, &stats, &total, outcome).or_raise();
                finished
            })
        });
        if finished {
            return;
        }
    }
}

/// What cut the fetch, for the run row; a cut `replace` or `mirror` fails instead (its
/// transaction is undone, the target unchanged): they need all the data.
fn cut_by(checked: &Checked, fetch: &Rc<RefCell<Fetch>>) -> Option<&'static str> {
    let cut = fetch.borrow().run.as_ref()?.cut?;
    if matches!(
        checked.spec.write,
        WriteMethod::Replace | WriteMethod::Mirror
    ) {
        let (stopped, hint) = match cut {
            Cut::MaxPages(max) => (
                format!("after {max} pages (max_pages)"),
                "raise max_pages in the paging spec, or apisync.max_pages",
            ),
            Cut::MaxRows(max) => (
                format!("after {max} rows (options.max_rows)"),
                "raise or remove options.max_rows",
            ),
        };
        crate::sql::raise(
            Error::new(
                SqlState::ProgramLimitExceeded,
                format!(
                    "the fetch stopped {stopped} while the API had more: {} needs all the data, so the target was left as it was",
                    checked.spec.write.name()
                ),
            )
            .with_hint(hint),
        );
    }
    Some(cut.option())
}

fn save_rejects(run_id: i64, owner: Oid, fetch: &Rc<RefCell<Fetch>>) -> i64 {
    let rows = fetch
        .borrow_mut()
        .run
        .as_mut()
        .map(|run| std::mem::take(&mut run.rejected))
        .unwrap_or_default();
    catalog::save_rejects(run_id, owner, rows).or_raise()
}

/// The write method over the rows of the fetch, typed by the target's row type (a parameter of
/// that type: no name is parsed as a type). Keys seldom repeat within a run, so upsert stages
/// rows as they come and writes them at once; only when a key repeats (the write fails with
/// cardinality_violation and its subtransaction is undone) are they sorted to keep each key's
/// last row, as row by row would.
fn write(checked: &Checked, fetch: &Rc<RefCell<Fetch>>) -> Written {
    let write_method = checked.spec.write;
    let sql = WriteSql {
        target: checked.target.name.clone(),
        columns: checked.target.columns.clone(),
        keys: checked.keys.iter().flatten().map(|k| quote(k)).collect(),
    };
    let rowtype = checked.target.rowtype;
    let processed = |statement: &str, reads_fetch: bool| -> i64 {
        let run = || {
            Spi::connect_mut(|client| {
                let args = if reads_fetch {
                    vec![pgrx::datum::DatumWithOid::null_oid(rowtype)]
                } else {
                    vec![]
                };
                client
                    .update(statement, None, &args)
                    .map(|table| table.len() as i64)
            })
            .unwrap_or_else(|e| error!("{e}"))
        };
        if reads_fetch {
            lend(fetch, run)
        } else {
            run()
        }
    };
    let max_rejected = checked.spec.options.max_rejected;
    let mut written = Written::default();
    if write_method == WriteMethod::Replace {
        written.deleted = processed(&sql.delete_all(), false);
    }
    if !write_method.uses_keys() && max_rejected == 0 {
        let bulk = super::bulk::append(
            checked.target.oid,
            &mut fetch.borrow_mut(),
            super::bulk::Into::Target,
        );
        written.inserted = bulk.unwrap_or_else(|| processed(&sql.insert_fetched(), true));
        return written;
    }
    // Staged first: upsert needs the run's keys, and rejecting rows needs ranges to retry.
    processed(
        &format!("DROP TABLE IF EXISTS {}", super::write::STAGE),
        false,
    );
    if max_rejected == 0 {
        // An empty stage, filled by the bulk path (rows numbered as they come).
        processed(&sql.empty_stage(), true);
        let stage = Spi::get_one::<Oid>(&WriteSql::stage_oid())
            .ok()
            .flatten()
            .unwrap_or_else(|| error!("the run's stage was not created"));
        let positions = &checked.target.positions;
        let bulk = super::bulk::append(
            stage,
            &mut fetch.borrow_mut(),
            super::bulk::Into::Stage(positions),
        );
        if bulk.is_none() {
            processed(&sql.fill_stage(), true);
        }
    } else {
        // Rejecting rows needs each key's last row from the start.
        processed(&sql.stage(write_method.uses_keys()), true);
    }
    let statement = sql.write_staged(write_method);
    let last = Spi::get_one::<i64>(&WriteSql::last_staged())
        .ok()
        .flatten()
        .unwrap_or(0);
    let (inserted, updated) = if max_rejected > 0 {
        write_rejecting(&statement, 1, last, fetch)
    } else if write_method.uses_keys() {
        match in_subtransaction(|| write_range(&statement, 1, last)) {
            Ok(counts) => counts,
            Err(caught) if sqlstate_of(&caught) == "21000" => {
                for step in sql.keep_last_of_each_key() {
                    processed(&step, false);
                }
                write_range(&statement, 1, last)
            }
            Err(caught) => (*caught).rethrow(),
        }
    } else {
        write_range(&statement, 1, last)
    };
    written.inserted = inserted;
    written.updated = updated;
    if write_method == WriteMethod::Mirror {
        let citus = crate::citus::manages(checked.target.oid);
        written.deleted = processed(&sql.delete_unseen(citus), false);
    }
    written
}

/// (inserted, updated) by `statement` over the staged rows `first..=last`.
fn write_range(statement: &str, first: i64, last: i64) -> (i64, i64) {
    let (inserted, updated) =
        Spi::get_two_with_args::<i64, i64>(statement, &[first.into(), last.into()])
            .unwrap_or_else(|e| error!("{e}"));
    (inserted.unwrap_or(0), updated.unwrap_or(0))
}

/// `write_range`, setting aside the rows a constraint refuses: a range is tried in one
/// subtransaction, and a failing range is halved until the failing rows stand alone, so good rows
/// cost no subtransaction of their own.
fn write_rejecting(
    statement: &str,
    first: i64,
    last: i64,
    fetch: &Rc<RefCell<Fetch>>,
) -> (i64, i64) {
    if first > last {
        return (0, 0);
    }
    match in_subtransaction(|| write_range(statement, first, last))
        .map_err(|caught| describe(*caught))
    {
        Ok(counts) => counts,
        Err((error, sqlstate)) if first == last => {
            let raw = Spi::get_one_with_args::<JsonB>(&WriteSql::staged_row(), &[first.into()])
                .ok()
                .flatten()
                .map(|j| j.0)
                .unwrap_or(serde_json::Value::Null);
            let rejected = Rejected {
                row_number: first,
                raw,
                error,
                sqlstate,
            };
            // Raises once the run has set aside more rows than it may.
            fetch.borrow_mut().reject(rejected).or_raise();
            (0, 0)
        }
        Err(_) => {
            let middle = first + (last - first) / 2;
            let (a, b) = write_rejecting(statement, first, middle, fetch);
            let (c, d) = write_rejecting(statement, middle + 1, last, fetch);
            (a + c, b + d)
        }
    }
}

/// Runs `body` in a subtransaction, as a PL/pgSQL exception block does: on an error the
/// subtransaction is rolled back and the error returned.
fn in_subtransaction<R>(body: impl FnOnce() -> R) -> Result<R, Box<CaughtError>> {
    // SAFETY: the backend thread, inside the run's transaction; the context and resource owner
    // are put back as PL/pgSQL does after its subtransactions.
    let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe { pg_sys::BeginInternalSubTransaction(std::ptr::null()) };
    let result = PgTryBuilder::new(AssertUnwindSafe(|| Ok(body())))
        .catch_others(|caught| Err(Box::new(caught)))
        .execute();
    unsafe {
        match result {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    result
}

/// The incremental cursor of a run, when the job has one: the target's `max(cursor_column)`
/// (read with the owner's rights), or `initial` while there is none.
fn incremental_cursor(checked: &Checked) -> Option<(&super::Incremental, serde_json::Value)> {
    let incremental = checked.spec.options.incremental.as_ref()?;
    let found = cursor(incremental, &checked.target.name, false)
        .unwrap_or_else(|e| error!("options.incremental: {e}"));
    let value = found
        .filter(|v| !v.is_null())
        .or(incremental.initial.clone())?;
    Some((incremental, value))
}

/// The job's request carrying the incremental cursor: in the query (of the URL, or with
/// `templated` — a URL template of for_each — in options.query) or in the body.
fn incremental_request(
    checked: &Checked,
    incremental: &super::Incremental,
    cursor: serde_json::Value,
    templated: bool,
) -> FetchRequest {
    let args = &checked.spec.args;
    let mut request = FetchRequest {
        url: args.url.clone(),
        body: args.body.clone(),
        options: checked.spec.fetch_options.clone(),
    };
    match incremental.place {
        super::IncrementalPlace::Query if templated => {
            let text = crate::spec::value_text(&cursor);
            if let Some(options) = request.options.as_object_mut() {
                let query = options
                    .entry("query")
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(query) = query.as_object_mut() {
                    query.insert(incremental.param.clone(), serde_json::Value::String(text));
                }
            }
        }
        super::IncrementalPlace::Query => {
            let mut url = url::Url::parse(&args.url).unwrap_or_else(|e| error!("invalid url: {e}"));
            crate::spec::paging::set_query(&mut url, &incremental.param, &cursor);
            request.url = url.to_string();
        }
        super::IncrementalPlace::Body => {
            let mut body = request.body.take().unwrap_or(serde_json::Value::Null);
            crate::spec::paging::set_dotted(&mut body, &incremental.param, cursor);
            request.body = Some(body);
        }
    }
    request
}

/// The target's `max(cursor_column)` minus the lookback, as JSON; `plan_only` runs the query on no
/// rows, which checks the column and the lookback's type without reading the table.
pub fn cursor(
    incremental: &super::Incremental,
    target: &str,
    plan_only: bool,
) -> Result<Option<serde_json::Value>, pgrx::spi::Error> {
    let column = quote(&incremental.cursor_column);
    let filter = if plan_only { " WHERE false" } else { "" };
    let sql = format!(
        "SELECT {} FROM {target}{filter}",
        incremental.cursor_sql(&column)
    );
    let lookback = incremental.lookback.as_ref().map(crate::spec::value_text);
    let found = match &lookback {
        Some(lookback) => Spi::get_one_with_args::<JsonB>(&sql, &[lookback.as_str().into()]),
        None => Spi::get_one::<JsonB>(&sql),
    }?;
    Ok(found.map(|j| j.0))
}

/// The SQLSTATE of a caught error.
fn sqlstate_of(caught: &CaughtError) -> String {
    match caught {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => {
            SqlState::Raised(report.sql_error_code() as i32).code()
        }
        CaughtError::RustPanic { .. } => "XX000".into(),
    }
}

/// The message and SQLSTATE of a caught error.
pub(crate) fn describe(caught: CaughtError) -> (String, String) {
    let code = sqlstate_of(&caught);
    match caught {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => {
            (report.message().to_string(), code)
        }
        CaughtError::RustPanic { ereport, .. } => (ereport.message().to_string(), code),
    }
}
