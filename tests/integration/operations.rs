//! Running pg_apisync for years: updates from 0.1.0, dumps and restores, the kill switch, the
//! morning status view.

use std::process::Command;
use std::sync::OnceLock;

use super::*;
use harness::{bindir, cluster, poll, private_cluster, wait_until, Cluster};

const API_FETCH_0_1: &str = "api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement)";
const API_FETCH: &str =
    "api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement, jsonb)";
const CREATE_JOB_0_1: &str = "apisync.create_job(text, regclass, text, text, jsonb, text, jsonb, jsonb, jsonb, text, text[], text, boolean)";

/// The frozen 0.1.0 install script, where `CREATE EXTENSION pg_apisync VERSION '0.1.0'` finds it:
/// cargo pgrx install copies only the upgrade scripts from sql/.
fn install_frozen_script() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new(bindir().join("pg_config"))
            .arg("--sharedir")
            .output()
            .expect("pg_config runs");
        let sharedir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let frozen = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/pg_apisync--0.1.0.sql");
        std::fs::copy(
            frozen,
            format!("{sharedir}/extension/pg_apisync--0.1.0.sql"),
        )
        .expect("the frozen 0.1.0 script is copied into the extension directory");
    });
}

/// A new database of the shared cluster, and a superuser connection to it.
fn database(name: &str) -> harness::Client {
    connect()
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    cluster().connect_to(name, "postgres")
}

/// Every object of the extension with its definition, grants, columns, constraints, indexes,
/// policies and comment, and the tables and sequences a dump carries: what makes two
/// installations the same.
fn installation(client: &mut harness::Client) -> Vec<String> {
    const DESCRIBE: &str = r#"
WITH members AS (
    SELECT d.classid, d.objid, d.objsubid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
    WHERE d.refclassid = 'pg_extension'::regclass AND e.extname = 'pg_apisync' AND d.deptype = 'e')
SELECT pg_describe_object(m.classid, m.objid, m.objsubid) || E'\n' || coalesce(CASE m.classid
    WHEN 'pg_proc'::regclass THEN (
        SELECT pg_get_functiondef(p.oid) || ' acl ' || (
            SELECT string_agg(a::text, ',' ORDER BY a::text)
            FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a)
        FROM pg_proc p WHERE p.oid = m.objid)
    WHEN 'pg_type'::regclass THEN (
        SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
        FROM pg_attribute WHERE attrelid = (SELECT typrelid FROM pg_type WHERE oid = m.objid) AND attnum > 0)
    WHEN 'pg_class'::regclass THEN (
        SELECT c.relkind::text || ' rls ' || c.relrowsecurity
            || ' acl ' || (SELECT string_agg(a::text, ',' ORDER BY a::text)
                           FROM aclexplode(coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))) a)
            || E'\ncomment ' || coalesce(obj_description(c.oid, 'pg_class'), '')
            || E'\nview ' || CASE c.relkind WHEN 'v' THEN pg_get_viewdef(c.oid) ELSE '' END
            || E'\ncolumns ' || coalesce((
                SELECT string_agg(format('%s %s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
                                         CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                                         coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')),
                                  ', ' ORDER BY a.attnum)
                FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
            || E'\nconstraints ' || coalesce((
                SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), ', ' ORDER BY conname)
                FROM pg_constraint WHERE conrelid = c.oid), '')
            || E'\nindexes ' || coalesce((
                SELECT string_agg(pg_get_indexdef(indexrelid), ', ' ORDER BY pg_get_indexdef(indexrelid))
                FROM pg_index WHERE indrelid = c.oid), '')
            || E'\npolicies ' || coalesce((
                SELECT string_agg(polname || ' ' || polcmd::text || ' ' || coalesce(pg_get_expr(polqual, polrelid), '')
                                  || ' ' || polroles::text, ', ' ORDER BY polname)
                FROM pg_policy WHERE polrelid = c.oid), '')
        FROM pg_class c WHERE c.oid = m.objid)
    END, '')
