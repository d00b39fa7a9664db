use super::*;

fn count(client: &mut harness::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

/// Waits up to `seconds` for `sql` to count at least `at_least`.
fn eventually(client: &mut harness::Client, sql: &str, at_least: i64, seconds: u64) -> i64 {
    let mut got = 0;
    harness::wait_until(seconds, || {
        got = count(client, sql);
        got >= at_least
    });
    got
}

/// The pid of the background worker of `backend_type` ("apisync launcher", "apisync scheduler").
fn worker_pid(client: &mut harness::Client, backend_type: &str) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = $1",
            &[&backend_type],
        )
        .unwrap()
        .map(|row| row.get(0))
}

#[test]
fn the_launcher_runs_scheduled_jobs_and_comes_back_when_killed() {
    let mut client = connect_as("api_user");
    client
        .batch_execute(&format!(
            "CREATE TABLE sched (id bigint PRIMARY KEY, name text);
             SELECT apisync.create_job('sched', 'sched', {}, 'POST',
                 '{{\"paging\": {{\"pageSize\": 100, \"pageNum\": 1}}}}', '$.data',
                 write_method => 'upsert', schedule => '1 seconds')",
            lit(&api().url("/api/users"))
        ))
        .unwrap();
    let scheduled = "SELECT count(*) FROM apisync.job_runs WHERE job_name = 'sched' AND trigger = 'schedule' AND status = 'succeeded'";
    assert!(
        eventually(&mut client, scheduled, 2, 20) >= 2,
        "two scheduled runs within 20 s"
    );
    assert_eq!(count(&mut client, "SELECT count(*) FROM sched"), 57);

    // The launcher starts the scheduler again when it is killed, and the postmaster the
    // launcher; either way the schedule goes on.
    let mut admin = connect();
    for killed in ["apisync scheduler", "apisync launcher"] {
        let before = worker_pid(&mut admin, killed).expect("the worker runs");
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&before])
            .unwrap();
        let after = harness::poll(20, || {
            worker_pid(&mut admin, killed).filter(|pid| *pid != before)
        });
        assert!(after.is_some(), "{killed} was started again");
        let runs = count(&mut client, scheduled);
        assert!(
            eventually(&mut client, scheduled, runs + 2, 20) >= runs + 2,
            "the schedule resumed after {killed} was killed"
        );
    }
    client
        .batch_execute("SELECT apisync.alter_job('sched', enabled => false)")
        .unwrap();
}

#[test]
fn an_api_that_is_down_fails_its_runs_and_the_schedule_goes_on() {
    let mut client = connect_as("api_user");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!(
        "http://127.0.0.1:{}/x",
        listener.local_addr().unwrap().port()
    );
    drop(listener);
    client
        .batch_execute(&format!(
            "CREATE TABLE down (id bigint);
             SELECT apisync.create_job('down', 'down', {}, options => '{{\"retries\": 0}}', schedule => '1 seconds')",
            lit(&down)
        ))
        .unwrap();
    let failed = "SELECT count(*) FROM apisync.job_runs WHERE job_name = 'down' AND status = 'failed' AND sqlstate = '08001'";
    assert!(
        eventually(&mut client, failed, 3, 20) >= 3,
        "three scheduled runs failed, one after another"
    );
    client
        .batch_execute("SELECT apisync.alter_job('down', enabled => false)")
        .unwrap();
}

#[test]
fn a_killed_run_worker_fails_its_run_and_the_next_run_works() {
    let mut client = connect_as("api_user");
    client
        .batch_execute(&format!(
            "CREATE TABLE killed (id bigint, page int);
             INSERT INTO killed VALUES (-1, 0);
             SELECT apisync.create_job('killed', 'killed', {}, path => '$.data', write_method => 'replace',
                 paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"total_pages_path\": \"$.total_pages\"}}')",
            lit(&api().url("/slowpages?pages=40&size=1&ms=100"))
        ))
        .unwrap();
    let running = std::thread::spawn(|| {
        sql_error(connect_as("api_user").batch_execute("SELECT apisync.run_job('killed')"))
    });
    let mut admin = connect();
    let worker = harness::poll(10, || {
        admin
            .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'apisync run' AND query LIKE '%pages%'", &[])
            .unwrap()
            .map(|row| row.get::<_, i32>(0))
    })
    .expect("the run worker reports progress");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&worker])
        .unwrap();
    let (code, message, _) = running.join().unwrap();
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("was interrupted"), "{message}");
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM killed WHERE id = -1"),
        1,
        "the target is unchanged"
    );

    client
        .batch_execute(&format!(
            "SELECT apisync.alter_job('killed', url => {})",
            lit(&api().url("/slowpages?pages=2&size=1&ms=0"))
        ))
        .unwrap();
    let row = client
        .query_one(
            "SELECT status, rows_inserted FROM apisync.run_job('killed')",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        ("succeeded".into(), 2)
    );
    let first: String = client
        .query_one("SELECT status || ':' || sqlstate FROM apisync.job_runs WHERE job_name = 'killed' ORDER BY run_id LIMIT 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(first, "failed:57P01");
}
