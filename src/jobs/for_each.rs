//! A job's `options.for_each`: one read-only SELECT, run with the owner's rights in the run's
//! transaction (so it sees what the run sees, and can read the target); each of its rows is a
//! parameter set of the run's fetch, column name → key.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use serde_json::Value;

use crate::error::{Error, Result, SqlState};
use crate::roles::quote;
use crate::spec::ParamSets;

/// The query must be exactly one plain SELECT (no `INTO`): checked on its own parse tree, before
/// it is wrapped and run.
fn check_select(query: &str) -> Result<CString> {
    let text = CString::new(query)
        .map_err(|_| Error::invalid("options.for_each contains a NUL character"))?;
    // SAFETY: the raw parser on a C string, on the backend thread; a syntax error is an ERROR.
    let one_select = unsafe {
        let list = pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list.is_null() || (*list).length != 1 {
            false
        } else {
            let raw = (*(*list).elements).ptr_value.cast::<pg_sys::RawStmt>();
            let stmt = (*raw).stmt;
            !stmt.is_null()
                && (*stmt).type_ == pg_sys::NodeTag::T_SelectStmt
                && (*stmt.cast::<pg_sys::SelectStmt>()).intoClause.is_null()
        }
    };
    if !one_select {
        return Err(Error::invalid(
            "options.for_each must be one SELECT statement (without INTO)",
        ));
    }
    Ok(text)
}

/// Runs `sql` read-only (SPI refuses anything that writes) and returns its one text value.
fn read_only_text(sql: &str) -> Result<Option<String>> {
    let sql = CString::new(sql).map_err(|_| Error::invalid("a NUL character in the query"))?;
    pgrx::spi::Spi::connect(|_| {
        // SAFETY: SPI is connected; the result is read before the connection closes.
        unsafe {
            let rc = pg_sys::SPI_execute(sql.as_ptr(), true, 1);
            if rc != pg_sys::SPI_OK_SELECT as i32 || pg_sys::SPI_processed < 1 {
                return Err(Error::new(
                    SqlState::Internal,
                    format!("options.for_each did not run as a SELECT (SPI code {rc})"),
                ));
            }
            let table = pg_sys::SPI_tuptable;
            let value = pg_sys::SPI_getvalue(*(*table).vals, (*table).tupdesc, 1);
            Ok((!value.is_null()).then(|| CStr::from_ptr(value).to_string_lossy().into_owned()))
        }
    })
}

/// The names of the query's columns (it runs on no rows): the keys of its parameter sets, each
/// once.
pub fn columns(query: &str) -> Result<Vec<String>> {
    check_select(query)?;
    let probe = format!("SELECT * FROM (\n{query}\n) q LIMIT 0");
    let names = pgrx::spi::Spi::connect(|client| {
        let described = client.select(probe.as_str(), Some(0), &[])?;
        let count = described.columns()?;
        (1..=count)
            .map(|i| described.column_name(i))
            .collect::<std::result::Result<Vec<_>, _>>()
    })
    .map_err(|e| Error::invalid(format!("options.for_each: {e}")))?;
    if let Some((i, name)) = names
        .iter()
        .enumerate()
        .find(|(i, name)| names[..*i].contains(name))
    {
        return Err(Error::invalid(format!(
            "options.for_each returns two columns named \"{name}\" (column {}): a parameter set \
             has one value per name; give the columns distinct names",
            i + 1
        )));
    }
    Ok(names)
}

/// The query's row `q` as a jsonb object, column by column. Not `to_jsonb(q)`: Citus hands a
/// whole-row reference over a distributed table back with its columns renamed f1, f2, … when it
/// pushes the query down to its workers. jsonb_build_object takes at most 50 pairs, so wide rows
/// are joined from several.
fn object_of(names: &[String]) -> String {
    if names.is_empty() {
        return "'{}'::pg_catalog.jsonb".into();
    }
    names
        .chunks(50)
        .map(|chunk| {
            let pairs: Vec<String> = chunk
                .iter()
                .map(|name| format!("{}::text, q.{}", literal(name), quote(name)))
                .collect();
            format!("pg_catalog.jsonb_build_object({})", pairs.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" OPERATOR(pg_catalog.||) ")
}

/// The parameter sets of a run: the query's rows as JSON objects, each with `extra` (the
/// incremental cursor) joined.
pub fn sets(query: &str, extra: Option<(&str, &Value)>) -> Result<ParamSets> {
    let object = object_of(&columns(query)?);
    let join = match extra {
        Some((name, value)) => format!(
            " OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object({}::text, {}::jsonb)",
            literal(name),
            literal(&value.to_string())
        ),
        None => String::new(),
    };
    let sql = format!(
        "SELECT COALESCE(pg_catalog.jsonb_agg({object}{join}), '[]'::pg_catalog.jsonb)::pg_catalog.text
         FROM (\n{query}\n) q"
    );
    let text = read_only_text(&sql)?.unwrap_or_else(|| "[]".into());
    ParamSets::for_each(text)
}

/// A SQL string literal of `text`, by the server's own quoting.
fn literal(text: &str) -> String {
    let Ok(c_text) = CString::new(text) else {
        crate::sql::raise(Error::invalid("a NUL character in a parameter"))
    };
    // SAFETY: quote_literal_cstr returns a palloc'd C string.
    unsafe {
        CStr::from_ptr(pg_sys::quote_literal_cstr(c_text.as_ptr()))
            .to_string_lossy()
            .into_owned()
    }
}
