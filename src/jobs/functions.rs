//! The SQL face of jobs: create_job, alter_job, drop_job, run_job. Each captures its caller (an
//! OID), checks as the caller, and only then writes the catalog as its owner.

use pgrx::pg_sys::Oid;
use pgrx::prelude::*;

use super::target::Target;
use super::{JobArgs, JobSpec};
use crate::error::{Error, Result};
use crate::oauth::{access_token, Tokens};
use crate::route::fetch_spec;
use crate::spec::{FetchSpec, RequestArgs};
use crate::sql::rows::RowMaker;
use crate::sql::secrets;

/// A job checked as a run will use it: the spec, the target, the keys of the write method.
pub struct Checked {
    pub spec: JobSpec,
    pub target: Target,
    pub keys: Option<Vec<String>>,
}

/// Checks `args` for a job of `owner` writing `target`, by the same code at create_job, alter_job
/// and each run: the spec, the owner's network privilege, the target and the owner's rights on
/// it, the keys, the fetch spec with the owner's secrets, the columns and the incremental cursor.
/// An OAuth2 refresh token is not exchanged here: a run exchanges it when it fetches.
pub fn check(owner: Oid, target: Oid, args: JobArgs) -> Result<Checked> {
    let spec = JobSpec::parse(args)?;
    crate::roles::require_network_privilege(owner)?;
    let target = Target::inspect(target)?;
    target.check_writer(owner, spec.write)?;
    let keys = target.keys(spec.write, spec.args.key_columns.as_deref())?;
    // With for_each, the request is checked with one set of its columns (each "x"): a template
    // name the query does not give is an error here, before any run.
    let params = match &spec.options.for_each {
        Some(query) => {
            // The incremental cursor joins every set under its param's name.
            let cursor = spec.options.incremental.as_ref().map(|i| i.param.clone());
            let placeholder: serde_json::Map<String, serde_json::Value> =
                super::for_each::columns(query)?
                    .into_iter()
                    .chain(cursor)
                    .map(|column| (column, serde_json::Value::from("x")))
                    .collect();
            Some(crate::spec::ParamSets::for_each(
                serde_json::Value::Array(vec![placeholder.into()]).to_string(),
            )?)
        }
        None => None,
    };
    let fetch = build_fetch_spec(owner, &spec, None, params, Tokens::CheckOnly);
    RowMaker::new(target.rowtype, fetch.columns.clone())?;
    if let Some(incremental) = &spec.options.incremental {
        super::run::cursor(incremental, &target.name, true).map_err(|e| {
            Error::invalid(format!("options.incremental does not fit the target: {e}"))
        })?;
    }
    Ok(Checked { spec, target, keys })
}

/// A run's request where it differs from the stored one: the URL, body and options carrying an
/// incremental cursor.
pub struct FetchRequest {
    pub url: String,
    pub body: Option<serde_json::Value>,
    pub options: serde_json::Value,
}

/// The fetch spec of a job for `owner` (whose secrets it uses), with `request` in place of the
/// stored one when given, and `params` (a for_each's rows); `tokens` says whether an OAuth2
/// refresh token is exchanged (to fetch) or not (to check).
pub fn build_fetch_spec(
    owner: Oid,
    spec: &JobSpec,
    request: Option<FetchRequest>,
    params: Option<crate::spec::ParamSets>,
    tokens: Tokens,
) -> FetchSpec {
    let args = &spec.args;
    let request = request.unwrap_or_else(|| FetchRequest {
        url: args.url.clone(),
        body: args.body.clone(),
        options: spec.fetch_options.clone(),
    });
    let (url, body) = (request.url, request.body);
    let options = Some(request.options);
    let names = crate::spec::secret_names(options.as_ref());
    let secrets = secrets::lookup(owner, &names);
    let access_token = access_token(owner, options.as_ref(), &secrets, tokens);
    let request = RequestArgs {
        url: Some(&url),
        method: Some(&args.method),
        body,
        headers: Some(args.headers.clone()),
        options,
        secrets,
        access_token,
    };
    fetch_spec(request, Some(&args.path), args.paging.as_ref(), params)
}

