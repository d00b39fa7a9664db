//! Every `apisync.*` setting, in one place. Read them on the backend thread only, into plain Rust
//! values (`limits()`), before any async code runs.

use std::ffi::{CStr, CString};

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

use std::sync::Arc;

use crate::error::{Error, Result, SqlState};
use crate::policy::NetworkPolicy;
use crate::spec::Limits;

const DEFAULT_USER_AGENT: &CStr = match CStr::from_bytes_with_nul(
    concat!("pg_apisync/", env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
) {
    Ok(agent) => agent,
    Err(_) => panic!("the user agent literal has an interior NUL"),
};

pub static HTTP_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
pub static MAX_RESPONSE_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024 * 1024);
pub static USER_AGENT: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_USER_AGENT));
pub static ENABLE_SUPERUSER_JOBS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static MAX_RUN_TIME: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static MAX_REQUESTS_IN_FLIGHT: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static TIMEZONE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"UTC"));
pub static DATABASE_NAME: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub static MAX_PARALLEL_JOBS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static RUN_HISTORY_DAYS: GucSetting<i32> = GucSetting::<i32>::new(30);
pub static MAX_PAGES: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static ALLOWED_HOSTS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"*"));
/// Link-local (cloud metadata at 169.254.169.254), IPv6 link-local, "this network", and the
/// metadata addresses of AWS over IPv6 (fd00:ec2::254) and Alibaba Cloud (100.100.100.200).
pub static DENIED_NETWORKS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(
    c"169.254.0.0/16, fe80::/10, 0.0.0.0/8, fd00:ec2::254/128, 100.100.100.200/32",
));

pub fn init() {
    GucRegistry::define_int_guc(
        c"apisync.http_timeout_ms",
        c"Time limit of one HTTP request, and the most options.timeout_ms may ask for.",
        c"Covers connecting, sending and reading the whole response.",
        &HTTP_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"apisync.max_response_bytes",
        c"Size limit of one HTTP response body, and the most options.max_response_bytes may ask for.",
        c"Counted while the body streams in, after decompression.",
        &MAX_RESPONSE_BYTES,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_string_guc(
        c"apisync.user_agent",
        c"User-Agent header sent with every request that does not set its own.",
        c"Empty sends no User-Agent.",
        &USER_AGENT,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"apisync.max_pages",
        c"Pages a paged fetch requests at most, unless its paging spec says otherwise.",
        c"Reaching it stops the fetch with a WARNING that the data was cut.",
        &MAX_PAGES,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"apisync.allowed_hosts",
        c"Hosts requests may go to: names and *.suffix patterns, comma-separated; * allows all.",
        c"Checked on every URL and redirect hop.",
        &ALLOWED_HOSTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"apisync.denied_networks",
        c"Networks requests may never reach, as CIDR, comma-separated.",
        c"Checked on the addresses actually connected to, after DNS, and on every redirect hop.",
        &DENIED_NETWORKS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"apisync.enabled",
        c"Whether pg_apisync makes requests and runs jobs at all.",
        c"Off refuses every request and every run: what a DBA sets on a restored copy of production.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"apisync.enable_superuser_jobs",
        c"Whether jobs owned by a superuser may run.",
        c"As pg_cron's cron.enable_superuser_jobs.",
        &ENABLE_SUPERUSER_JOBS,
        GucContext::Suset,
        GucFlags::default(),
    );
    // A server-start setting can only be defined while the server starts: without the preload
    // there is no launcher, and no setting for it.
    // SAFETY: reads a postmaster flag during _PG_init.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_string_guc(
            c"apisync.database_name",
            c"The databases whose scheduled jobs the background worker runs, comma-separated.",
            c"One scheduler per database; each waits for CREATE EXTENSION pg_apisync there.",
            &DATABASE_NAME,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"apisync.max_parallel_jobs",
        c"Scheduled runs the background worker keeps going at once.",
        c"Each run takes a background worker slot (max_worker_processes).",
        &MAX_PARALLEL_JOBS,
        1,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: the hook only reads the proposed value, as a check hook may (no allocation that
    // outlives it, no ERROR).
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"apisync.timezone",
            c"The time zone in which job schedules' cron fields are read.",
            c"An IANA name such as Europe/Berlin; a schedule may name its own with CRON_TZ=<zone>.",
            &TIMEZONE,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_timezone),
            None,
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"apisync.max_requests_in_flight",
        c"Requests in flight at once across every backend and run; 0 for no limit.",
        c"Counted in shared memory (needs the preload); a request waits for a free place.",
        &MAX_REQUESTS_IN_FLIGHT,
        0,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"apisync.max_run_time",
        c"Time a job run may take before it is stopped and failed; 0 for no limit.",
        c"Checked while the run waits on the network, at least every 50 ms.",
        &MAX_RUN_TIME,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"apisync.run_history_days",
        c"Days apisync.job_runs keeps finished runs.",
        c"The background worker deletes older runs, with their rejected rows.",
        &RUN_HISTORY_DAYS,
        1,
        36500,
        GucContext::Sighup,
        GucFlags::default(),
    );
    reserve_prefix();
}

