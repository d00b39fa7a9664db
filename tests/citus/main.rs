//! pg_apisync in a Citus cluster on loopback (a coordinator and two workers, `harness::citus`),
//! against devapi: what a user of a distributed database sees. Needs Citus installed
//! (`scripts/citus.sh`); `scripts/test.sh` runs this as a tier of its own.

use std::time::Instant;

use harness::{api, citus, lit, sql_error, wait_until, Citus, Client};

const USERS: &str = "/api/users?pageSize=100";

fn coordinator() -> Client {
    citus().coordinator.connect()
}

fn one<T: for<'a> postgres::types::FromSql<'a>>(client: &mut Client, sql: &str) -> T {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {:?}", e.as_db_error().map(|d| d.message())))
        .get(0)
}

#[test]
fn insert_select_loads_exact_rows_into_distributed_and_reference_tables() {
    let mut admin = coordinator();
    admin
        .batch_execute(
            "CREATE TABLE dist_users (id bigint PRIMARY KEY, name text, city text, active boolean);
             SELECT create_distributed_table('dist_users', 'id');
             CREATE TABLE ref_users (id bigint PRIMARY KEY, name text, city text, active boolean);
             SELECT create_reference_table('ref_users');
             GRANT SELECT, INSERT ON dist_users, ref_users TO api_user;",
        )
        .unwrap();
    // As a role without superuser rights: the call runs on the coordinator, which routes the rows.
    let mut user = citus().coordinator.connect_as("api_user");
    let url = lit(&api().url(USERS));
    for table in ["dist_users", "ref_users"] {
        user.batch_execute(&format!(
            "INSERT INTO {table} SELECT * FROM api_fetch({url}, path => '$.data', row_type => NULL::{table})"
        ))
        .unwrap();
        assert_eq!(
            one::<String>(
                &mut user,
                &format!("SELECT count(*) || ' ' || sum(id) || ' ' || count(*) FILTER (WHERE active) FROM {table}")
            ),
            "57 1653 43",
            "{table}"
        );
    }
    // The distributed table's rows are on both workers' shards, each row once.
    let mut admin = coordinator();
    assert_eq!(
        one::<i64>(
            &mut admin,
            "SELECT sum(result::bigint)::bigint FROM run_command_on_shards('dist_users', 'SELECT count(*) FROM %s')"
        ),
        57
    );
    assert_eq!(
        one::<i64>(
            &mut admin,
            "SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = 'dist_users'::regclass"
        ),
        2
    );
    // The reference table's every placement holds every row.
    assert_eq!(
        one::<String>(
            &mut admin,
            "SELECT string_agg(DISTINCT result, ',') FROM run_command_on_placements('ref_users', 'SELECT count(*) FROM %s')"
        ),
        "57"
    );
}

#[test]
fn jobs_append_replace_and_upsert_into_a_distributed_table() {
    let mut admin = coordinator();
    let url = lit(&api().url(USERS));
    admin
        .batch_execute(
            "CREATE TABLE synced (id bigint PRIMARY KEY, name text, city text, active boolean);
             SELECT create_distributed_table('synced', 'id');",
        )
        .unwrap();
    let run = |client: &mut Client, job: &str| -> String {
        one(
            client,
            &format!(
                "SELECT status || ' ' || rows_inserted || ' ' || rows_updated || ' ' || rows_deleted FROM apisync.run_job('{job}')"
            ),
        )
    };
    for (job, method) in [
        ("append_job", "append"),
        ("replace_job", "replace"),
        ("upsert_job", "upsert"),
    ] {
        admin
            .batch_execute(&format!(
                "SELECT apisync.create_job('{job}', 'synced', {url}, path => '$.data', write_method => '{method}')"
            ))
            .unwrap();
    }
    assert_eq!(run(&mut admin, "append_job"), "succeeded 57 0 0");
    assert_eq!(run(&mut admin, "replace_job"), "succeeded 57 0 57");
    admin
        .batch_execute(
            "UPDATE synced SET name = 'stale' WHERE id <= 5; DELETE FROM synced WHERE id > 50",
        )
        .unwrap();
    assert_eq!(run(&mut admin, "upsert_job"), "succeeded 7 5 0");
    assert_eq!(
        one::<String>(
            &mut admin,
            "SELECT count(*) || ' ' || count(*) FILTER (WHERE name = 'stale') FROM synced"
        ),
        "57 0"
    );
}

