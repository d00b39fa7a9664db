//! The security model (DESIGN.md §2.6), tried as an unprivileged role would: each test fails on
//! 0.1 and passes now.

use harness::{api, change_grants, connect, connect_as, lit, sql_error, Client};

const FETCH: &str = "api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement, jsonb)";

fn count(client: &mut Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A role that may log in, reach the network and create tables in public; `name` as given
/// (quoted), so names that differ only in case are distinct roles.
fn network_role(name: &str) {
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    change_grants(&format!(
        "DROP ROLE IF EXISTS {quoted};
         CREATE ROLE {quoted} LOGIN;
         GRANT CREATE ON SCHEMA public TO {quoted};
         GRANT EXECUTE ON FUNCTION {FETCH} TO {quoted};
         GRANT EXECUTE ON FUNCTION api_request(text, text, jsonb, jsonb, jsonb) TO {quoted};"
    ));
}

/// A table `table` (id, name) owned by `client`'s role and a job `job` loading the demo users into
/// it; `extra` are more create_job arguments.
fn job(client: &mut Client, job: &str, table: &str, extra: &str) {
    let url = lit(&api().url(&format!("/t-{job}/api/users")));
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, name text);
             SELECT apisync.create_job('{job}', '{table}', {url}, 'POST', '{{}}', '$.data' {extra});"
        ))
        .unwrap_or_else(|e| panic!("create_job {job}: {e}"));
}

fn run_status(client: &mut Client, job: &str) -> Result<String, (String, String, String)> {
    client
        .query_one("SELECT status FROM apisync.run_job($1)", &[&job])
        .map(|row| row.get(0))
        .map_err(|e| sql_error(Err::<(), _>(e)))
}

#[test]
fn the_network_is_reached_only_with_execute_on_api_fetch() {
    // plain_user has no EXECUTE on api_fetch: create_job refuses it, naming the GRANT.
    let mut plain = connect_as("plain_user");
    connect()
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS trust_plain (id bigint PRIMARY KEY, name text);
             GRANT ALL ON trust_plain TO plain_user",
        )
        .unwrap();
    let url = lit(&api().url("/trust-never/api/users"));
    let (code, message, hint) = {
        let err = plain
            .batch_execute(&format!(
                "SELECT apisync.create_job('sneak', 'trust_plain', {url}, options => '{{\"commit_every\": 1}}')"
            ))
            .unwrap_err();
        let db = err.as_db_error().unwrap().clone();
        (
            db.code().code().to_string(),
            db.message().to_string(),
            db.hint().unwrap_or_default().to_string(),
        )
    };
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("may not reach the network"), "{message}");
    assert!(
        hint.contains("GRANT EXECUTE ON FUNCTION api_fetch"),
        "{hint}"
    );

    // Nor can it write the catalog by hand, or call the run's internal function.
    for sql in [
        format!("INSERT INTO apisync.jobs (name, owner, target, url) VALUES ('x', 'plain_user', 'trust_plain', {url})"),
        "INSERT INTO apisync.job_runs (job_id, job_name, owner, trigger, status) VALUES (1, 'x', 'plain_user', 'manual', 'succeeded')".into(),
        "INSERT INTO apisync.rejected_rows (run_id, row_number, error, sqlstate, owner) VALUES (1, 1, 'x', 'x', 'plain_user')".into(),
        "UPDATE apisync.job_runs SET status = 'failed'".into(),
        "DELETE FROM apisync.jobs".into(),
        "SELECT * FROM apisync.secrets".into(),
        "SELECT nextval('apisync.job_runs_run_id_seq')".into(),
        "BEGIN; LOCK TABLE apisync.jobs IN ACCESS EXCLUSIVE MODE".into(),
        "SELECT * FROM apisync._job_rows(NULL::trust_plain)".into(),
    ] {
        let (code, message, _) = sql_error(plain.batch_execute(&sql));
        assert_eq!(code, "42501", "{sql}: {message}");
        plain.batch_execute("ROLLBACK").unwrap();
    }

    // BYPASSRLS changes nothing: the catalog is written by the extension's functions only.
    connect()
        .batch_execute("DROP ROLE IF EXISTS trust_bypass; CREATE ROLE trust_bypass LOGIN BYPASSRLS")
        .unwrap();
    let mut bypass = connect_as("trust_bypass");
    let (code, message, _) = sql_error(bypass.batch_execute(&format!(
        "INSERT INTO apisync.jobs (name, owner, target, url) VALUES ('x', 'api_user', 'trust_plain', {url})"
    )));
    assert_eq!(code, "42501", "{message}");
    let (code, message, _) = sql_error(bypass.batch_execute("SELECT value FROM apisync.secrets"));
    assert_eq!(code, "42501", "{message}");

    // A job whose owner loses EXECUTE makes no request: its run fails with 42501.
    network_role("trust_revoked");
    let mut owner = connect_as("trust_revoked");
    job(
        &mut owner,
        "revoked",
        "trust_revoked_t",
        ", options => '{\"commit_every\": 1}'",
    );
    change_grants(&format!(
        "REVOKE EXECUTE ON FUNCTION {FETCH} FROM trust_revoked"
    ));
    let (code, message, _) = run_status(&mut owner, "revoked").unwrap_err();
    assert_eq!(code, "42501", "{message}");
    assert_eq!(api().requests_to("/t-revoked/api/users"), 0);
    assert_eq!(api().requests_to("/trust-never/api/users"), 0);
}

