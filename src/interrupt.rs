//! The one place that blocks on tokio from the backend thread, while honouring cancel.

use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use tokio::runtime::Runtime;

use crate::error::{Error, Result};

/// How often a wait looks at the interrupt flags: a cancel stops a request within this.
const POLL: Duration = Duration::from_millis(50);

thread_local! {
    /// When the run of this process must stop, and `apisync.max_run_time` in ms (for the error).
    static DEADLINE: Cell<Option<(Instant, u32)>> = const { Cell::new(None) };
}

/// Gives the run of this process (a run worker) `max_ms` milliseconds from now: each wait on
/// the network stops there with an error. 0: no limit.
pub fn set_run_deadline(max_ms: u32) {
    let deadline = (max_ms > 0).then(|| {
        (
            Instant::now() + Duration::from_millis(max_ms.into()),
            max_ms,
        )
    });
    DEADLINE.with(|d| d.set(deadline));
}

/// The error of a run past its deadline, if it is.
fn overdue() -> Option<Error> {
    let (at, max_ms) = DEADLINE.with(Cell::get)?;
    (Instant::now() >= at).then(|| {
        Error::new(
            crate::error::SqlState::from_code("57014"),
            format!("the run took longer than apisync.max_run_time ({max_ms} ms) and was stopped"),
        )
    })
}

/// Runs `future` to completion on `runtime`, or stops it when the query is cancelled (user
/// cancel, statement_timeout, termination) or the run is past `apisync.max_run_time`. Postgres
/// is only entered after the future is gone: its ERROR must never unwind through a running
/// tokio poll.
pub fn wait<F: Future>(runtime: &Runtime, future: F) -> Result<F::Output> {
    pgrx::check_for_interrupts!();
    if let Some(error) = overdue() {
        return Err(error);
    }
    let finished = runtime.block_on(async {
        tokio::pin!(future);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                output = &mut future => return Some(output),
                _ = tick.tick() => if pending() || postmaster_gone() || overdue().is_some() { return None },
            }
        }
    });
    match finished {
        Some(output) => Ok(output),
        None if postmaster_gone() => Err(crate::error::Error::internal(
            "the postmaster died: the request was abandoned",
        )),
        None => {
            pgrx::check_for_interrupts!();
            // The run is past its time, or interrupts were held off: still stop, with the
            // cancel's own SQLSTATE.
            Err(overdue().unwrap_or_else(Error::cancelled))
        }
    }
}

/// What a cancel does to a background worker being waited for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnCancel {
    /// Terminate it (a run: its transaction is undone).
    Stop,
    /// Let it finish (an OAuth2 refresh: it stores what it got).
    LetFinish,
}

/// Waits on the latch until `worker` has exited (its state changes set the latch; `poll` bounds
/// each wait); `what` names it if the postmaster dies. A cancel stops the wait with the cancel's
/// ERROR, after `on_cancel`.
pub fn wait_for_worker(
    worker: pgrx::bgworkers::DynamicBackgroundWorker,
    what: &str,
    on_cancel: OnCancel,
    poll: std::time::Duration,
) -> Result<()> {
    use pgrx::bgworkers::BackgroundWorkerStatus;
    loop {
        match worker.pid() {
            Err(BackgroundWorkerStatus::Stopped) => return Ok(()),
            Err(BackgroundWorkerStatus::PostmasterDied) => {
                return Err(Error::internal(format!(
                    "the postmaster died during {what}"
                )))
            }
            _ => {}
        }
        if pending() {
            if on_cancel == OnCancel::Stop {
                let _ = worker.terminate();
            }
            pgrx::check_for_interrupts!();
            return Err(Error::cancelled());
        }
        sleep_on_latch(poll);
    }
}

/// Sleeps on the process latch for at most `timeout` (woken early by signals, such as a
/// background worker's state change).
pub fn sleep_on_latch(timeout: std::time::Duration) {
    // SAFETY: the backend's own latch, on the backend thread.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis() as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// A cancel or termination is waiting to be processed.
pub fn pending() -> bool {
    // SAFETY: plain reads of sig_atomic_t flags that signal handlers set; block_on polls this
    // future on the calling (backend) thread.
    unsafe {
        std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
            || std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
    }
}

/// The postmaster is gone: this process was handed to another parent. Checked while waiting on
/// the network, which no latch covers.
pub fn postmaster_gone() -> bool {
    // SAFETY: reads a global set at fork, and asks the kernel for the parent's pid.
    unsafe { libc::getppid() != pg_sys::PostmasterPid }
}
