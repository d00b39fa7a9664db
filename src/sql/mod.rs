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

/// One value by a read-only query, in the statement's snapshot (or, once this transaction has
/// written, a fresh one, as pgrx's SPI reads): `None` for no row or NULL. pgrx's `Spi::get_one`
/// runs every query as an update, which takes a transaction id — a commit record for every read
/// of an otherwise read-only `SELECT … FROM api_fetch`, and an error on a standby. Lookups read
/// with this instead.
pub fn read_one<T: pgrx::FromDatum + pgrx::IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> Result<Option<T>, pgrx::spi::Error> {
    pgrx::spi::Spi::connect(|client| {
        match client.select(sql, Some(1), args)?.first().get_one::<T>() {
            Err(pgrx::spi::Error::InvalidPosition) => Ok(None),
            other => other,
        }
    })
}

/// Runs `sql` (any statements; `args` as $1, $2, …), taking a transaction id only when it writes
/// a row — as PostgreSQL itself does. pgrx's `Spi::run` takes one before it starts, so a
/// scheduler round with nothing to do committed a transaction id every tick, and a no-op write in
/// a read-only call needed one. Reads that follow see what this wrote: pgrx reads with a fresh
/// snapshot once the transaction has an id.
pub fn run(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> Result<(), pgrx::spi::Error> {
    let Ok(text) = std::ffi::CString::new(sql) else {
        raise(Error::invalid("a NUL character in a statement"))
    };
    let mut types: Vec<pgrx::pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
    let mut values: Vec<pgrx::pg_sys::Datum> = args
        .iter()
        .map(|a| {
            a.datum()
                .map_or(pgrx::pg_sys::Datum::from(0), |d| d.sans_lifetime())
        })
        .collect();
    let nulls: Vec<std::ffi::c_char> = args
        .iter()
        .map(|a| if a.datum().is_some() { b' ' } else { b'n' } as std::ffi::c_char)
        .collect();
    pgrx::spi::Spi::connect(|_| {
        // SAFETY: SPI is connected; the argument arrays outlive the call and match in length.
        let status = unsafe {
            if args.is_empty() {
                pgrx::pg_sys::SPI_execute(text.as_ptr(), false, 0)
            } else {
                pgrx::pg_sys::SPI_execute_with_args(
                    text.as_ptr(),
                    args.len() as i32,
                    types.as_mut_ptr(),
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    false,
                    0,
                )
            }
        };
        pgrx::spi::Spi::check_status(status).map(|_| ())
    })
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
