//! The SQL face of jobs: the checks behind create_job / alter_job, and starting a run in a
//! background worker. The catalog and the plpgsql wrappers are in catalog.sql.

use pgrx::prelude::*;

#[pg_schema]
mod apisync {
    use std::time::Duration;

    use pgrx::bgworkers::BackgroundWorkerStatus;
    use pgrx::prelude::*;
    use pgrx::{pg_sys, JsonB};

    use crate::error::{Error, SqlState};
    use crate::jobs::run::start_worker;
    use crate::jobs::{check_no_inline_credentials, check_schedule, fetch_options, WriteMethod};
    use crate::settings;
    use crate::spec::RequestArgs;
    use crate::sql::fetch::fetch_spec;
    use crate::sql::rows::RowMaker;
    use crate::sql::{raise, secrets, OrRaise};

    /// Checks a job's arguments as a run will use them, before anything is stored; returns the
    /// key columns the write method uses (for upsert and mirror, the primary key by default).
    #[allow(clippy::too_many_arguments)]
    #[pg_extern(volatile, name = "_check_job")]
    fn check_job(
        target: pg_sys::Oid,
        url: Option<&str>,
        method: Option<&str>,
        body: Option<JsonB>,
        path: Option<&str>,
        headers: Option<JsonB>,
        paging: Option<JsonB>,
        options: Option<JsonB>,
        write_method: Option<&str>,
        key_columns: Option<Vec<String>>,
        schedule: Option<&str>,
    ) -> Option<Vec<String>> {
        let write = WriteMethod::parse(write_method.unwrap_or("append")).or_raise();
        let headers = headers.map(|h| h.0);
        let options = options.map(|o| o.0);
        check_no_inline_credentials(headers.as_ref(), options.as_ref()).or_raise();
        check_schedule(schedule).or_raise();
        let fetch_options = fetch_options(options.as_ref()).or_raise();

        let (relkind, rowtype) = Spi::get_two_with_args::<i8, pg_sys::Oid>(
            "SELECT relkind, reltype FROM pg_class WHERE oid = $1",
            &[target.into()],
        )
        .map_err(|e| Error::internal(e.to_string()))
        .or_raise();
        let (Some(relkind), Some(rowtype)) = (relkind, rowtype) else {
            raise(Error::new(
                SqlState::UndefinedObject,
                "the target table does not exist",
            ))
        };
        if !matches!(relkind as u8, b'r' | b'p') {
            raise(Error::new(
                SqlState::DatatypeMismatch,
                "the target must be a table",
            ));
        }
        for privilege in write.privileges() {
            let granted = Spi::get_one_with_args::<bool>(
                "SELECT has_table_privilege($1, $2)",
                &[target.into(), (*privilege).into()],
            )
            .ok()
            .flatten()
            .unwrap_or(false);
            if !granted {
                raise(Error::new(
                    SqlState::InsufficientPrivilege,
                    format!(
                        "permission denied: the job's owner needs {privilege} on the target table"
                    ),
                ));
            }
        }

        let names = crate::spec::secret_names(fetch_options.as_ref());
        let args = RequestArgs {
            url,
            method,
            body: body.map(|b| b.0),
            headers,
            options: fetch_options,
            secrets: secrets::lookup(&names),
        };
        let spec = fetch_spec(args, path, paging.as_ref());
        // Checks options.columns against the table.
        RowMaker::new(rowtype, spec.columns).or_raise();
        if let Some(incremental) = options
            .as_ref()
            .and_then(|o| crate::jobs::Incremental::of(o).transpose())
        {
            let incremental = incremental.or_raise();
            if let Err(e) = crate::jobs::run::cursor(&incremental, &target_name(target), true) {
                raise(Error::invalid(format!(
                    "options.incremental does not fit the target: {e}"
                )));
            }
        }

        if options
            .as_ref()
            .and_then(crate::jobs::commit_every)
            .is_some()
            && matches!(write, WriteMethod::Replace | WriteMethod::Mirror)
        {
            raise(Error::invalid(
                "options.commit_every works with append and upsert: replace and mirror need the whole run in one transaction",
            ));
        }
        if !write.uses_keys() {
            if key_columns.is_some() {
                raise(Error::invalid(
                    "key_columns are for the upsert and mirror write methods",
                ));
            }
            return None;
        }
        let keys = match key_columns {
            Some(keys) if !keys.is_empty() => keys,
            _ => Spi::get_one_with_args::<Vec<String>>(
                "SELECT array_agg(a.attname::text ORDER BY k.ord)
                 FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE i.indrelid = $1 AND i.indisprimary",
                &[target.into()],
            )
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                raise(
                    Error::invalid(
                        "upsert and mirror need key_columns, and the target has no primary key",
                    )
                    .with_hint("give key_columns, with a unique index on them"),
                )
            }),
        };
        let unique = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_index i
                 WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                   AND i.indnkeyatts = cardinality($2::text[])
                   AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                        WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey[0:i.indnkeyatts - 1]))
                       = (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k))",
            &[target.into(), keys.clone().into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if !unique {
            raise(
                Error::invalid(format!(
                    "{} needs a unique index on ({})",
                    write.name(),
                    keys.join(", ")
                ))
                .with_hint("create one, or give the key_columns of an existing unique index"),
            );
        }
        Some(keys)
    }

    fn target_name(target: pg_sys::Oid) -> String {
        Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[target.into()])
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// The rows a run with commit_every hands to one of its steps (internal).
    #[pg_extern(volatile, parallel_unsafe, name = "_chunk_rows")]
    fn chunk_rows(
        row_type: Option<pgrx::AnyElement>,
        fcinfo: pg_sys::FunctionCallInfo,
    ) -> SetOfIterator<'static, Option<pgrx::AnyElement>> {
        let _ = row_type; // only its type matters
                          // SAFETY: fcinfo is this call's, and the argument exists.
        let typoid = unsafe { pgrx::pg_getarg_type(fcinfo, 0) };
        crate::sql::fetch::chunk_rows(typoid)
    }

    /// Starts a run of job `name` in a background worker running as the job's owner, waits for it
    /// (a cancel stops the worker too), and returns its run_id; run_job reads the run row.
    #[pg_extern(volatile, name = "_run_now")]
    fn run_now(name: &str, trigger: &str) -> i64 {
        // SAFETY: reads a session variable on the backend thread.
        if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
            raise(Error::new(
                SqlState::InvalidTransactionState,
                "run_job needs READ COMMITTED: the run commits in its own transaction",
            ));
        }
        let (job_id, owner) = Spi::get_two_with_args::<i64, pg_sys::Oid>(
            "SELECT job_id, owner FROM apisync.jobs WHERE name = $1",
            &[name.into()],
        )
        .unwrap_or((None, None));
        let (Some(job_id), Some(owner)) = (job_id, owner) else {
            raise(Error::new(
                SqlState::UndefinedObject,
                format!("apisync job \"{name}\" does not exist"),
            ))
        };
        // SAFETY: a catalog lookup on the backend thread.
        if unsafe { pg_sys::superuser_arg(owner) } && !settings::ENABLE_SUPERUSER_JOBS.get() {
            raise(Error::new(
                SqlState::InsufficientPrivilege,
                format!("apisync job \"{name}\" is owned by a superuser, and apisync.enable_superuser_jobs is off"),
            ));
        }
        // SAFETY: reads a session global on the backend thread.
        let pid = unsafe { pg_sys::MyProcPid };
        let (worker, run_id) = start_worker(job_id, name, owner, trigger, Some(pid)).or_raise();
        loop {
            match worker.pid() {
                Err(BackgroundWorkerStatus::Stopped) => break,
                Err(BackgroundWorkerStatus::PostmasterDied) => {
                    raise(Error::internal("the postmaster died during the run"))
                }
                _ => {}
            }
            if crate::interrupt::pending() {
                let _ = worker.terminate();
                pgrx::check_for_interrupts!();
                raise(Error::cancelled());
            }
            crate::interrupt::sleep_on_latch(Duration::from_millis(100));
        }
        run_id
    }
}

pgrx::extension_sql_file!(
    "catalog.sql",
    name = "jobs_catalog",
    requires = ["secrets", check_job, run_now]
);
