//! The launcher: a background worker started with the server (pg_apisync in
//! shared_preload_libraries) that decides *when* scheduled jobs run, and starts one run worker per
//! due run (`jobs::run`), as run_job does. It waits for the extension to exist in
//! `apisync.database_name`, fails runs that a crash interrupted, and trims the run history.

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

/// How often the launcher looks at the schedule.
const TICK: Duration = Duration::from_secs(1);
/// How often old runs are deleted.
const HISTORY_EVERY: Duration = Duration::from_secs(3600);

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

struct ScheduledJob {
    schedule_text: String,
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
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn apisync_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = settings::database_name();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("apisync launcher started in database \"{database}\"");
    let mut launcher = Launcher {
        jobs: HashMap::new(),
        workers: Vec::new(),
        history_trimmed: None,
        warned: HashMap::new(),
    };
    while BackgroundWorker::wait_latch(Some(TICK)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: what a worker does on SIGHUP, on its own thread.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // An error in one round (the extension dropped under it, say) must not end the launcher.
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
                "apisync launcher: {}",
                error.lines().next().unwrap_or_default()
            );
        }
    }
    log!("apisync launcher stopped");
    // Exit code 1: the postmaster starts the launcher again (code 0 would unregister it). At
    // shutdown nothing is restarted anyway.
    // SAFETY: the worker's own exit, outside any transaction.
    unsafe { pg_sys::proc_exit(1) };
}

impl Launcher {
    fn round(&mut self) {
        self.workers
            .retain(|w| !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped)));
        let now = Utc::now();
        BackgroundWorker::transaction(AssertUnwindSafe(|| {
            let installed = Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_apisync')",
            )
            .ok()
            .flatten()
            .unwrap_or(false);
            if !installed {
                self.jobs.clear();
                return;
            }
            let _ = Spi::run(
                "SET LOCAL search_path = pg_catalog, pg_temp; SET LOCAL lock_timeout = '5s'",
            );
            catalog::fail_interrupted_runs(None);
            if self
                .history_trimmed
                .is_none_or(|at| at.elapsed() >= HISTORY_EVERY)
            {
                catalog::trim_history(settings::RUN_HISTORY_DAYS.get());
                self.history_trimmed = Some(Instant::now());
            }
            for job in catalog::scheduled().unwrap_or_default() {
                self.consider(now, &job);
            }
        }));
    }

    /// Starts a run of the job when it is due and a worker may be started.
    fn consider(&mut self, now: DateTime<Utc>, job: &JobRow) {
        let job_id = job.job_id;
        let text = job.args.schedule.as_deref().unwrap_or_default();
        let known = self
            .jobs
            .get(&job_id)
            .is_some_and(|j| j.schedule_text == text);
        if !known {
            match Schedule::parse(text) {
                Ok(schedule) => {
                    let next = schedule.next_after(now);
                    self.jobs.insert(
                        job_id,
                        ScheduledJob {
                            schedule_text: text.into(),
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
        let limit = settings::MAX_PARALLEL_JOBS.get().max(1) as usize;
        if self.workers.len() >= limit {
            return; // due; tried again next round
        }
        // This occurrence is taken, run or not.
        scheduled.next = scheduled.schedule.next_after(now);
        if let Err(e) = check_owner(job) {
            self.warn_once(job_id, format!("{}: not run", e.message));
            return;
        }
        match start_worker(job, Trigger::Schedule, None) {
            Ok((worker, _)) => self.workers.push(worker),
            Err(e) => warning!("apisync job {job_id} (\"{}\"): {}", job.name, e.message),
        }
    }

    fn warn_once(&mut self, job_id: i64, message: String) {
        if self.warned.get(&job_id) != Some(&message) {
            warning!("{message}");
            self.warned.insert(job_id, message);
        }
    }
}
