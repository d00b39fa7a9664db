//! What pg_apisync keeps in shared memory (with the preload only): a slot per backend, holding the
//! progress of its fetch (`apisync.fetch_progress`), its requests in flight (for
//! `apisync.max_requests_in_flight`) and, for a scheduler, its runs (`apisync.max_parallel_jobs`
//! counts those of every database). A slot is written by its own process — progress by the
//! backend thread, in-flight counts by the runtime's threads too — and read by any; every field
//! is an atomic, and the URL text is guarded by a change count (odd while it is written), as
//! PostgreSQL's backend status array is.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pgrx::pg_sys;

use crate::spec::RequestGate;

const URL_BYTES: usize = 512;

/// What a slot's fetch is.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    ApiFetch = 1,
    ApiRequest = 2,
    Run = 3,
    Sample = 4,
}

/// Where a fetch is.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum State {
    /// Waiting for the next page: the network (or the API) is the holdup.
    Network = 1,
    /// Working on the rows it has: converting, storing, writing them.
    Rows = 2,
}

#[repr(C)]
pub struct Slot {
    changes: AtomicU32,
    /// The process using the slot's progress; 0 when it runs no fetch.
    pid: AtomicI32,
    /// Which fetch of the process (a process may start another before the last is dropped).
    fetch: AtomicU64,
    database: AtomicU32,
    /// Whose fetch: the caller, or a run's owner (who may see it).
    role: AtomicU32,
    kind: AtomicU32,
    state: AtomicU32,
    run_id: AtomicI64,
    started: AtomicI64,
    sets_done: AtomicU64,
    sets_total: AtomicU64,
    pages: AtomicU64,
    rows: AtomicU64,
    bytes: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    network_us: AtomicU64,
    rows_us: AtomicU64,
    /// Requests of this process in flight (whatever its progress says).
    in_flight: AtomicU32,
    /// Runs a scheduler process has going (`apisync.max_parallel_jobs` counts them all).
    scheduled_runs: AtomicU32,
    /// Since when a scheduler has had a due run waiting for a place (0: none): places go to the
    /// longest waiting first, so no database's runs starve another's.
    waiting_since: AtomicI64,
    url_len: AtomicU32,
    url: [AtomicU8; URL_BYTES],
}

#[repr(C)]
struct Header {
    /// Held while a request counts the places taken and takes one.
    gate_lock: AtomicBool,
    slots: AtomicU32,
}

static SHARED: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());
static mut PREVIOUS_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREVIOUS_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

fn size(slots: usize) -> usize {
    std::mem::size_of::<Header>() + slots * std::mem::size_of::<Slot>()
}

fn slot_count() -> usize {
    // SAFETY: MaxBackends is set before shared memory is sized, and never changes after.
    unsafe { pg_sys::MaxBackends.max(0) as usize }
}

