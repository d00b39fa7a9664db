//! Secrets (DESIGN.md §2.5): named values a role stores once and names in `options.auth`, so that
//! tokens stay out of queries, job rows and logs. Row-level security keeps each role to its own;
//! superusers see all.

use std::collections::HashMap;

use pgrx::prelude::*;

use super::OrRaise;
use crate::error::Error;

/// The stored values of `names`, for the current role. A missing one is left out: the spec then
/// says which secret does not exist.
pub fn lookup(names: &[String]) -> HashMap<String, String> {
    let mut found = HashMap::new();
    for name in names {
        let value = match Spi::get_one_with_args::<String>(
            "SELECT value FROM apisync.secrets WHERE owner = current_user::regrole::oid AND name = $1",
            &[name.as_str().into()],
        ) {
            Ok(value) => value,
            // No row: not this role's secret.
            Err(pgrx::spi::Error::InvalidPosition) => None,
            Err(e) => Err(Error::internal(format!("could not read secret \"{name}\": {e}"))).or_raise(),
        };
        if let Some(value) = value {
            found.insert(name.clone(), value);
        }
    }
    found
}

pgrx::extension_sql!(
    r#"
CREATE SCHEMA IF NOT EXISTS apisync;
GRANT USAGE ON SCHEMA apisync TO PUBLIC;

CREATE TABLE apisync.secrets (
    owner oid NOT NULL DEFAULT current_user::regrole::oid,
    name text NOT NULL CHECK (name <> ''),
    value text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);
COMMENT ON TABLE apisync.secrets IS 'Values named in options.auth; each role sees only its own.';
ALTER TABLE apisync.secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_secrets ON apisync.secrets
    USING (owner = current_user::regrole::oid)
    WITH CHECK (owner = current_user::regrole::oid);
GRANT SELECT, INSERT, UPDATE, DELETE ON apisync.secrets TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('apisync.secrets', '');

-- Stores (or replaces) a secret of the current role. Pass the value as a query parameter so that
-- it does not show in pg_stat_activity or the statement log.
CREATE FUNCTION apisync.create_secret(name text, value text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO apisync.secrets (name, value) VALUES ($1, $2)
    ON CONFLICT (owner, name) DO UPDATE SET value = EXCLUDED.value, created_at = now();
$$;

CREATE FUNCTION apisync.drop_secret(name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM apisync.secrets WHERE owner = current_user::regrole::oid AND secrets.name = drop_secret.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'secret "%" does not exist', drop_secret.name USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
"#,
    name = "secrets"
);