#[test]
fn owners_are_exact_roles_whatever_their_names() {
    // Names that differ only in case, all digits, "-" and dots: each its own owner.
    for (i, name) in ["Alice", "alice", "10", "-", "a.b"].into_iter().enumerate() {
        network_role(name);
        let mut client = connect_as(name);
        client
            .execute(
                "SELECT apisync.create_secret('k', $1)",
                &[&format!("secret-{i}")],
            )
            .unwrap();
        job(&mut client, "same_name", &format!("owner_t{i}"), "");
        assert_eq!(
            run_status(&mut client, "same_name").unwrap(),
            "succeeded",
            "{name}"
        );
        let (owner, rows): (String, i64) = {
            let row = client
                .query_one(
                    "SELECT owner::text, rows_inserted FROM apisync.job_runs WHERE job_name = 'same_name'",
                    &[],
                )
                .unwrap();
            (row.get(0), row.get(1))
        };
        let expected = if name.chars().all(|c| c.is_ascii_lowercase()) {
            name.to_string()
        } else {
            format!("\"{name}\"")
        };
        assert_eq!(owner, expected, "{name}");
        assert_eq!(rows, 10, "{name}");
        // Each role sees its own job only: the same name is not in the way.
        assert_eq!(
            count(&mut client, "SELECT count(*) FROM apisync.jobs"),
            1,
            "{name}"
        );
    }
    // Every owner's run ran as that owner, never as a superuser: the owners are not superusers.
    let superuser_runs = count(
        &mut connect(),
        "SELECT count(*) FROM apisync.job_runs r JOIN pg_roles o ON o.oid = r.owner
         WHERE r.job_name = 'same_name' AND o.rolsuper",
    );
    assert_eq!(superuser_runs, 0);
}

#[test]
fn group_roles_own_jobs_that_run_with_their_rights() {
    change_grants(&format!(
        "CREATE ROLE trust_team NOLOGIN;
         GRANT CREATE ON SCHEMA public TO trust_team;
         GRANT EXECUTE ON FUNCTION {FETCH} TO trust_team;
         CREATE ROLE trust_member LOGIN;
         GRANT trust_team TO trust_member;"
    ));
    let mut member = connect_as("trust_member");
    member.batch_execute("SET ROLE trust_team").unwrap();
    job(&mut member, "team_job", "team_t", "");
    member.batch_execute("RESET ROLE").unwrap();
    // A member runs, sees and drops the group's job, as with tables; it ran as the group.
    assert_eq!(run_status(&mut member, "team_job").unwrap(), "succeeded");
    assert_eq!(count(&mut member, "SELECT count(*) FROM team_t"), 10);
    assert_eq!(
        count(
            &mut member,
            "SELECT count(*) FROM apisync.job_runs WHERE job_name = 'team_job' AND owner = 'trust_team'::regrole"
        ),
        1
    );
    member
        .batch_execute("SELECT apisync.drop_job('team_job')")
        .unwrap();
}

