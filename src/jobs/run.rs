//! A run, in a dynamic background worker connected as the job's owner: one transaction records
//! the run as running (or skipped), one writes the target and the run's success together (so the
//! target shows all of a run or none of it), and a failure is recorded in a transaction of its own.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, DynamicBackgroundWorker};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use super::WriteMethod;
use crate::error::{Error, SqlState};
use crate::fetch::{Http, PageStream};
use crate::sql::fetch::{
    collect_rejects, fetch_spec, next_page, reject, set_chunk, take_rejects, track_run, tracked,
    Chunk, FetchStats, Rejected,
};
use crate::sql::OrRaise;

/// Advisory lock class of job runs ("apis"): one run of a job at a time.
pub const LOCK_CLASS: i32 = 0x6170_6973;

/// Starts a run worker for job `job_id` as `owner`, with a new run id; `notify` is the process
/// that waits for it (run_job), if any.
pub fn start_worker(
    job_id: i64,
    name: &str,
    owner: pg_sys::Oid,
    trigger: &str,
    notify: Option<i32>,
) -> Result<(DynamicBackgroundWorker, i64), Error> {
    let run_id = Spi::get_one::<i64>("SELECT nextval('apisync.job_runs_run_id_seq')")
        .ok()
        .flatten()
        .ok_or_else(|| Error::internal("could not draw a run id"))?;
    // SAFETY: reads a session global on the backend thread.
    let database = unsafe { pg_sys::MyDatabaseId };
    let extra = format!(
        "{} {} {job_id} {run_id} {trigger}",
        database.to_u32(),
        owner.to_u32()
    );
    let mut builder = BackgroundWorkerBuilder::new(&format!("apisync run {run_id} of {name}"))
        .set_type("apisync run")
        .set_library("pg_apisync")
        .set_function("apisync_run_worker")
        .enable_spi_access()
        .set_extra(&extra)
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

struct Job {
    target: pg_sys::Oid,
    url: String,
    method: String,
    body: Option<JsonB>,
    path: String,
    headers: JsonB,
    paging: Option<JsonB>,
    options: JsonB,
    write: WriteMethod,
    keys: Vec<String>,
}

#[derive(Default)]
struct Written {
    inserted: i64,
    updated: i64,
    deleted: i64,
    rejected: i64,
}

impl Written {
    fn add(&mut self, step: &Written) {
        self.inserted += step.inserted;
        self.updated += step.updated;
        self.deleted += step.deleted;
        self.rejected += step.rejected;
    }
}

/// The target table as the writes name it.
struct Target {
    /// Qualified and quoted, as `regclass` prints it.
    name: String,
    /// Quoted, in order; no dropped or generated columns.
    columns: Vec<String>,
    /// The schema of api_fetch (the extension's), quoted.
    schema: String,
}

/// The worker's entry point; `bgw_extra` holds "database owner job_id run_id trigger".
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn apisync_run_worker(_arg: pg_sys::Datum) {
    let extra = BackgroundWorker::get_extra().to_string();
    let fields: Vec<&str> = extra.split_whitespace().collect();
    let [database, owner, job_id, run_id, trigger] = fields[..] else {
        error!("apisync run worker: malformed arguments \"{extra}\"")
    };
    let oid = |text: &str| pg_sys::Oid::from(text.parse::<u32>().unwrap_or(0));
    let (job_id, run_id) = (
        job_id.parse::<i64>().unwrap_or(0),
        run_id.parse::<i64>().unwrap_or(0),
    );
    // SAFETY: signal setup of a background worker, before unblocking signals.
    unsafe {
        pg_sys::pqsignal(libc::SIGTERM, Some(on_sigterm));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(oid(database)), Some(oid(owner)));

    let started = BackgroundWorker::transaction(|| begin(job_id, run_id, trigger));
    if !started {
        return;
    }
    // What committed steps wrote, for a run with commit_every that fails part way.
    let committed = RefCell::new(Written::default());
    let outcome = PgTryBuilder::new(AssertUnwindSafe(|| {
        let job = transaction(|| load(job_id));
        track_run(run_id);
        let max_rejected = super::max_rejected(&job.options.0);
        if max_rejected > 0 {
            collect_rejects(max_rejected);
        }
        match super::commit_every(&job.options.0) {
            None => transaction(|| {
                let target = target_of(&job);
                let mut written = write(&job, &target, Source::Fetch);
                written.rejected = save_rejects(run_id);
                record(run_id, &tracked(), &written, "succeeded", None);
            }),
            Some(every) => write_in_steps(run_id, &job, every, &committed),
        }
        None
    }))
    .catch_others(|caught| Some(describe(caught)))
    .execute();
    if let Some((message, sqlstate)) = outcome {
        log!("apisync run {run_id} failed: {message} (SQLSTATE {sqlstate})");
        // SAFETY: leaves the failed transaction, as a worker's error recovery does.
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        let error = Some((message.as_str(), sqlstate.as_str()));
        transaction(|| record(run_id, &tracked(), &committed.borrow(), "failed", error));
    }
}

/// Where a write takes its rows from.
enum Source {
    /// `api_fetch` over the job's arguments, in the statement itself.
    Fetch,
    /// The rows of one step of a run with commit_every (`apisync._chunk_rows`).
    Chunk,
}

/// A run with `options.commit_every`: `every` pages a transaction, the run row updated with each,
/// so a failure leaves the steps before it written and says how far the run got.
fn write_in_steps(run_id: i64, job: &Job, every: u32, committed: &RefCell<Written>) {
    let (target, spec) = transaction(|| {
        let target = target_of(job);
        let (url, body) = incremental_request(job, &target.name);
        let options = super::fetch_options(Some(&job.options.0)).ok().flatten();
        let names = crate::spec::secret_names(options.as_ref());
        let args = crate::spec::RequestArgs {
            url: Some(&url),
            method: Some(&job.method),
            body,
            headers: Some(job.headers.0.clone()),
            options,
            secrets: crate::sql::secrets::lookup(&names),
        };
        (
            target,
            fetch_spec(args, Some(&job.path), job.paging.as_ref()),
        )
    });
    let columns = spec.columns.clone();
    let http = Http::get().or_raise();
    let mut stream = PageStream::start(http, Arc::new(spec), None).or_raise();
    let mut numbered = 0;
    let mut more = true;
    while more {
        let mut rows = Vec::new();
        for _ in 0..every {
            match next_page(&http.runtime, &mut stream) {
                Some(page) => rows.extend(page.rows.into_values()),
                None => {
                    more = false;
                    break;
                }
            }
        }
        let count = rows.len() as u64;
        set_chunk(Chunk {
            rows,
            columns: columns.clone(),
            numbered_after: numbered,
        });
        numbered += count;
        transaction(|| {
            let mut written = write(job, &target, Source::Chunk);
            written.rejected = save_rejects(run_id);
            let mut total = committed.borrow_mut();
            total.add(&written);
            let status = if more { "running" } else { "succeeded" };
            record(run_id, &tracked(), &total, status, None);
        });
    }
}

/// SIGTERM (run_job cancelled, DROP DATABASE, shutdown) ends the run as `die` ends a backend's
/// query: at the next interrupt check, which every wait makes within 50 ms.
unsafe extern "C-unwind" fn on_sigterm(_signal: i32) {
    // SAFETY: sig_atomic_t flags, which is all a signal handler may touch.
    unsafe {
        std::ptr::write_volatile(&raw mut pg_sys::InterruptPending, 1);
        std::ptr::write_volatile(&raw mut pg_sys::ProcDiePending, 1);
    }
}

fn transaction<R>(body: impl FnOnce() -> R) -> R {
    // SAFETY: a plain transaction of a connected background worker.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = body();
    // SAFETY: closes what was opened above.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    result
}

/// Takes the job's run lock and records the run as running; without the lock, records it as
/// skipped. Runs still marked running hold no lock: their worker is gone, so they failed.
fn begin(job_id: i64, run_id: i64, trigger: &str) -> bool {
    let locked = Spi::get_one_with_args::<bool>(
        "SELECT pg_try_advisory_lock($1, $2::int)",
        &[LOCK_CLASS.into(), job_id.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    let status = if locked { "running" } else { "skipped" };
    if locked {
        Spi::run_with_args(
            "UPDATE apisync.job_runs SET status = 'failed', finished_at = clock_timestamp(), sqlstate = '57P01',
                    error = 'interrupted: its worker ended before the run finished (crash, restart or termination)'
             WHERE job_id = $1 AND status = 'running'",
            &[job_id.into()],
        )
        .unwrap_or_else(|e| error!("apisync run {run_id}: {e}"));
    }
    Spi::run_with_args(
        "INSERT INTO apisync.job_runs (run_id, job_id, job_name, owner, trigger, status, pid, finished_at, error)
         SELECT $1, job_id, name, owner, $2, $3, pg_backend_pid(),
                CASE WHEN $3 = 'skipped' THEN clock_timestamp() END,
                CASE WHEN $3 = 'skipped' THEN 'another run of this job was in progress' END
         FROM apisync.jobs WHERE job_id = $4",
        &[run_id.into(), trigger.into(), status.into(), job_id.into()],
    )
    .unwrap_or_else(|e| error!("apisync run {run_id}: {e}"));
    locked
}

fn load(job_id: i64) -> Job {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT target::oid, url, method, body, path, headers, paging, options, write_method,
                    coalesce(key_columns, '{}')
             FROM apisync.jobs WHERE job_id = $1",
            Some(1),
            &[job_id.into()],
        )?;
        if rows.is_empty() {
            error!("the job was dropped");
        }
        let row = rows.first();
        let text = |i: usize| row.get::<String>(i).ok().flatten().unwrap_or_default();
        Ok::<_, pgrx::spi::Error>(Job {
            target: row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::Oid::INVALID),
            url: text(2),
            method: text(3),
            body: row.get::<JsonB>(4)?,
            path: text(5),
            headers: row.get::<JsonB>(6)?.unwrap_or(JsonB(serde_json::json!({}))),
            paging: row.get::<JsonB>(7)?,
            options: row.get::<JsonB>(8)?.unwrap_or(JsonB(serde_json::json!({}))),
            write: WriteMethod::parse(&text(9)).unwrap_or(WriteMethod::Append),
            keys: row.get::<Vec<String>>(10)?.unwrap_or_default(),
        })
    })
    .unwrap_or_else(|e| error!("could not read the job: {e}"))
}

