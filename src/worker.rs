//! The launcher and the scheduler, background workers that decide *when* scheduled jobs run.
//!
//! The launcher starts with the server (pg_apisync in shared_preload_libraries) and connects to no
//! database: it looks for each database of `apisync.database_name` and starts a scheduler there,
//! again if it stops. A missing database is one log line a minute, never a restart loop. The
//! scheduler, one per database (a lock of its own makes sure), waits for the extension to exist,
//! starts one run worker per due run (`jobs::run`) as run_job does — at most
//! `apisync.max_parallel_jobs` across every database, counted in shared memory — fails runs that
//! a crash interrupted, and trims the run history.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::jobs::catalog::{self, JobRow};
use crate::jobs::run::{check_owner, start_worker, Trigger};
use crate::jobs::Schedule;
use crate::settings;

/// How often the launcher and the scheduler look around.
const TICK: Duration = Duration::from_secs(1);
/// How often old runs are deleted.
const HISTORY_EVERY: Duration = Duration::from_secs(3600);
/// The least time between two starts of the scheduler.
const RESTART_EVERY: Duration = Duration::from_secs(5);
/// How often a missing database is logged.
const MISSING_LOG_EVERY: Duration = Duration::from_secs(60);

/// Registers the launcher; only while shared_preload_libraries loads us (the postmaster).
pub fn register() {
    // SAFETY: reads a postmaster flag during _PG_init.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("apisync launcher")
        .set_type("apisync launcher")
        .set_library("pg_apisync")
        .set_function("apisync_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// The scheduler of one database of `apisync.database_name`, as the launcher keeps it going.
struct SchedulerOf {
    name: String,
    running: Option<(DynamicBackgroundWorker, pg_sys::Oid)>,
    started: Option<Instant>,
    missing_logged: Option<Instant>,
}

impl SchedulerOf {
    /// Starts the scheduler of this database when it exists and none runs (at most once every
    /// RESTART_EVERY), or says once a minute that the database is missing.
    fn keep_going(&mut self) {
        let database = database_oid(&self.name);
        if self.running.as_ref().is_some_and(|(worker, oid)| {
            matches!(worker.pid(), Err(BackgroundWorkerStatus::Stopped)) || Some(*oid) != database
        }) {
            self.running = None;
        }
        let Some(database) = database else {
            if self
                .missing_logged
                .is_none_or(|at| at.elapsed() >= MISSING_LOG_EVERY)
            {
                log!(
                    "apisync launcher: database \"{}\" (apisync.database_name) does not exist; waiting for it",
                    self.name
                );
                self.missing_logged = Some(Instant::now());
            }
            return;
        };
        self.missing_logged = None;
        if self.running.is_some() || self.started.is_some_and(|at| at.elapsed() < RESTART_EVERY) {
            return;
        }
        self.started = Some(Instant::now());
        let worker = BackgroundWorkerBuilder::new(&format!("apisync scheduler {}", self.name))
            .set_type("apisync scheduler")
            .set_library("pg_apisync")
            .set_function("apisync_scheduler_main")
            .enable_spi_access()
            .set_extra(&database.to_u32().to_string())
            .set_restart_time(None)
            .load_dynamic();
        match worker {
            Ok(worker) => self.running = Some((worker, database)),
            Err(_) => warning!(
                "apisync launcher: could not start the scheduler of \"{}\" (max_worker_processes)",
                self.name
            ),
        }
    }
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn apisync_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: the launcher reads only pg_database, so a dropped database cannot stop it.
    BackgroundWorker::connect_worker_to_spi(None, None);
    // apisync.database_name is read at server start: the list never changes while this runs.
    let mut schedulers: Vec<SchedulerOf> = settings::database_names()
        .into_iter()
        .map(|name| SchedulerOf {
            name,
            running: None,
            started: None,
            missing_logged: None,
        })
        .collect();
    while BackgroundWorker::wait_latch(Some(TICK)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: what a worker does on SIGHUP, on its own thread.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        for scheduler in &mut schedulers {
            scheduler.keep_going();
        }
    }
    log!("apisync launcher stopped");
    // Exit code 1: the postmaster starts the launcher again (code 0 would unregister it). At
    // shutdown nothing is restarted anyway.
    // SAFETY: the worker's own exit, outside any transaction.
    unsafe { pg_sys::proc_exit(1) };
}

/// The OID of database `name`, if it exists: a heap scan of the shared pg_database, as the
/// autovacuum launcher reads it (a process with no database cannot use its index).
fn database_oid(name: &str) -> Option<pg_sys::Oid> {
    BackgroundWorker::transaction(|| {
        // SAFETY: a catalog scan in a transaction of the launcher, closed as it was opened; the
        // tuples are pg_database's, read while the scan holds them.
        unsafe {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let relation = pg_sys::table_open(
                pg_sys::DatabaseRelationId,
                pg_sys::AccessShareLock as pg_sys::LOCKMODE,
            );
            let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
            let mut found = None;
            loop {
                let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tuple.is_null() {
                    break;
                }
                let database = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
                let datname = std::ffi::CStr::from_ptr((*database).datname.data.as_ptr());
                if datname.to_bytes() == name.as_bytes() {
                    found = Some((*database).oid);
                    break;
                }
            }
            pg_sys::table_endscan(scan);
            pg_sys::table_close(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            pg_sys::PopActiveSnapshot();
            found
        }
    })
}

struct ScheduledJob {
    schedule_text: String,
    /// `apisync.timezone` when the next time was reckoned.
    zone: chrono_tz::Tz,
    schedule: Schedule,
    /// `None`: the schedule never fires again.
    next: Option<DateTime<Utc>>,
}

struct Launcher {
    jobs: HashMap<i64, ScheduledJob>,
    workers: Vec<DynamicBackgroundWorker>,
    history_trimmed: Option<Instant>,
    /// Job ids warned about (bad schedule, superuser owner), so the log says it once.
    warned: HashMap<i64, String>,
    /// Why no job runs here now (another version installed, the kill switch, a standby), said
    /// once in the log.
    idle: Option<String>,
    /// A due run of this round found no free place (`apisync.max_parallel_jobs`).
    blocked: bool,
}

/// The scheduler of one database (its OID in `bgw_extra`).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn apisync_scheduler_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = BackgroundWorker::get_extra()
        .parse::<u32>()
        .map(pg_sys::Oid::from)
        .unwrap_or_else(|_| error!("apisync scheduler: malformed database OID"));
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    // One scheduler per database: a scheduler started while an earlier one still runs (the
    // launcher was restarted) waits for it to end.
    while !BackgroundWorker::transaction(catalog::try_lock_scheduler) {
        if !BackgroundWorker::wait_latch(Some(TICK)) {
            return;
        }
    }
    log!("apisync scheduler started");
    let mut launcher = Launcher {
        jobs: HashMap::new(),
        workers: Vec::new(),
        history_trimmed: None,
        warned: HashMap::new(),
        idle: None,
        blocked: false,
    };
    while BackgroundWorker::wait_latch(Some(TICK)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: what a worker does on SIGHUP, on its own thread.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // An error in one round (the extension dropped under it, say) must not end the scheduler.
        let failed = PgTryBuilder::new(AssertUnwindSafe(|| {
            launcher.round();
            None
        }))
        .catch_others(|caught| Some(crate::jobs::run::describe(caught).0))
        .execute();
        if let Some(error) = failed {
            // SAFETY: leaves the failed transaction, as a worker's error recovery does.
            unsafe { pg_sys::AbortOutOfAnyTransaction() };
            warning!(
                "apisync scheduler: {}",
                error.lines().next().unwrap_or_default()
            );
        }
    }
    log!("apisync scheduler stopped");
}

/// Why the scheduler runs no job in this database now, if it does not: pg_apisync of another
/// version is installed (its catalog differs: its jobs wait for the update), the kill switch is
/// off, or the server is a standby (a run writes).
fn idle_reason(installed: Option<&str>) -> Option<String> {
    let library = env!("CARGO_PKG_VERSION");
    match installed {
        None => Some("pg_apisync is not installed".into()),
        Some(version) if version != library => Some(format!(
            "pg_apisync {version} is installed in this database and the library is {library}: no job runs until ALTER EXTENSION pg_apisync UPDATE"
        )),
        Some(_) => crate::jobs::run::may_run_here()
            .err()
            .map(|e| format!("{}: no scheduled job runs", e.message)),
    }
}

impl Launcher {
    fn round(&mut self) {
        self.workers
            .retain(|w| !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped)));
        crate::shmem::set_scheduled_runs(self.workers.len());
        let now = Utc::now();
        BackgroundWorker::transaction(AssertUnwindSafe(|| {
            let installed = crate::sql::read_one::<String>(
                "SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_apisync'",
                &[],
            )
            .ok()
            .flatten();
            if let Some(why) = idle_reason(installed.as_deref()) {
                self.jobs.clear();
                crate::shmem::stop_waiting_for_runs();
                if installed.is_some() && self.idle.as_ref() != Some(&why) {
                    log!("apisync scheduler: {why}");
                }
                self.idle = Some(why);
                return;
            }
            self.idle = None;
            let _ = crate::sql::run(
                "SET LOCAL search_path = pg_catalog, pg_temp; SET LOCAL lock_timeout = '5s'",
                &[],
            );
            catalog::fail_interrupted_runs(None);
            if self
                .history_trimmed
                .is_none_or(|at| at.elapsed() >= HISTORY_EVERY)
            {
                catalog::trim_history(settings::RUN_HISTORY_DAYS.get());
                self.history_trimmed = Some(Instant::now());
            }
            self.blocked = false;
            let scheduled = catalog::scheduled().unwrap_or_default();
            let ids: Vec<i64> = scheduled.iter().map(|job| job.job_id).collect();
            self.jobs.retain(|id, _| ids.contains(id));
            catalog::keep_next_runs_of(&ids);
            for job in &scheduled {
                self.consider(now, job);
            }
            if !self.blocked {
                crate::shmem::stop_waiting_for_runs();
            }
        }));
    }

    /// Starts a run of the job when it is due and a worker may be started.
    fn consider(&mut self, now: DateTime<Utc>, job: &JobRow) {
        let job_id = job.job_id;
        let text = job.args.schedule.as_deref().unwrap_or_default();
        let zone = settings::timezone();
        let known = self
            .jobs
            .get(&job_id)
            .is_some_and(|j| j.schedule_text == text && j.zone == zone);
        if !known {
            match Schedule::parse(text) {
                Ok(schedule) => {
                    let next = schedule.next_after(now, zone);
                    catalog::set_next_run(job_id, next);
                    self.jobs.insert(
                        job_id,
                        ScheduledJob {
                            schedule_text: text.into(),
                            zone,
                            schedule,
                            next,
                        },
                    );
                }
                Err(e) => {
                    let message = format!("apisync job {job_id} (\"{}\"): {}", job.name, e.message);
                    self.warn_once(job_id, message);
                }
            }
            return;
        }
        let Some(scheduled) = self.jobs.get_mut(&job_id) else {
            return;
        };
        // A schedule with no next occurrence never runs (never "every tick").
        let Some(next) = scheduled.next else {
            return;
        };
        if now < next {
            return;
        }
        let limit = settings::MAX_PARALLEL_JOBS.get().max(1) as u32;
        if !crate::shmem::take_scheduled_run(limit, self.workers.len()) {
            self.blocked = true;
            return; // due; tried again next round
        }
        // This occurrence is taken, run or not.
        scheduled.next = scheduled.schedule.next_after(now, scheduled.zone);
        catalog::set_next_run(job_id, scheduled.next);
        if let Err(e) = check_owner(job) {
            crate::shmem::set_scheduled_runs(self.workers.len());
            self.warn_once(job_id, format!("{}: not run", e.message));
            return;
        }
        match start_worker(job, Trigger::Schedule, None) {
            Ok((worker, _)) => self.workers.push(worker),
            Err(e) => warning!("apisync job {job_id} (\"{}\"): {}", job.name, e.message),
        }
        crate::shmem::set_scheduled_runs(self.workers.len());
    }

    fn warn_once(&mut self, job_id: i64, message: String) {
        if self.warned.get(&job_id) != Some(&message) {
            warning!("{message}");
            self.warned.insert(job_id, message);
        }
    }
}