/// `apisync.timezone` accepts the IANA names the scheduler knows.
unsafe extern "C-unwind" fn check_timezone(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL hands a valid pointer to the proposed value (NULL for none).
    let value = unsafe {
        if newval.is_null() || (*newval).is_null() {
            return true;
        }
        CStr::from_ptr(*newval)
    };
    value
        .to_str()
        .is_ok_and(|name| crate::jobs::parse_zone(name).is_ok())
}

/// `apisync.timezone`, where job schedules' cron fields are read (its check hook admits only
/// zones that parse).
pub fn timezone() -> chrono_tz::Tz {
    crate::jobs::parse_zone(&text(&TIMEZONE)).unwrap_or(chrono_tz::UTC)
}

/// `apisync.database_name`: the databases whose jobs the launcher schedules, comma-separated
/// (each once, in the order given).
pub fn database_names() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in text(&DATABASE_NAME).split(',').map(str::trim) {
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// A misspelt `apisync.*` setting is an error rather than a silent placeholder.
#[cfg(not(any(feature = "pg13", feature = "pg14")))]
fn reserve_prefix() {
    // SAFETY: called from _PG_init on the backend thread with a static C string.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"apisync".as_ptr()) }
}

#[cfg(any(feature = "pg13", feature = "pg14"))]
fn reserve_prefix() {}

fn text(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|value| value.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The kill switch, asked before every request (the fetch route, api_request, a token exchange)
/// and every run. Checking, creating, changing and dropping jobs stay allowed: a DBA may tidy a
/// restored copy with the switch off.
pub fn require_enabled() -> Result<()> {
    if ENABLED.get() {
        return Ok(());
    }
    Err(Error::new(
        SqlState::from_code("55000"),
        "pg_apisync is switched off on this server (apisync.enabled = off): no request is made and no job runs",
    )
    .with_hint("a superuser sets apisync.enabled = on in postgresql.conf and reloads"))
}

/// The settings that bound a request, as plain values for the Postgres-free code.
pub fn limits() -> Result<Limits> {
    let policy = NetworkPolicy::parse(&text(&ALLOWED_HOSTS), &text(&DENIED_NETWORKS))?;
    Ok(Limits {
        http_timeout_ms: HTTP_TIMEOUT_MS.get().max(1) as u64,
        max_response_bytes: MAX_RESPONSE_BYTES.get().max(1) as u64,
        user_agent: text(&USER_AGENT),
        max_pages: MAX_PAGES.get().max(1) as u32,
        policy: Arc::new(policy),
        gate: crate::shmem::Gate::for_this_process(MAX_REQUESTS_IN_FLIGHT.get().max(0) as u32),
    })
}
