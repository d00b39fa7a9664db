//! Faults that need a cluster of their own.

use super::*;
use harness::{private_cluster, wait_until, Client};

fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

fn wait_for(client: &mut Client, sql: &str, seconds: u64) -> bool {
    wait_until(seconds, || {
        client
            .query_one(sql, &[])
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    })
}

fn slow_job(client: &mut Client, name: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {name} (id bigint, page int);
             INSERT INTO {name} VALUES (-1, 0);
             SELECT apisync.create_job('{name}', '{name}', {}, path => '$.data', write_method => 'replace',
                 paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"total_pages_path\": \"$.total_pages\"}}')",
            lit(&api().url("/slowpages?pages=100&size=1&ms=100"))
        ))
        .unwrap();
}

const RUN_WORKER_BUSY: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'apisync run' AND query LIKE '%pages%')";

#[test]
fn a_restart_mid_run_fails_the_run_and_leaves_the_target_unchanged() {
    let cluster = private_cluster();
    let mut client = cluster.connect();
    slow_job(&mut client, "restarted");
    let port = cluster.port;
    let running = std::thread::spawn(move || {
        let config = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
        let mut client = postgres::Client::connect(&config, postgres::NoTls).unwrap();
        client
            .batch_execute("SELECT apisync.run_job('restarted')")
            .is_err()
    });
    assert!(
        wait_for(&mut client, RUN_WORKER_BUSY, 10),
        "the run is under way"
    );
    cluster.restart();
    assert!(
        running.join().unwrap(),
        "run_job's session ended with the restart"
    );
    let mut client = cluster.connect();
    assert!(
        wait_for(&mut client, "SELECT status = 'failed' AND sqlstate = '57P01' FROM apisync.job_runs WHERE job_name = 'restarted'", 20),
        "the launcher failed the interrupted run"
    );
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM restarted WHERE id = -1"),
        1
    );
    assert_eq!(count(&mut client, "SELECT count(*) FROM restarted"), 1);
    client
        .batch_execute(&format!(
            "SELECT apisync.alter_job('restarted', url => {})",
            lit(&api().url("/slowpages?pages=2&size=1&ms=0"))
        ))
        .unwrap();
    let status: String = client
        .query_one("SELECT status FROM apisync.run_job('restarted')", &[])
        .unwrap()
        .get(0);
    assert_eq!(status, "succeeded");

    // The job belongs to a superuser: with the setting off it does not run.
    let (code, message, _) = sql_error(client.batch_execute(
        "SET apisync.enable_superuser_jobs = off; SELECT apisync.run_job('restarted')",
    ));
    assert_eq!(code, "42501");
    assert!(
        message.contains("apisync.enable_superuser_jobs is off"),
        "{message}"
    );
}

#[test]
fn drop_extension_and_drop_database_under_running_workers() {
    let cluster = private_cluster();
    let mut admin = cluster.connect();
    // The launcher goes on when the extension goes away, and picks it up again.
    admin
        .batch_execute(&format!(
            "CREATE TABLE ticks (id bigint PRIMARY KEY, name text);
             SELECT apisync.create_job('ticks', 'ticks', {}, 'POST', '{{\"paging\": {{\"pageSize\": 100, \"pageNum\": 1}}}}', '$.data',
                 write_method => 'upsert', schedule => '1 seconds')",
            lit(&api().url("/api/users"))
        ))
        .unwrap();
    assert!(wait_for(
        &mut admin,
        "SELECT count(*) > 0 FROM apisync.job_runs WHERE status = 'succeeded'",
        15
    ));
    let scheduler = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'apisync scheduler'";
    let before: i32 = admin.query_one(scheduler, &[]).unwrap().get(0);
    admin
        .batch_execute("DROP EXTENSION pg_apisync CASCADE")
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // The same process: it went on, rather than dying and being started again.
    let after: i32 = admin.query_one(scheduler, &[]).unwrap().get(0);
    assert_eq!(before, after, "the scheduler survived DROP EXTENSION");
    admin
        .batch_execute(&format!(
            "CREATE EXTENSION pg_apisync;
             SELECT apisync.create_job('ticks', 'ticks', {}, 'POST', '{{\"paging\": {{\"pageSize\": 100, \"pageNum\": 1}}}}', '$.data',
                 write_method => 'upsert', schedule => '1 seconds')",
            lit(&api().url("/api/users"))
        ))
        .unwrap();
    assert!(
        wait_for(
            &mut admin,
            "SELECT count(*) > 0 FROM apisync.job_runs WHERE status = 'succeeded'",
            15
        ),
        "scheduling resumed"
    );

    // A database dropped (with FORCE) under a running run worker.
    admin.batch_execute("CREATE DATABASE doomed").unwrap();
    let config = format!(
        "host=127.0.0.1 port={} user=postgres dbname=doomed",
        cluster.port
    );
    let mut doomed = postgres::Client::connect(&config, postgres::NoTls).unwrap();
    doomed.batch_execute("CREATE EXTENSION pg_apisync").unwrap();
    slow_job(&mut doomed, "doomed_job");
    let running = std::thread::spawn(move || {
        doomed
            .batch_execute("SELECT apisync.run_job('doomed_job')")
            .is_err()
    });
    assert!(
        wait_for(&mut admin, RUN_WORKER_BUSY, 10),
        "the run is under way"
    );
    admin
        .batch_execute("DROP DATABASE doomed WITH (FORCE)")
        .unwrap();
    assert!(
        running.join().unwrap(),
        "run_job's session ended with its database"
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM pg_database WHERE datname = 'doomed'"
        ),
        0
    );
    assert!(wait_for(&mut admin, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'apisync launcher')", 5), "no crash");
    assert!(
        !cluster.log().contains("terminated by signal"),
        "no process crashed:\n{}",
        cluster.log()
    );
}