FROM members m
UNION ALL
SELECT 'dumped ' || coalesce(string_agg(c::regclass::text || ' ' || w, ', ' ORDER BY c::regclass::text), '')
FROM pg_extension e, unnest(e.extconfig, e.extcondition) u(c, w) WHERE e.extname = 'pg_apisync'
ORDER BY 1"#;
    client
        .query(DESCRIBE, &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[test]
fn an_updated_installation_is_a_fresh_one() {
    install_frozen_script();
    let mut updated = database("updated_empty");
    updated
        .batch_execute(
            "CREATE EXTENSION pg_apisync VERSION '0.1.0'; ALTER EXTENSION pg_apisync UPDATE",
        )
        .unwrap();
    let mut fresh = database("fresh_install");
    fresh.batch_execute("CREATE EXTENSION pg_apisync").unwrap();
    let (updated, fresh) = (installation(&mut updated), installation(&mut fresh));
    assert!(fresh.len() > 20, "{fresh:?}");
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    assert!(
        updated == fresh,
        "only after the update:\n{}\n\nonly in a fresh installation:\n{}",
        only(&updated, &fresh).join("\n\n"),
        only(&fresh, &updated).join("\n\n")
    );
}

#[test]
fn an_update_from_0_1_0_keeps_jobs_runs_secrets_and_grants() {
    install_frozen_script();
    let mut admin = database("updated_data");
    admin
        .batch_execute(&format!(
            "CREATE EXTENSION pg_apisync VERSION '0.1.0';
             GRANT CREATE ON SCHEMA public TO api_user;
             GRANT EXECUTE ON FUNCTION {API_FETCH_0_1} TO api_user;
             REVOKE EXECUTE ON FUNCTION {CREATE_JOB_0_1} FROM PUBLIC;
             GRANT EXECUTE ON FUNCTION {CREATE_JOB_0_1} TO api_user;"
        ))
        .unwrap();
    // What 0.1.0 let a role write: a secret, a job, a run of it and a rejected row.
    let url = lit(&api().url("/t-updated/auth/bearer"));
    let mut user = cluster().connect_to("updated_data", "api_user");
    user.batch_execute("CREATE TABLE keyed (auth text)")
        .unwrap();
    user.execute("SELECT apisync.create_secret('tok', $1)", &[&"tok-secret"])
        .unwrap();
    user.batch_execute(&format!(
        r#"INSERT INTO apisync.jobs (name, target, url, path, options)
           VALUES ('keyed', 'keyed', {url}, '$.data', '{{"auth": {{"type": "bearer", "secret": "tok"}}}}');
           INSERT INTO apisync.job_runs (job_id, job_name, trigger, status, finished_at, rows_fetched, rows_inserted)
           SELECT job_id, name, 'manual', 'succeeded', now(), 1, 1 FROM apisync.jobs;
           INSERT INTO apisync.rejected_rows (run_id, row_number, raw, error, sqlstate)
           SELECT run_id, 1, '{{}}', 'a bad row', '22P02' FROM apisync.job_runs;"#
    ))
    .unwrap();
    // Before the update, 0.1.0's functions that this library no longer has say what to do.
    let (code, message, _) = sql_error(user.batch_execute("SELECT apisync.run_job('keyed')"));
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("earlier pg_apisync"), "{message}");
    drop(user);

    admin
        .batch_execute("ALTER EXTENSION pg_apisync UPDATE")
        .unwrap();
    let version: String = one(
        &mut admin,
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_apisync'",
    );
    assert_eq!(version, "0.2.0");

    let mut user = cluster().connect_to("updated_data", "api_user");
    let kept: String = one(
        &mut user,
        "SELECT format('%s %s %s %s', (SELECT string_agg(owner::text || '/' || name, ',') FROM apisync.jobs),
                       (SELECT count(*) FROM apisync.job_runs), (SELECT count(*) FROM apisync.rejected_rows),
                       (SELECT string_agg(owner::text, ',') FROM apisync.rejected_rows))",
    );
    assert_eq!(kept, "api_user/keyed 1 1 api_user");
    // The job runs with the kept secret and the carried EXECUTE grant on api_fetch.
    let run: String = one(
        &mut user,
        "SELECT status || ' ' || rows_inserted || ' ' || (run_id > 1) FROM apisync.run_job('keyed')",
    );
    assert_eq!(run, "succeeded 1 true");
    let auth: String = one(&mut user, "SELECT auth FROM keyed");
    assert_eq!(auth, "bearer");
    // The grant on create_job, whose signature changed, was carried: api_user has it, PUBLIC not.
    let id: i64 = one(
        &mut user,
        &format!("SELECT apisync.create_job('again', 'keyed', {url}, path => '$.data', options => '{{\"auth\": {{\"type\": \"bearer\", \"secret\": \"tok\"}}}}')"),
    );
    assert!(id > 1);
    let mut other = cluster().connect_to("updated_data", "other_user");
    let (code, message, _) = sql_error(other.batch_execute(&format!(
        "SELECT apisync.create_job('mine', 'keyed', {url})"
    )));
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("create_job"), "{message}");
}

