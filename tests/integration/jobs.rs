use super::*;

const FDL_BODY: &str =
    r#"'{"paging": {"pageSize": 10, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}'"#;
const FDL_PAGING: &str = r#"'{"type": "page_number", "in": "body", "page_param": "paging.pageNum", "size_param": "paging.pageSize", "page_size": 10, "total_path": "$.totalNum"}'"#;

/// A users table and a job loading it from the demo API with `write_method`.
fn users_job(client: &mut harness::Client, job: &str, write_method: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {job} (id bigint PRIMARY KEY, name text NOT NULL, email text, active boolean);
             SELECT apisync.create_job('{job}', '{job}', {}, 'POST', {FDL_BODY}, '$.data',
                                       paging => {FDL_PAGING}, write_method => '{write_method}');",
            lit(&api().url(&format!("/t-{job}/api/users")))
        ))
        .unwrap();
}

/// (status, rows_fetched, rows_inserted, rows_updated, rows_deleted, pages, requests) of run_job.
fn run(client: &mut harness::Client, job: &str) -> (String, i64, i64, i64, i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT status, rows_fetched, rows_inserted, rows_updated, rows_deleted, pages, requests
             FROM apisync.run_job($1)",
            &[&job],
        )
        .unwrap();
    (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
    )
}

fn count(client: &mut harness::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn append_and_replace_record_exact_counts() {
    let mut client = connect_as("api_user");
    users_job(&mut client, "job_append", "append");
    assert_eq!(
        run(&mut client, "job_append"),
        ("succeeded".into(), 57, 57, 0, 0, 6, 6)
    );
    assert_eq!(count(&mut client, "SELECT count(*) FROM job_append"), 57);
    let (code, _, _) = sql_error(client.batch_execute("SELECT apisync.run_job('job_append')"));
    assert_eq!(
        code, "23505",
        "appending the same keys again violates the primary key"
    );
    let failed: String = client
        .query_one("SELECT status || ' ' || sqlstate FROM apisync.job_runs WHERE job_name = 'job_append' ORDER BY run_id DESC LIMIT 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(failed, "failed 23505", "the failed run is recorded");

    users_job(&mut client, "job_replace", "replace");
    assert_eq!(run(&mut client, "job_replace").2, 57);
    assert_eq!(
        run(&mut client, "job_replace"),
        ("succeeded".into(), 57, 57, 0, 57, 6, 6)
    );
    assert_eq!(count(&mut client, "SELECT count(*) FROM job_replace"), 57);
}

#[test]
fn upsert_and_mirror_count_inserted_updated_and_deleted() {
    let mut client = connect_as("api_user");
    users_job(&mut client, "job_upsert", "upsert");
    client
        .batch_execute(
            "INSERT INTO job_upsert VALUES (1, 'stale', NULL, NULL), (1000, 'gone', NULL, NULL)",
        )
        .unwrap();
    let (status, fetched, inserted, updated, deleted, _, _) = run(&mut client, "job_upsert");
    assert_eq!(
        (status.as_str(), fetched, inserted, updated, deleted),
        ("succeeded", 57, 56, 1, 0)
    );
    let again = run(&mut client, "job_upsert");
    assert_eq!((again.2, again.3), (0, 0), "unchanged rows are not updated");
    assert_eq!(count(&mut client, "SELECT count(*) FROM job_upsert"), 58);

    client
        .batch_execute("SELECT apisync.alter_job('job_upsert', write_method => 'mirror')")
        .unwrap();
    let (_, _, inserted, updated, deleted, _, _) = run(&mut client, "job_upsert");
    assert_eq!((inserted, updated, deleted), (0, 0, 1));
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM job_upsert WHERE id = 1000"
        ),
        0
    );
}

#[test]
fn a_key_repeated_within_a_run_keeps_its_last_row() {
    let mut client = connect_as("api_user");
    let job = |name: &str, rows: &str| {
        format!(
            "SELECT apisync.create_job('{name}', 'job_repeat', {}, 'POST', '{{\"data\": {rows}}}',
                                       '$.body_json.data', write_method => 'upsert')",
            lit(&api().url("/echo"))
        )
    };
    client
        .batch_execute(&format!(
            "CREATE TABLE job_repeat (id bigint PRIMARY KEY, name text NOT NULL);
             INSERT INTO job_repeat VALUES (2, 'old');
             {}; {}",
            job(
                "job_repeat",
                r#"[{"id": 1, "name": "first"}, {"id": 2, "name": "new"}, {"id": 1, "name": "last"}]"#
            ),
            job("job_repeat_null", r#"[{"id": 3, "name": null}]"#)
        ))
        .unwrap();
    let (status, fetched, inserted, updated, ..) = run(&mut client, "job_repeat");
    assert_eq!(
        (status.as_str(), fetched, inserted, updated),
        ("succeeded", 3, 1, 1)
    );
    let rows: String = client
        .query_one(
            "SELECT string_agg(id || '=' || name, ',' ORDER BY id) FROM job_repeat",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, "1=last,2=new");
    let (code, message, _) =
        sql_error(client.batch_execute("SELECT apisync.run_job('job_repeat_null')"));
    assert_eq!(code, "23502", "{message}");
    assert!(
        message.contains("null value in column \"name\""),
        "{message}"
    );
}

