//! An append run's rows into its target by COPY's own bulk path: the rows stream from the fetch
//! into batches of slots written with the table AM's `multi_insert` (few WAL records, one buffer
//! pin per page), then their index entries — while the next pages are still being fetched and
//! parsed, and with no tuplestore between. As COPY's front end does, the privileges of the run's
//! owner are checked on the range table (column privileges included); NOT NULL and CHECK
//! constraints are checked per row, unique indexes as rows are indexed.
//!
//! Only plain tables take this path: a target with row-level security, insert triggers (foreign
//! keys included), rules, generated or identity columns, deferrable unique indexes, or that is
//! partitioned or a partition, is written by `INSERT … SELECT` as before (`None`).

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;

use crate::route::Fetch;

/// Rows a batch holds before it is written (COPY's MAX_BUFFERED_TUPLES).
const BATCH_ROWS: usize = 1000;

/// Where a row's values go in the relation written.
#[derive(Clone, Copy)]
pub enum Into<'a> {
    /// The target: the row type's values as they are.
    Target,
    /// A run's stage: the values at `positions` of the row type, then the row's number.
    Stage(&'a [usize]),
}

/// Appends every row `fetch` gives (up to the end of its step) to `target`; the rows written, or
/// `None` when the target needs the SQL path.
pub fn append(target: Oid, fetch: &mut Fetch, into: Into<'_>) -> Option<i64> {
    if !plain_table(target) {
        return None;
    }
    // SAFETY: the executor calls COPY FROM makes for its target, on the backend thread, in the
    // run's transaction; every object made here lives in the executor state's memory, freed at
    // the end (or with the transaction when an ERROR leaves early).
    unsafe {
        let rls = pg_sys::check_enable_rls(target, Oid::INVALID, false);
        if rls == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 {
            return None;
        }
        Some(write(target, fetch, into))
    }
}