/// Runs a PostgreSQL client program against `cluster` as postgres; its standard output.
fn client_program(cluster: &Cluster, program: &str, args: &[&str]) -> String {
    let out = Command::new(bindir().join(program))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_dump_restores_jobs_runs_and_ids_but_never_secrets() {
    let cluster = cluster();
    let mut admin = database("dumped");
    admin
        .batch_execute(&format!(
            "CREATE EXTENSION pg_apisync;
             GRANT CREATE ON SCHEMA public TO api_user;
             GRANT EXECUTE ON FUNCTION {API_FETCH} TO api_user;"
        ))
        .unwrap();
    let url = lit(&api().url("/t-dumped/auth/bearer"));
    let bearer = r#"'{"auth": {"type": "bearer", "secret": "tok"}}'"#;
    let mut user = cluster.connect_to("dumped", "api_user");
    user.batch_execute("CREATE TABLE keyed (auth text)")
        .unwrap();
    user.execute("SELECT apisync.create_secret('tok', $1)", &[&"tok-secret"])
        .unwrap();
    // A job created in the transaction that runs it: the run (a transaction of its own) could
    // not see it.
    let create = format!(
        "SELECT apisync.create_job('keyed', 'keyed', {url}, path => '$.data', options => {bearer})"
    );
    let (code, message, _) =
        sql_error(user.batch_execute(&format!("{create}; SELECT apisync.run_job('keyed')")));
    assert_eq!(code, "55000", "{message}");
    assert!(
        message.contains("created or changed in this transaction"),
        "{message}"
    );
    user.batch_execute(&create).unwrap();
    for _ in 0..2 {
        user.batch_execute("SELECT apisync.run_job('keyed')")
            .unwrap();
    }

    let file = std::env::temp_dir().join(format!("apisync-dump-{}.custom", std::process::id()));
    let file = file.to_str().unwrap();
    client_program(cluster, "pg_dump", &["-Fc", "-f", file, "dumped"]);
    let script = client_program(cluster, "pg_restore", &["-f", "-", file]);
    assert!(!script.contains("tok-secret"), "the dump holds no secret");
    assert!(
        script.contains("job_runs_run_id_seq"),
        "the dump sets the run id sequence"
    );
    admin.batch_execute("CREATE DATABASE restored").unwrap();
    client_program(cluster, "pg_restore", &["-d", "restored", file]);
    let _ = std::fs::remove_file(file);

    let mut user = cluster.connect_to("restored", "api_user");
    let kept: String = one(
        &mut user,
        "SELECT format('%s %s %s', (SELECT string_agg(name, ',') FROM apisync.jobs),
                       (SELECT count(*) FROM apisync.job_runs), (SELECT count(*) FROM keyed))",
    );
    assert_eq!(kept, "keyed 2 2");
    // The secret stayed behind: the job says which one is missing until its owner stores it.
    let (code, message, _) = sql_error(user.batch_execute("SELECT apisync.run_job('keyed')"));
    assert_eq!(code, "42704", "{message}");
    assert!(message.contains("\"tok\""), "{message}");
    user.execute("SELECT apisync.create_secret('tok', $1)", &[&"tok-secret"])
        .unwrap();
    // The restored runs and the failed one keep their ids; this run has a new one.
    let last: i64 = one(&mut user, "SELECT max(run_id) FROM apisync.job_runs");
    assert_eq!(last, 3);
    let run: String = one(
        &mut user,
        "SELECT status || ' ' || run_id FROM apisync.run_job('keyed')",
    );
    assert_eq!(run, "succeeded 4");
    let restored: i64 = one(&mut user, "SELECT max(job_id) FROM apisync.jobs");
    let id: i64 = one(
        &mut user,
        &format!("SELECT apisync.create_job('second', 'keyed', {url}, path => '$.data', options => {bearer})"),
    );
    assert_eq!(id, restored + 1, "a new job id");

    // A restore that left the sequences behind: the clash is an error that says so, neither an
    // old run's row returned as this run's nor "exists already".
    let mut admin = cluster.connect_to("restored", "postgres");
    admin
        .batch_execute(
            "SELECT setval('apisync.job_runs_run_id_seq', 1); SELECT setval('apisync.jobs_job_id_seq', 1)",
        )
        .unwrap();
    let (code, message, _) = sql_error(user.batch_execute("SELECT apisync.run_job('keyed')"));
    assert_eq!(code, "23505", "{message}");
    assert!(
        message.contains("apisync.job_runs_run_id_seq is behind"),
        "{message}"
    );
    let (code, message, _) = sql_error(user.batch_execute(&format!(
        "SELECT apisync.create_job('third', 'keyed', {url})"
    )));
    assert_eq!(code, "23505", "{message}");
    assert!(
        message.contains("apisync.jobs_job_id_seq is behind"),
        "{message}"
    );
}

