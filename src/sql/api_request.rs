//! `api_request`: one request, the whole response (DESIGN.md §2.2).

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{Map, Value};

use std::num::NonZeroUsize;

use super::{raise, request_args, OrRaise};
use crate::error::Error;
use crate::fetch::{self, Http};
use crate::spec::parse_request;
use crate::{interrupt, settings};

/// Non-2xx statuses are returned, not raised: the caller decides what an error is.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn api_request(
    url: Option<&str>,
    method: default!(Option<&str>, "'GET'"),
    body: default!(Option<JsonB>, "NULL"),
    headers: default!(Option<JsonB>, "'{}'"),
    options: default!(Option<JsonB>, "'{}'"),
    fcinfo: pg_sys::FunctionCallInfo,
) -> pgrx::composite_type!('static, "api_response") {
    let args = request_args(url, method, body, headers, options);
    let spec = crate::route::may_request()
        .and_then(|()| settings::limits())
        .and_then(|limits| parse_request(args, &limits))
        .or_raise();
    let http = Http::get().or_raise();
    let client = http.client(&spec.policy).or_raise();
    let progress = crate::shmem::Progress::start(crate::shmem::Started {
        kind: crate::shmem::Kind::ApiRequest,
        // SAFETY: reads the session's current user on the backend thread.
        role: unsafe { pg_sys::GetUserId() },
        run_id: None,
        url: &spec.shown_url(),
        sets: None,
    });
    let response = interrupt::wait(&http.runtime, fetch::send(&client, &spec))
        .and_then(|sent| sent)
        .or_raise();
    if let Some(progress) = &progress {
        let step = crate::route::FetchStats {
            requests: u64::from(response.attempts),
            pages: 1,
            bytes: response.body.len() as u64,
            ..Default::default()
        };
        progress.count(&step, None);
    }

    let body_json = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .map(JsonB);
    let body = text_without_nul(String::from_utf8_lossy(&response.body).into_owned());
    let filled = (|| -> Result<_, Box<dyn std::error::Error>> {
        let mut row = PgHeapTuple::new_composite_type_by_oid(result_type(fcinfo))?;
        row.set_by_index(STATUS, i32::from(response.status))?;
        row.set_by_index(HEADERS, JsonB(headers_json(&response.headers)))?;
        row.set_by_index(BODY, body)?;
        row.set_by_index(BODY_JSON, body_json)?;
        row.set_by_index(FINAL_URL, response.final_url)?;
        row.set_by_index(ELAPSED_MS, response.elapsed.as_secs_f64() * 1000.0)?;
        Ok(row)
    })();
    filled
        .map_err(|e| Error::internal(format!("the response does not fit api_response: {e}")))
        .or_raise()
}

/// The attributes of `api_response`, 1-based as `set_by_index` wants them.
const STATUS: NonZeroUsize = NonZeroUsize::MIN;
const HEADERS: NonZeroUsize = STATUS.saturating_add(1);
const BODY: NonZeroUsize = STATUS.saturating_add(2);
const BODY_JSON: NonZeroUsize = STATUS.saturating_add(3);
const FINAL_URL: NonZeroUsize = STATUS.saturating_add(4);
const ELAPSED_MS: NonZeroUsize = STATUS.saturating_add(5);

/// The OID of `api_response` in whatever schema the extension was created in.
fn result_type(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Oid {
    let mut typoid = pg_sys::Oid::INVALID;
    // SAFETY: fcinfo is this call's; a composite result type is declared for the function.
    let class = unsafe { pg_sys::get_call_result_type(fcinfo, &mut typoid, std::ptr::null_mut()) };
    if class != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE {
        raise(Error::internal(
            "api_request must return the composite type api_response",
        ));
    }
    typoid
}

/// Header names (lower case) to values; a repeated header's values are joined with ", "
/// (RFC 9110 §5.3).
fn headers_json(headers: &crate::fetch::HeaderMap) -> Value {
    let mut object = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        object.insert(name.as_str().to_string(), Value::String(joined));
    }
    Value::Object(object)
}

/// text cannot hold NUL: a binary body shows U+FFFD in its place.
fn text_without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}