/// Asks for the segment: from `_PG_init` of the preload only.
pub fn request() {
    // SAFETY: hook chaining during _PG_init, on the postmaster's thread.
    unsafe {
        PREVIOUS_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(on_request);
        PREVIOUS_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_startup);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_request() {
    // SAFETY: called by the postmaster while shared memory is sized.
    unsafe {
        if let Some(previous) = PREVIOUS_REQUEST_HOOK {
            previous();
        }
        pg_sys::RequestAddinShmemSpace(size(slot_count()));
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_startup() {
    // SAFETY: called by the postmaster (and each backend of an EXEC_BACKEND build) after shared
    // memory is created; the segment is zeroed once, under the lock that guards add-in startup.
    unsafe {
        if let Some(previous) = PREVIOUS_STARTUP_HOOK {
            previous();
        }
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let slots = slot_count();
        let mut found = false;
        let header = pg_sys::ShmemInitStruct(c"pg_apisync".as_ptr(), size(slots), &mut found)
            .cast::<Header>();
        if !found {
            std::ptr::write_bytes(header.cast::<u8>(), 0, size(slots));
            (*header).slots.store(slots as u32, Ordering::Relaxed);
        }
        SHARED.store(header, Ordering::Release);
        pg_sys::LWLockRelease(lock);
    }
}

/// Every slot; empty without the preload.
fn slots() -> &'static [Slot] {
    let header = SHARED.load(Ordering::Acquire);
    if header.is_null() {
        return &[];
    }
    // SAFETY: the segment holds `slots` slots after the header, for the life of the server.
    unsafe {
        let count = (*header).slots.load(Ordering::Relaxed) as usize;
        let first = header
            .cast::<u8>()
            .add(std::mem::size_of::<Header>())
            .cast::<Slot>();
        std::slice::from_raw_parts(first, count)
    }
}

/// This process's slot (by its backend id), if it has one.
fn my_slot() -> Option<&'static Slot> {
    // SAFETY: reads a process global.
    let id = unsafe { pg_sys::MyBackendId };
    let slot = slots().get(usize::try_from(id).ok()?.checked_sub(1)?)?;
    register_exit();
    Some(slot)
}

thread_local! {
    static EXIT_REGISTERED: Cell<bool> = const { Cell::new(false) };
    static FETCHES: Cell<u64> = const { Cell::new(0) };
}

/// A process that leaves (FATAL, termination) gives back what its slot holds: its runtime's
/// threads may never get to drop their places.
fn register_exit() {
    if EXIT_REGISTERED.with(|r| r.replace(true)) {
        return;
    }
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
        if let Some(slot) = my_slot() {
            slot.pid.store(0, Ordering::Release);
            slot.in_flight.store(0, Ordering::Release);
            slot.scheduled_runs.store(0, Ordering::Release);
            slot.waiting_since.store(0, Ordering::Release);
        }
    }
    // SAFETY: registers a callback of this process, on the backend thread.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
}

fn now_timestamp() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// The progress of one fetch of this process, shown in `apisync.fetch_progress` until dropped.
pub struct Progress {
    slot: &'static Slot,
    fetch: u64,
    /// Since when the backend has been working on rows (or waiting).
    since: Cell<Instant>,
    /// The parameter set of the last page, to count sets as their pages come.
    last_set: Cell<usize>,
    sets_seen: Cell<u64>,
}

/// What a fetch is, for its slot.
pub struct Started<'a> {
    pub kind: Kind,
    pub role: pg_sys::Oid,
    pub run_id: Option<i64>,
    pub url: &'a str,
    pub sets: Option<u64>,
}

