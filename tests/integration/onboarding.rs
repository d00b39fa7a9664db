//! From first look to a running job (#13): `options.max_rows` previews, `suggest_table`,
//! `create_job(create_target => true)`, OAuth2 refresh tokens.

use super::*;

const OFFSET_PAGING: &str =
    r#"'{"type": "offset", "offset_param": "offset", "size_param": "limit", "page_size": 20}'"#;

/// The ids `api_fetch` gives for the 57 offset users with `options` (as `call` places the call).
fn offset_ids(tag: &str, options: &str, select_list: bool) -> String {
    let call = format!(
        "api_fetch({}, path => '$.items', paging => {OFFSET_PAGING}, options => '{options}')",
        lit(&api().url(&format!("/{tag}/offset/users")))
    );
    let sql = match select_list {
        false => format!("SELECT string_agg(r->>'id', ',') FROM {call} r"),
        true => format!("SELECT string_agg(r->>'id', ',') FROM (SELECT {call} AS r) s"),
    };
    one::<Option<String>>(&mut user(), &sql).unwrap_or_default()
}

fn ids(range: std::ops::RangeInclusive<u32>) -> String {
    range.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

#[test]
fn max_rows_makes_one_request_for_a_bigger_first_page() {
    for (tag, select_list) in [("t-maxrows-from", false), ("t-maxrows-list", true)] {
        let got = offset_ids(tag, r#"{"max_rows": 5}"#, select_list);
        assert_eq!(got, ids(1..=5), "{tag}");
        let path = format!("/{tag}/offset/users");
        assert_eq!(
            api().requests_to(&path),
            1,
            "{tag}: one request for a 20-row page"
        );
    }
    // 25 rows take two pages of 20, and no third request; exactly one page's rows, one request.
    assert_eq!(
        offset_ids("t-maxrows-25", r#"{"max_rows": 25}"#, false),
        ids(1..=25)
    );
    assert_eq!(api().requests_to("/t-maxrows-25/offset/users"), 2);
    assert_eq!(
        offset_ids("t-maxrows-20", r#"{"max_rows": 20}"#, false),
        ids(1..=20)
    );
    assert_eq!(api().requests_to("/t-maxrows-20/offset/users"), 1);
    // More than there are: every row, as without it.
    assert_eq!(
        offset_ids("t-maxrows-all", r#"{"max_rows": 1000}"#, false),
        ids(1..=57)
    );
}

#[test]
fn max_rows_stops_a_streamed_body_and_counts_across_parameter_sets() {
    // 200,000 rows (about 20 MB) in one response: a job that wants 3 reads little of it.
    let mut client = user();
    client
        .batch_execute(&format!(
            "CREATE TABLE maxrows_stream (id bigint, name text);
             SELECT apisync.create_job('maxrows_stream', 'maxrows_stream', {}, path => '$.data',
                 options => '{{\"max_rows\": 3}}');",
            lit(&api().url("/export/json?n=200000&chunk=16384"))
        ))
        .unwrap();
    let row = client
        .query_one(
            "SELECT rows_fetched, bytes, cut_by FROM apisync.run_job('maxrows_stream')",
            &[],
        )
        .unwrap();
    let (rows, bytes, cut): (i64, i64, Option<String>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((rows, cut.as_deref()), (3, Some("max_rows")));
    assert!(bytes < 2_000_000, "read {bytes} bytes of about 20 MB");
    // Three sets of three issues, in params order: the first set's rows, then the second's first.
    let got: String = one(
        &mut client,
        &format!(
            "SELECT string_agg(r->>'repository', ',') FROM api_fetch({}, params => '[{{\"owner\": \"a\", \"repo\": \"x\"}}, {{\"owner\": \"b\", \"repo\": \"y\"}}, {{\"owner\": \"c\", \"repo\": \"z\"}}]', options => '{{\"max_rows\": 4, \"concurrency\": 3}}') r",
            lit(&api().url("/repos/{owner}/{repo}/issues"))
        ),
    );
    assert_eq!(got, "a/x,a/x,a/x,b/y");
}

#[test]
fn max_rows_cuts_a_job_like_max_pages() {
    let mut client = user();
    let url = lit(&api().url("/t-maxrows-job/offset/users"));
    client
        .batch_execute(&format!(
            "CREATE TABLE maxrows_append (id bigint PRIMARY KEY, name text);
             CREATE TABLE maxrows_replace (id bigint PRIMARY KEY, name text);
             SELECT apisync.create_job('maxrows_append', 'maxrows_append', {url}, path => '$.items',
                 paging => {OFFSET_PAGING}, options => '{{\"max_rows\": 30}}');
             SELECT apisync.create_job('maxrows_replace', 'maxrows_replace', {url}, path => '$.items',
                 paging => {OFFSET_PAGING}, options => '{{\"max_rows\": 30}}', write_method => 'replace');"
        ))
        .unwrap();
    let (status, rows, cut): (String, i64, Option<String>) = {
        let row = client
            .query_one(
                "SELECT status, rows_fetched, cut_by FROM apisync.run_job('maxrows_append')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        (status.as_str(), rows, cut.as_deref()),
        ("succeeded", 30, Some("max_rows"))
    );
    assert_eq!(
        one::<i64>(&mut client, "SELECT count(*) FROM maxrows_append"),
        30
    );
    let (state, message, _) =
        sql_error(client.batch_execute("SELECT apisync.run_job('maxrows_replace')"));
    assert_eq!(state, "54000", "{message}");
    assert!(
        message.contains("after 30 rows (options.max_rows)"),
        "{message}"
    );
    assert_eq!(
        one::<i64>(&mut client, "SELECT count(*) FROM maxrows_replace"),
        0
    );
}

#[test]
fn max_rows_is_checked_before_any_request() {
    for (call, expected) in [
        (
            r#"SELECT * FROM api_fetch('http://127.0.0.1:1/x', options => '{"max_rows": 0}')"#,
            "options.max_rows must be positive",
        ),
        (
            r#"SELECT * FROM api_fetch('http://127.0.0.1:1/x', options => '{"max_rows": -1}')"#,
            "invalid options",
        ),
        (
            r#"SELECT api_request('http://127.0.0.1:1/x', options => '{"max_rows": 5}')"#,
            "options.max_rows is for api_fetch",
        ),
    ] {
        let (state, message, _) = sql_error(user().batch_execute(call));
        assert_eq!(state, "22023", "{call}: {message}");
        assert!(message.contains(expected), "{call}: {message}");
    }
}

/// Each devapi shape: a table name, the URL, the other arguments of `api_fetch` /
/// `suggest_table` but `options`, and `options`.
fn shapes() -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        (
            "sg_fdl",
            api().url("/api/users"),
            r#"'POST', '{"paging": {"pageSize": 10, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}', '$.data',
               paging => '{"type": "page_number", "in": "body", "page_param": "paging.pageNum", "size_param": "paging.pageSize", "page_size": 10, "total_path": "$.totalNum"}'"#,
            "{}",
        ),
        (
            "sg_github",
            api().url("/github/users"),
            r#"paging => '{"type": "link_header", "size_param": "per_page", "page_size": 25}'"#,
            "{}",
        ),
        (
            "sg_stripe",
            api().url("/stripe/customers"),
            r#"path => '$.data', paging => '{"type": "cursor", "cursor_path": "$.data[-1].id", "cursor_param": "starting_after", "has_more_path": "$.has_more", "size_param": "limit", "page_size": 20}'"#,
            r#"{"auth": {"type": "bearer", "token": "sk_test_4eC39HqLyjWDarjtT1zdp7dc"}}"#,
        ),
        (
            "sg_drf",
            api().url("/drf/users"),
            r#"path => '$.results', paging => '{"type": "next_url", "next_path": "$.next"}'"#,
            "{}",
        ),
        ("sg_types", api().url("/types"), "path => '$.data'", "{}"),
        (
            "sg_issues",
            api().url("/repos/acme/widgets/issues"),
            "'GET'",
            "{}",
        ),
    ]
}

#[test]
fn suggest_table_writes_ddl_that_loads_every_devapi_shape() {
    let mut client = user();
    for (table, url, args, options) in shapes() {
        let url = lit(&url);
        let args = format!("{args}, options => {}", lit(options));
        // A sample stops at its first page: no WARNING that max_pages cut it.
        let (mut watched, notices) = harness::connect_collecting();
        let ddl: String = one(
            &mut watched,
            &format!("SELECT apisync.suggest_table('{table}', {url}, {args})"),
        );
        assert_eq!(*notices.lock().unwrap(), Vec::<String>::new(), "{table}");
        client
            .batch_execute(&ddl)
            .unwrap_or_else(|e| panic!("{table}: {ddl}: {:?}", e.as_db_error()));
        // The load takes the map from the table's comment.
        let call = format!(
            "api_fetch({url}, {args} || jsonb_build_object('columns', obj_description('{table}'::regclass)::jsonb), row_type => NULL::{table})"
        );
        let inserted = client
            .execute(&format!("INSERT INTO {table} SELECT * FROM {call}"), &[])
            .unwrap_or_else(|e| panic!("{table}: {ddl}: {:?}", e.as_db_error()));
        let rows: i64 = one(
            &mut client,
            &format!("SELECT count(*) FROM api_fetch({url}, {args})"),
        );
        assert!(rows > 1, "{table}");
        assert_eq!(inserted as i64, rows, "{table}: every row loads");
        // Every value the API sent is in its column: as many non-null values per key.
        let columns = client
            .query(
                &format!(
                    "SELECT a.attname::text, coalesce(obj_description('{table}'::regclass)::jsonb ->> a.attname::text, '$.' || a.attname)
                     FROM pg_attribute a WHERE a.attrelid = '{table}'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
                ),
                &[],
            )
            .unwrap();
        for column in columns {
            let (name, path): (String, String) = (column.get(0), column.get(1));
            let sent: i64 = one(
                &mut client,
                &format!(
                    "SELECT count(*) FROM api_fetch({url}, {args}) r
                     WHERE jsonb_path_query_first(r, {}) NOT IN ('null'::jsonb)",
                    lit(&path)
                ),
            );
            let loaded: i64 = one(
                &mut client,
                &format!("SELECT count({}) FROM {table}", quote_ident(&name)),
            );
            assert_eq!(loaded, sent, "{table}.{name} ({path})\n{ddl}");
        }
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[test]
fn suggest_table_chooses_names_types_and_keys() {
    let mut client = user();
    let ddl: String = one(
        &mut client,
        &format!(
            "SELECT apisync.suggest_table('staging.\"Users\"', {}, 'POST', '{{\"paging\": {{\"pageSize\": 100, \"pageNum\": 1}}}}', '$.data')",
            lit(&api().url("/api/users"))
        ),
    );
    assert!(
        ddl.starts_with("CREATE TABLE staging.\"Users\" (\n    id bigint PRIMARY KEY,\n"),
        "{ddl}"
    );
    for line in [
        "    signup_time timestamp with time zone NOT NULL",
        "    tags text[] NOT NULL",
        "    score text NOT NULL",
        "COMMENT ON TABLE staging.\"Users\" IS '{\"signup_time\":\"$.signupTime\"}';",
    ] {
        assert!(ddl.contains(line), "{line}\n{ddl}");
    }
    // Mixed kinds fall back: numbers and strings to text, objects and scalars to jsonb.
    let fixture = r#"[{"a": 1, "b": {"x": 1}, "c": "2024-01-01", "d": "00123"}, {"a": "x", "b": 2, "c": "2024-01-02T10:00:00", "d": "yes"}]"#;
    let ddl: String = one(
        &mut client,
        &format!(
            "SELECT apisync.suggest_table('mixed', {})",
            lit(&api().url(&format!("/fixture?body={}", urlencode(fixture))))
        ),
    );
    assert_eq!(
        ddl,
        "CREATE TABLE mixed (\n    a text NOT NULL,\n    b jsonb NOT NULL,\n    c timestamp without time zone NOT NULL,\n    d text NOT NULL\n);\nCOMMENT ON TABLE mixed IS '{}';\n"
    );
    // The sample: the first page, or options.max_rows rows of it.
    let ddl: String = one(
        &mut client,
        &format!(
            "SELECT apisync.suggest_table('first', {}, options => '{{\"max_rows\": 1}}')",
            lit(&api().url(&format!("/fixture?body={}", urlencode(fixture))))
        ),
    );
    assert!(ddl.contains("    a bigint NOT NULL"), "{ddl}");
}

#[test]
fn suggest_table_refuses_what_it_cannot_use() {
    let url = lit(&api().url("/types"));
    for (role, sql, state, expected) in [
        (
            "plain_user",
            format!("SELECT apisync.suggest_table('t', {url}, path => '$.data')"),
            "42501",
            "may not reach the network",
        ),
        (
            "api_user",
            format!("SELECT apisync.suggest_table('t', {url}, path => '$.totalNum')"),
            "42804",
            "row 1 of the sample is a number, not a JSON object",
        ),
        (
            "api_user",
            format!("SELECT apisync.suggest_table('t', {url}, path => '$.nothing')"),
            "22023",
            "the sample has no rows",
        ),
        (
            "api_user",
            format!("SELECT apisync.suggest_table('t', {url}, path => '$.data', options => '{{\"columns\": {{}}}}')"),
            "22023",
            "options.columns is what the suggestion makes",
        ),
    ] {
        let (got, message, _) = sql_error(connect_as(role).batch_execute(&sql));
        assert_eq!(got, state, "{sql}: {message}");
        assert!(message.contains(expected), "{sql}: {message}");
    }
}

const FDL_USERS: &str = r#"'POST', '{"paging": {"pageSize": 20, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}', '$.data',
    paging => '{"type": "page_number", "in": "body", "page_param": "paging.pageNum", "size_param": "paging.pageSize", "page_size": 20, "total_path": "$.totalNum"}'"#;

#[test]
fn create_target_makes_the_table_in_the_jobs_transaction() {
    let mut client = user();
    let url = lit(&api().url("/t-ct/api/users"));
    // No such table, and no create_target: a clear error, before any request.
    let (state, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT apisync.create_job('ct_users', 'ct_users', {url}, {FDL_USERS})"
    )));
    assert_eq!(state, "42P01", "{message}");
    assert_eq!(api().requests_to("/t-ct/api/users"), 0);
    // Made from the first page, owned by the caller, with the map stored in the job.
    client
        .batch_execute(&format!(
            "SELECT apisync.create_job('ct_users', 'ct_users', {url}, {FDL_USERS},
                 write_method => 'upsert', create_target => true)"
        ))
        .unwrap();
    assert_eq!(api().requests_to("/t-ct/api/users"), 1, "one page sampled");
    let (owner, signup, map): (String, String, String) = {
        let row = client
            .query_one(
                "SELECT c.relowner::regrole::text,
                        format_type(a.atttypid, a.atttypmod),
                        j.options->>'columns'
                 FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'signup_time'
                 JOIN apisync.jobs j ON j.target = c.oid
                 WHERE c.oid = 'ct_users'::regclass",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(owner, "api_user");
    assert_eq!(signup, "timestamp with time zone");
    assert_eq!(map, r#"{"signup_time": "$.signupTime"}"#);
    let row = client
        .query_one(
            "SELECT status, rows_inserted FROM apisync.run_job('ct_users')",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        ("succeeded".into(), 57)
    );
    assert_eq!(
        one::<i64>(&mut client, "SELECT count(signup_time) FROM ct_users"),
        57
    );
    // An existing table of the same shape is taken (a second job into it); one of another shape
    // is refused, and nothing is left behind.
    client
        .batch_execute(&format!(
            "SELECT apisync.create_job('ct_users_again', 'public.ct_users', {url}, {FDL_USERS}, create_target => true)"
        ))
        .unwrap();
    client
        .batch_execute("CREATE TABLE ct_other (id bigint PRIMARY KEY, name text)")
        .unwrap();
    let (state, message, detail) = sql_error(client.batch_execute(&format!(
        "SELECT apisync.create_job('ct_other', 'ct_other', {url}, {FDL_USERS}, create_target => true)"
    )));
    assert_eq!(state, "42P07", "{message}");
    assert!(
        detail.contains("it has no column signup_time (timestamp with time zone)"),
        "{detail}"
    );
    // A job that fails its check after the table was made leaves no table.
    let (state, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT apisync.create_job('ct_bad', 'ct_bad', {url}, {FDL_USERS}, write_method => 'upsert', key_columns => '{{nope}}', create_target => true)"
    )));
    assert!(!state.is_empty(), "{message}");
    assert_eq!(
        one::<i64>(
            &mut client,
            "SELECT count(*) FROM pg_class WHERE relname IN ('ct_bad') OR relname = 'ct_other' AND relnatts > 2"
        ),
        0
    );
    assert_eq!(
        one::<i64>(
            &mut client,
            "SELECT count(*) FROM apisync.jobs WHERE name IN ('ct_other', 'ct_bad')"
        ),
        0
    );
}

/// `options` authenticating client `client` of the rotating provider with the refresh token in
/// secret `secret` (and its client secret in secret `rc_client`); the token endpoint answers
/// after `ms`.
fn rotating(client: &str, secret: &str, ms: u64) -> String {
    user()
        .execute(
            "SELECT apisync.create_secret('rc_client', $1)",
            &[&"c-secret"],
        )
        .unwrap();
    let token_url = api().url(&format!("/rotating/token?ms={ms}"));
    lit(
        &serde_json::json!({"auth": {"type": "oauth2_refresh_token", "token_url": token_url,
        "client_id": client, "secret": "rc_client", "refresh_token_secret": secret}})
        .to_string(),
    )
}

/// (exchanges, spent tokens presented again, the refresh token that works now) of `client`.
fn provider(client: &str) -> (i64, i64, String) {
    let row = connect()
        .query_one(
            &format!(
                "SELECT (r->>'exchanges')::bigint, (r->>'reused')::bigint, r->>'current' FROM api_fetch({}) r",
                lit(&api().url(&format!("/rotating/stats?client={client}")))
            ),
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

fn stored_secret(name: &str) -> String {
    text(&format!(
        "SELECT value FROM apisync.secrets WHERE name = {} AND owner = 'api_user'::regrole",
        lit(name)
    ))
}

/// The client the protected API saw, fetched as api_user with `options`.
fn fetch_rotating(client: &mut harness::Client, options: &str) -> Result<String, postgres::Error> {
    client
        .query_one(
            &format!(
                "SELECT string_agg(r->>'client', ',') FROM api_fetch({}, path => '$.data[0]', options => {options}) r",
                lit(&api().url("/rotating/data"))
            ),
            &[],
        )
        .map(|row| row.get(0))
}

#[test]
fn refresh_tokens_rotate_durably_across_runs_and_rollbacks() {
    let mut client = user();
    client
        .execute("SELECT apisync.create_secret('rt1', $1)", &[&"rt-rc1-1"])
        .unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE rot_t (client text, exchanges bigint);
             SELECT apisync.create_job('rot', 'rot_t', {}, path => '$.data[0]', options => {});",
            lit(&api().url("/rotating/data")),
            rotating("rc1", "rt1", 0)
        ))
        .unwrap();
    assert_eq!(
        provider("rc1").0,
        0,
        "create_job does not spend the refresh token"
    );
    for run in 1..=2 {
        let status: String = one(&mut client, "SELECT status FROM apisync.run_job('rot')");
        assert_eq!(status, "succeeded", "run {run}");
    }
    assert_eq!(provider("rc1"), (2, 0, "rt-rc1-3".into()));
    assert_eq!(stored_secret("rt1"), "rt-rc1-3");
    // A run that fails after its refresh: the rotated token is stored all the same.
    client
        .batch_execute("ALTER TABLE rot_t ADD CONSTRAINT none_yet CHECK (client IS NULL) NOT VALID")
        .unwrap();
    let (state, message, _) = sql_error(client.batch_execute("SELECT apisync.run_job('rot')"));
    assert_eq!(state, "23514", "{message}");
    assert_eq!(stored_secret("rt1"), "rt-rc1-4");
    client
        .batch_execute("ALTER TABLE rot_t DROP CONSTRAINT none_yet")
        .unwrap();
    let status: String = one(&mut client, "SELECT status FROM apisync.run_job('rot')");
    assert_eq!(status, "succeeded");
    assert_eq!(one::<i64>(&mut client, "SELECT count(*) FROM rot_t"), 3);
    // A rolled-back statement's refresh stays too; a session reuses its access token.
    let mut session = user();
    session.batch_execute("BEGIN").unwrap();
    assert_eq!(
        fetch_rotating(&mut session, &rotating("rc1", "rt1", 0)).unwrap(),
        "rc1"
    );
    session.batch_execute("ROLLBACK").unwrap();
    assert_eq!(stored_secret("rt1"), "rt-rc1-6");
    assert_eq!(
        fetch_rotating(&mut session, &rotating("rc1", "rt1", 0)).unwrap(),
        "rc1"
    );
    assert_eq!(
        fetch_rotating(&mut user(), &rotating("rc1", "rt1", 0)).unwrap(),
        "rc1"
    );
    assert_eq!(provider("rc1"), (6, 0, "rt-rc1-7".into()));
}

#[test]
fn two_backends_refresh_one_secret_in_turn() {
    user()
        .execute("SELECT apisync.create_secret('rt2', $1)", &[&"rt-rc2-1"])
        .unwrap();
    let fetches: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(|| fetch_rotating(&mut user(), &rotating("rc2", "rt2", 300))))
        .collect();
    for fetch in fetches {
        assert_eq!(fetch.join().unwrap().unwrap(), "rc2");
    }
    // Each refreshed with the token the other had stored: none was spent twice.
    assert_eq!(provider("rc2"), (2, 0, "rt-rc2-3".into()));
    assert_eq!(stored_secret("rt2"), "rt-rc2-3");
}

#[test]
fn refused_refresh_tokens_are_clear_errors_without_the_token() {
    let mut client = user();
    // Revoked: the provider's error and description, 38000.
    client
        .execute("SELECT apisync.create_secret('rt3', $1)", &[&"rt-rc3-1"])
        .unwrap();
    provider("rc3");
    connect()
        .batch_execute(&format!(
            "SELECT * FROM api_fetch({})",
            lit(&api().url("/rotating/revoke?client=rc3"))
        ))
        .unwrap();
    let (state, message, _) = sql_error(fetch_rotating(&mut client, &rotating("rc3", "rt3", 0)));
    assert_eq!(state, "38000", "{message}");
    assert!(
        message.contains("invalid_grant: Token has been expired or revoked."),
        "{message}"
    );
    // Spent: the provider names the token; the error does not.
    client
        .execute("SELECT apisync.create_secret('rt4', $1)", &[&"rt-rc4-1"])
        .unwrap();
    fetch_rotating(&mut client, &rotating("rc4", "rt4", 0)).unwrap();
    client
        .execute("SELECT apisync.create_secret('rt4', $1)", &[&"rt-rc4-1"])
        .unwrap();
    let (state, message, detail) =
        sql_error(fetch_rotating(&mut user(), &rotating("rc4", "rt4", 0)));
    assert_eq!(state, "38000", "{message}");
    assert!(
        message.contains("refresh token *** was already used"),
        "{message}"
    );
    assert!(
        !format!("{message}{detail}").contains("rt-rc4"),
        "{message} {detail}"
    );
    // A transaction that changed the secret would wait for itself: refused at once.
    client.batch_execute("BEGIN").unwrap();
    client
        .execute("SELECT apisync.create_secret('rt5', $1)", &[&"rt-rc5-1"])
        .unwrap();
    let (state, message, _) = sql_error(fetch_rotating(&mut client, &rotating("rc5", "rt5", 0)));
    assert_eq!(state, "55P03", "{message}");
    client.batch_execute("ROLLBACK").unwrap();
    // No such secret: before any request, also at create_job.
    let (state, message, _) = sql_error(client.batch_execute(&format!(
        "CREATE TABLE rot_missing (client text);
         SELECT apisync.create_job('rot_missing', 'rot_missing', {}, options => {})",
        lit(&api().url("/rotating/data")),
        rotating("rc6", "no_such_secret", 0)
    )));
    assert_eq!(state, "42704", "{message}");
    assert_eq!(provider("rc6").0, 0);
}
