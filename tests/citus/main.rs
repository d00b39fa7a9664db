//! pg_apisync in a Citus cluster on loopback (a coordinator and two workers, `harness::citus`),
//! against devapi: what a user of a distributed database sees. Needs Citus installed
//! (`scripts/citus.sh`); `scripts/test.sh` runs this as a tier of its own.

use harness::{api, citus, lit, sql_error, Client};

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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !worker
        .log()
        .contains("this database is a Citus worker node: no scheduled job runs")
    {
        assert!(std::time::Instant::now() < deadline, "{}", worker.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
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
    let (code, message, _) = sql_error(admin.batch_execute(&format!(
        "SELECT apisync.create_job('by_email', 'by_email', {url}, path => '$.data', write_method => 'upsert', key_columns => '{{email}}')"
    )));
    assert_eq!(code, "0A000", "{message}");
    assert!(
        message.contains("include its distribution column id"),
        "{message}"
    );
}
