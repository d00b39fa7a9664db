//! C symbols of earlier releases that this library no longer implements. An installation's SQL
//! functions name their symbol, and PostgreSQL looks every one up when the function is created —
//! also when an upgrade test or a DBA replays the 0.1.0 install script against this library —
//! and when it is called. Between installing this library and `ALTER EXTENSION pg_apisync
//! UPDATE`, a call of one of them says what to do instead of "could not find function".

use pgrx::pg_sys;

use crate::error::{Error, SqlState};
use crate::sql::raise;

/// One symbol of 0.1.0: its version-1 info record and a body that refuses the call.
macro_rules! retired {
    ($symbol:ident, $finfo:ident, $function:literal) => {
        #[no_mangle]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static pg_sys::Pg_finfo_record {
            const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        /// # Safety
        /// Called by PostgreSQL as a version-1 C function.
        #[pgrx::pg_guard]
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $symbol(
            _fcinfo: pg_sys::FunctionCallInfo,
        ) -> pg_sys::Datum {
            refuse($function)
        }
    };
}

retired!(
    run_now_wrapper,
    pg_finfo_run_now_wrapper,
    "apisync._run_now"
);
retired!(
    chunk_rows_wrapper,
    pg_finfo_chunk_rows_wrapper,
    "apisync._chunk_rows"
);
retired!(
    check_job_wrapper,
    pg_finfo_check_job_wrapper,
    "apisync._check_job"
);

fn refuse(function: &str) -> ! {
    raise(
        Error::new(
            SqlState::from_code("55000"),
            format!(
                "{function} belongs to an earlier pg_apisync: the library is {}, the installation in this database is older",
                env!("CARGO_PKG_VERSION")
            ),
        )
        .with_hint("run ALTER EXTENSION pg_apisync UPDATE"),
    )
}