/// Whether `target` is a table COPY's bulk path writes as INSERT would: nothing that acts on
/// inserted rows besides constraints and immediate indexes, and no Citus table (whose rows live
/// in shards).
fn plain_table(target: Oid) -> bool {
    if crate::citus::manages(target) {
        return false;
    }
    Spi::get_one_with_args::<bool>(
        "SELECT c.relkind OPERATOR(pg_catalog.=) 'r' AND NOT c.relispartition AND NOT c.relhasrules
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                            WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0
                              AND NOT a.attisdropped
                              AND (a.attgenerated OPERATOR(pg_catalog.<>) '' OR a.attidentity OPERATOR(pg_catalog.<>) ''))
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                            WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND NOT i.indimmediate)
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                            WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid
                              AND (t.tgtype::pg_catalog.int4 OPERATOR(pg_catalog.&) 4) OPERATOR(pg_catalog.<>) 0)
         FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[target.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// The write itself.
///
/// # Safety
/// On the backend thread, in a transaction; `target` is a plain table (`plain_table`).
unsafe fn write(target: Oid, fetch: &mut Fetch, into: Into<'_>) -> i64 {
    unsafe {
        let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
        pg_sys::LockRelationOid(target, lock);
        let estate = pg_sys::CreateExecutorState();
        let caller = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);

        // The range table COPY FROM makes: the target, for INSERT of every column.
        let rte: *mut pg_sys::RangeTblEntry =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>()).cast();
        (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
        (*rte).rtekind = pg_sys::RTEKind::RTE_RELATION;
        (*rte).relid = target;
        (*rte).relkind = pg_sys::RELKIND_RELATION as std::ffi::c_char;
        (*rte).rellockmode = lock;
        (*rte).requiredPerms = pg_sys::ACL_INSERT as pg_sys::AclMode;
        let rel = pg_sys::table_open(target, pg_sys::NoLock as pg_sys::LOCKMODE);
        let tupdesc = (*rel).rd_att;
        for i in 0..(*tupdesc).natts as usize {
            let attr = (*tupdesc).attrs.as_ptr().add(i);
            if !(*attr).attisdropped {
                let member = i as i32 + 1 - pg_sys::FirstLowInvalidHeapAttributeNumber;
                (*rte).insertedCols = pg_sys::bms_add_member((*rte).insertedCols, member);
            }
        }
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        let range_table = pg_sys::lappend(std::ptr::null_mut(), rte.cast());
        // The run's owner may insert every column (raises as INSERT would).
        pg_sys::ExecCheckRTPerms(range_table, true);
        pg_sys::ExecInitRangeTable(estate, range_table);
        let info: *mut pg_sys::ResultRelInfo =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()).cast();
        (*info).type_ = pg_sys::NodeTag::T_ResultRelInfo;
        pg_sys::ExecInitResultRelation(estate, info, 1);
        pg_sys::CheckValidResultRel(info, pg_sys::CmdType::CMD_INSERT);
        pg_sys::ExecOpenIndices(info, false);
        let rel = (*info).ri_RelationDesc;
        let has_constraints = !(*(*rel).rd_att).constr.is_null();

        let slots: Vec<*mut pg_sys::TupleTableSlot> = (0..BATCH_ROWS)
            .map(|_| pg_sys::table_slot_create(rel, std::ptr::null_mut()))
            .collect();
        let bistate = pg_sys::GetBulkInsertState();
        let cid = pg_sys::GetCurrentCommandId(true);
        let per_row = per_row_memory(estate);

        let mut used = 0;
        let mut written: i64 = 0;
        loop {
            pg_sys::MemoryContextReset(per_row);
            pg_sys::MemoryContextSwitchTo(per_row);
            let more = fetch.advance();
            if more {
                let slot = slots[used];
                pg_sys::ExecClearTuple(slot);
                match into {
                    Into::Target => fetch.store_row(slot),
                    Into::Stage(positions) => {
                        fetch.store_row_at(slot, positions);
                        let number = positions.len();
                        *(*slot).tts_values.add(number) =
                            pg_sys::Datum::from(written + used as i64 + 1);
                        *(*slot).tts_isnull.add(number) = false;
                    }
                }
                pg_sys::ExecStoreVirtualTuple(slot);
                if has_constraints {
                    pg_sys::ExecConstraints(info, slot, estate);
                }
                // The values live in the per-row context: the batch needs its own copy.
                pg_sys::ExecMaterializeSlot(slot);
                used += 1;
            }
            if used == BATCH_ROWS || (!more && used > 0) {
                flush(info, estate, &slots[..used], cid, bistate);
                written += used as i64;
                used = 0;
            }
            if !more {
                break;
            }
        }

        for slot in slots {
            pg_sys::ExecDropSingleTupleTableSlot(slot);
        }
        pg_sys::FreeBulkInsertState(bistate);
        // Closes the indices too.
        pg_sys::ExecCloseResultRelations(estate);
        pg_sys::ExecCloseRangeTableRelations(estate);
        pg_sys::MemoryContextSwitchTo(caller);
        pg_sys::FreeExecutorState(estate);
        written
    }
}

/// The executor state's per-tuple memory (GetPerTupleMemoryContext).
///
/// # Safety
/// `estate` is a live executor state.
unsafe fn per_row_memory(estate: *mut pg_sys::EState) -> pg_sys::MemoryContext {
    unsafe {
        let mut econtext = (*estate).es_per_tuple_exprcontext;
        if econtext.is_null() {
            econtext = pg_sys::MakePerTupleExprContext(estate);
        }
        (*econtext).ecxt_per_tuple_memory
    }
}

/// Writes a batch: the tuples at once, then each one's index entries.
///
/// # Safety
/// As `write`'s: `slots` hold materialized rows of `info`'s relation.
unsafe fn flush(
    info: *mut pg_sys::ResultRelInfo,
    estate: *mut pg_sys::EState,
    slots: &[*mut pg_sys::TupleTableSlot],
    cid: pg_sys::CommandId,
    bistate: pg_sys::BulkInsertState,
) {
    unsafe {
        let rel = (*info).ri_RelationDesc;
        let per_row = per_row_memory(estate);
        let back = pg_sys::MemoryContextSwitchTo(per_row);
        let multi_insert = (*(*rel).rd_tableam)
            .multi_insert
            .expect("a table access method has multi_insert");
        multi_insert(
            rel,
            slots.as_ptr().cast_mut(),
            slots.len() as i32,
            cid,
            0,
            bistate,
        );
        for &slot in slots {
            if (*info).ri_NumIndices > 0 {
                pg_sys::MemoryContextReset(per_row);
                let recheck = pg_sys::ExecInsertIndexTuples(
                    info,
                    slot,
                    estate,
                    false,
                    false,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
                pg_sys::list_free(recheck);
            }
            pg_sys::ExecClearTuple(slot);
        }
        pg_sys::MemoryContextSwitchTo(back);
    }
}
