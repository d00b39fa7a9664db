//! Secrets (DESIGN.md §2.5): named values a role stores once and names in `options.auth`, so that
//! tokens stay out of queries, job rows and logs. No role reads `apisync.secrets`: a fetch looks up
//! the values of its caller's (or its job owner's) secrets here, as the catalog's owner.

use std::collections::HashMap;

use pgrx::pg_sys::Oid;
use pgrx::prelude::*;

use super::OrRaise;
use crate::error::Error;
use crate::roles::as_catalog_owner;

/// The stored values of `names` owned by `owner`. A missing one is left out: the spec then says
/// which secret does not exist.
pub fn lookup(owner: Oid, names: &[String]) -> HashMap<String, String> {
    let mut found = HashMap::new();
    if names.is_empty() {
        return found;
    }
    as_catalog_owner(|| {
        for name in names {
            let value = match super::read_one::<String>(
                "SELECT value FROM apisync.secrets
                 WHERE owner OPERATOR(pg_catalog.=) $1::pg_catalog.regrole AND name OPERATOR(pg_catalog.=) $2",
                &[owner.into(), name.as_str().into()],
            ) {
                // No row: not this role's secret.
                Ok(value) => value,
                Err(e) => Err(Error::internal(format!(
                    "could not read secret \"{name}\": {e}"
                )))
                .or_raise(),
            };
            if let Some(value) = value {
                found.insert(name.clone(), value);
            }
        }
    });
    found
}

/// Whether `owner` has a secret `name`.
pub fn exists(owner: Oid, name: &str) -> bool {
    as_catalog_owner(|| {
        super::read_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM apisync.secrets
             WHERE owner OPERATOR(pg_catalog.=) $1::pg_catalog.regrole AND name OPERATOR(pg_catalog.=) $2)",
            &[owner.into(), name.into()],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(false)
}

#[pg_schema]
mod apisync {
    use pgrx::prelude::*;

    use crate::error::{Error, SqlState};
    use crate::roles::{as_catalog_owner, current_user};
    use crate::sql::{raise, require_utf8};

    /// Stores (or replaces) a secret of the calling role. Pass the value as a query parameter so
    /// that it does not show in pg_stat_activity or the statement log.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn create_secret(name: &str, value: &str) {
        require_utf8();
        if name.is_empty() {
            raise(Error::invalid("a secret needs a name"));
        }
        let owner = current_user();
        as_catalog_owner(|| {
            crate::sql::run(
                "INSERT INTO apisync.secrets (owner, name, value) VALUES ($1::pg_catalog.regrole, $2, $3)
                 ON CONFLICT (owner, name) DO UPDATE SET value = EXCLUDED.value, created_at = pg_catalog.now()",
                &[owner.into(), name.into(), value.into()],
            )
        })
        .unwrap_or_else(|e| raise(Error::internal(format!("could not store the secret: {e}"))));
    }

    /// Drops a secret of the calling role.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn drop_secret(name: &str) {
        let owner = current_user();
        let dropped = as_catalog_owner(|| {
            Spi::connect_mut(|client| {
                client
                    .update(
                        "DELETE FROM apisync.secrets
                         WHERE owner OPERATOR(pg_catalog.=) $1::pg_catalog.regrole AND name OPERATOR(pg_catalog.=) $2",
                        None,
                        &[owner.into(), name.into()],
                    )
                    .map(|t| t.len())
            })
        })
        .unwrap_or_else(|e| raise(Error::internal(format!("could not drop the secret: {e}"))));
        if dropped == 0 {
            raise(Error::new(
                SqlState::UndefinedObject,
                format!("secret \"{name}\" does not exist"),
            ));
        }
    }
}

// Schema apisync, the catalog and the api_response type come before everything else.
pgrx::extension_sql_file!("../../sql/bootstrap.sql", name = "bootstrap", bootstrap);
