//! A job's target table: what it is, who may write it, and the keys a write method uses. Checked
//! at create_job / alter_job as the caller, and again at each run as the owner.

use pgrx::pg_sys::Oid;
use pgrx::prelude::*;

use super::WriteMethod;
use crate::error::{Error, Result, SqlState};
use crate::roles::{is_superuser, quote};

/// The target table as the writes name it; referenced by OID, never by a name parsed as a type.
pub struct Target {
    pub oid: Oid,
    /// The row type, which the fetch's rows take.
    pub rowtype: Oid,
    pub owner: Oid,
    /// Schema-qualified and quoted.
    pub name: String,
    /// Quoted, in order; no dropped or generated columns.
    pub columns: Vec<String>,
    /// Where those columns are in the row type (attnum - 1).
    pub positions: Vec<usize>,
}

impl Target {
    /// The table `oid`, which must exist and be a table (plain or partitioned).
    pub fn inspect(oid: Oid) -> Result<Target> {
        let spi = |e: pgrx::spi::Error| Error::internal(format!("could not read the target: {e}"));
        let found = Spi::connect(|client| {
            let rows = client.select(
                "SELECT c.relkind::pg_catalog.text, c.reltype, c.relowner, n.nspname::pg_catalog.text,
                        c.relname::pg_catalog.text
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                 WHERE c.oid OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[oid.into()],
            )?;
            if rows.is_empty() {
                return Ok(None);
            }
            let row = rows.first();
            Ok::<_, pgrx::spi::Error>(Some((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<Oid>(2)?.unwrap_or(Oid::INVALID),
                row.get::<Oid>(3)?.unwrap_or(Oid::INVALID),
                row.get::<String>(4)?.unwrap_or_default(),
                row.get::<String>(5)?.unwrap_or_default(),
            )))
        })
        .map_err(spi)?;
        let Some((kind, rowtype, owner, schema, relation)) = found else {
            return Err(Error::new(
                SqlState::UndefinedObject,
                format!("the target table (OID {}) does not exist", oid.to_u32()),
            )
            .with_hint("it was dropped: point the job at a table with apisync.alter_job"));
        };
        if !matches!(kind.as_str(), "r" | "p") {
            return Err(Error::new(
                SqlState::DatatypeMismatch,
                format!(
                    "the target {}.{} must be a table",
                    quote(&schema),
                    quote(&relation)
                ),
            ));
        }
        let (columns, attnums) = Spi::get_two_with_args::<Vec<String>, Vec<i32>>(
            "SELECT pg_catalog.array_agg(attname::pg_catalog.text ORDER BY attnum),
                    pg_catalog.array_agg(attnum::pg_catalog.int4 ORDER BY attnum)
             FROM pg_catalog.pg_attribute
             WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attnum OPERATOR(pg_catalog.>) 0
               AND NOT attisdropped AND attgenerated OPERATOR(pg_catalog.=) ''",
            &[oid.into()],
        )
        .map_err(spi)?;
        let (columns, attnums) = (columns.unwrap_or_default(), attnums.unwrap_or_default());
        Ok(Target {
            oid,
            rowtype,
            owner,
            name: format!("{}.{}", quote(&schema), quote(&relation)),
            columns: columns.iter().map(|c| quote(c)).collect(),
            positions: attnums.iter().map(|n| *n as usize - 1).collect(),
        })
    }

    /// Whether `role` may write the target with `write`; a superuser's job never writes another
    /// role's table (it would run that role's triggers with superuser rights).
    pub fn check_writer(&self, role: Oid, write: WriteMethod) -> Result<()> {
        if is_superuser(role) && self.owner != role && !is_superuser(self.owner) {
            return Err(Error::new(
                SqlState::InsufficientPrivilege,
                format!(
                    "a job owned by a superuser cannot write {}, which another role owns",
                    self.name
                ),
            )
            .with_detail("its triggers would run with superuser rights")
            .with_hint("create the job as the table's owner"));
        }
        for privilege in write.privileges() {
            let granted = Spi::get_one_with_args::<bool>(
                "SELECT pg_catalog.has_table_privilege($1::pg_catalog.oid, $2::pg_catalog.oid, $3::pg_catalog.text)",
                &[role.into(), self.oid.into(), (*privilege).into()],
            )
            .map_err(|e| Error::internal(format!("could not check the privileges on {}: {e}", self.name)))?
            .unwrap_or(false);
            if !granted {
                return Err(Error::new(
                    SqlState::InsufficientPrivilege,
                    format!(
                        "permission denied: the job's owner needs {privilege} on {}",
                        self.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The key columns of an upsert or mirror: `given`, or the primary key; either must match a
    /// unique index. `None` for the write methods without keys.
    pub fn keys(
        &self,
        write: WriteMethod,
        given: Option<&[String]>,
    ) -> Result<Option<Vec<String>>> {
        if !write.uses_keys() {
            return Ok(None);
        }
        let keys = match given {
            Some(keys) if !keys.is_empty() => keys.to_vec(),
            _ => Spi::get_one_with_args::<Vec<String>>(
                "SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY k.ord)
                 FROM pg_catalog.pg_index i
                 CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY k(attnum, ord)
                 JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid
                      AND a.attnum OPERATOR(pg_catalog.=) k.attnum
                 WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary",
                &[self.oid.into()],
            )
            .ok()
            .flatten()
            .ok_or_else(|| {
                Error::invalid(
                    "upsert and mirror need key_columns, and the target has no primary key",
                )
                .with_hint("give key_columns, with a unique index on them")
            })?,
        };
        // Citus cannot keep a key unique without the distribution column (nor create the index
        // the error below would ask for): say so first.
        if let Some(column) = crate::citus::distribution_column(self.oid) {
            if !keys.contains(&column) {
                return Err(Error::new(
                    SqlState::from_code("0A000"),
                    format!(
                        "{} into a Citus distributed table needs key columns that include its distribution column {}",
                        write.name(),
                        quote(&column)
                    ),
                )
                .with_hint(format!(
                    "give key_columns that include {}, or write with append or replace",
                    quote(&column)
                )));
            }
        }
        let unique = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_catalog.pg_index i
                 WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisunique AND i.indpred IS NULL
                   AND i.indexprs IS NULL
                   AND i.indnkeyatts OPERATOR(pg_catalog.=) pg_catalog.cardinality($2::pg_catalog.text[])
                   AND (SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY a.attname)
                        FROM pg_catalog.pg_attribute a
                        WHERE a.attrelid OPERATOR(pg_catalog.=) i.indrelid
                          AND a.attnum OPERATOR(pg_catalog.=) ANY ((i.indkey::pg_catalog.int2[])[0:i.indnkeyatts - 1]))
                       OPERATOR(pg_catalog.=) (SELECT pg_catalog.array_agg(k ORDER BY k)
                                               FROM pg_catalog.unnest($2::pg_catalog.text[]) k))",
            &[self.oid.into(), keys.clone().into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if !unique {
            return Err(Error::invalid(format!(
                "{} needs a unique index on ({})",
                write.name(),
                keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
            ))
            .with_hint("create one, or give the key_columns of an existing unique index"));
        }
        Ok(Some(keys))
    }
}