impl Progress {
    /// Takes this process's slot for a fetch; `None` without the preload.
    pub fn start(started: Started<'_>) -> Option<Progress> {
        let slot = my_slot()?;
        let fetch = FETCHES.with(|f| {
            f.set(f.get() + 1);
            f.get()
        });
        let changes = slot.changes.fetch_add(1, Ordering::AcqRel);
        debug_assert!(changes % 2 == 0);
        // SAFETY: reads process globals.
        let (pid, database) = unsafe { (pg_sys::MyProcPid, pg_sys::MyDatabaseId) };
        slot.fetch.store(fetch, Ordering::Relaxed);
        slot.database.store(database.to_u32(), Ordering::Relaxed);
        slot.role.store(started.role.to_u32(), Ordering::Relaxed);
        slot.kind.store(started.kind as u32, Ordering::Relaxed);
        slot.state.store(State::Network as u32, Ordering::Relaxed);
        slot.run_id
            .store(started.run_id.unwrap_or(0), Ordering::Relaxed);
        slot.started.store(now_timestamp(), Ordering::Relaxed);
        slot.sets_total
            .store(started.sets.unwrap_or(0), Ordering::Relaxed);
        for counter in [
            &slot.sets_done,
            &slot.pages,
            &slot.rows,
            &slot.bytes,
            &slot.requests,
            &slot.retries,
            &slot.network_us,
            &slot.rows_us,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        let url = clip(started.url, URL_BYTES);
        for (cell, byte) in slot.url.iter().zip(url.bytes()) {
            cell.store(byte, Ordering::Relaxed);
        }
        slot.url_len.store(url.len() as u32, Ordering::Relaxed);
        slot.pid.store(pid, Ordering::Relaxed);
        slot.changes.fetch_add(1, Ordering::AcqRel);
        Some(Progress {
            slot,
            fetch,
            since: Cell::new(Instant::now()),
            last_set: Cell::new(0),
            sets_seen: Cell::new(0),
        })
    }

    fn mine(&self) -> bool {
        self.slot.fetch.load(Ordering::Relaxed) == self.fetch
    }

    /// Time from `since` to now, in microseconds, and now the new `since`.
    fn lap(&self) -> u64 {
        let now = Instant::now();
        let took = now.duration_since(self.since.replace(now));
        took.as_micros() as u64
    }

    /// The backend waits for the next page: the time since the last went to the rows.
    pub fn waiting(&self) {
        if self.mine() {
            self.slot.rows_us.fetch_add(self.lap(), Ordering::Relaxed);
            self.slot
                .state
                .store(State::Network as u32, Ordering::Relaxed);
        }
    }

    /// A step of the fetch came (a page or part of one, or api_request's response): the wait
    /// went to the network; the tries beyond a request's first are retries; with fan-out, the
    /// sets before the step's are done (rows come out set by set).
    pub fn count(&self, step: &crate::route::FetchStats, set: Option<&crate::spec::ParamSet>) {
        if !self.mine() {
            return;
        }
        let slot = self.slot;
        slot.network_us.fetch_add(self.lap(), Ordering::Relaxed);
        slot.state.store(State::Rows as u32, Ordering::Relaxed);
        slot.pages.fetch_add(step.pages, Ordering::Relaxed);
        slot.rows.fetch_add(step.rows, Ordering::Relaxed);
        slot.bytes.fetch_add(step.bytes, Ordering::Relaxed);
        slot.requests.fetch_add(step.requests, Ordering::Relaxed);
        slot.retries
            .fetch_add(step.requests.saturating_sub(1), Ordering::Relaxed);
        if let Some(set) = set {
            let id = Arc::as_ptr(set) as usize;
            if self.last_set.replace(id) != id {
                self.sets_seen.set(self.sets_seen.get() + 1);
                slot.sets_done
                    .store(self.sets_seen.get() - 1, Ordering::Relaxed);
            }
        }
    }

    /// The fetch has all its pages.
    pub fn finished(&self) {
        if self.mine() {
            self.slot
                .network_us
                .fetch_add(self.lap(), Ordering::Relaxed);
            self.slot.state.store(State::Rows as u32, Ordering::Relaxed);
            let total = self.slot.sets_total.load(Ordering::Relaxed);
            self.slot.sets_done.store(total, Ordering::Relaxed);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.mine() {
            self.slot.pid.store(0, Ordering::Release);
        }
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One slot's fetch, as `apisync.fetch_progress` shows it.
pub struct Seen {
    pub pid: i32,
    pub database: pg_sys::Oid,
    pub role: pg_sys::Oid,
    pub kind: &'static str,
    pub run_id: Option<i64>,
    pub started: i64,
    pub url: String,
    pub state: &'static str,
    pub sets_done: Option<i64>,
    pub sets_total: Option<i64>,
    pub pages: i64,
    pub rows: i64,
    pub bytes: i64,
    pub requests: i64,
    pub retries: i64,
    pub requests_in_flight: i32,
    pub network_ms: f64,
    pub rows_ms: f64,
}

/// The fetches in progress now; `None` without the preload.
pub fn fetches() -> Option<Vec<Seen>> {
    let slots = slots();
    if slots.is_empty() {
        return None;
    }
    let mut seen = Vec::new();
    for slot in slots {
        // A consistent copy: retried while its writer is in the middle of a change.
        for _ in 0..100 {
            let before = slot.changes.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let pid = slot.pid.load(Ordering::Acquire);
            if pid == 0 {
                break;
            }
            let len = (slot.url_len.load(Ordering::Relaxed) as usize).min(URL_BYTES);
            let url: Vec<u8> = slot.url[..len]
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            let kind = match slot.kind.load(Ordering::Relaxed) {
                1 => "api_fetch",
                2 => "api_request",
                3 => "run",
                _ => "suggest_table",
            };
            let state = if slot.state.load(Ordering::Relaxed) == State::Network as u32 {
                "waiting on the network"
            } else {
                "working on rows"
            };
            let total = slot.sets_total.load(Ordering::Relaxed) as i64;
            let count = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
            let row = Seen {
                pid,
                database: slot.database.load(Ordering::Relaxed).into(),
                role: slot.role.load(Ordering::Relaxed).into(),
                kind,
                run_id: Some(slot.run_id.load(Ordering::Relaxed)).filter(|id| *id != 0),
                started: slot.started.load(Ordering::Relaxed),
                url: String::from_utf8_lossy(&url).into_owned(),
                state,
                sets_done: (total > 0).then(|| count(&slot.sets_done)),
                sets_total: (total > 0).then_some(total),
                pages: count(&slot.pages),
                rows: count(&slot.rows),
                bytes: count(&slot.bytes),
                requests: count(&slot.requests),
                retries: count(&slot.retries),
                requests_in_flight: slot.in_flight.load(Ordering::Relaxed) as i32,
                network_ms: count(&slot.network_us) as f64 / 1000.0,
                rows_ms: count(&slot.rows_us) as f64 / 1000.0,
            };
            if slot.changes.load(Ordering::Acquire) == before {
                seen.push(row);
                break;
            }
        }
    }
    Some(seen)
}

/// `apisync.max_requests_in_flight` over the slots: a request takes a place while fewer than
/// `limit` are taken, counted under a spin lock held for the count alone.
pub struct Gate {
    slot: &'static Slot,
    limit: u32,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at most {} requests in flight", self.limit)
    }
}

impl Gate {
    /// The gate for this process's requests; `None` without the preload or a limit.
    pub fn for_this_process(limit: u32) -> Option<Arc<dyn RequestGate>> {
        if limit == 0 {
            return None;
        }
        let slot = my_slot()?;
        Some(Arc::new(Gate { slot, limit }))
    }
}

/// Runs `body` under the segment's spin lock, held for counting and taking places only.
fn under_lock<R>(body: impl FnOnce() -> R) -> R {
    let header = SHARED.load(Ordering::Acquire);
    // SAFETY: a slot exists, so the segment does, for the life of the server.
    let lock = unsafe { &(*header).gate_lock };
    while lock
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    let result = body();
    lock.store(false, Ordering::Release);
    result
}

/// The places counted by `count` over every slot.
fn taken(count: fn(&Slot) -> &AtomicU32) -> u32 {
    slots()
        .iter()
        .map(|s| count(s).load(Ordering::Relaxed))
        .sum()
}

/// A scheduler may start one more run while the scheduled runs of every database's scheduler
/// number fewer than `limit` (`apisync.max_parallel_jobs`), and no other scheduler has waited
/// longer for a place; one that may not starts waiting. Without the segment, by its own count.
pub fn take_scheduled_run(limit: u32, own: usize) -> bool {
    let Some(mine) = my_slot() else {
        return own < limit as usize;
    };
    under_lock(|| {
        let since = match mine.waiting_since.load(Ordering::Relaxed) {
            0 => now_timestamp(),
            since => since,
        };
        let first_in_line = slots().iter().all(|s| {
            let other = s.waiting_since.load(Ordering::Relaxed);
            std::ptr::eq(s, mine) || other == 0 || other >= since
        });
        if first_in_line && taken(|s| &s.scheduled_runs) < limit {
            mine.scheduled_runs.fetch_add(1, Ordering::Relaxed);
            mine.waiting_since.store(0, Ordering::Relaxed);
            true
        } else {
            mine.waiting_since.store(since, Ordering::Relaxed);
            false
        }
    })
}

/// This scheduler has no due run waiting (any more).
pub fn stop_waiting_for_runs() {
    if let Some(mine) = my_slot() {
        mine.waiting_since.store(0, Ordering::Relaxed);
    }
}

/// The runs this scheduler has going (after it saw some end, or one could not start).
pub fn set_scheduled_runs(count: usize) {
    if let Some(slot) = my_slot() {
        slot.scheduled_runs.store(count as u32, Ordering::Relaxed);
    }
}

impl RequestGate for Gate {
    fn try_enter(&self) -> bool {
        under_lock(|| {
            let entered = taken(|s| &s.in_flight) < self.limit;
            if entered {
                self.slot.in_flight.fetch_add(1, Ordering::Relaxed);
            }
            entered
        })
    }

    /// Never below zero: a leaving process zeroed its count.
    fn leave(&self) {
        let _ = self
            .slot
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}