#[pg_schema]
mod apisync {
    use pgrx::pg_sys::{self, Oid};
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use serde_json::json;

    use super::super::catalog::{self, JobRow};
    use super::super::JobArgs;
    use super::check;
    use crate::error::{Error, SqlState};
    use crate::roles::{current_user, is_superuser, role_name, with_pinned_search_path};
    use crate::sql::{raise, require_utf8, OrRaise};

    #[allow(clippy::too_many_arguments)]
    #[pg_extern(
        volatile,
        sql = r#"
CREATE FUNCTION apisync.create_job(
    name text, target text, url text, method text DEFAULT 'GET', body jsonb DEFAULT NULL,
    path text DEFAULT '$', headers jsonb DEFAULT '{}', paging jsonb DEFAULT NULL,
    options jsonb DEFAULT '{}', write_method text DEFAULT 'append', key_columns text[] DEFAULT NULL,
    schedule text DEFAULT NULL, enabled boolean DEFAULT true, create_target boolean DEFAULT false
) RETURNS bigint VOLATILE
LANGUAGE c AS 'MODULE_PATHNAME', 'create_job_wrapper';
"#,
        requires = ["bootstrap"]
    )]
    fn create_job(
        name: Option<&str>,
        target: Option<&str>,
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
        enabled: Option<bool>,
        create_target: Option<bool>,
    ) -> i64 {
        require_utf8();
        // The target is named by the caller's search_path; everything after runs with the pinned
        // one (no SET clause: it would hide the caller's).
        let target = target.filter(|t| !t.is_empty()).unwrap_or_else(|| {
            raise(Error::new(
                SqlState::NullValueNotAllowed,
                "create_job needs a target table",
            ))
        });
        let named = super::super::create_target::resolve(target).or_raise();
        let create_target = create_target.unwrap_or(false);
        if named.oid.is_none() && !create_target {
            raise(
                Error::new(
                    SqlState::from_code("42P01"),
                    format!("relation \"{target}\" does not exist"),
                )
                .with_hint(
                    "create the table first (apisync.suggest_table writes one for the API), or pass create_target => true",
                ),
            );
        }
        with_pinned_search_path(|| {
            create(
                &named,
                create_target,
                name,
                [url, method, path, write_method, schedule],
                [body, headers, paging, options],
                key_columns,
                enabled,
            )
        })
    }

    /// create_job after its target was named, with the pinned search_path.
    #[allow(clippy::too_many_arguments)]
    fn create(
        named: &super::super::create_target::Named,
        create_target: bool,
        name: Option<&str>,
        [url, method, path, write_method, schedule]: [Option<&str>; 5],
        [body, headers, paging, options]: [Option<JsonB>; 4],
        key_columns: Option<Vec<String>>,
        enabled: Option<bool>,
    ) -> i64 {
        let owner = current_user();
        let required = |value: Option<&str>, what: &str| -> String {
            value.map(str::to_string).unwrap_or_else(|| {
                raise(Error::new(
                    SqlState::NullValueNotAllowed,
                    format!("create_job needs a {what}"),
                ))
            })
        };
        let name = required(name, "name");
        if name.is_empty() {
            raise(Error::invalid("a job needs a name"));
        }
        let mut args = JobArgs {
            url: required(url, "url"),
            method: method.unwrap_or("GET").to_string(),
            body: body.map(|b| b.0),
            path: path.unwrap_or("$").to_string(),
            headers: headers.map_or(json!({}), |h| h.0),
            paging: paging.map(|p| p.0),
            options: options.map_or(json!({}), |o| o.0),
            write_method: write_method.unwrap_or("append").to_string(),
            key_columns,
            schedule: schedule.map(str::to_string),
        };
        let target = match (named.oid, create_target) {
            (Some(oid), false) => oid,
            _ => super::super::create_target::create_or_match(named, owner, &mut args).or_raise(),
        };
        let mut checked = check(owner, target, args).or_raise();
        checked.spec.args.key_columns = checked.keys.take();
        catalog::insert(&JobRow {
            job_id: 0,
            name,
            owner,
            target,
            args: checked.spec.args,
            enabled: enabled.unwrap_or(true),
        })
        .or_raise()
    }

    /// Changes the arguments given (NULL leaves one as it is), checked as create_job checks them.
    /// A superuser may hand the job to another owner.
    #[allow(clippy::too_many_arguments)]
    #[pg_extern(
        volatile,
        sql = r#"
