//! Reading and writing the job catalog (`sql/bootstrap.sql`). Reads of a caller's jobs go through
//! row-level security as the caller; every write runs as the catalog's owner, after the caller
//! was checked, with fixed schema-qualified statements.

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

use super::JobArgs;
use crate::error::{Error, Result, SqlState};
use crate::roles::{as_catalog_owner, is_member};
use crate::route::{FetchStats, Rejected};

/// One row of `apisync.jobs`.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub job_id: i64,
    pub name: String,
    pub owner: Oid,
    pub target: Oid,
    pub args: JobArgs,
    pub enabled: bool,
}

const JOB_COLUMNS: &str =
    "job_id, name, owner::pg_catalog.oid, target::pg_catalog.oid, url, method, body, path,
    headers, paging, options, write_method, key_columns, schedule, enabled";

fn spi_error(e: pgrx::spi::Error) -> Error {
    Error::internal(format!("could not use the job catalog: {e}"))
}

fn read_jobs(filter: &str, args: &[pgrx::datum::DatumWithOid]) -> Result<Vec<JobRow>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM apisync.jobs WHERE {filter} ORDER BY job_id");
    Spi::connect(|client| {
        let mut jobs = Vec::new();
        for row in client.select(&sql, None, args)? {
            let text = |i: usize| row.get::<String>(i).map(Option::unwrap_or_default);
            jobs.push(JobRow {
                job_id: row.get::<i64>(1)?.unwrap_or_default(),
                name: text(2)?,
                owner: row.get::<Oid>(3)?.unwrap_or(Oid::INVALID),
                target: row.get::<Oid>(4)?.unwrap_or(Oid::INVALID),
                args: JobArgs {
                    url: text(5)?,
                    method: text(6)?,
                    body: row.get::<JsonB>(7)?.map(|j| j.0),
                    path: text(8)?,
                    headers: row.get::<JsonB>(9)?.map_or(json!({}), |j| j.0),
                    paging: row.get::<JsonB>(10)?.map(|j| j.0),
                    options: row.get::<JsonB>(11)?.map_or(json!({}), |j| j.0),
                    write_method: text(12)?,
                    key_columns: row.get::<Vec<String>>(13)?,
                    schedule: row.get::<String>(14)?,
                },
                enabled: row.get::<bool>(15)?.unwrap_or(false),
            });
        }
        Ok(jobs)
    })
    .map_err(spi_error)
}

/// The job `name` as `caller` means it: its own job of that name, else the one job of that name
/// among the roles it is a member of. Jobs of other roles are not seen (row-level security), so
/// their names are neither revealed nor in the way.
pub fn find(name: &str, caller: Oid) -> Result<JobRow> {
    let jobs = read_jobs("name OPERATOR(pg_catalog.=) $1", &[name.into()])?;
    let visible: Vec<JobRow> = jobs
        .into_iter()
        .filter(|job| is_member(caller, job.owner))
        .collect();
    if let Some(own) = visible.iter().find(|job| job.owner == caller) {
        return Ok(own.clone());
    }
    match visible.len() {
        0 => Err(Error::new(
            SqlState::UndefinedObject,
            format!("apisync job \"{name}\" does not exist"),
        )),
        1 => Ok(visible.into_iter().next().expect("one job")),
        _ => Err(Error::new(
            SqlState::from_code("42725"),
            format!(
                "apisync job name \"{name}\" is ambiguous: roles you are a member of each own one"
            ),
        )
        .with_hint("SET ROLE to the owner of the job you mean")),
    }
}

/// The job `job_id`, read as the catalog's owner (run workers, the launcher).
pub fn read(job_id: i64) -> Result<Option<JobRow>> {
    as_catalog_owner(|| read_jobs("job_id OPERATOR(pg_catalog.=) $1", &[job_id.into()]))
        .map(|jobs| jobs.into_iter().next())
}

/// Jobs with a schedule that are enabled, for the launcher.
pub fn scheduled() -> Result<Vec<JobRow>> {
    read_jobs("enabled AND schedule IS NOT NULL", &[])
}

fn job_datums(job: &JobRow) -> Vec<pgrx::datum::DatumWithOid<'static>> {
    let args = &job.args;
    vec![
        job.name.clone().into(),
        job.owner.into(),
        job.target.into(),
        args.url.clone().into(),
        args.method.to_ascii_uppercase().into(),
        args.body.clone().map(JsonB).into(),
        args.path.clone().into(),
        JsonB(args.headers.clone()).into(),
        args.paging.clone().map(JsonB).into(),
        JsonB(args.options.clone()).into(),
        args.write_method.trim().to_ascii_lowercase().into(),
        args.key_columns.clone().into(),
        args.schedule.clone().into(),
        job.enabled.into(),
    ]
}

