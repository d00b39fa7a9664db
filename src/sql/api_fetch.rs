//! `api_fetch` (DESIGN.md §2.1): rows from an API as a set, by the one fetch route.

use pgrx::prelude::*;
use pgrx::{AnyElement, JsonB};

use super::request_args;
use crate::route::{fetch_spec, materialize, materialize_mode, start, Fetch, Requester};
use crate::spec::RequestArgs;

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
SET search_path = pg_catalog, pg_temp
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
    SetOfIterator::new(start_call(fcinfo, args, path, paging.as_ref()))
}

/// `api_fetch`'s call: its spec, and the type of its rows.
fn start_call(
    fcinfo: pg_sys::FunctionCallInfo,
    args: RequestArgs<'_>,
    path: Option<&str>,
    paging: Option<&JsonB>,
) -> Fetch {
    let spec = fetch_spec(args, path, paging.map(|p| &p.0));
    // SAFETY: fcinfo is this call's, and the argument exists.
    let typoid = unsafe { pgrx::pg_getarg_type(fcinfo, ROW_TYPE_ARG) };
    start(spec, typoid, Requester::Caller, None)
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
    // SAFETY: fcinfo is PostgreSQL's.
    unsafe {
        match materialize_mode(fcinfo) {
            Some(rsinfo) => {
                let text = |n| pgrx::pg_getarg::<&str>(fcinfo, n);
                let json = |n| pgrx::pg_getarg::<JsonB>(fcinfo, n);
                let args = request_args(text(0), text(1), json(2), json(4), json(6));
                let mut fetch = start_call(fcinfo, args, text(3), json(5).as_ref());
                materialize(fcinfo, rsinfo, &mut fetch)
            }
            None => api_fetch_wrapper(fcinfo),
        }
    }
}

#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_api_fetch_dispatch() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}