CREATE FUNCTION apisync.alter_job(
    name text, target regclass DEFAULT NULL, url text DEFAULT NULL, method text DEFAULT NULL,
    body jsonb DEFAULT NULL, path text DEFAULT NULL, headers jsonb DEFAULT NULL,
    paging jsonb DEFAULT NULL, options jsonb DEFAULT NULL, write_method text DEFAULT NULL,
    key_columns text[] DEFAULT NULL, schedule text DEFAULT NULL, enabled boolean DEFAULT NULL,
    owner regrole DEFAULT NULL
) RETURNS void VOLATILE
SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'alter_job_wrapper';
"#,
        requires = ["bootstrap"]
    )]
    fn alter_job(
        name: &str,
        target: Option<Oid>,
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
        enabled: Option<bool>,
        owner: Option<Oid>,
    ) {
        require_utf8();
        let caller = current_user();
        let mut job = catalog::find(name, caller).or_raise();
        if let Some(owner) = owner.filter(|o| *o != job.owner) {
            if !is_superuser(caller) {
                raise(Error::new(
                    SqlState::InsufficientPrivilege,
                    "only a superuser may hand a job to another owner",
                ));
            }
            if role_name(owner).is_none() {
                raise(Error::new(
                    SqlState::UndefinedObject,
                    format!("role with OID {} does not exist", owner.to_u32()),
                ));
            }
            job.owner = owner;
        }
        let args = &mut job.args;
        let set = |field: &mut String, value: Option<&str>| {
            if let Some(value) = value {
                *field = value.to_string();
            }
        };
        set(&mut args.url, url);
        set(&mut args.method, method);
        set(&mut args.path, path);
        if let Some(body) = body {
            args.body = Some(body.0);
        }
        if let Some(headers) = headers {
            args.headers = headers.0;
        }
        if let Some(paging) = paging {
            args.paging = Some(paging.0);
        }
        if let Some(options) = options {
            args.options = options.0;
        }
        // Keys follow the write method unless given: the check derives them again.
        if write_method.is_some() && key_columns.is_none() {
            args.key_columns = None;
        }
        set(&mut args.write_method, write_method);
        if key_columns.is_some() {
            args.key_columns = key_columns;
        }
        if let Some(schedule) = schedule {
            args.schedule = Some(schedule.to_string());
        }
        if let Some(enabled) = enabled {
            job.enabled = enabled;
        }
        if let Some(target) = target {
            job.target = target;
        }
        let mut checked = check(job.owner, job.target, job.args.clone()).or_raise();
        job.args = checked.spec.args;
        job.args.key_columns = checked.keys.take();
        catalog::update(&job).or_raise();
    }

    #[pg_extern(volatile, requires = ["bootstrap"])]
    #[search_path(pg_catalog, pg_temp)]
    fn drop_job(name: &str) {
        let job = catalog::find(name, current_user()).or_raise();
        catalog::delete(job.job_id).or_raise();
    }

    /// Runs the job now, in a background worker with its owner's rights; returns its run row. A
    /// failed run is recorded, then raised with its SQLSTATE (so pg_cron records it too).
    #[pg_extern(
        volatile,
        sql = r#"