#[test]
fn a_missing_database_is_waited_for_not_restarted_for() {
    let cluster = private_cluster();
    cluster
        .connect()
        .batch_execute("ALTER SYSTEM SET apisync.database_name = 'nowhere'")
        .unwrap();
    cluster.restart();
    let mut admin = cluster.connect();
    let launcher = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'apisync launcher'";
    assert!(wait_for(
        &mut admin,
        &format!("SELECT EXISTS ({launcher})"),
        10
    ));
    let before: i32 = admin.query_one(launcher, &[]).unwrap().get(0);
    std::thread::sleep(Duration::from_secs(7));
    let after: i32 = admin.query_one(launcher, &[]).unwrap().get(0);
    assert_eq!(before, after, "the launcher waits; it is not restarted");
    let said = cluster
        .log()
        .matches("database \"nowhere\" (apisync.database_name) does not exist")
        .count();
    assert_eq!(said, 1, "one line a minute:\n{}", cluster.log());

    // The database appears: its scheduler starts and runs its jobs.
    admin.batch_execute("CREATE DATABASE nowhere").unwrap();
    let config = format!(
        "host=127.0.0.1 port={} user=postgres dbname=nowhere",
        cluster.port
    );
    let mut nowhere = postgres::Client::connect(&config, postgres::NoTls).unwrap();
    nowhere
        .batch_execute(&format!(
            "CREATE EXTENSION pg_apisync;
             CREATE TABLE ticks (id bigint PRIMARY KEY, name text);
             SELECT apisync.create_job('ticks', 'ticks', {}, 'POST', '{{}}', '$.data',
                 write_method => 'upsert', schedule => '1 seconds')",
            lit(&api().url("/api/users"))
        ))
        .unwrap();
    assert!(
        wait_for(
            &mut nowhere,
            "SELECT count(*) > 0 FROM apisync.job_runs WHERE status = 'succeeded'",
            20
        ),
        "the scheduler runs the jobs of the database once it exists"
    );
    nowhere
        .batch_execute("SELECT apisync.alter_job('ticks', enabled => false)")
        .unwrap();
}

#[test]
fn a_request_notices_the_postmaster_dying() {
    let cluster = private_cluster();
    let postmaster: i32 = std::fs::read_to_string(cluster.dir.join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("the postmaster's pid");
    let mut client = cluster.connect();
    let slow = lit(&api().url("/slow?ms=20000"));
    let waiting = std::thread::spawn(move || {
        let started = Instant::now();
        let failed = client
            .batch_execute(&format!(
                "SELECT * FROM api_fetch({slow}, options => '{{\"timeout_ms\": 30000}}')"
            ))
            .is_err();
        (failed, started.elapsed())
    });
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: a signal to the cluster's own postmaster, which this test started.
    unsafe { libc::kill(postmaster, libc::SIGKILL) };
    let (failed, elapsed) = waiting.join().unwrap();
    assert!(failed, "the request ended with an error");
    assert!(
        elapsed < Duration::from_secs(8),
        "the wait noticed the postmaster's death, not the 20 s answer: {elapsed:?}"
    );
}
