//! Sync jobs: `sql` is their SQL face and `run` the run worker; the job model itself is the
//! core's (`apisync_core::job`).

mod bulk;
pub mod catalog;
mod create_target;
mod for_each;
pub mod functions;
pub mod run;
mod target;
mod write;

pub use apisync_core::job::*;