#[test]
fn the_coordinator_runs_scheduled_jobs() {
    let mut admin = coordinator();
    admin
        .batch_execute(
            "CREATE TABLE scheduled (id bigint PRIMARY KEY, name text, city text, active boolean);
             SELECT create_distributed_table('scheduled', 'id');
             GRANT SELECT, INSERT, DELETE, TRUNCATE ON scheduled TO api_user;",
        )
        .unwrap();
    let mut user = citus().coordinator.connect_as("api_user");
    user.batch_execute(&format!(
        "SELECT apisync.create_job('every_second', 'scheduled', {}, path => '$.data',
             write_method => 'replace', schedule => '1 seconds')",
        lit(&api().url(USERS))
    ))
    .unwrap();
    let ran = wait_until(30, || {
        one::<i64>(
            &mut user,
            "SELECT count(*) FROM apisync.job_runs WHERE job_name = 'every_second' AND trigger = 'schedule' AND status = 'succeeded'",
        ) >= 2
    });
    assert!(ran, "{}", citus().coordinator.log());
    user.batch_execute("SELECT apisync.alter_job('every_second', enabled => false)")
        .unwrap();
    assert_eq!(
        one::<String>(
            &mut user,
            "SELECT count(*) || ' ' || sum(id) FROM scheduled"
        ),
        "57 1653"
    );
}

#[test]
fn a_worker_node_makes_no_request_and_runs_no_job() {
    let citus = citus();
    let url = lit(&api().url(USERS));
    let worker = &citus.workers[0];
    let mut on_worker = worker.connect();
    // A job stored in a worker's own catalog (CREATE EXTENSION put one there) runs neither by
    // hand nor by the worker's scheduler.
    on_worker
        .batch_execute(&format!(
            "CREATE TABLE local_users (id bigint, name text, city text, active boolean);
             SELECT apisync.create_job('on_worker', 'local_users', {url}, path => '$.data', schedule => '1 seconds');"
        ))
        .unwrap();
    for sql in [
        "SELECT apisync.run_job('on_worker')".to_string(),
        format!("SELECT count(*) FROM api_fetch({url}, path => '$.data')"),
        format!("SELECT status FROM api_request({url})"),
    ] {
        let (code, message, _) = sql_error(on_worker.batch_execute(&sql));
        assert_eq!(code, "0A000", "{sql}: {message}");
        assert!(message.contains("Citus coordinator only"), "{message}");
    }
    assert!(
        wait_until(20, || worker.log().contains(
            "this database is a Citus worker node: no scheduled job runs"
        )),
        "{}",
        worker.log()
    );
    assert_eq!(
        one::<i64>(&mut on_worker, "SELECT count(*) FROM apisync.job_runs"),
        0
    );

    // A call Citus pushes down to the workers (a select list over a distributed table's rows)
    // fails with that reason, not with a missing secret or grant.
    let mut admin = coordinator();
    admin
        .batch_execute(
            "CREATE TABLE pushed (id bigint PRIMARY KEY); SELECT create_distributed_table('pushed', 'id');
             INSERT INTO pushed SELECT generate_series(1, 10);",
        )
        .unwrap();
    let echo = lit(&api().url("/echo?id="));
    let (code, message, _) =
        sql_error(admin.batch_execute(&format!("SELECT api_request({echo} || id) FROM pushed")));
    assert_eq!(code, "0A000", "{message}");
    assert!(message.contains("Citus coordinator only"), "{message}");
}