fn target_of(job: &Job) -> Target {
    let one = |sql: &str, args: &[pgrx::datum::DatumWithOid]| -> Option<String> {
        Spi::get_one_with_args::<String>(sql, args).unwrap_or_else(|e| error!("{e}"))
    };
    let name = one("SELECT $1::regclass::text", &[job.target.into()]).unwrap_or_default();
    let columns: Vec<String> = Spi::get_one_with_args::<Vec<String>>(
        "SELECT array_agg(quote_ident(attname) ORDER BY attnum) FROM pg_attribute
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = ''",
        &[job.target.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    let schema = one(
        "SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
         WHERE e.extname = 'pg_apisync'",
        &[],
    )
    .unwrap_or_else(|| "public".into());
    Target {
        name,
        columns,
        schema,
    }
}

/// The write method, as SQL over the rows of `source` typed by the target's row type.
fn write(job: &Job, target: &Target, source: Source) -> Written {
    let (schema, columns) = (&target.schema, &target.columns);
    let target = &target.name;
    let list = columns.join(", ");
    let fetched = match source {
        Source::Fetch => format!("{schema}.api_fetch($1, $2, $3, $4, $5, $6, $7, NULL::{target})"),
        Source::Chunk => format!("apisync._chunk_rows(NULL::{target})"),
    };
    let (url, body) = match source {
        Source::Fetch => incremental_request(job, target),
        Source::Chunk => (String::new(), None),
    };
    // The stored options minus the job's own.
    let options = super::fetch_options(Some(&job.options.0))
        .ok()
        .flatten()
        .unwrap_or(serde_json::json!({}));
    let args = || -> Vec<pgrx::datum::DatumWithOid<'static>> {
        if matches!(source, Source::Chunk) {
            return vec![];
        }
        vec![
            url.clone().into(),
            job.method.clone().into(),
            body.as_ref().map(|b| JsonB(b.clone())).into(),
            job.path.clone().into(),
            JsonB(job.headers.0.clone()).into(),
            job.paging.as_ref().map(|p| JsonB(p.0.clone())).into(),
            JsonB(options.clone()).into(),
        ]
    };
    let processed = |sql: &str, with_args: bool| -> i64 {
        Spi::connect_mut(|client| {
            let args = if with_args { args() } else { vec![] };
            client
                .update(sql, None, &args)
                .map(|table| table.len() as i64)
        })
        .unwrap_or_else(|e| error!("{e}"))
    };
    let max_rejected = super::max_rejected(&job.options.0);
    let mut written = Written::default();
    if job.write == WriteMethod::Replace {
        written.deleted = processed(&format!("DELETE FROM {target}"), false);
    }
    // The set-returning call sits in FROM, where api_fetch fills PostgreSQL's tuplestore itself
    // (spilling to a temporary file past work_mem): measured, that is a quarter faster than
    // rows one by one from a select list, which form a tuple per row and take it apart again.
    if !job.write.uses_keys() && max_rejected == 0 {
        // Straight from the API into the table.
        written.inserted = processed(
            &format!("INSERT INTO {target} ({list}) SELECT {list} FROM {fetched} f"),
            true,
        );
        return written;
    }
    let keys: Vec<String> = job.keys.iter().map(|k| quote_ident(k)).collect();
    let keys = keys.join(", ");
    // Staged first: upsert needs the run's keys, and rejecting rows needs ranges to retry.
    // With keys, the last row of a key wins, as it would row by row. Keys seldom repeat within a
    // run, so rows are staged as they come and written at once; only when a key repeats (the
    // write fails with cardinality_violation and its subtransaction is undone) are they sorted
    // to keep each key's last row. Rejecting rows needs the kept rows from the start.
    let dedupe = format!(
        "SELECT DISTINCT ON ({keys}) * FROM apisync_stage ORDER BY {keys}, apisync_row DESC"
    );
    let (distinct, order) = if job.write.uses_keys() && max_rejected > 0 {
        (
            format!("DISTINCT ON ({keys})"),
            format!("ORDER BY {keys}, f.apisync_n DESC"),
        )
    } else {
        (String::new(), String::new())
    };
    processed(
        &format!(
            "CREATE TEMP TABLE apisync_stage ON COMMIT DROP AS
             SELECT {distinct} {list}, f.apisync_n AS apisync_row
             FROM (SELECT r.*, row_number() OVER () AS apisync_n FROM {fetched} r) f
             {order}"
        ),
        true,
    );
    let range = "FROM apisync_stage WHERE apisync_row BETWEEN $1 AND $2";
    let statement = if job.write.uses_keys() {
        format!(
            "WITH written AS (
                 INSERT INTO {target} AS t ({list}) SELECT {list} {range}
                 ON CONFLICT ({keys}) DO {}
                 RETURNING (t.xmax = 0) AS inserted)
             SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written",
            conflict_action(columns, &job.keys)
        )
    } else {
        format!(
            "WITH written AS (INSERT INTO {target} ({list}) SELECT {list} {range} RETURNING 1)
             SELECT count(*), 0::bigint FROM written"
        )
    };
    let last = Spi::get_one::<i64>("SELECT coalesce(max(apisync_row), 0) FROM apisync_stage")
        .ok()
        .flatten()
        .unwrap_or(0);
    let (inserted, updated) = if max_rejected > 0 {
        write_rejecting(&statement, 1, last)
    } else if job.write.uses_keys() {
        match in_subtransaction(|| write_range(&statement, 1, last)) {
            Ok(counts) => counts,
            Err(caught) if sqlstate_of(&caught) == "21000" => {
                processed(
                    &format!("CREATE TEMP TABLE apisync_kept ON COMMIT DROP AS {dedupe}"),
                    false,
                );
                processed("DROP TABLE apisync_stage", false);
                processed("ALTER TABLE apisync_kept RENAME TO apisync_stage", false);
                write_range(&statement, 1, last)
            }
            Err(caught) => (*caught).rethrow(),
        }
    } else {
        write_range(&statement, 1, last)
    };
    written.inserted = inserted;
    written.updated = updated;
    if job.write == WriteMethod::Mirror {
        let matches: Vec<String> = job
            .keys
            .iter()
            .map(|k| quote_ident(k))
            .map(|k| format!("s.{k} = t.{k}"))
            .collect();
        written.deleted = processed(
            &format!(
                "DELETE FROM {target} t WHERE NOT EXISTS (SELECT 1 FROM apisync_stage s WHERE {})",
                matches.join(" AND ")
            ),
            false,
        );
    }
    written
}

