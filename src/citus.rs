//! Citus: pg_apisync works on the coordinator. `CREATE EXTENSION` propagates to the worker nodes,
//! so each has a copy of the catalog — but its secrets and grants are its own, and jobs stored
//! there would run once per node. So a worker node makes no request and runs no job, and says
//! why; a call that Citus pushes down to the workers (a select list over a distributed table's
//! rows) fails with that message instead of a confusing one.

use pgrx::prelude::*;

use crate::error::{Error, Result, SqlState};
use crate::sql::read_one;

/// Whether this database is a Citus worker node: Citus is installed and the node's group is not
/// the coordinator's (0; a Citus database with no nodes registered is a coordinator too).
pub fn is_worker_node() -> bool {
    installed()
        && read_bool(
            "SELECT groupid OPERATOR(pg_catalog.>) 0 FROM pg_catalog.pg_dist_local_group",
            &[],
        )
        .unwrap_or(false)
}

/// Whether Citus is installed in this database.
fn installed() -> bool {
    read_bool(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus')",
        &[],
    )
    .unwrap_or(false)
}

fn read_bool(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> Option<bool> {
    read_one::<bool>(sql, args).ok().flatten()
}

/// The distribution column of a hash-distributed table (`None` for any other table): upsert and
/// mirror keys must include it, as every unique index of the table does.
pub fn distribution_column(relation: pg_sys::Oid) -> Option<String> {
    if !installed() {
        return None;
    }
    read_one::<String>(
        "SELECT pg_catalog.column_to_column_name(logicalrelid, partkey) FROM pg_catalog.pg_dist_partition
         WHERE logicalrelid OPERATOR(pg_catalog.=) $1 AND partmethod OPERATOR(pg_catalog.=) 'h'",
        &[relation.into()],
    )
    .ok()
    .flatten()
}

/// `what` (a request, a run) happens on the coordinator only.
pub fn require_coordinator(what: &str) -> Result<()> {
    if !is_worker_node() {
        return Ok(());
    }
    Err(Error::new(
        SqlState::from_code("0A000"),
        format!("{what} happens on the Citus coordinator only: this database is a Citus worker node"),
    )
    .with_detail("a worker's copy of pg_apisync has its own secrets and grants, and would run jobs once per node")
    .with_hint("connect to the coordinator; a call per row of a distributed table runs on the workers: give one api_fetch those rows as params instead"))
}

/// Whether Citus manages `relation` (distributed, reference or Citus-local): its rows live in
/// shards, so only Citus's executor writes it — never a bulk insert into the coordinator's
/// shell table.
pub fn manages(relation: pg_sys::Oid) -> bool {
    installed()
        && read_bool(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
                            WHERE logicalrelid OPERATOR(pg_catalog.=) $1)",
            &[relation.into()],
        )
        .unwrap_or(true)
}