/// Stores a new job; its name must be new among its owner's jobs.
pub fn insert(job: &JobRow) -> Result<i64> {
    let mut args = job_datums(job);
    args.push(fresh_id("apisync.jobs_job_id_seq", "apisync.jobs", "job_id")?.into());
    let inserted = as_catalog_owner(|| {
        Spi::get_one_with_args::<i64>(
            "INSERT INTO apisync.jobs (name, owner, target, url, method, body, path, headers, paging,
                                       options, write_method, key_columns, schedule, enabled, job_id)
             VALUES ($1, $2::pg_catalog.regrole, $3::pg_catalog.regclass, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (owner, name) DO NOTHING
             RETURNING job_id",
            &args,
        )
    });
    match inserted {
        Ok(Some(id)) => Ok(id),
        Ok(None) | Err(pgrx::spi::Error::InvalidPosition) => Err(Error::new(
            SqlState::from_code("42710"),
            format!("apisync job \"{}\" exists already", job.name),
        )),
        Err(e) => Err(spi_error(e)),
    }
}

/// Writes every field of `job` over its row.
pub fn update(job: &JobRow) -> Result<()> {
    let mut args = job_datums(job);
    args.push(job.job_id.into());
    as_catalog_owner(|| {
        crate::sql::run(
            "UPDATE apisync.jobs SET name = $1, owner = $2::pg_catalog.regrole, target = $3::pg_catalog.regclass,
                    url = $4, method = $5, body = $6, path = $7, headers = $8, paging = $9, options = $10,
                    write_method = $11, key_columns = $12, schedule = $13, enabled = $14,
                    updated_at = pg_catalog.now()
             WHERE job_id OPERATOR(pg_catalog.=) $15",
            &args,
        )
    })
    .map_err(spi_error)
}

pub fn delete(job_id: i64) -> Result<()> {
    as_catalog_owner(|| {
        crate::sql::run(
            "DELETE FROM apisync.jobs WHERE job_id OPERATOR(pg_catalog.=) $1",
            &[job_id.into()],
        )
    })
    .map_err(spi_error)
}