/// `DO UPDATE` of the non-key columns, skipping rows whose values are unchanged; `DO NOTHING`
/// when every column is a key.
fn conflict_action(columns: &[String], keys: &[String]) -> String {
    let others: Vec<&String> = columns
        .iter()
        .filter(|c| !keys.iter().any(|k| quote_ident(k) == **c))
        .collect();
    if others.is_empty() {
        return "NOTHING".into();
    }
    let set: Vec<String> = others
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let old: Vec<String> = others.iter().map(|c| format!("t.{c}")).collect();
    let new: Vec<String> = others.iter().map(|c| format!("EXCLUDED.{c}")).collect();
    format!(
        "UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})",
        set.join(", "),
        old.join(", "),
        new.join(", ")
    )
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
fn write_rejecting(statement: &str, first: i64, last: i64) -> (i64, i64) {
    if first > last {
        return (0, 0);
    }
    match in_subtransaction(|| write_range(statement, first, last))
        .map_err(|caught| describe(*caught))
    {
        Ok(counts) => counts,
        Err((error, sqlstate)) if first == last => {
            let raw = Spi::get_one_with_args::<JsonB>(
                "SELECT to_jsonb(s) - 'apisync_row' FROM apisync_stage s WHERE apisync_row = $1",
                &[first.into()],
            )
            .ok()
            .flatten()
            .map(|j| j.0)
            .unwrap_or(serde_json::Value::Null);
            // Raises once the run has set aside more rows than it may.
            reject(Rejected {
                row_number: first,
                raw,
                error,
                sqlstate,
            });
            (0, 0)
        }
        Err(_) => {
            let middle = first + (last - first) / 2;
            let (a, b) = write_rejecting(statement, first, middle);
            let (c, d) = write_rejecting(statement, middle + 1, last);
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

/// The job's URL and body, carrying the incremental cursor when the job has one.
fn incremental_request(job: &Job, target: &str) -> (String, Option<serde_json::Value>) {
    let body = job.body.as_ref().map(|b| b.0.clone());
    let incremental = match super::Incremental::of(&job.options.0) {
        Ok(Some(incremental)) => incremental,
        Ok(None) => return (job.url.clone(), body),
        Err(e) => error!("{}", e.message),
    };
    let found =
        cursor(&incremental, target, false).unwrap_or_else(|e| error!("options.incremental: {e}"));
    let Some(cursor) = found
        .filter(|v| !v.is_null())
        .or(incremental.initial.clone())
    else {
        return (job.url.clone(), body);
    };
    match incremental.place {
        super::IncrementalPlace::Query => {
            let mut url = url::Url::parse(&job.url).unwrap_or_else(|e| error!("invalid url: {e}"));
            crate::spec::paging::set_query(&mut url, &incremental.param, &cursor);
            (url.to_string(), body)
        }
        super::IncrementalPlace::Body => {
            let mut body = body.unwrap_or(serde_json::Value::Null);
            crate::spec::paging::set_dotted(&mut body, &incremental.param, cursor);
            (job.url.clone(), Some(body))
        }
    }
}

/// The target's `max(cursor_column)` minus the lookback, as JSON; `plan_only` runs the query on no
/// rows, which checks the column and the lookback's type without reading the table.
pub fn cursor(
    incremental: &super::Incremental,
    target: &str,
    plan_only: bool,
) -> Result<Option<serde_json::Value>, pgrx::spi::Error> {
    let column = quote_ident(&incremental.cursor_column);
    let filter = if plan_only { " WHERE false" } else { "" };
    let sql = format!(
        "SELECT {} FROM {target}{filter}",
        incremental.cursor_sql(&column)
    );
    let lookback = incremental.lookback.as_ref().map(|l| match l {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let found = match &lookback {
        Some(lookback) => Spi::get_one_with_args::<JsonB>(&sql, &[lookback.as_str().into()]),
        None => Spi::get_one::<JsonB>(&sql),
    }?;
    Ok(found.map(|j| j.0))
}

fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Updates the run row: `running` (a step of a run with commit_every), `succeeded`, or `failed`
/// with (message, SQLSTATE); with the counts so far.
fn record(
    run_id: i64,
    stats: &FetchStats,
    written: &Written,
    status: &str,
    error: Option<(&str, &str)>,
) {
    Spi::run_with_args(
        "UPDATE apisync.job_runs SET status = $2,
                finished_at = CASE WHEN $2 <> 'running' THEN clock_timestamp() END,
                requests = $3, pages = $4, bytes = $5, rows_fetched = $6,
                rows_inserted = $7, rows_updated = $8, rows_deleted = $9, error = $10, sqlstate = $11,
                rows_rejected = $12
         WHERE run_id = $1",
        &[
            run_id.into(),
            status.into(),
            (stats.requests as i64).into(),
            (stats.pages as i64).into(),
            (stats.bytes as i64).into(),
            (stats.rows as i64).into(),
            written.inserted.into(),
            written.updated.into(),
            written.deleted.into(),
            error.map(|(message, _)| message).into(),
            error.map(|(_, sqlstate)| sqlstate).into(),
            written.rejected.into(),
        ],
    )
    .unwrap_or_else(|e| error!("could not record run {run_id}: {e}"));
}

/// Saves the rows set aside since the last save into apisync.rejected_rows; returns how many.
fn save_rejects(run_id: i64) -> i64 {
    let rows = take_rejects();
    for row in &rows {
        Spi::run_with_args(
            "INSERT INTO apisync.rejected_rows (run_id, row_number, raw, error, sqlstate, owner)
             SELECT $1, $2, $3, $4, $5, owner FROM apisync.job_runs WHERE run_id = $1",
            &[
                run_id.into(),
                row.row_number.into(),
                JsonB(row.raw.clone()).into(),
                row.error.as_str().into(),
                row.sqlstate.as_str().into(),
            ],
        )
        .unwrap_or_else(|e| error!("could not record a rejected row of run {run_id}: {e}"));
    }
    rows.len() as i64
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
fn describe(caught: CaughtError) -> (String, String) {
    let code = sqlstate_of(&caught);
    match caught {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => {
            (report.message().to_string(), code)
        }
        CaughtError::RustPanic { ereport, .. } => (ereport.message().to_string(), code),
    }
}