#[test]
fn a_failed_run_leaves_the_target_as_it_was() {
    let mut client = connect_as("api_user");
    client
        .batch_execute(&format!(
            "CREATE TABLE job_atomic (id bigint, page int);
             INSERT INTO job_atomic VALUES (-1, 0);
             SELECT apisync.create_job('job_atomic', 'job_atomic', {}, path => '$.data', write_method => 'replace',
                 options => '{{\"retries\": 0}}',
                 paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"total_pages_path\": \"$.total_pages\"}}')",
            lit(&api().url("/slowpages?pages=5&size=10&ms=0&fail_page=3"))
        ))
        .unwrap();
    let (code, message, _) =
        sql_error(client.batch_execute("SELECT apisync.run_job('job_atomic')"));
    assert_eq!(code, "38000");
    assert!(
        message.starts_with("apisync job \"job_atomic\" (run "),
        "{message}"
    );
    assert!(
        message.contains("HTTP 500 Internal Server Error"),
        "{message}"
    );
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM job_atomic WHERE id = -1"),
        1
    );
    assert_eq!(count(&mut client, "SELECT count(*) FROM job_atomic"), 1);
    let row = client
        .query_one(
            "SELECT status, pages, sqlstate FROM apisync.job_runs WHERE job_name = 'job_atomic'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2)
        ),
        ("failed".into(), 2, "38000".into())
    );
}

#[test]
fn create_job_checks_everything_and_leaves_nothing_behind() {
    let mut client = connect_as("api_user");
    client
        .batch_execute("CREATE TABLE job_checked (id bigint PRIMARY KEY, v text); CREATE TABLE job_nokey (id bigint, v text)")
        .unwrap();
    let url = lit(&api().url("/never-called"));
    for (args, code, needle) in [
        (format!("'c1', 'job_checked', {url}, write_method => 'merge'"), "22023", "unknown write_method \"merge\""),
        (format!("'c2', 'job_nokey', {url}, write_method => 'upsert'"), "22023", "no primary key"),
        (format!("'c3', 'job_checked', {url}, write_method => 'upsert', key_columns => '{{v}}'"), "22023", "needs a unique index on (v)"),
        (format!("'c4', 'job_checked', {url}, path => 'data'"), "42601", "invalid JSONPath"),
        (format!("'c5', 'job_checked', {url}, options => '{{\"auth\": {{\"type\": \"bearer\", \"token\": \"t\"}}}}'"), "22023", "options.auth.token inline"),
        (format!("'c6', 'job_checked', {url}, schedule => '*/5 * * *'"), "22023", "a cron schedule has five fields"),
        (format!("'c7', 'job_checked', {url}, options => '{{\"columns\": {{\"nope\": \"$.x\"}}}}'"), "42703", "names column \"nope\""),
        (format!("'c8', 'pg_class', {url}"), "42501", "needs INSERT on pg_catalog.pg_class"),
        ("'c9', 'job_checked', 'ftp://x/'".to_string(), "22023", "unsupported URL scheme"),
    ] {
        let (got, message, _) = sql_error(client.batch_execute(&format!("SELECT apisync.create_job({args})")));
        assert_eq!(got, code, "{args}: {message}");
        assert!(message.contains(needle), "{args}: {message}");
    }
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM apisync.jobs WHERE name LIKE 'c_'"
        ),
        0
    );
    client
        .batch_execute(&format!(
            "SELECT apisync.create_job('c0', 'job_checked', {url})"
        ))
        .unwrap();
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT apisync.create_job('c0', 'job_checked', {url})"
    )));
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42710", "apisync job \"c0\" exists already")
    );
    client
        .batch_execute("SELECT apisync.drop_job('c0')")
        .unwrap();
    let (code, _, _) = sql_error(client.batch_execute("SELECT apisync.drop_job('c0')"));
    assert_eq!(code, "42704");
    assert_eq!(api().requests_to("/never-called"), 0);
}