/// Whether this transaction wrote or changed the catalog row `query` reads (its xmin and xmax
/// as text): a worker, which runs in a transaction of its own, would not see the change, or
/// would wait for it.
pub fn touched_by_this_transaction(query: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> bool {
    // A read-only query: asking must not give this transaction an id of its own.
    let read = as_catalog_owner(|| {
        Spi::connect(|client| {
            client
                .select(query, Some(1), args)?
                .first()
                .get_two::<String, String>()
        })
    });
    let Ok((xmin, xmax)) = read else {
        return false;
    };
    [xmin, xmax]
        .into_iter()
        .flatten()
        .filter_map(|id| id.parse::<u32>().ok())
        .filter(|id| *id != 0)
        // SAFETY: a lookup in this backend's transaction state.
        .any(|id| unsafe { pg_sys::TransactionIdIsCurrentTransactionId(id.into()) })
}

/// Records when the scheduler starts `job_id` next (`None`: never), for `apisync.job_status`.
pub fn set_next_run(job_id: i64, next: Option<chrono::DateTime<chrono::Utc>>) {
    as_catalog_owner(|| {
        crate::sql::run(
            "INSERT INTO apisync.job_schedule (job_id, next_run)
             SELECT $1, $2::pg_catalog.text::pg_catalog.timestamptz
             WHERE EXISTS (SELECT 1 FROM apisync.jobs WHERE job_id OPERATOR(pg_catalog.=) $1)
             ON CONFLICT (job_id) DO UPDATE SET next_run = EXCLUDED.next_run
             WHERE apisync.job_schedule.next_run IS DISTINCT FROM EXCLUDED.next_run",
            &[job_id.into(), next.map(|n| n.to_rfc3339()).into()],
        )
    })
    .unwrap_or_else(|e| error!("could not record the next run of job {job_id}: {e}"));
}

/// Forgets the next runs of jobs this scheduler no longer schedules.
pub fn keep_next_runs_of(job_ids: &[i64]) {
    as_catalog_owner(|| {
        crate::sql::run(
            "DELETE FROM apisync.job_schedule WHERE job_id OPERATOR(pg_catalog.<>) ALL ($1)",
            &[job_ids.to_vec().into()],
        )
    })
    .unwrap_or_else(|e| error!("could not update apisync.job_schedule: {e}"));
}

/// A new run id.
pub fn next_run_id() -> Result<i64> {
    fresh_id("apisync.job_runs_run_id_seq", "apisync.job_runs", "run_id")
}

/// A new id from `sequence` that no row of `table` holds yet. A sequence behind its table (a
/// restore that did not bring it along) is an error that says so: never a run that returns an
/// old run's row, nor a clash reported as a duplicate name.
fn fresh_id(sequence: &str, table: &str, column: &str) -> Result<i64> {
    let drawn = as_catalog_owner(|| {
        Spi::get_two::<i64, bool>(&format!(
            "SELECT n, EXISTS (SELECT 1 FROM {table} WHERE {column} OPERATOR(pg_catalog.=) n)
             FROM pg_catalog.nextval('{sequence}'::pg_catalog.regclass) n"
        ))
    })
    .map_err(|e| Error::internal(format!("could not draw a new {column}: {e}")))?;
    match drawn {
        (Some(id), Some(false)) => Ok(id),
        (Some(id), _) => Err(Error::new(
            SqlState::from_code("23505"),
            format!("{column} {id} is taken already: the sequence {sequence} is behind {table}"),
        )
        .with_detail("a restore that did not bring the sequence along leaves it so")
        .with_hint(format!(
            "a superuser sets it past the table: SELECT setval('{sequence}', (SELECT max({column}) FROM {table}))"
        ))),
        _ => Err(Error::internal(format!("could not draw a new {column}"))),
    }
}

/// The run lock of a job: one run at a time. An advisory lock of this database keyed on both
/// halves of the job id, with a field of its own (pg_locks.objsubid) so no other advisory lock
/// can stand for it.
pub const LOCK_KIND: u16 = 0x6170; // "ap"

fn lock_tag(job_id: i64) -> pg_sys::LOCKTAG {
    // SAFETY: reads a session global on the backend thread.
    let database = unsafe { pg_sys::MyDatabaseId };
    pg_sys::LOCKTAG {
        locktag_field1: database.to_u32(),
        locktag_field2: (job_id as u64 >> 32) as u32,
        locktag_field3: job_id as u64 as u32,
        locktag_field4: LOCK_KIND,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Takes the run lock of `job_id` for this session; `false` when another run holds it.
pub fn try_lock_run(job_id: i64) -> bool {
    try_lock(lock_tag(job_id))
}

/// The scheduler's lock of this database: one scheduler per database. A job id is never below 1,
/// so key 0 stands for no job.
pub fn try_lock_scheduler() -> bool {
    try_lock(lock_tag(0))
}

fn try_lock(tag: pg_sys::LOCKTAG) -> bool {
    // SAFETY: a session-level advisory lock, as pg_try_advisory_lock takes it.
    let result = unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as i32, true, true) };
    result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// Runs marked running whose worker is gone (crash, restart, termination) failed: with `job_id`,
/// every running run of that job (the caller holds its run lock, so none is alive); without, the
/// runs of every job whose run lock nobody holds.
pub fn fail_interrupted_runs(job_id: Option<i64>) {
    let _ = as_catalog_owner(|| {
        crate::sql::run(
            "UPDATE apisync.job_runs r SET status = 'failed', finished_at = pg_catalog.clock_timestamp(),
                    sqlstate = '57P01',
                    error = 'interrupted: its worker ended before the run finished (crash, restart or termination)'
             WHERE status OPERATOR(pg_catalog.=) 'running'
               AND ($1::pg_catalog.int8 IS NULL OR r.job_id OPERATOR(pg_catalog.=) $1)
               AND ($1::pg_catalog.int8 IS NOT NULL OR NOT EXISTS (
                   SELECT 1 FROM pg_catalog.pg_locks l
                   WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted
                     AND l.database OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database
                                                          WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
                     AND l.objsubid OPERATOR(pg_catalog.=) $2
                     AND l.classid::pg_catalog.oid::pg_catalog.int8 OPERATOR(pg_catalog.=) ((r.job_id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.&) 4294967295)
                     AND l.objid::pg_catalog.oid::pg_catalog.int8 OPERATOR(pg_catalog.=) (r.job_id OPERATOR(pg_catalog.&) 4294967295)))",
            &[job_id.into(), i32::from(LOCK_KIND).into()],
        )
    });
}

/// Records run `run_id` of `job` as running (or skipped, when another run holds the lock).
pub fn begin_run(job: &JobRow, run_id: i64, trigger: &str, locked: bool) -> Result<()> {
    let status = if locked { "running" } else { "skipped" };
    as_catalog_owner(|| {
        crate::sql::run(
            "INSERT INTO apisync.job_runs (run_id, job_id, job_name, owner, trigger, status, pid, finished_at, error)
             VALUES ($1, $2, $3, $4::pg_catalog.regrole, $5, $6, pg_catalog.pg_backend_pid(),
                     CASE WHEN $6 OPERATOR(pg_catalog.=) 'skipped' THEN pg_catalog.clock_timestamp() END,
                     CASE WHEN $6 OPERATOR(pg_catalog.=) 'skipped' THEN 'another run of this job was in progress' END)",
            &[
                run_id.into(),
                job.job_id.into(),
                job.name.as_str().into(),
                job.owner.into(),
                trigger.into(),
                status.into(),
            ],
        )
    })
    .map_err(|e| Error::internal(format!("could not record run {run_id}: {e}")))?;
    if !locked {
        log!(
            "apisync job \"{}\" run {run_id} skipped: another run of this job was in progress",
            job.name
        );
    }
    Ok(())
}

/// What a run wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    pub rejected: i64,
}

impl Written {
    pub fn add(&mut self, step: &Written) {
        self.inserted += step.inserted;
        self.updated += step.updated;
        self.deleted += step.deleted;
        self.rejected += step.rejected;
    }
}

/// How a run ended (or stands, for a step of a run with commit_every).
pub enum Outcome<'a> {
    Running,
    Succeeded { cut_by: Option<&'a str> },
    Failed { message: &'a str, sqlstate: &'a str },
}

/// Updates the run row with its counts and outcome. A run that cannot be recorded is an error.
pub fn record(run_id: i64, stats: &FetchStats, written: &Written, outcome: Outcome) -> Result<()> {
    let (status, cut_by, error) = match outcome {
        Outcome::Running => ("running", None, None),
        Outcome::Succeeded { cut_by } => ("succeeded", cut_by, None),
        Outcome::Failed { message, sqlstate } => ("failed", None, Some((message, sqlstate))),
    };
    let updated = as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            client
                .update(
                    "UPDATE apisync.job_runs SET status = $2,
                            finished_at = CASE WHEN $2 OPERATOR(pg_catalog.<>) 'running' THEN pg_catalog.clock_timestamp() END,
                            requests = $3, pages = $4, bytes = $5, rows_fetched = $6,
                            rows_inserted = $7, rows_updated = $8, rows_deleted = $9, error = $10, sqlstate = $11,
                            rows_rejected = $12, cut_by = $13, requests_skipped = $14
                     WHERE run_id OPERATOR(pg_catalog.=) $1
                     RETURNING job_name, (finished_at OPERATOR(pg_catalog.-) started_at)::pg_catalog.text",
                    None,
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
                        cut_by.into(),
                        (stats.skipped as i64).into(),
                    ],
                )
                .and_then(|table| {
                    let row = table.first();
                    Ok(match row.get::<String>(1)? {
                        Some(name) => Some((name, row.get::<String>(2)?.unwrap_or_default())),
                        None => None,
                    })
                })
        })
    })
    .map_err(|e| Error::internal(format!("could not record run {run_id}: {e}")))?;
    let Some((job_name, took)) = updated else {
        return Err(Error::internal(format!(
            "could not record run {run_id}: its row is gone"
        )));
    };
    if status != "running" {
        let error = error
            .map(|(message, sqlstate)| format!(": {message} (SQLSTATE {sqlstate})"))
            .unwrap_or_default();
        log!(
            "apisync job \"{job_name}\" run {run_id} {status} in {took}: {} rows fetched, {} inserted, {} updated, {} deleted, {} rejected{error}",
            stats.rows, written.inserted, written.updated, written.deleted, written.rejected
        );
    }
    Ok(())
}