#[test]
fn mirror_into_a_distributed_table_and_keys_without_the_distribution_column() {
    let mut admin = coordinator();
    let url = lit(&api().url(USERS));
    admin
        .batch_execute(&format!(
            "CREATE TABLE mirrored (id bigint PRIMARY KEY, name text, city text, active boolean);
             SELECT create_distributed_table('mirrored', 'id');
             INSERT INTO mirrored VALUES (1000, 'gone', NULL, NULL), (1, 'stale', NULL, NULL);
             SELECT apisync.create_job('mirror_job', 'mirrored', {url}, path => '$.data', write_method => 'mirror');"
        ))
        .unwrap();
    assert_eq!(
        one::<String>(
            &mut admin,
            "SELECT status || ' ' || rows_inserted || ' ' || rows_updated || ' ' || rows_deleted FROM apisync.run_job('mirror_job')"
        ),
        "succeeded 56 1 1"
    );
    assert_eq!(
        one::<String>(&mut admin, "SELECT count(*) || ' ' || max(id) || ' ' || count(*) FILTER (WHERE name = 'stale') FROM mirrored"),
        "57 57 0"
    );
    // Keys that leave out the distribution column: refused, naming it, with a hint one can
    // follow (Citus forbids the unique index the general error would ask for).
    admin
        .batch_execute(
            "CREATE TABLE by_email (id bigint, email text, name text);
             SELECT create_distributed_table('by_email', 'id');",
        )
        .unwrap();
    let error = admin
        .batch_execute(&format!(
            "SELECT apisync.create_job('by_email', 'by_email', {url}, path => '$.data', write_method => 'upsert', key_columns => '{{email}}')"
        ))
        .unwrap_err();
    let error = error.as_db_error().expect("a server error");
    assert_eq!(error.code().code(), "0A000", "{}", error.message());
    assert!(
        error
            .message()
            .contains("include its distribution column id"),
        "{}",
        error.message()
    );
    // A hint one can follow: not the unique index on (email) that Citus would refuse.
    assert_eq!(
        error.hint(),
        Some("give key_columns that include id, or write with append or replace")
    );
}

#[test]
fn a_run_a_worker_drops_out_of_fails_whole_and_the_next_succeeds() {
    // A cluster of its own: a worker goes down in the middle.
    let citus = Citus::start();
    let mut admin = citus.coordinator.connect();
    admin
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, name text, score numeric, email text,
                                  created_at timestamptz, active boolean, tags text[]);
             SELECT create_distributed_table('events', 'id');
             GRANT SELECT, INSERT ON events TO api_user;",
        )
        .unwrap();
    // 20 pages of 100 rows, each answered after 200 ms: the run is still fetching when the
    // worker stops.
    let url = lit(&api().url("/rows?n=100&total=2000&ms=200"));
    let mut user = citus.coordinator.connect_as("api_user");
    user.batch_execute(&format!(
        "SELECT apisync.create_job('events', 'events', {url}, path => '$.data',
             paging => '{{\"type\": \"offset\", \"offset_param\": \"offset\", \"page_size\": 100, \"total_path\": \"$.total\"}}')"
    ))
    .unwrap();
    let run = std::thread::spawn(move || {
        sql_error(user.batch_execute("SELECT apisync.run_job('events')"))
    });
    assert!(
        wait_until(20, || one::<i64>(
            &mut admin,
            "SELECT coalesce(max(pages), 0) FROM apisync.fetch_progress WHERE run_id IS NOT NULL",
        ) >= 4),
        "the run never got to its fourth page"
    );
    let down = &citus.workers[1];
    down.kill();
    let (code, message, _) = run.join().unwrap();
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.starts_with("apisync job \"events\" (run 1) failed: connection to the remote node")
            && message.contains(&format!("127.0.0.1:{}", down.port)),
        "{message}"
    );
    down.start_again();
    // Nothing of the failed run is anywhere: not on the coordinator's view, not on any shard.
    let mut admin = citus.coordinator.connect();
    assert_eq!(one::<i64>(&mut admin, "SELECT count(*) FROM events"), 0);
    assert_eq!(
        one::<i64>(
            &mut admin,
            "SELECT sum(result::bigint)::bigint FROM run_command_on_shards('events', 'SELECT count(*) FROM %s')"
        ),
        0
    );
    assert_eq!(
        one::<String>(&mut admin, "SELECT status || ' ' || rows_inserted || ' ' || sqlstate FROM apisync.job_runs WHERE run_id = 1"),
        "failed 0 08006"
    );
    // The next run, with the worker back, loads every row.
    let mut user = citus.coordinator.connect_as("api_user");
    assert_eq!(
        one::<String>(
            &mut user,
            "SELECT status || ' ' || rows_inserted FROM apisync.run_job('events')"
        ),
        "succeeded 2000"
    );
    assert_eq!(
        one::<String>(
            &mut user,
            "SELECT count(*) || ' ' || count(DISTINCT id) FROM events"
        ),
        "2000 2000"
    );
}

