//! `create_job`'s target by name: found by the caller's search_path, or — with
//! `create_target => true` — made from a sample of the job's own fetch (`suggest_table`'s
//! inference), in the job's transaction and owned by the caller; an existing table must have the
//! shape the sample suggests.

use std::ffi::{CStr, CString};

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use serde_json::Value;

use super::functions::{build_fetch_spec, FetchRequest};
use super::{JobArgs, JobSpec};
use crate::error::{Error, Result, SqlState};
use crate::oauth::Tokens;
use crate::roles::quote;
use crate::sql::suggest::{infer, sample, sample_options};
use crate::suggest::Suggestion;

/// A table as its caller named it.
pub struct Named {
    /// `None`: no such table (yet).
    pub oid: Option<Oid>,
    /// Schema-qualified and quoted: where it is, or where `CREATE TABLE` would put it.
    pub qualified: String,
    /// As given, for messages.
    pub given: String,
}

/// Finds the table `name` (`users`, `staging."Users"`) by the current search_path: call before
/// pinning it.
pub fn resolve(name: &str) -> Result<Named> {
    let c_name = CString::new(name)
        .map_err(|_| Error::invalid("the target name contains a NUL character"))?;
    // SAFETY: the parser's own name functions on the backend thread; they raise on a bad name or
    // a missing schema, as CREATE TABLE would.
    let (oid, schema, relation) = unsafe {
        let names = pg_sys::stringToQualifiedNameList(c_name.as_ptr());
        let range = pg_sys::makeRangeVarFromNameList(names);
        let oid = pg_sys::RangeVarGetRelidExtended(
            range,
            pg_sys::NoLock as _,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        );
        let namespace = if oid == Oid::INVALID {
            pg_sys::RangeVarGetCreationNamespace(range)
        } else {
            pg_sys::get_rel_namespace(oid)
        };
        let schema = pg_sys::get_namespace_name(namespace);
        (
            oid,
            CStr::from_ptr(schema).to_string_lossy().into_owned(),
            CStr::from_ptr((*range).relname)
                .to_string_lossy()
                .into_owned(),
        )
    };
    Ok(Named {
        oid: (oid != Oid::INVALID).then_some(oid),
        qualified: format!("{}.{}", quote(&schema), quote(&relation)),
        given: name.to_string(),
    })
}

/// The table `named` for the job `args` of `owner`: made from a sample of its fetch when it does
/// not exist, checked against the sample when it does. The columns map that loads it goes into
/// the job's `options.columns`.
pub fn create_or_match(named: &Named, owner: Oid, args: &mut JobArgs) -> Result<Oid> {
    let spec = JobSpec::parse(args.clone())?;
    if spec.options.for_each.is_some() {
        return Err(Error::not_supported(
            "create_target cannot sample a for_each job: its requests need the query's rows",
        )
        .with_hint(
            "create the table with apisync.suggest_table on one of its URLs, then the job",
        ));
    }
    let request = FetchRequest {
        url: args.url.clone(),
        body: args.body.clone(),
        options: sample_options(spec.fetch_options.clone(), args.paging.as_ref())?,
    };
    let spec = build_fetch_spec(owner, &spec, Some(request), None, Tokens::Exchange);
    let rows = sample(spec, owner);
    let suggestion = infer(&rows);
    let oid = match named.oid {
        Some(oid) => {
            same_shape(oid, named, &suggestion)?;
            oid
        }
        None => {
            crate::sql::run(&suggestion.create_table(&named.qualified, quote), &[]).map_err(
                |e| Error::internal(format!("could not create {}: {e}", named.qualified)),
            )?;
            resolve(&named.qualified)?
                .oid
                .ok_or_else(|| Error::internal("the created target was not found"))?
        }
    };
    let map = suggestion.columns_map();
    if !map.is_empty() {
        if let Value::Object(options) = &mut args.options {
            options.insert("columns".into(), Value::Object(map));
        }
    }
    Ok(oid)
}

/// An existing table is accepted when its columns are the suggested ones (names and types, in any
/// order).
fn same_shape(oid: Oid, named: &Named, suggestion: &Suggestion) -> Result<()> {
    let columns: Vec<(String, String)> = Spi::connect(|client| {
        client
            .select(
                "SELECT attname::pg_catalog.text, pg_catalog.format_type(atttypid, atttypmod)
                 FROM pg_catalog.pg_attribute
                 WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attnum OPERATOR(pg_catalog.>) 0
                   AND NOT attisdropped ORDER BY attnum",
                None,
                &[oid.into()],
            )?
            .map(|row| {
                Ok((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<String>(2)?.unwrap_or_default(),
                ))
            })
            .collect::<std::result::Result<Vec<_>, pgrx::spi::Error>>()
    })
    .map_err(|e| Error::internal(format!("could not read the target's columns: {e}")))?;
    let mut differences = Vec::new();
    for wanted in &suggestion.columns {
        match columns.iter().find(|(name, _)| *name == wanted.name) {
            None => differences.push(format!(
                "it has no column {} ({})",
                wanted.name, wanted.sql_type
            )),
            Some((_, sql_type)) if *sql_type != wanted.sql_type => differences.push(format!(
                "column {} is {sql_type}, the sample suggests {}",
                wanted.name, wanted.sql_type
            )),
            Some(_) => {}
        }
    }
    for (name, _) in &columns {
        if !suggestion.columns.iter().any(|c| c.name == *name) {
            differences.push(format!("column {name} is not in the sample"));
        }
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        SqlState::from_code("42P07"),
        format!(
            "table {} exists with another shape than the sample suggests",
            named.given
        ),
    )
    .with_detail(differences.join("; "))
    .with_hint("drop it or give another target, or create the job without create_target"))
}