CREATE FUNCTION apisync.run_job(name text) RETURNS apisync.job_runs VOLATILE
SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'run_job_wrapper';
"#,
        requires = ["bootstrap"]
    )]
    fn run_job(name: &str) -> pgrx::composite_type!('static, "job_runs") {
        let job = catalog::find(name, current_user()).or_raise();
        let run_id = crate::jobs::run::run_and_wait(&job).or_raise();
        let row = Spi::get_one_with_args::<PgHeapTuple<'static, AllocatedByRust>>(
            "SELECT r FROM apisync.job_runs r
             WHERE r.run_id OPERATOR(pg_catalog.=) $1 AND r.job_id OPERATOR(pg_catalog.=) $2",
            &[run_id.into(), job.job_id.into()],
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            raise(
                Error::internal(format!(
                    "apisync job \"{name}\": the run worker ended without recording run {run_id}"
                ))
                .with_hint("see the server log"),
            )
        });
        let text = |column: &str| row.get_by_name::<String>(column).ok().flatten();
        match text("status").as_deref() {
            Some("failed") => {
                let sqlstate = text("sqlstate").unwrap_or_else(|| "XX000".into());
                raise(Error::new(
                    SqlState::from_code(&sqlstate),
                    format!(
                        "apisync job \"{name}\" (run {run_id}) failed: {}",
                        text("error").unwrap_or_default()
                    ),
                ))
            }
            Some("running") => raise(Error::new(
                SqlState::from_code("57P01"),
                format!("apisync job \"{name}\" (run {run_id}) was interrupted: its worker ended before the run finished"),
            )),
            Some("skipped") => notice!(
                "apisync job \"{name}\" is running already: this run was skipped"
            ),
            _ => {}
        }
        if let Some(cut_by) = text("cut_by") {
            warning!(
                "apisync job \"{name}\" (run {run_id}) wrote what it fetched, but {cut_by} cut the fetch while the API had more"
            );
        }
        row
    }

    /// The progress lines ("apisync run N: P pages, R rows, B bytes so far") of the running runs
    /// the caller may see (row-level security on job_runs). Run workers connect as the bootstrap
    /// superuser, whose pg_stat_activity rows other roles cannot read, so the lines are read from
    /// the backends' status directly, for those workers only.
    #[pg_extern(volatile, name = "_run_progress")]
    #[search_path(pg_catalog, pg_temp)]
    fn run_progress() -> TableIterator<'static, (name!(pid, i32), name!(progress, String))> {
        let visible = Spi::connect(|client| {
            client
                .select(
                    "SELECT pid FROM apisync.job_runs
                     WHERE status OPERATOR(pg_catalog.=) 'running' AND pid IS NOT NULL",
                    None,
                    &[],
                )?
                .map(|row| row.get::<i32>(1))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|e| raise(Error::internal(format!("could not read job_runs: {e}"))));
        let mut lines = Vec::new();
        // SAFETY: this backend's snapshot of the backends' status, read on the backend thread;
        // the activity text is clipped into a palloc'd copy before it is read.
        unsafe {
            for id in 1..=pg_sys::pgstat_fetch_stat_numbackends() {
                let entry = pg_sys::pgstat_fetch_stat_local_beentry(id);
                if entry.is_null() {
                    continue;
                }
                let status = &(*entry).backendStatus;
                if !visible.contains(&Some(status.st_procpid)) || status.st_activity_raw.is_null() {
                    continue;
                }
                let clipped = pg_sys::pgstat_clip_activity(status.st_activity_raw);
                let text = std::ffi::CStr::from_ptr(clipped)
                    .to_string_lossy()
                    .into_owned();
                lines.push((status.st_procpid, text));
            }
        }
        TableIterator::new(lines)
    }

    /// The rows of the run this process is running: only a run's own statements read them;
    /// anywhere else it is an error. Executable by PUBLIC because those statements run with the
    /// job owner's rights.
    /// # Safety
    /// Called by PostgreSQL as a version-1 C function.
    #[pg_guard]
    #[no_mangle]
    pub unsafe extern "C-unwind" fn apisync_job_rows(
        fcinfo: pg_sys::FunctionCallInfo,
    ) -> pg_sys::Datum {
        // SAFETY: fcinfo is PostgreSQL's.
        unsafe { crate::route::lent_rows(fcinfo) }
    }

    #[no_mangle]
    #[doc(hidden)]
    pub extern "C" fn pg_finfo_apisync_job_rows() -> &'static pg_sys::Pg_finfo_record {
        const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
        &V1
    }
}