#[test]
fn roles_see_their_own_jobs_and_runs_run_as_the_owner() {
    let mut owner = connect_as("api_user");
    users_job(&mut owner, "job_private", "append");
    assert_eq!(run(&mut owner, "job_private").0, "succeeded");
    let mut other = connect_as("other_user");
    assert_eq!(
        count(
            &mut other,
            "SELECT count(*) FROM apisync.jobs WHERE name = 'job_private'"
        ),
        0
    );
    assert_eq!(
        count(
            &mut other,
            "SELECT count(*) FROM apisync.job_runs WHERE job_name = 'job_private'"
        ),
        0
    );
    let (code, _, _) = sql_error(other.batch_execute("SELECT apisync.run_job('job_private')"));
    assert_eq!(code, "42704");
    assert_eq!(
        count(
            &mut connect(),
            "SELECT count(*) FROM apisync.job_runs WHERE job_name = 'job_private'"
        ),
        1
    );

    // The owner loses INSERT: the run, even started by a superuser, fails as the owner would.
    connect()
        .batch_execute(
            "REVOKE INSERT ON job_private FROM api_user; ALTER TABLE job_private OWNER TO postgres",
        )
        .unwrap();
    let (code, message, _) =
        sql_error(connect().batch_execute("SELECT apisync.run_job('job_private')"));
    assert_eq!(code, "42501", "{message}");
    assert!(
        message.contains("needs INSERT on public.job_private"),
        "{message}"
    );
}

#[test]
fn one_run_at_a_time_and_cancel_stops_the_worker() {
    let mut client = connect_as("api_user");
    client
        .batch_execute(&format!(
            "CREATE TABLE job_slow (id bigint, page int);
             SELECT apisync.create_job('job_slow', 'job_slow', {}, path => '$.data',
                 paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"total_pages_path\": \"$.total_pages\"}}')",
            lit(&api().url("/slowpages?pages=40&size=1&ms=250"))
        ))
        .unwrap();
    let first = std::thread::spawn(|| {
        let mut client = connect_as("api_user");
        client
            .batch_execute("SET statement_timeout = '3s'")
            .unwrap();
        let started = Instant::now();
        let (code, _, _) = sql_error(client.batch_execute("SELECT apisync.run_job('job_slow')"));
        (code, started.elapsed())
    });
    // Its progress shows once its worker has fetched a page (40 pages, 10 s in all: the 3 s
    // statement_timeout ends it first).
    let progress = harness::poll(3, || {
        client
            .query_opt(
                "SELECT progress FROM apisync.job_progress WHERE job_name = 'job_slow' AND progress LIKE '%pages%'",
                &[],
            )
            .unwrap()
            .map(|row| row.get::<_, String>(0))
    });
    assert!(progress.is_some(), "progress is visible");
    // To its owner only: another role sees neither the run nor its worker's progress line.
    let mut other = connect_as("other_user");
    let seen: i64 = other
        .query_one(
            "SELECT (SELECT count(*) FROM apisync.job_progress) + (SELECT count(*) FROM apisync._run_progress())",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "another role's progress is not shown");
    let skipped = run(&mut client, "job_slow");
    assert_eq!(skipped.0, "skipped");
    let (code, elapsed) = first.join().unwrap();
    assert_eq!(code, "57014");
    assert!(elapsed < Duration::from_millis(4500), "took {elapsed:?}");
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM job_slow"),
        0,
        "the cancelled run wrote nothing"
    );

    // The next run finds the cancelled one still marked running, and fails it.
    client
        .batch_execute(&format!(
            "SELECT apisync.alter_job('job_slow', url => {})",
            lit(&api().url("/slowpages?pages=2&size=1&ms=0"))
        ))
        .unwrap();
    // Once the cancelled run's worker has exited (its progress line gone with it), and with it
    // the run lock it held.
    assert!(harness::wait_until(10, || {
        client
            .query_one(
                "SELECT bool_and(progress IS NULL) FROM apisync.job_progress WHERE job_name = 'job_slow'",
                &[],
            )
            .unwrap()
            .get::<_, Option<bool>>(0)
            .unwrap_or(true)
    }));
    assert_eq!(run(&mut client, "job_slow").0, "succeeded");
    let statuses: String = client
        .query_one("SELECT string_agg(status || coalesce(':' || sqlstate, ''), ',' ORDER BY run_id) FROM apisync.job_runs WHERE job_name = 'job_slow'", &[])
        .unwrap()
        .get(0);
    assert_eq!(statuses, "failed:57P01,skipped,succeeded");
}

#[test]
fn pg_cron_runs_a_job() {
    let mut client = connect();
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        .unwrap();
    let mut owner = connect_as("api_user");
    users_job(&mut owner, "job_cron", "replace");
    client
        .batch_execute("SELECT cron.schedule('apisync-cron-test', '* * * * *', $$SELECT apisync.run_job('job_cron')$$)")
        .unwrap();
    client
        .batch_execute(
            "UPDATE cron.job SET username = 'api_user' WHERE jobname = 'apisync-cron-test'",
        )
        .unwrap();
    let landed = harness::poll(90, || {
        Some(count(&mut client, "SELECT count(*) FROM job_cron")).filter(|rows| *rows > 0)
    })
    .unwrap_or(0);
    client
        .batch_execute(
            "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = 'apisync-cron-test'",
        )
        .unwrap();
    assert_eq!(landed, 57, "pg_cron ran the job within 90 s");
    let status: String = client
        .query_one("SELECT status FROM apisync.job_runs WHERE job_name = 'job_cron' ORDER BY run_id LIMIT 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(status, "succeeded");
}
