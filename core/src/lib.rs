//! The Postgres-free core of pg_apisync: the spec of a request, network policy, fetching pages on
//! tokio, extracting rows, the job model and the one error type. No pgrx here: the compiler keeps
//! the boundary, and `cargo test -p apisync-core` runs these tests without a cluster.

pub mod error;
pub mod extract;
pub mod fetch;
pub mod job;
pub mod policy;
pub mod spec;
pub mod suggest;
