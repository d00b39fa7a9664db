//! The SQL face: thin `#[pg_extern]` functions over the Postgres-free core, and the one mapping
//! from `Error` to a Postgres ERROR.

mod api_fetch;
mod api_request;
mod progress;
pub(crate) mod rows;
pub(crate) mod secrets;
pub(crate) mod suggest;
#[cfg(any(test, feature = "pg_test"))]
mod tests;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{JsonB, PgLogLevel, PgSqlErrorCode};

use crate::error::{Error, SqlState};
use crate::spec::RequestArgs;

/// Raises `err` as an ERROR with its SQLSTATE, detail and hint. Secrets were scrubbed where the
/// error was made.
pub fn raise(err: Error) -> ! {
    let mut report = ErrorReport::new(sqlstate(err.state), err.message, "pg_apisync");
    if let Some(detail) = err.detail {
        report = report.set_detail(detail);
    }
    if let Some(hint) = err.hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("an ERROR does not return")
}

/// `Result::unwrap_or_raise` for the SQL face.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, Error> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|err| raise(err))
    }
}

/// The arguments every network function shares, as the spec takes them. Checks the database
/// encoding first: text Datums are made from Rust's UTF-8 strings without conversion.
pub fn request_args<'a>(
    url: Option<&'a str>,
    method: Option<&'a str>,
    body: Option<JsonB>,
    headers: Option<JsonB>,
    options: Option<JsonB>,
) -> RequestArgs<'a> {
    require_utf8();
    let options = options.map(|o| o.0);
    let names = crate::spec::secret_names(options.as_ref());
    let role = crate::roles::current_user();
    let secrets = secrets::lookup(role, &names);
    let access_token = crate::oauth::access_token(
        role,
        options.as_ref(),
        &secrets,
        crate::oauth::Tokens::Exchange,
    );
    RequestArgs {
        url,
        method,
        body: body.map(|b| b.0),
        headers: headers.map(|h| h.0),
        options,
        secrets,
        access_token,
    }
}

pub fn require_utf8() {
    // SAFETY: reads the database encoding, on the backend thread.
    let encoding = unsafe { pgrx::pg_sys::GetDatabaseEncoding() };
    if encoding != pgrx::pg_sys::pg_enc::PG_UTF8 as i32 {
        raise(Error::not_supported(
            "pg_apisync needs a database with encoding UTF8",
        ));
    }
}

/// The one SQLSTATE table is the core's (`SqlState::code`); Postgres takes it packed.
fn sqlstate(state: SqlState) -> PgSqlErrorCode {
    PgSqlErrorCode::from(state.packed())
}

// Network functions are for the roles a DBA chooses (DESIGN.md §2).
pgrx::extension_sql!(
    r#"
REVOKE EXECUTE ON FUNCTION api_request(text, text, jsonb, jsonb, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement, jsonb) FROM PUBLIC;
"#,
    name = "revoke_network_functions",
    finalize
);