/// Waits until `sql` (one text value) reads `expected` on `client`: for what the scheduler
/// records, within a tick or two.
fn eventually(client: &mut harness::Client, sql: &str, expected: &str) {
    let mut got: Option<String> = None;
    let came = wait_until(15, || {
        got = client.query_one(sql, &[]).unwrap().get(0);
        got.as_deref() == Some(expected)
    });
    assert!(came, "{sql}: {got:?}, not {expected}");
}

/// Waits until `sql` is true on new connections (a reload reaches each backend at its next
/// command).
fn until(cluster: &Cluster, sql: &str) {
    let came = wait_until(10, || {
        cluster
            .connect()
            .query_one(sql, &[])
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    });
    assert!(came, "never true: {sql}");
}

#[test]
fn kill_switch_run_log_line_max_run_time_and_standby() {
    let cluster = private_cluster();
    let mut admin = cluster.connect();
    let url = lit(&api().url("/t-killswitch/api/users?pageSize=100"));
    admin
        .batch_execute(&format!(
            "CREATE TABLE users (id bigint, name text, email text, active boolean);
             SELECT apisync.create_job('users', 'users', {url}, path => '$.data');
             CREATE ROLE switched LOGIN;
             GRANT EXECUTE ON FUNCTION {API_FETCH} TO switched;
             GRANT EXECUTE ON FUNCTION api_request(text, text, jsonb, jsonb, jsonb) TO switched;"
        ))
        .unwrap();
    admin
        .batch_execute("ALTER SYSTEM SET apisync.enabled = off")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    until(
        &cluster,
        "SELECT current_setting('apisync.enabled') = 'off'",
    );
    let mut admin = cluster.connect();
    let mut switched = cluster.connect_as("switched");
    for sql in [
        format!("SELECT count(*) FROM api_fetch({url})"),
        format!("SELECT status FROM api_request({url})"),
        "SELECT apisync.run_job('users')".to_string(),
    ] {
        let (code, message, _) = sql_error(admin.batch_execute(&sql));
        assert_eq!(code, "55000", "{sql}: {message}");
        assert!(message.contains("apisync.enabled = off"), "{message}");
    }
    // A role without superuser rights is refused as well, before any request.
    for sql in [
        format!("SELECT count(*) FROM api_fetch({url})"),
        format!("SELECT status FROM api_request({url})"),
    ] {
        let (code, message, _) = sql_error(switched.batch_execute(&sql));
        assert_eq!(code, "55000", "{sql}: {message}");
    }
    assert_eq!(
        api().requests_to("/t-killswitch/api/users"),
        0,
        "no request was sent"
    );
    assert_eq!(
        one::<i64>(&mut admin, "SELECT count(*) FROM apisync.job_runs"),
        0,
        "a refused run starts no worker and records nothing"
    );
    // Jobs may still be tidied: the switch is for a restored copy.
    admin
        .batch_execute("SELECT apisync.alter_job('users', enabled => false)")
        .unwrap();
    assert!(
        wait_until(20, || cluster
            .log()
            .contains("apisync scheduler: pg_apisync is switched off")),
        "{}",
        cluster.log()
    );

    admin
        .batch_execute("ALTER SYSTEM RESET apisync.enabled")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    until(&cluster, "SELECT current_setting('apisync.enabled') = 'on'");
    let mut admin = cluster.connect();
    let run_id: i64 = one(&mut admin, "SELECT run_id FROM apisync.run_job('users')");
    let line = format!("apisync job \"users\" run {run_id} succeeded in ");
    let log = cluster.log();
    let logged: Vec<&str> = log.lines().filter(|l| l.contains(&line)).collect();
    assert_eq!(logged.len(), 1, "{log}");
    assert!(
        logged[0].contains("57 rows fetched, 57 inserted, 0 updated, 0 deleted, 0 rejected"),
        "{}",
        logged[0]
    );

    // A run past apisync.max_run_time stops and fails, the target as it was.
    admin
        .batch_execute(&format!(
            "CREATE TABLE slow (id bigint, page int);
             SELECT apisync.create_job('slow', 'slow', {}, path => '$.data',
                 paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"total_pages_path\": \"$.total_pages\"}}');",
            lit(&api().url("/slowpages?pages=100&size=1&ms=100"))
        ))
        .unwrap();
    admin
        .batch_execute("ALTER SYSTEM SET apisync.max_run_time = '1s'")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    until(
        &cluster,
        "SELECT current_setting('apisync.max_run_time') = '1s'",
    );
    let started = Instant::now();
    let (code, message, _) = sql_error(admin.batch_execute("SELECT apisync.run_job('slow')"));
    assert_eq!(code, "57014", "{message}");
    assert!(
        message.contains("apisync.max_run_time (1000 ms)"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped after about a second"
    );
    assert_eq!(one::<i64>(&mut admin, "SELECT count(*) FROM slow"), 0);

    // apisync.timezone: cron fields read in Tokyo (03:00 there is 18:00 UTC the day before);
    // a name it does not know is refused.
    admin
        .batch_execute(
            "SELECT apisync.alter_job('users', enabled => true, schedule => '0 3 1 1 *')",
        )
        .unwrap();
    let (code, _, _) =
        sql_error(admin.batch_execute("ALTER SYSTEM SET apisync.timezone = 'Mars/Olympus'"));
    assert_eq!(code, "22023");
    admin
        .batch_execute("ALTER SYSTEM SET apisync.timezone = 'Asia/Tokyo'")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    until(
        &cluster,
        "SELECT current_setting('apisync.timezone') = 'Asia/Tokyo'",
    );
    eventually(
        &mut cluster.connect(),
        "SELECT to_char(next_run AT TIME ZONE 'UTC', 'MM-DD HH24:MI') FROM apisync.job_status WHERE name = 'users'",
        "12-31 18:00",
    );

    // A standby reads (its catalog follows the primary's) but runs nothing.
    let standby = cluster.standby();
    let mut replica = standby.connect();
    until(&standby, "SELECT count(*) = 57 FROM users");
    let (code, message, _) = sql_error(replica.batch_execute("SELECT apisync.run_job('users')"));
    assert_eq!(code, "25006", "{message}");
    assert!(message.contains("standby"), "{message}");
}

/// The next transaction id the cluster will hand out (asking takes none).
fn next_xid(client: &mut harness::Client) -> String {
    client
        .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
        .unwrap()
        .get(0)
}

#[test]
fn reads_and_idle_scheduler_rounds_take_no_transaction_id_and_reads_work_on_a_standby() {
    let cluster = private_cluster();
    // An idle scheduler commits nothing: its rounds (one a second) with a job that is not due
    // take no transaction id (no autovacuum to take one either, while this looks).
    let mut admin = cluster.connect();
    admin
        .batch_execute("ALTER SYSTEM SET autovacuum = off")
        .unwrap();
    admin
        .batch_execute(&format!(
            "SELECT pg_reload_conf();
             CREATE TABLE idle (id bigint);
             SELECT apisync.create_job('idle', 'idle', {}, schedule => '0 3 1 1 *');",
            lit(&api().url("/api/users"))
        ))
        .unwrap();
    until(
        &cluster,
        "SELECT next_run IS NOT NULL FROM apisync.job_status WHERE name = 'idle'",
    );
    let before = next_xid(&mut admin);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        next_xid(&mut admin),
        before,
        "the scheduler took transaction ids while idle"
    );
    cluster
        .connect()
        .batch_execute(&format!(
            "CREATE ROLE reader LOGIN;
             GRANT EXECUTE ON FUNCTION {API_FETCH} TO reader;
             GRANT EXECUTE ON FUNCTION api_request(text, text, jsonb, jsonb, jsonb) TO reader;"
        ))
        .unwrap();
    let mut reader = cluster.connect_as("reader");
    for (name, value) in [
        ("token", "tok-secret"),
        ("client", "c-secret"),
        ("refresh", "r-1"),
    ] {
        reader
            .execute("SELECT apisync.create_secret($1, $2)", &[&name, &value])
            .unwrap();
    }
    let users = lit(&api().url("/api/users?pageSize=100"));
    let bearer = lit(&api().url("/auth/bearer"));
    let reads = [
        (
            format!("SELECT count(*)::text FROM api_fetch({users}, path => '$.data')"),
            "57",
        ),
        (
            format!(
                r#"SELECT string_agg(r::text, ',') FROM api_fetch({bearer}, path => '$.data',
                       options => '{{"auth": {{"type": "bearer", "secret": "token"}}}}') r"#
            ),
            r#"{"auth": "bearer"}"#,
        ),
        (
            format!("SELECT status::text FROM api_request({users})"),
            "200",
        ),
        (
            format!("SELECT left(apisync.suggest_table('people', {users}, path => '$.data'), 21)"),
            "CREATE TABLE people (",
        ),
    ];
    // A read-only transaction stays one: no transaction id, no commit record for a SELECT.
    for (sql, expected) in &reads {
        let mut transaction = reader.transaction().unwrap();
        let got: String = transaction.query_one(sql.as_str(), &[]).unwrap().get(0);
        assert_eq!(&got, expected, "{sql}");
        let xid_taken: bool = transaction
            .query_one("SELECT pg_current_xact_id_if_assigned() IS NOT NULL", &[])
            .unwrap()
            .get(0);
        assert!(!xid_taken, "{sql} took a transaction id");
        transaction.commit().unwrap();
    }
    // So the same reads work on a standby, with the secrets the primary stored.
    let standby = cluster.standby();
    let mut replica = standby.connect_as("reader");
    for (sql, expected) in &reads {
        let got: String = replica
            .query_one(sql.as_str(), &[])
            .unwrap_or_else(|e| panic!("{sql} on the standby: {e:?}"))
            .get(0);
        assert_eq!(&got, expected, "{sql} on the standby");
    }
    // An OAuth2 refresh-token exchange stores the refresh token it is given: not on a standby.
    let oauth = serde_json::json!({"auth": {"type": "oauth2_refresh_token",
        "token_url": api().url("/rotating/token"), "client_id": "standby",
        "secret": "client", "refresh_token_secret": "refresh"}});
    let (code, message, _) = sql_error(replica.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({}, options => {})",
        lit(&api().url("/rotating/data")),
        lit(&oauth.to_string())
    )));
    assert_eq!(code, "25006", "{message}");
    assert!(message.contains("cannot be used on a standby"), "{message}");
}

