//! pg_apisync: pull data from HTTP/JSON APIs into PostgreSQL tables.
//!
//! Spec (validated arguments) → fetch (tokio, pages over a bounded channel) → extract (JSONPath,
//! column mapping) → sink (the SRF, or a job's write). The first three are the Postgres-free core
//! crate (`apisync_core`); this crate is the SQL face, the Datum step, the job SQL and the
//! workers. Only the backend thread calls Postgres.

pub use apisync_core::{error, extract, fetch, policy, spec, suggest};

pub mod citus;
pub mod interrupt;
pub mod jobs;
pub mod legacy;
pub mod oauth;
pub mod roles;
pub mod route;
pub mod settings;
pub mod shmem;
pub mod sql;
pub mod worker;

::pgrx::pg_module_magic!(name, version);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::init();
    // SAFETY: reads a postmaster flag during _PG_init.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        shmem::request();
    }
    worker::register();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