#[test]
fn fan_out_takes_its_parameter_sets_from_a_distributed_table() {
    let mut admin = coordinator();
    admin
        .batch_execute(
            "CREATE TABLE customers (id bigint PRIMARY KEY);
             SELECT create_distributed_table('customers', 'id');
             INSERT INTO customers SELECT generate_series(1, 60);
             CREATE TABLE orders (order_id bigint PRIMARY KEY, user_id bigint, amount numeric);
             SELECT create_distributed_table('orders', 'order_id');
             CREATE TABLE job_orders (LIKE orders);
             ALTER TABLE job_orders ADD PRIMARY KEY (order_id);
             SELECT create_distributed_table('job_orders', 'order_id');
             GRANT SELECT ON customers TO api_user;
             GRANT SELECT, INSERT, UPDATE ON orders, job_orders TO api_user;",
        )
        .unwrap();
    let url = lit(&api().url("/users/{id}/orders"));
    let options =
        r#"{"concurrency": 8, "on_status": {"404": "skip"}, "columns": {"user_id": "{id}"}}"#;
    let summary = "SELECT count(*) || ' ' || count(DISTINCT user_id) || ' ' || sum(amount)";
    // api_fetch's params from a query over the distributed table (Citus plans it as a subplan
    // on the coordinator), as a role without superuser rights.
    let mut user = citus().coordinator.connect_as("api_user");
    user.batch_execute(&format!(
        "INSERT INTO orders SELECT * FROM api_fetch({url}, path => '$.orders',
             params => (SELECT jsonb_agg(jsonb_build_object('id', id) ORDER BY id) FROM customers),
             options => {}, row_type => NULL::orders)",
        lit(options)
    ))
    .unwrap();
    assert_eq!(
        one::<String>(&mut user, &format!("{summary} FROM orders")),
        "57 38 1738.50"
    );
    // A job's for_each over the distributed table, upserting into another one.
    let options = r#"{"for_each": "SELECT id FROM public.customers", "concurrency": 8,
                      "on_status": {"404": "skip"}, "columns": {"user_id": "{id}"}}"#;
    user.batch_execute(&format!(
        "SELECT apisync.create_job('orders', 'job_orders', {url}, path => '$.orders',
             write_method => 'upsert', options => {})",
        lit(options)
    ))
    .unwrap();
    assert_eq!(
        one::<String>(
            &mut user,
            "SELECT status || ' ' || requests || ' ' || requests_skipped || ' ' || rows_inserted FROM apisync.run_job('orders')"
        ),
        "succeeded 60 3 57"
    );
    assert_eq!(
        one::<String>(&mut user, &format!("{summary} FROM job_orders")),
        "57 38 1738.50"
    );
}