#[test]
fn job_status_shows_the_last_run_the_failures_since_a_success_and_the_next_run() {
    let mut user = user();
    let url = lit(&api().url("/t-status/auth/bearer"));
    user.execute(
        "SELECT apisync.create_secret('status_token', $1)",
        &[&"wrong"],
    )
    .unwrap();
    user.batch_execute(&format!(
        r#"CREATE TABLE status_rows (auth text);
           SELECT apisync.create_job('status', 'status_rows', {url}, path => '$.data',
                                     options => '{{"auth": {{"type": "bearer", "secret": "status_token"}}}}',
                                     schedule => '0 3 1 1 *');"#
    ))
    .unwrap();
    for _ in 0..2 {
        let (code, _, _) = sql_error(user.batch_execute("SELECT apisync.run_job('status')"));
        assert_eq!(code, "38000");
    }
    let status = "SELECT format('%s %s %s %s %s %s', last_status, consecutive_failures,
                                coalesce(last_error LIKE '%401%', false), last_success_at IS NULL, last_rows_written,
                                to_char(next_run AT TIME ZONE 'UTC', 'MM-DD HH24:MI'))
                  FROM apisync.job_status WHERE name = 'status'";
    // The scheduler records when it starts the job next, within a tick or two.
    eventually(&mut user, status, "failed 2 t t 0 01-01 03:00");
    user.execute(
        "SELECT apisync.create_secret('status_token', $1)",
        &[&"tok-secret"],
    )
    .unwrap();
    user.batch_execute("SELECT apisync.run_job('status')")
        .unwrap();
    eventually(&mut user, status, "succeeded 0 f f 1 01-01 03:00");
    // A schedule may read its fields in a zone of its own: 03:00 in New York is 08:00 UTC in
    // January. An unknown zone is refused.
    user.batch_execute(
        "SELECT apisync.alter_job('status', schedule => 'CRON_TZ=America/New_York 0 3 1 1 *')",
    )
    .unwrap();
    eventually(
        &mut user,
        "SELECT to_char(next_run AT TIME ZONE 'UTC', 'MM-DD HH24:MI') FROM apisync.job_status WHERE name = 'status'",
        "01-01 08:00",
    );
    let (code, message, _) = sql_error(user.batch_execute(
        "SELECT apisync.alter_job('status', schedule => 'CRON_TZ=Mars/Olympus 0 3 * * *')",
    ));
    assert_eq!(code, "22023");
    assert!(
        message.contains("unknown time zone \"Mars/Olympus\""),
        "{message}"
    );
    user.batch_execute("SELECT apisync.alter_job('status', enabled => false)")
        .unwrap();
    eventually(
        &mut user,
        "SELECT (next_run IS NULL AND last_duration IS NOT NULL)::text FROM apisync.job_status WHERE name = 'status'",
        "true",
    );
    // Each role sees its own jobs.
    assert_eq!(
        one::<i64>(
            &mut connect_as("other_user"),
            "SELECT count(*) FROM apisync.job_status WHERE name = 'status'"
        ),
        0
    );
}