/// Saves rows a run set aside into apisync.rejected_rows; returns how many.
pub fn save_rejects(run_id: i64, owner: Oid, rows: Vec<Rejected>) -> Result<i64> {
    as_catalog_owner(|| {
        for row in &rows {
            crate::sql::run(
                "INSERT INTO apisync.rejected_rows (run_id, row_number, raw, error, sqlstate, owner)
                 VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.regrole)",
                &[
                    run_id.into(),
                    row.row_number.into(),
                    JsonB(row.raw.clone()).into(),
                    row.error.as_str().into(),
                    row.sqlstate.as_str().into(),
                    owner.into(),
                ],
            )?;
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(|e| {
        Error::internal(format!(
            "could not record a rejected row of run {run_id}: {e}"
        ))
    })?;
    Ok(rows.len() as i64)
}

/// Deletes runs finished more than `days` ago and their rejected rows.
pub fn trim_history(days: i32) {
    let _ = as_catalog_owner(|| {
        crate::sql::run(
            "DELETE FROM apisync.job_runs
             WHERE finished_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => $1))",
            &[days.into()],
        )?;
        crate::sql::run(
            "DELETE FROM apisync.rejected_rows j
             WHERE NOT EXISTS (SELECT 1 FROM apisync.job_runs r WHERE r.run_id OPERATOR(pg_catalog.=) j.run_id)",
            &[],
        )
    });
}
