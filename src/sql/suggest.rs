//! `apisync.suggest_table`, and the sample and inference `create_job(create_target => true)`
//! shares: rows fetched by the one fetch route (with the caller's network privilege), types chosen
//! by trial conversion through the loader's own code (`rows::converts_all`).

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use serde_json::Value;

use super::{raise, OrRaise};
use crate::error::{Error, Result};
use crate::roles::quote;
use crate::route::{start, Requester};
use crate::spec::FetchSpec;
use crate::suggest::{suggest, Suggestion};

/// Rows a sample takes unless `options.max_rows` says otherwise.
const SAMPLE_ROWS: u64 = 1000;

/// `options` for a sample: at most `options.max_rows` (default 1,000) rows, from the first page
/// unless the paging spec or options set `max_pages`. `options.columns` is refused: the sample
/// is what makes it.
pub fn sample_options(options: Value, paging: Option<&Value>) -> Result<Value> {
    let mut options = match options {
        Value::Null => serde_json::Map::new(),
        Value::Object(map) => map,
        // The spec says what is wrong with it.
        other => return Ok(other),
    };
    if options.contains_key("columns") {
        return Err(Error::invalid(
            "options.columns is what the suggestion makes: leave it out of the sample's options",
        ));
    }
    options
        .entry("max_rows")
        .or_insert(Value::from(SAMPLE_ROWS));
    let paged = paging.is_some_and(|p| !p.is_null());
    let pages_given = paging.and_then(|p| p.get("max_pages")).is_some();
    if paged && !pages_given {
        options.entry("max_pages").or_insert(Value::from(1));
    }
    Ok(Value::Object(options))
}

/// The rows of `spec` as the API sent them, fetched for `role` (whose network privilege is
/// checked first).
pub fn sample(spec: FetchSpec, role: Oid) -> Vec<Value> {
    let mut fetch = start(spec, pg_sys::JSONBOID, Requester::Role(role), None);
    fetch.expect_cut();
    let mut rows = Vec::new();
    while let Some(row) = fetch.next_value() {
        rows.push(row);
    }
    rows
}

/// The table for `rows`: each key's type is the first candidate every value converts to.
pub fn infer(rows: &[Value]) -> Suggestion {
    suggest(rows, |sql_type, values| {
        let typoid = crate::sql::read_one::<Oid>(
            "SELECT pg_catalog.to_regtype($1)::pg_catalog.oid",
            &[sql_type.into()],
        )
        .ok()
        .flatten()
        .filter(|oid| *oid != Oid::INVALID)
        .ok_or_else(|| Error::internal(format!("type {sql_type} was not found")))?;
        super::rows::converts_all(typoid, values)
    })
    .or_raise()
}

/// `name` (as `parse_ident` reads it: `users`, `staging."Users"`) quoted part by part.
fn quoted_name(name: &str) -> String {
    let parts =
        crate::sql::read_one::<Vec<String>>("SELECT pg_catalog.parse_ident($1)", &[name.into()])
            .unwrap_or_else(|e| {
                raise(Error::invalid(format!(
                    "invalid table name \"{name}\": {e}"
                )))
            })
            .unwrap_or_default();
    parts.iter().map(|p| quote(p)).collect::<Vec<_>>().join(".")
}

#[pg_schema]
mod apisync {
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use serde_json::Value;

    use super::{infer, quoted_name, sample, sample_options};
    use crate::error::{Error, SqlState};
    use crate::roles::{current_user, quote};
    use crate::route::fetch_spec;
    use crate::sql::{raise, request_args, OrRaise};

    /// A `CREATE TABLE` for the rows of a sample of the API, with the `options.columns` map that
    /// loads them in its comment.
    #[allow(clippy::too_many_arguments)]
    #[pg_extern(
        volatile,
        parallel_unsafe,
        sql = r#"
CREATE FUNCTION apisync.suggest_table(
    target text, url text, method text DEFAULT 'GET', body jsonb DEFAULT NULL,
    path text DEFAULT '$', headers jsonb DEFAULT '{}', paging jsonb DEFAULT NULL,
    options jsonb DEFAULT '{}'
) RETURNS text VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'suggest_table_wrapper';
"#,
        requires = ["bootstrap"]
    )]
    fn suggest_table(
        target: Option<&str>,
        url: Option<&str>,
        method: Option<&str>,
        body: Option<JsonB>,
        path: Option<&str>,
        headers: Option<JsonB>,
        paging: Option<JsonB>,
        options: Option<JsonB>,
    ) -> String {
        let target = target.filter(|t| !t.is_empty()).unwrap_or_else(|| {
            raise(Error::new(
                SqlState::NullValueNotAllowed,
                "suggest_table needs the name of the table to suggest",
            ))
        });
        let table = quoted_name(target);
        let paging = paging.map(|p| p.0);
        let options =
            sample_options(options.map_or(Value::Null, |o| o.0), paging.as_ref()).or_raise();
        let args = request_args(url, method, body, headers, Some(JsonB(options)));
        let spec = fetch_spec(args, path, paging.as_ref(), None);
        let rows = sample(spec, current_user());
        infer(&rows).create_table(&table, quote)
    }
}