#[test]
fn fetch_progress_shows_fetches_in_flight_and_max_requests_in_flight_caps_them() {
    let cluster = private_cluster();
    let mut admin = cluster.connect();
    admin
        .batch_execute(&format!(
            "CREATE ROLE progress_user LOGIN; CREATE ROLE progress_other LOGIN;
             GRANT EXECUTE ON FUNCTION {API_FETCH} TO progress_user, progress_other;"
        ))
        .unwrap();
    admin
        .batch_execute("ALTER SYSTEM SET apisync.max_requests_in_flight = 3")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    until(
        &cluster,
        "SELECT current_setting('apisync.max_requests_in_flight') = '3'",
    );
    // Two sessions fan out over 12 parameter sets each, 8 at a time; each answer takes 300 ms.
    // The URL carries a key inline: the view masks it.
    let url = lit(&api().url("/concurrent/progress?ms=300&n={n}&api_key=k-secret"));
    let fetch = format!(
        "SELECT count(*) FROM api_fetch({url}, path => '$.data', options => '{{\"concurrency\": 8}}',
                                        params => (SELECT jsonb_agg(jsonb_build_object('n', g)) FROM generate_series(1, 12) g))"
    );
    let port = cluster.port;
    let sessions: Vec<_> = (0..2)
        .map(|_| {
            let fetch = fetch.clone();
            std::thread::spawn(move || {
                let config =
                    format!("host=127.0.0.1 port={port} user=progress_user dbname=postgres");
                let mut client = postgres::Client::connect(&config, postgres::NoTls).unwrap();
                client.query_one(&fetch, &[]).unwrap().get::<_, i64>(0)
            })
        })
        .collect();
    let mut user = cluster.connect_as("progress_user");
    let seen = "SELECT format('%s %s %s %s', kind, role, param_sets_total, url)
                FROM apisync.fetch_progress WHERE pages > 0 LIMIT 1";
    let row = poll(10, || {
        user.query_opt(seen, &[])
            .unwrap()
            .map(|row| row.get::<_, String>(0))
    })
    .expect("no fetch in progress was seen");
    assert!(
        row.starts_with("api_fetch progress_user 12 http://127.0.0.1:"),
        "{row}"
    );
    assert!(
        row.contains("api_key=***") && !row.contains("k-secret"),
        "{row}"
    );
    // Another role sees none of them; a superuser sees them.
    assert_eq!(
        one::<i64>(
            &mut cluster.connect_as("progress_other"),
            "SELECT count(*) FROM apisync.fetch_progress"
        ),
        0
    );
    assert!(
        one::<i64>(
            &mut admin,
            "SELECT count(*) FROM apisync.fetch_progress WHERE role = 'progress_user'::regrole"
        ) >= 1
    );
    for session in sessions {
        assert_eq!(session.join().unwrap(), 12, "every set's row came");
    }
    // At most 3 requests were in flight at once across both sessions (16 were wanted), and the
    // cap was reached.
    let most: i64 = one(
        &mut admin,
        &format!(
            "SELECT (r->>'max')::bigint FROM api_fetch({}) r",
            lit(&api().url("/concurrent/progress/max"))
        ),
    );
    assert_eq!(most, 3);
    assert_eq!(
        one::<i64>(&mut admin, "SELECT count(*) FROM apisync.fetch_progress"),
        0,
        "finished fetches leave the view"
    );
}

