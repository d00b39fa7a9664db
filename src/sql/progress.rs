//! `apisync.fetch_progress`: the fetches in flight on the server, from shared memory, as
//! `pg_stat_progress_copy` shows copies.

use pgrx::prelude::*;

pgrx::extension_sql!(
    r#"
CREATE VIEW apisync.fetch_progress AS
    SELECT p.pid, d.datname, p.role::pg_catalog.regrole AS role, p.kind, p.run_id, p.started, p.url,
           p.state, p.param_sets_done, p.param_sets_total, p.pages, p.rows, p.bytes, p.requests,
           p.retries, p.requests_in_flight, p.network_ms, p.converting_ms
    FROM apisync._fetch_progress() p
    LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) p.database;
GRANT SELECT ON apisync.fetch_progress TO PUBLIC;
"#,
    name = "fetch_progress",
    requires = [fetch_progress_rows]
);

#[pg_schema]
mod apisync {
    use pgrx::prelude::*;

    use crate::error::{Error, SqlState};
    use crate::sql::raise;

    /// The fetches in flight that the caller may see: its own (its roles', a run's owner being
    /// the run's role) and, for superusers and members of pg_read_all_stats, every one — the
    /// rule of pg_stat_activity.
    #[allow(clippy::type_complexity)] // the view's columns, as pgrx needs them spelled out
    #[pg_extern(volatile, name = "_fetch_progress")]
    #[search_path(pg_catalog, pg_temp)]
    fn fetch_progress_rows() -> TableIterator<
        'static,
        (
            name!(pid, i32),
            name!(database, pg_sys::Oid),
            name!(role, pg_sys::Oid),
            name!(kind, &'static str),
            name!(run_id, Option<i64>),
            name!(started, Option<TimestampWithTimeZone>),
            name!(url, String),
            name!(state, &'static str),
            name!(param_sets_done, Option<i64>),
            name!(param_sets_total, Option<i64>),
            name!(pages, i64),
            name!(rows, i64),
            name!(bytes, i64),
            name!(requests, i64),
            name!(retries, i64),
            name!(requests_in_flight, i32),
            name!(network_ms, f64),
            name!(converting_ms, f64),
        ),
    > {
        let Some(fetches) = crate::shmem::fetches() else {
            raise(
                Error::new(
                    SqlState::from_code("55000"),
                    "apisync.fetch_progress needs pg_apisync in shared_preload_libraries",
                )
                .with_hint("add pg_apisync to shared_preload_libraries and restart the server"),
            )
        };
        // SAFETY: role lookups of this backend's current user, on the backend thread.
        let (user, all) = unsafe {
            let user = pg_sys::GetUserId();
            let all =
                pg_sys::has_privs_of_role(user, pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS));
            (user, all)
        };
        let rows: Vec<_> = fetches
            .into_iter()
            // SAFETY: a role lookup on the backend thread.
            .filter(|f| all || unsafe { pg_sys::has_privs_of_role(user, f.role) })
            .map(|f| {
                (
                    f.pid,
                    f.database,
                    f.role,
                    f.kind,
                    f.run_id,
                    TimestampWithTimeZone::try_from(f.started).ok(),
                    f.url,
                    f.state,
                    f.sets_done,
                    f.sets_total,
                    f.pages,
                    f.rows,
                    f.bytes,
                    f.requests,
                    f.retries,
                    f.requests_in_flight,
                    f.network_ms,
                    f.rows_ms,
                )
            })
            .collect();
        TableIterator::new(rows)
    }
}
