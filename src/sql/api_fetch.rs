//! `api_fetch` (DESIGN.md §2.1): rows from an API as a set, by the one fetch route.

use pgrx::prelude::*;
use pgrx::{AnyElement, JsonB};

use super::{request_args, OrRaise};
use crate::route::{fetch_spec, materialize, materialize_mode, start, Fetch, Requester};
use crate::spec::RequestArgs;

/// The position of `row_type` among the arguments: its type is the type of the rows.
const ROW_TYPE_ARG: usize = 7;
/// The position of `params`, read from the call as JSON text (`params_text`).
const PARAMS_ARG: usize = 8;

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
    row_type anyelement DEFAULT NULL::jsonb,
    params jsonb DEFAULT NULL
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
    // `params` (after row_type) is read from fcinfo as text: see `params_text`.
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
    // SAFETY: fcinfo is this call's.
    let params = unsafe { params_text(fcinfo) }
        .map(crate::spec::ParamSets::parse)
        .transpose()
        .or_raise();
    let spec = fetch_spec(args, path, paging.map(|p| &p.0), params);
    // SAFETY: fcinfo is this call's, and the argument exists.
    let typoid = unsafe { pgrx::pg_getarg_type(fcinfo, ROW_TYPE_ARG) };
    start(spec, typoid, Requester::Caller, None)
}

/// `params` as the JSON text it holds, never as a JSON tree: a hundred thousand small sets as
/// JSON values would take many times their text.
///
/// # Safety
/// fcinfo is an `api_fetch` call.
unsafe fn params_text(fcinfo: pg_sys::FunctionCallInfo) -> Option<String> {
    // SAFETY: as the caller promises; the argument is a jsonb when not NULL.
    unsafe {
        if ((*fcinfo).nargs as usize) <= PARAMS_ARG || pgrx::pg_arg_is_null(fcinfo, PARAMS_ARG) {
            return None;
        }
        let datum = pgrx::pg_getarg_datum_raw(fcinfo, PARAMS_ARG);
        let detoasted = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        let text = pgrx::direct_function_call::<&std::ffi::CStr>(
            pg_sys::jsonb_out,
            &[Some(detoasted.into())],
        )?;
        let owned = text.to_string_lossy().into_owned();
        pg_sys::pfree(text.as_ptr() as *mut std::ffi::c_void);
        Some(owned)
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
