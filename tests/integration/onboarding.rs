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