/// Not a test: rows per second loaded into a local, a hash-distributed and a reference table of
/// this tier's cluster, by COPY of the same rows (the baseline), `INSERT … SELECT FROM api_fetch`
/// and an append job. One machine: the coordinator, both workers and devapi share its cores.
/// `scripts/bench.sh` runs it (`ROWS`, `ROUNDS`); each load is checked for its exact row count.
#[test]
#[ignore = "a benchmark: scripts/bench.sh runs it"]
fn rows_per_second_into_distributed_and_local_tables() {
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rows, rounds, page) = (number("ROWS", 200_000), number("ROUNDS", 3), 10_000);
    let citus = citus();
    let mut admin = citus.coordinator.connect();
    let url = lit(&api().url(&format!("/rows?n={page}&total={rows}")));
    let paging = lit(&format!(
        r#"{{"type": "offset", "offset_param": "offset", "page_size": {page}, "total_path": "$.total"}}"#
    ));
    let csv = lit(&citus.coordinator.dir.join("rows.csv").display().to_string());
    let tables = [
        ("local", ""),
        (
            "distributed",
            "SELECT create_distributed_table('bench_distributed', 'id');",
        ),
        (
            "reference",
            "SELECT create_reference_table('bench_reference');",
        ),
    ];
    for (kind, distribute) in tables {
        admin
            .batch_execute(&format!(
                "CREATE TABLE bench_{kind} (id bigint PRIMARY KEY, name text, score numeric, email text,
                                            created_at timestamptz, active boolean, tags text[]);
                 {distribute}
                 SELECT apisync.create_job('bench_{kind}', 'bench_{kind}', {url}, path => '$.data', paging => {paging});"
            ))
            .unwrap();
    }
    // The CSV holds exactly the rows the API serves (this also warms devapi's page cache).
    admin
        .batch_execute(&format!(
            "INSERT INTO bench_local SELECT * FROM api_fetch({url}, path => '$.data', paging => {paging}, row_type => NULL::bench_local);
             COPY bench_local TO {csv} (FORMAT csv);"
        ))
        .unwrap();
    let ways = ["COPY", "INSERT … SELECT FROM api_fetch", "run_job (append)"];
    let mut seconds: Vec<(&str, Vec<f64>)> = Vec::new();
    for (kind, _) in tables {
        let table = format!("bench_{kind}");
        let statements = [
            format!("COPY {table} FROM {csv} (FORMAT csv)"),
            format!(
                "INSERT INTO {table} SELECT * FROM api_fetch({url}, path => '$.data', paging => {paging}, row_type => NULL::{table})"
            ),
            format!("SELECT apisync.run_job('{table}')"),
        ];
        let mut medians = Vec::new();
        for statement in &statements {
            let mut times: Vec<f64> = (0..rounds)
                .map(|_| {
                    admin
                        .batch_execute(&format!(
                            "TRUNCATE {table}; CHECKPOINT; SELECT run_command_on_workers('CHECKPOINT');"
                        ))
                        .unwrap();
                    let start = Instant::now();
                    admin.batch_execute(statement).unwrap();
                    let took = start.elapsed().as_secs_f64();
                    let loaded = one::<i64>(&mut admin, &format!("SELECT count(*) FROM {table}"));
                    assert_eq!(loaded as u64, rows, "{statement}");
                    took
                })
                .collect();
            times.sort_by(f64::total_cmp);
            medians.push(times[times.len() / 2]);
        }
        seconds.push((kind, medians));
    }
    println!("\n{rows} rows, median of {rounds} rounds: rows/s, and in brackets the time against the same way into the local table, then against COPY into the same table");
    println!("| table | {} |", ways.join(" | "));
    println!("| --- |{}", " ---: |".repeat(ways.len()));
    for (kind, medians) in &seconds {
        let cells: Vec<String> = medians
            .iter()
            .zip(&seconds[0].1)
            .map(|(s, local)| {
                format!(
                    "{:.0} ({:.2}× local, {:.2}× COPY)",
                    rows as f64 / s,
                    s / local,
                    s / medians[0]
                )
            })
            .collect();
        println!("| {kind} | {} |", cells.join(" | "));
    }
}

#[test]
fn the_citus_page_of_docs_runs_and_prints_what_it_shows() {
    let pages = harness::docs::pages(true);
    assert!(
        !pages.is_empty(),
        "no page of docs/ is marked for the Citus tier"
    );
    for page in pages {
        // A cluster of the page's own: the ids and counts it shows are its own.
        let citus = Citus::start();
        let checked = harness::docs::check(&page, &citus.coordinator, "postgres");
        assert!(checked >= 5, "{}: only {checked} examples", page.display());
    }
}