// Runs in flight, with the progress their worker reports; each role sees its own runs.
pgrx::extension_sql!(
    r#"
CREATE VIEW apisync.job_progress WITH (security_invoker = true) AS
    SELECT r.run_id, r.job_name, r.started_at, p.progress
    FROM apisync.job_runs r
    LEFT JOIN apisync._run_progress() p ON p.pid OPERATOR(pg_catalog.=) r.pid
    WHERE r.status OPERATOR(pg_catalog.=) 'running';
GRANT SELECT ON apisync.job_progress TO PUBLIC;
"#,
    name = "job_progress",
    requires = ["bootstrap", run_progress]
);

// The morning status: per job its schedule, when the scheduler starts it next, its last run
// (skipped runs aside) and how many runs failed since the last success; each role sees its own
// jobs.
pgrx::extension_sql!(
    r#"
CREATE VIEW apisync.job_status WITH (security_invoker = true) AS
    SELECT j.job_id, j.name, j.owner, j.target, j.write_method, j.schedule, j.enabled,
           n.next_run,
           l.run_id AS last_run_id, l.trigger AS last_trigger, l.status AS last_status,
           l.started_at AS last_started_at, l.finished_at AS last_finished_at,
           l.finished_at OPERATOR(pg_catalog.-) l.started_at AS last_duration,
           l.rows_fetched AS last_rows_fetched,
           l.rows_inserted OPERATOR(pg_catalog.+) l.rows_updated OPERATOR(pg_catalog.+) l.rows_deleted AS last_rows_written,
           l.error AS last_error, l.sqlstate AS last_sqlstate,
           s.finished_at AS last_success_at,
           (SELECT pg_catalog.count(*) FROM apisync.job_runs f
            WHERE f.job_id OPERATOR(pg_catalog.=) j.job_id AND f.status OPERATOR(pg_catalog.=) 'failed'
              AND f.run_id OPERATOR(pg_catalog.>) coalesce(s.run_id, 0)) AS consecutive_failures
    FROM apisync.jobs j
    LEFT JOIN LATERAL (
        SELECT r.* FROM apisync.job_runs r
        WHERE r.job_id OPERATOR(pg_catalog.=) j.job_id AND r.status OPERATOR(pg_catalog.<>) 'skipped'
        ORDER BY r.run_id DESC LIMIT 1) l ON true
    LEFT JOIN LATERAL (
        SELECT r.run_id, r.finished_at FROM apisync.job_runs r
        WHERE r.job_id OPERATOR(pg_catalog.=) j.job_id AND r.status OPERATOR(pg_catalog.=) 'succeeded'
        ORDER BY r.run_id DESC LIMIT 1) s ON true
    LEFT JOIN apisync.job_schedule n ON n.job_id OPERATOR(pg_catalog.=) j.job_id;
GRANT SELECT ON apisync.job_status TO PUBLIC;
"#,
    name = "job_status",
    requires = ["bootstrap"]
);

pgrx::extension_sql!(
    r#"
CREATE FUNCTION apisync._job_rows(row_type anyelement) RETURNS SETOF anyelement
VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'apisync_job_rows';
"#,
    name = "job_rows",
    requires = ["bootstrap"]
);