#[test]
fn a_cut_fetch_never_deletes_data() {
    network_role("trust_cut");
    let mut client = connect_as("trust_cut");
    let paging = r#", paging => '{"type": "page_number", "in": "body", "page_param": "paging.pageNum", "size_param": "paging.pageSize", "page_size": 10, "max_pages": 1}'"#;
    job(
        &mut client,
        "cut_replace",
        "cut_t",
        &format!("{paging}, write_method => 'replace'"),
    );
    client
        .batch_execute("INSERT INTO cut_t VALUES (1000, 'kept')")
        .unwrap();
    let (code, message, _) = run_status(&mut client, "cut_replace").unwrap_err();
    assert_eq!(code, "54000", "{message}");
    assert!(message.contains("max_pages"), "{message}");
    assert_eq!(count(&mut client, "SELECT count(*) FROM cut_t"), 1);
    // append writes what it got and says what cut it, in the run row and a WARNING.
    client
        .batch_execute("SELECT apisync.alter_job('cut_replace', write_method => 'append')")
        .unwrap();
    let (mut warned, notices) = harness::cluster().connect_collecting("trust_cut");
    assert_eq!(run_status(&mut warned, "cut_replace").unwrap(), "succeeded");
    let notices = notices.lock().unwrap().join("\n");
    assert!(notices.contains("max_pages cut the fetch"), "{notices}");
    let cut: String = client
        .query_one(
            "SELECT cut_by FROM apisync.job_runs WHERE job_name = 'cut_replace' AND status = 'succeeded'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cut, "max_pages");
    assert_eq!(count(&mut client, "SELECT count(*) FROM cut_t"), 11);
}

#[test]
fn jobs_are_refused_what_could_never_work() {
    network_role("trust_checks");
    let mut client = connect_as("trust_checks");
    client
        .batch_execute("CREATE TABLE checks_t (id bigint PRIMARY KEY, name text, ts timestamptz)")
        .unwrap();
    let url = lit(&api().url("/trust-never/api/users"));
    for (args, code, needle) in [
        (format!("'k1', 'checks_t', {url}, schedule => '0 0 30 2 *'"), "22023", "never fires"),
        (
            format!("'k2', 'checks_t', {url}, write_method => 'replace', options => '{{\"incremental\": {{\"cursor_column\": \"ts\", \"param\": \"since\"}}}}'"),
            "22023",
            "does not work with replace",
        ),
        ("'k3', 'checks_t', 'http://u:p@127.0.0.1/x'".to_string(), "22023", "user:password@"),
        ("'k4', 'checks_t', 'http://127.0.0.1/x?api_key=k'".to_string(), "22023", "\"api_key\""),
        (
            format!("'k5', 'checks_t', {url}, options => '{{\"rate_limit\": 1e-300}}'"),
            "22023",
            "rate_limit",
        ),
    ] {
        let (got, message, _) = sql_error(client.batch_execute(&format!("SELECT apisync.create_job({args})")));
        assert_eq!(got, code, "{args}: {message}");
        assert!(message.contains(needle), "{args}: {message}");
    }
    // 0.0.0.0 and :: reach the local host: never connected to, whatever denied_networks says
    // (which only a superuser may change).
    let (code, message, _) = sql_error(client.batch_execute("SET apisync.denied_networks = ''"));
    assert_eq!(code, "42501", "{message}");
    let mut emptied = connect();
    emptied
        .batch_execute("SET apisync.denied_networks = ''")
        .unwrap();
    let port = api().addr().port();
    for host in ["0.0.0.0", "[::]"] {
        for session in [&mut client, &mut emptied] {
            let (code, message, _) = sql_error(session.batch_execute(&format!(
                "SELECT * FROM api_fetch('http://{host}:{port}/t-never-unspecified')"
            )));
            assert_eq!(code, "42501", "{host}: {message}");
            assert!(message.contains("unspecified address"), "{host}: {message}");
        }
    }
    assert_eq!(api().requests_to("/t-never-unspecified"), 0);
}

#[test]
fn reserved_words_are_quoted_as_the_server_quotes_them() {
    network_role("trust_words");
    let mut client = connect_as("trust_words");
    let url = lit(&api().url("/t-words/api/users"));
    client
        .batch_execute(&format!(
            r#"CREATE TABLE words_t ("order" bigint PRIMARY KEY, "user" text);
               SELECT apisync.create_job('words', 'words_t', {url}, 'POST', '{{}}', '$.data',
                                         write_method => 'mirror',
                                         options => '{{"columns": {{"order": "$.id", "user": "$.name"}}}}');"#
        ))
        .unwrap();
    assert_eq!(run_status(&mut client, "words").unwrap(), "succeeded");
    assert_eq!(run_status(&mut client, "words").unwrap(), "succeeded");
    assert_eq!(
        count(&mut client, r#"SELECT count(DISTINCT "user") FROM words_t"#),
        10
    );
}

#[test]
fn internal_sql_never_trusts_the_search_path() {
    // A role that may create functions in public plants an exact-typed api_fetch overload and a
    // quote_ident; a superuser's job must use neither.
    network_role("trust_planter");
    let mut planter = connect_as("trust_planter");
    connect()
        .batch_execute(
            "CREATE TABLE planted_log (who text);
             GRANT INSERT ON planted_log TO PUBLIC;
             CREATE TABLE su_t (id bigint PRIMARY KEY, name text);",
        )
        .unwrap();
    planter
        .batch_execute(
            "CREATE FUNCTION public.api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, su_t)
                 RETURNS SETOF su_t LANGUAGE sql AS $$ INSERT INTO planted_log VALUES (current_user) RETURNING 1::bigint, 'x' $$;
             CREATE FUNCTION public.quote_ident(text) RETURNS text LANGUAGE sql
                 AS $$ INSERT INTO planted_log VALUES (current_user) RETURNING $1 $$;",
        )
        .unwrap();
    let mut su = connect();
    let url = lit(&api().url("/t-su/api/users"));
    su.batch_execute(&format!(
        "SET search_path = public, pg_catalog;
         SELECT apisync.create_job('su_job', 'su_t', {url}, 'POST', '{{}}', '$.data', write_method => 'upsert');"
    ))
    .unwrap();
    assert_eq!(run_status(&mut su, "su_job").unwrap(), "succeeded");
    assert_eq!(count(&mut su, "SELECT count(*) FROM su_t"), 10);
    assert_eq!(count(&mut su, "SELECT count(*) FROM planted_log"), 0);

    // A superuser's job never writes another role's table (its triggers would run as superuser).
    planter
        .batch_execute("CREATE TABLE planter_t (id bigint PRIMARY KEY, name text)")
        .unwrap();
    let (code, message, _) = sql_error(su.batch_execute(&format!(
        "SELECT apisync.create_job('su_other', 'planter_t', {url})"
    )));
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("another role owns"), "{message}");
}

#[test]
fn run_job_in_a_transaction_holding_the_target_fails_fast() {
    network_role("trust_locker");
    let mut client = connect_as("trust_locker");
    job(&mut client, "locked", "locked_t", "");
    let started = std::time::Instant::now();
    let (code, message, _) = sql_error(client.batch_execute(
        "BEGIN; LOCK TABLE locked_t IN ACCESS EXCLUSIVE MODE; SELECT apisync.run_job('locked');",
    ));
    assert_eq!(code, "55P03", "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    client.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn job_ids_past_two_to_the_31_run() {
    network_role("trust_big");
    connect()
        .batch_execute("SELECT setval('apisync.jobs_job_id_seq', 3000000000)")
        .unwrap();
    let mut client = connect_as("trust_big");
    job(&mut client, "big_id", "big_t", "");
    let id: i64 = client
        .query_one("SELECT job_id FROM apisync.jobs WHERE name = 'big_id'", &[])
        .unwrap()
        .get(0);
    assert!(id > i64::from(i32::MAX), "{id}");
    assert_eq!(run_status(&mut client, "big_id").unwrap(), "succeeded");
    assert_eq!(count(&mut client, "SELECT count(*) FROM big_t"), 10);
}

#[test]
fn credentials_stay_with_their_origin() {
    network_role("trust_origin");
    let mut client = connect_as("trust_origin");
    client
        .execute(
            "SELECT apisync.create_secret('hop_key', $1)",
            &[&"hop-secret"],
        )
        .unwrap();
    let home = api().url("");
    let home = home.trim_end_matches('/');
    let other = home.replace("127.0.0.1", "localhost");
    let url = lit(&format!("{home}/hop?step=1&home={home}&other={other}"));
    let paging = r#"'{"type": "next_url", "next_path": "$.next"}'"#;
    for (auth, carried) in [
        (
            r#"{"type": "api_key", "name": "X-Api-Key", "in": "header", "secret": "hop_key"}"#,
            "r->'headers'->>'x-api-key'",
        ),
        (
            r#"{"type": "api_key", "name": "key", "in": "query", "secret": "hop_key"}"#,
            "r->>'key'",
        ),
        (
            r#"{"type": "bearer", "secret": "hop_key"}"#,
            "r->'headers'->>'authorization'",
        ),
    ] {
        let rows = client
            .query(
                &format!(
                    "SELECT (r->>'step')::int, {carried}, r->'headers'->>'referer'
                     FROM api_fetch({url}, path => '$.data', paging => {paging},
                                    options => '{{\"auth\": {auth}}}') r"
                ),
                &[],
            )
            .unwrap();
        let seen: Vec<(i32, Option<String>, Option<String>)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let with = |v: &Option<String>| v.as_deref().is_some_and(|v| v.contains("hop-secret"));
        assert_eq!(seen.len(), 3, "{auth}: {seen:?}");
        assert!(
            with(&seen[0].1),
            "{auth}: page 1 at its origin carries it: {seen:?}"
        );
        assert!(
            seen[1].1.is_none(),
            "{auth}: another origin gets nothing: {seen:?}"
        );
        assert!(
            with(&seen[2].1),
            "{auth}: back at its origin, it carries it again: {seen:?}"
        );
        assert!(seen.iter().all(|s| s.2.is_none()), "no Referer: {seen:?}");
    }

    // A redirect to another origin drops them too.
    let hop = lit(&format!("{home}/redirect-to?url={other}/echo"));
    let row = client
        .query_one(
            &format!(
                "SELECT body_json->'headers' ? 'x-api-key', body_json->'headers' ? 'referer', final_url
                 FROM api_request({hop},
                     options => '{{\"auth\": {{\"type\": \"api_key\", \"name\": \"X-Api-Key\", \"in\": \"header\", \"secret\": \"hop_key\"}}}}')"
            ),
            &[],
        )
        .unwrap();
    assert!(!row.get::<_, bool>(0), "the key went to another origin");
    assert!(!row.get::<_, bool>(1), "a Referer was sent");
    assert_eq!(row.get::<_, String>(2), format!("{other}/echo"));
}

#[test]
fn a_dropped_owners_jobs_never_run() {
    network_role("trust_gone");
    let mut client = connect_as("trust_gone");
    job(&mut client, "orphan", "orphan_t", "");
    drop(client);
    let mut su = connect();
    change_grants(
        "REASSIGN OWNED BY trust_gone TO postgres; DROP OWNED BY trust_gone; DROP ROLE trust_gone",
    );
    // The job stays, owned by an OID no role has: it never runs, and says why.
    let (code, message, _) = sql_error(su.batch_execute("SELECT apisync.run_job('orphan')"));
    assert_eq!(code, "42704", "{message}");
    assert!(message.contains("no longer exists"), "{message}");
    assert_eq!(api().requests_to("/t-orphan/api/users"), 0);
    // A role created later never inherits it.
    network_role("trust_gone");
    let mut newcomer = connect_as("trust_gone");
    assert_eq!(count(&mut newcomer, "SELECT count(*) FROM apisync.jobs"), 0);
    let (code, _, _) = sql_error(newcomer.batch_execute("SELECT apisync.run_job('orphan')"));
    assert_eq!(code, "42704");
    // A superuser drops it (or hands it to another role with alter_job).
    su.batch_execute("SELECT apisync.drop_job('orphan')")
        .unwrap();
}

#[test]
fn every_body_has_a_limit_and_no_secret_shows() {
    network_role("trust_limits");
    let mut client = connect_as("trust_limits");
    // The OAuth2 token response obeys max_response_bytes, as every body does.
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT * FROM api_fetch({}, options => '{{\"max_response_bytes\": 1000, \"auth\": {{\"type\": \"oauth2_client_credentials\", \"token_url\": {}, \"client_id\": \"c\", \"client_secret\": \"s\"}}}}')",
        lit(&api().url("/t-never-limits/echo")),
        serde_json_string(&api().url("/big?bytes=100000")),
    )));
    assert_eq!(code, "54000", "{message}");
    assert!(message.contains("OAuth2 token response"), "{message}");
    assert_eq!(api().requests_to("/t-never-limits/echo"), 0);

    // So does the request body: one body, shared by every request of the fetch.
    let big = "x".repeat(2000);
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT * FROM api_fetch({}, 'POST', '{{\"pad\": \"{big}\"}}', options => '{{\"max_response_bytes\": 1000}}')",
        lit(&api().url("/t-never-limits/echo")),
    )));
    assert_eq!(code, "54000", "{message}");
    assert!(message.contains("request body"), "{message}");

    // An API that echoes the credential into a row that does not convert: the error says ***.
    client
        .execute(
            "SELECT apisync.create_secret('echoed', $1)",
            &[&"echo-secret-42"],
        )
        .unwrap();
    client
        .batch_execute("CREATE TABLE echo_t (headers int)")
        .unwrap();
    let (code, message, detail) = sql_error(client.batch_execute(&format!(
        "SELECT * FROM api_fetch({}, options => '{{\"auth\": {{\"type\": \"bearer\", \"secret\": \"echoed\"}}}}', row_type => NULL::echo_t)",
        lit(&api().url("/echo")),
    )));
    assert_eq!(code, "22P02", "{message}");
    assert!(
        !message.contains("echo-secret-42") && !detail.contains("echo-secret-42"),
        "{message} / {detail}"
    );
    assert!(message.contains("***"), "{message}");
}

/// `text` as a JSON string literal, for building options.
fn serde_json_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn a_target_dropped_or_swapped_for_a_view_stops_the_job() {
    network_role("trust_target");
    let mut client = connect_as("trust_target");
    job(&mut client, "swapped", "swapped_t", "");
    client
        .batch_execute(
            "DROP TABLE swapped_t;
             CREATE VIEW swapped_t AS SELECT 1::bigint AS id, 'x'::text AS name",
        )
        .unwrap();
    // The job names its table by OID: the view of the same name is not it.
    let (code, message, _) = run_status(&mut client, "swapped").unwrap_err();
    assert_eq!(code, "42704", "{message}");
    assert!(message.contains("does not exist"), "{message}");
    assert_eq!(api().requests_to("/t-swapped/api/users"), 0);
}