#[test]
fn one_launcher_schedules_several_databases_within_one_max_parallel_jobs() {
    let cluster = private_cluster();
    let url = lit(&api().url("/concurrent/multidb?ms=1500"));
    let mut admin = cluster.connect();
    admin.batch_execute("CREATE DATABASE second").unwrap();
    for database in ["postgres", "second"] {
        let mut client = cluster.connect_to(database, "postgres");
        if database == "second" {
            client.batch_execute("CREATE EXTENSION pg_apisync").unwrap();
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE ticks (key text);
                 SELECT apisync.create_job('ticks', 'ticks', {url}, path => '$.data', schedule => '2 seconds');"
            ))
            .unwrap();
    }
    admin
        .batch_execute("ALTER SYSTEM SET apisync.database_name = 'postgres, second'")
        .unwrap();
    admin
        .batch_execute("ALTER SYSTEM SET apisync.max_parallel_jobs = 1")
        .unwrap();
    cluster.restart();
    // Both databases' jobs run by schedule...
    for database in ["postgres", "second"] {
        let mut client = cluster.connect_to(database, "postgres");
        let ran = wait_until(30, || {
            one::<i64>(
                &mut client,
                "SELECT count(*) FROM apisync.job_runs WHERE trigger = 'schedule' AND status = 'succeeded'",
            ) >= 2
        });
        assert!(ran, "{database}: {}", cluster.log());
    }
    // ... but never two at once: max_parallel_jobs counts the runs of every database.
    let most: i64 = one(
        &mut cluster.connect(),
        &format!(
            "SELECT (r->>'max')::bigint FROM api_fetch({}) r",
            lit(&api().url("/concurrent/multidb/max"))
        ),
    );
    assert_eq!(most, 1);
    assert_eq!(
        one::<i64>(
            &mut cluster.connect(),
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apisync scheduler'"
        ),
        2,
        "one scheduler per database"
    );
}
