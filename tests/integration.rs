//! The installed extension in a real cluster, against devapi on loopback: what a user sees.

use std::time::{Duration, Instant};

use harness::{api, connect, connect_as, lit, sql_error};

/// One text value from a query.
fn text(sql: &str) -> String {
    connect()
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}

/// The (sqlstate, message, detail) of a statement that must fail.
fn fails(sql: &str) -> (String, String, String) {
    sql_error(connect().batch_execute(sql))
}

mod trust;

mod api_request {
    use super::*;

    #[test]
    fn get_returns_status_headers_body_and_timing() {
        let url = api().url("/echo?x=1");
        let row = connect()
            .query_one(
                &format!(
                    "SELECT status, headers->>'content-type', body_json->>'method',
                            body_json->'headers'->>'user-agent', final_url, elapsed_ms > 0, body_json IS NOT NULL
                     FROM api_request({})",
                    lit(&url)
                ),
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 200);
        assert_eq!(row.get::<_, String>(1), "application/json");
        assert_eq!(row.get::<_, String>(2), "GET");
        assert_eq!(row.get::<_, String>(3), "pg_apisync/0.2.0");
        assert_eq!(row.get::<_, String>(4), url);
        assert!(row.get::<_, bool>(5));
        assert!(row.get::<_, bool>(6));
    }

    #[test]
    fn every_method_sends_its_json_body() {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let got = text(&format!(
                "SELECT concat_ws(' ', body_json->>'method', body_json->'headers'->>'content-type', body_json->'body_json'->>'a')
                 FROM api_request({}, {}, '{{\"a\": \"é\"}}')",
                lit(&api().url("/echo")),
                lit(&method.to_lowercase())
            ));
            assert_eq!(got, format!("{method} application/json é"));
        }
        let head = text(&format!(
            "SELECT status || ':' || body FROM api_request({}, 'HEAD')",
            lit(&api().url("/echo"))
        ));
        assert_eq!(head, "200:");
    }

    #[test]
    fn form_text_bodies_headers_and_query_parameters() {
        let echo = lit(&api().url("/echo"));
        let form = text(&format!(
            "SELECT (body_json->>'body') || ' ' || (body_json->'headers'->>'content-type')
             FROM api_request({echo}, 'POST', options => '{{\"form\": {{\"a\": 1, \"b\": \"x y&z\"}}}}')"
        ));
        assert_eq!(form, "a=1&b=x+y%26z application/x-www-form-urlencoded");
        let xml = text(&format!(
            "SELECT (body_json->>'body') || ' ' || (body_json->'headers'->>'content-type')
             FROM api_request({echo}, 'POST', options => '{{\"body_text\": \"<a/>\", \"content_type\": \"application/xml\"}}')"
        ));
        assert_eq!(xml, "<a/> application/xml");
        let headers = text(&format!(
            "SELECT (body_json->'headers'->>'x-tenant') || ' ' || (body_json->'query'->>'q') || ' ' || (body_json->'query'->>'page')
             FROM api_request({echo}, headers => '{{\"X-Tenant\": \"acme\"}}', options => '{{\"query\": {{\"q\": \"a b\", \"page\": 2}}}}')"
        ));
        assert_eq!(headers, "acme a b 2");
    }

    #[test]
    fn redirects_are_followed_up_to_ten() {
        let row = connect()
            .query_one(
                &format!(
                    "SELECT status, final_url FROM api_request({})",
                    lit(&api().url("/redirect/3"))
                ),
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 200);
        assert_eq!(row.get::<_, String>(1), api().url("/echo"));
        let (code, message, _) = fails(&format!(
            "SELECT * FROM api_request({})",
            lit(&api().url("/redirect/11"))
        ));
        assert_eq!(code, "08006");
        assert!(message.contains("too many redirects"), "{message}");
    }

    #[test]
    fn compressed_bodies_are_decoded() {
        for encoding in ["gzip", "deflate", "br"] {
            let length = text(&format!(
                "SELECT length(body_json->>'padding')::text FROM api_request({})",
                lit(&api().url(&format!("/compressed/{encoding}?bytes=5000")))
            ));
            assert_eq!(length, "4973", "{encoding}");
        }
    }

    #[test]
    fn error_statuses_are_returned_not_raised() {
        let row = connect()
            .query_one(
                &format!(
                    "SELECT status, body_json->>'error' FROM api_request({})",
                    lit(&api().url("/status/404"))
                ),
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 404);
        assert_eq!(row.get::<_, String>(1), "status 404");
        let html = text(&format!(
            "SELECT (body_json IS NULL)::text || ' ' || left(body, 15) FROM api_request({})",
            lit(&api().url("/html"))
        ));
        assert_eq!(html, "true <!DOCTYPE html>");
    }

    #[test]
    fn repeated_response_headers_are_joined() {
        let cookies = text(&format!(
            "SELECT headers->>'set-cookie' || ' ' || (headers->>'x-request-id') FROM api_request({})",
            lit(&api().url("/headers"))
        ));
        assert_eq!(cookies, "a=1, b=2 req-42");
    }
}

mod api_fetch {
    use super::*;

    fn users_body() -> &'static str {
        r#"'{"paging": {"pageSize": 5, "pageNum": 2}, "params": [{"name": "name", "value": ""}]}'"#
    }

    #[test]
    fn jsonb_rows_from_the_demo_shape() {
        let url = lit(&api().url("/api/users"));
        let ids = text(&format!(
            "SELECT string_agg(r->>'id', ',') FROM api_fetch({url}, 'POST', {}, '$.data') r",
            users_body()
        ));
        assert_eq!(ids, "6,7,8,9,10");
        let same = text(&format!(
            "SELECT string_agg(r->>'id', ',') FROM api_fetch({url}, 'POST', {}, '$.data[*]') r",
            users_body()
        ));
        assert_eq!(same, ids);
        let none = text(&format!(
            "SELECT count(*)::text FROM api_fetch({url}, 'POST', {}, '$.nothing')",
            users_body()
        ));
        assert_eq!(none, "0");
        let total = text(&format!(
            "SELECT string_agg(r::text, ',') FROM api_fetch({url}, 'POST', {}, '$.totalNum') r",
            users_body()
        ));
        assert_eq!(total, "57");
    }

    #[test]
    fn insert_select_with_a_row_type_converts_every_type() {
        let mut client = connect();
        client
            .batch_execute(&format!(
                "CREATE TABLE typed (
                    small smallint, \"int\" integer, big bigint, num numeric, num_text numeric,
                    \"real\" real, \"double\" double precision, flag boolean, txt text, vc varchar(5),
                    day date, ts timestamp, tstz timestamptz, epoch timestamptz, id uuid, doc json,
                    docb jsonb, ints int[], texts text[], namedcase text, absent text);
                 SET TIME ZONE 'UTC';
                 INSERT INTO typed SELECT * FROM api_fetch({}, path => '$.data', row_type => NULL::typed);",
                lit(&api().url("/types"))
            ))
            .unwrap();
        let rows = client
            .query(
                "SELECT concat_ws('|', small, \"int\", big, num, num_text, \"real\", \"double\", flag, txt, vc,
                        day, ts, tstz, epoch, id, doc, docb, ints, texts, namedcase, coalesce(absent, 'NULL'))
                 FROM typed ORDER BY \"int\"",
                &[],
            )
            .unwrap();
        let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            got,
            [
                "12|-2147483648|9007199254740993|12345678901234567890.123456789|0.10|1.5|3.141592653589793|t|héllo \"world\"|short|2024-02-29|2024-03-01 12:34:56.789|2024-03-01 07:04:56+00|2023-11-14 22:13:20+00|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|{\"nested\":[1,{\"x\":null}]}|[1, \"two\"]|{1,NULL,3}|{a,\"b c\"}|matched|NULL",
                "42|-9223372036854775808|-0.000000000000000001|7|NaN|-1e-300|t|42|x|2024-03-01 00:00:00+00|1970-01-01 00:00:00.5+00|\"a string\"|{}|{x,y}|lower|NULL",
            ]
        );
    }

    #[test]
    fn rows_parsed_into_cells_equal_rows_parsed_as_json_values() {
        // `$.data` is a chain of names: pages are parsed straight into cells. `$.data[?@]` selects
        // the same rows through the general JSONPath parser. Every type, both ways, same text.
        let mut client = connect();
        client
            .batch_execute(
                "CREATE TYPE every_type AS (
                    small smallint, \"int\" integer, big bigint, num numeric, num_text numeric,
                    \"real\" real, \"double\" double precision, flag boolean, txt text, vc varchar(5),
                    day date, ts timestamp, tstz timestamptz, epoch timestamptz, id uuid, doc json,
                    docb jsonb, ints int[], texts text[], namedcase text, absent text)",
            )
            .unwrap();
        let mut rows = |path: &str| -> String {
            let sql = format!(
                "SELECT string_agg(r::text, ' | ' ORDER BY r.\"int\")
                 FROM api_fetch({}, path => '{path}', row_type => NULL::every_type) r",
                lit(&api().url("/types"))
            );
            client.query_one(&sql, &[]).unwrap().get(0)
        };
        let cells = rows("$.data");
        assert_eq!(cells.matches(" | ").count(), 1, "{cells}");
        assert_eq!(cells, rows("$.data[?@]"));
    }

    #[test]
    fn rows_the_cell_parser_leaves_get_the_general_rules() {
        let fetch = |rows: &str, path: &str| {
            format!(
                "SELECT string_agg(coalesce(r.id::text, 'NULL'), ',')
                 FROM api_fetch({}, 'POST', '{{\"data\": {rows}}}', '$.body_json.{path}', row_type => NULL::just_id) r",
                lit(&api().url("/echo"))
            )
        };
        let mut client = connect();
        client
            .batch_execute("CREATE TYPE just_id AS (id int, name text)")
            .unwrap();
        let mut ids = |rows: &str, path: &str| -> String {
            client.query_one(&fetch(rows, path), &[]).unwrap().get(0)
        };
        // Two keys equal to the column ignoring case: the first in key order fills it.
        let rows = r#"[{"Id": 1, "ID": 2}, {"id": 3, "ID": 4}, {"iD": 5}, {}]"#;
        assert_eq!(ids(rows, "data"), "2,3,5,NULL");
        assert_eq!(ids(rows, "data[?@]"), "2,3,5,NULL");
        let (code, message, _) = fails(&fetch(r#"[{"id": 1}, 7.5]"#, "data"));
        assert_eq!(code, "42804");
        assert!(
            message.starts_with("api_fetch row 2 is a number, not an object"),
            "{message}"
        );
    }

    #[test]
    fn options_columns_map_relative_paths() {
        let mut client = connect();
        client
            .batch_execute("CREATE TYPE user_card AS (id int, who text, tags text[])")
            .unwrap();
        let row = client
            .query_one(
                &format!(
                    "SELECT string_agg(format('%s %s %s', id, who, tags), '; ')
                     FROM api_fetch({}, 'POST', {}, '$.data', row_type => NULL::user_card,
                                    options => '{{\"columns\": {{\"who\": \"$.email\", \"tags\": \"$.tags[*]\"}}}}')",
                    lit(&api().url("/api/users")),
                    users_body()
                ),
                &[],
            )
            .unwrap();
        let got: String = row.get(0);
        assert!(got.starts_with("6 "), "{got}");
        assert!(got.contains("@example.com {vip,beta}"), "{got}");
    }

    #[test]
    fn a_value_that_does_not_convert_names_row_column_and_value() {
        let (code, message, detail) = fails(&format!(
            "CREATE TEMP TABLE bad (\"int\" int, txt int);
             SELECT * FROM api_fetch({}, path => '$.data', row_type => NULL::bad)",
            lit(&api().url("/types"))
        ));
        assert_eq!(code, "22P02");
        assert_eq!(
            message,
            "api_fetch row 1, column \"txt\": cannot convert \"héllo \\\"world\\\"\" to integer"
        );
        assert!(
            detail.contains("invalid input syntax for type integer"),
            "{detail}"
        );
        let (code, message, _) = fails(&format!(
            "CREATE TEMP TABLE narrow (small smallint, \"int\" smallint);
             SELECT * FROM api_fetch({}, path => '$.data', row_type => NULL::narrow)",
            lit(&api().url("/types"))
        ));
        assert_eq!(code, "22003");
        assert!(
            message.starts_with("api_fetch row 1, column \"int\": cannot convert -2147483648"),
            "{message}"
        );
    }

    #[test]
    fn http_errors_carry_status_and_body() {
        let (code, message, detail) = fails(&format!(
            "SELECT * FROM api_fetch({}, options => '{{\"retries\": 0}}')",
            lit(&api().url("/status/503"))
        ));
        assert_eq!(code, "38000");
        assert_eq!(
            message,
            format!(
                "HTTP 503 Service Unavailable from {}",
                api().url("/status/503")
            )
        );
        assert_eq!(detail, "response body: {\"error\":\"status 503\"}");
    }

    #[test]
    fn bodies_that_are_not_json_are_named() {
        for (path, needle) in [
            ("/notjson", "is not valid JSON"),
            ("/html", "is HTML, not JSON"),
            ("/truncated-json", "ends too early"),
        ] {
            let (code, message, _) = fails(&format!(
                "SELECT * FROM api_fetch({})",
                lit(&api().url(path))
            ));
            assert_eq!(code, "22032", "{path}");
            assert!(message.contains(needle), "{path}: {message}");
        }
        let (code, message, _) = fails(&format!(
            "SELECT * FROM api_fetch({})",
            lit(&api().url("/truncated"))
        ));
        assert_eq!(code, "08006");
        assert!(message.contains("could not read the response"), "{message}");
        let empty = text(&format!(
            "SELECT count(*)::text FROM api_fetch({})",
            lit(&api().url("/nocontent"))
        ));
        assert_eq!(empty, "0");
    }

    #[test]
    fn limit_takes_the_first_rows() {
        let got = text(&format!(
            "SELECT string_agg(r->>'id', ',') FROM (SELECT * FROM api_fetch({}, path => '$.data') LIMIT 3) s(r)",
            lit(&api().url("/rows?n=1000"))
        ));
        assert_eq!(got, "0,1,2");
    }
}

mod bad_input {
    use super::*;

    /// Every one of these fails before any request: the server sees nothing.
    #[test]
    fn rejected_before_any_request() {
        // A path no other test uses: any request to it means validation came too late.
        let good = api().url("/never-called");
        let cases: Vec<(String, &str, &str)> = vec![
            ("api_fetch(NULL)".into(), "22004", "url must not be NULL or empty"),
            ("api_fetch('')".into(), "22004", "url must not be NULL or empty"),
            ("api_fetch('/api/users')".into(), "22023", "relative URL without a base"),
            ("api_fetch('http://exa mple.com/')".into(), "22023", "invalid url"),
            ("api_fetch('ftp://127.0.0.1/x')".into(), "22023", "unsupported URL scheme \"ftp\""),
            (format!("api_fetch({}, 'FETCH')", lit(&good)), "22023", "unsupported HTTP method \"FETCH\""),
            (format!("api_fetch({}, path => 'data')", lit(&good)), "42601", "invalid JSONPath \"data\""),
            (format!("api_fetch({}, options => '{{\"timout_ms\": 5}}')", lit(&good)), "22023", "unknown field `timout_ms`"),
            (format!("api_fetch({}, options => '{{\"timeout_ms\": \"5\"}}')", lit(&good)), "22023", "invalid type: string \"5\""),
            (format!("api_fetch({}, options => '{{\"timeout_ms\": 999999999}}')", lit(&good)), "22023", "above the maximum 30000"),
            (format!("api_fetch({}, headers => '[\"X-A\"]')", lit(&good)), "22023", "headers must be a JSON object of strings"),
            (format!("api_fetch({}, headers => '{{\"X-A\": 1}}')", lit(&good)), "22023", "header \"X-A\" must be a string"),
            (format!("api_fetch({}, headers => '{{\"X-A\": \"a\\r\\nX-B: 1\"}}')", lit(&good)), "22023", "contains a line break"),
            (format!("api_fetch({}, paging => '{{\"type\": \"pages\"}}')", lit(&good)), "22023", "unknown paging type \"pages\""),
            (format!("api_fetch({}, row_type => NULL::record) AS t(a int)", lit(&good)), "42804", "named composite type, not record"),
            (format!("api_fetch({}, row_type => NULL::pg_class, options => '{{\"columns\": {{\"nope\": \"$.a\"}}}}')", lit(&good)), "42703", "names column \"nope\""),
        ];
        for (call, code, needle) in &cases {
            let (got_code, message, _) = fails(&format!("SELECT * FROM {call}"));
            assert_eq!(got_code, *code, "{call}: {message}");
            assert!(message.contains(needle), "{call}: {message}");
        }
        let (code, message, _) = fails(&format!(
            "SELECT * FROM api_request({}, headers => '{{\"Host\": \"x\"}}')",
            lit(&good)
        ));
        assert_eq!(code, "22023");
        assert!(message.contains("set by the HTTP client"), "{message}");
        assert_eq!(
            api().requests_to("/never-called"),
            0,
            "a rejected call must not reach the API"
        );
    }

    #[test]
    fn connection_failures_are_classified() {
        let refused = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            drop(listener);
            format!("http://127.0.0.1:{port}/x")
        };
        let (code, message, _) = fails(&format!("SELECT * FROM api_request({})", lit(&refused)));
        assert_eq!(code, "08001");
        assert!(
            message.starts_with(&format!("could not connect to {refused}")),
            "{message}"
        );
        assert!(message.to_lowercase().contains("refused"), "{message}");

        let (code, message, _) =
            fails("SELECT * FROM api_request('http://no-such-host.invalid/x')");
        assert_eq!(code, "08001");
        assert!(message.contains("dns error"), "{message}");

        let tls = api().url("/echo").replace("http://", "https://");
        let (code, message, _) = fails(&format!("SELECT * FROM api_request({})", lit(&tls)));
        assert_eq!(code, "08001");
        assert!(
            message.starts_with(&format!("could not connect to {tls}")),
            "{message}"
        );
    }

    #[test]
    fn timeouts_and_size_limits() {
        let (code, message, _) = fails(&format!(
            "SELECT * FROM api_fetch({}, options => '{{\"timeout_ms\": 300}}')",
            lit(&api().url("/slow?ms=5000"))
        ));
        assert_eq!(code, "08006");
        assert!(message.contains("timed out after 300 ms"), "{message}");

        for path in [
            "/big?bytes=5000",
            "/chunked?bytes=200000",
            "/compressed/gzip?bytes=200000",
        ] {
            let (code, message, _) = fails(&format!(
                "SELECT * FROM api_fetch({}, options => '{{\"max_response_bytes\": 4000}}')",
                lit(&api().url(path))
            ));
            assert_eq!(code, "54000", "{path}");
            assert!(
                message.contains("larger than the limit of 4000 bytes"),
                "{path}: {message}"
            );
        }
        let (code, message, _) = fails(&format!(
            "SET apisync.max_response_bytes = '4kB'; SELECT * FROM api_request({})",
            lit(&api().url("/big?bytes=5000"))
        ));
        assert_eq!(code, "54000");
        assert!(message.contains("(Content-Length 5000)"), "{message}");
    }

    #[test]
    fn secrets_do_not_appear_in_errors() {
        let url = api().url("/status/401");
        let (_, message, detail) = fails(&format!(
            "SELECT * FROM api_fetch({}, options => '{{\"auth\": {{\"type\": \"api_key\", \"name\": \"key\", \"in\": \"query\", \"value\": \"sup3rs3cret\"}}}}')",
            lit(&url)
        ));
        assert!(
            !message.contains("sup3rs3cret") && !detail.contains("sup3rs3cret"),
            "{message} {detail}"
        );
        // The key is added to each request, never part of the URL an error shows.
        assert!(message.ends_with("/status/401"), "{message}");
    }
}

mod privileges {
    use super::*;

    #[test]
    fn network_functions_need_a_grant() {
        let url = lit(&api().url("/echo"));
        for call in [format!("api_fetch({url})"), format!("api_request({url})")] {
            let (code, message, _) =
                sql_error(connect_as("plain_user").batch_execute(&format!("SELECT * FROM {call}")));
            assert_eq!(code, "42501", "{call}");
            assert!(
                message.contains("permission denied for function"),
                "{message}"
            );
            connect_as("api_user")
                .batch_execute(&format!("SELECT * FROM {call}"))
                .unwrap();
        }
    }

    #[test]
    fn limits_are_superuser_settings() {
        let (code, message, _) =
            sql_error(connect_as("api_user").batch_execute("SET apisync.http_timeout_ms = '1h'"));
        assert_eq!(code, "42501");
        assert!(message.contains("apisync.http_timeout_ms"), "{message}");
        connect_as("api_user")
            .batch_execute("SET apisync.user_agent = 'mine/1'")
            .unwrap();
        let (code, _, _) = sql_error(connect().batch_execute("SET apisync.no_such_setting = 1"));
        assert_eq!(code, "42602");
    }
}

mod cancel {
    use super::*;

    fn assert_quick(started: Instant) {
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    }

    #[test]
    fn statement_timeout_stops_a_request_and_the_backend_stays_healthy() {
        let mut client = connect();
        let slow = lit(&api().url("/slow?ms=20000"));
        client
            .batch_execute("SET statement_timeout = '300ms'")
            .unwrap();
        let started = Instant::now();
        let (code, message, _) =
            sql_error(client.batch_execute(&format!("SELECT * FROM api_fetch({slow})")));
        assert_quick(started);
        assert_eq!(code, "57014");
        assert_eq!(message, "canceling statement due to statement timeout");
        let started = Instant::now();
        let (code, _, _) =
            sql_error(client.batch_execute(&format!("SELECT * FROM api_request({slow})")));
        assert_quick(started);
        assert_eq!(code, "57014");
        client.batch_execute("RESET statement_timeout").unwrap();
        let echoed: i32 = client
            .query_one(
                &format!(
                    "SELECT status FROM api_request({})",
                    lit(&api().url("/echo"))
                ),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(echoed, 200);
    }

    #[test]
    fn pg_cancel_backend_stops_a_request() {
        let mut client = connect();
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        let slow = lit(&api().url("/slow?ms=20000"));
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let started = Instant::now();
            connect()
                .execute("SELECT pg_cancel_backend($1)", &[&pid])
                .unwrap();
            started
        });
        let (code, message, _) =
            sql_error(client.batch_execute(&format!("SELECT * FROM api_fetch({slow})")));
        let cancelled_at = canceller.join().unwrap();
        assert_quick(cancelled_at);
        assert_eq!(code, "57014");
        assert_eq!(message, "canceling statement due to user request");
        assert_eq!(
            client.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0),
            1
        );
    }
}

/// All 57 demo users come out of `api_fetch(<path>, <args>)`, in order, in `requests` requests
/// to `path` (tagged with a "t-…" segment so that no other test counts there).
fn assert_all_users(path: &str, args: &str, requests: u64) {
    let call = format!("api_fetch({}, {args})", lit(&api().url(path)));
    let ids = text(&format!("SELECT string_agg(r->>'id', ',') FROM {call} r"));
    let expected: Vec<String> = (1..=57).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected.join(","), "{path}");
    assert_eq!(api().requests_to(path), requests, "{path}");
}

mod paging {
    use super::*;

    #[test]
    fn finedatalink_page_numbers_in_the_body() {
        assert_all_users(
            "/t-fdl/api/users",
            r#"'POST', '{"paging": {"pageSize": 1, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}', '$.data',
               paging => '{"type": "page_number", "in": "body", "page_param": "paging.pageNum", "size_param": "paging.pageSize", "page_size": 10, "total_path": "$.totalNum"}'"#,
            6,
        );
    }

    #[test]
    fn github_link_header() {
        assert_all_users(
            "/t-gh/github/users",
            r#"paging => '{"type": "link_header", "size_param": "per_page", "page_size": 25}'"#,
            3,
        );
    }

    #[test]
    fn stripe_cursor_with_bearer_auth_and_has_more() {
        assert_all_users(
            "/t-stripe/stripe/customers",
            r#"path => '$.data', options => '{"auth": {"type": "bearer", "token": "sk_test_4eC39HqLyjWDarjtT1zdp7dc"}}',
               paging => '{"type": "cursor", "cursor_path": "$.data[-1].id", "cursor_param": "starting_after", "has_more_path": "$.has_more", "size_param": "limit", "page_size": 20}'"#,
            3,
        );
    }

    #[test]
    fn django_rest_framework_next_url() {
        assert_all_users(
            "/t-drf/drf/users",
            r#"path => '$.results', paging => '{"type": "next_url", "next_path": "$.next"}'"#,
            6,
        );
    }

    #[test]
    fn offset_with_total_and_short_page() {
        assert_all_users(
            "/t-offset/offset/users",
            r#"path => '$.items', paging => '{"type": "offset", "offset_param": "offset", "size_param": "limit", "page_size": 20}'"#,
            3,
        );
    }

    #[test]
    fn offset_without_a_size_stops_at_the_empty_page() {
        // Six pages of rows, then the empty one.
        assert_all_users(
            "/t-empty/offset/users",
            r#"path => '$.items', paging => '{"type": "offset", "offset_param": "offset"}'"#,
            7,
        );
    }

    #[test]
    fn total_pages_and_concurrency_keep_page_order() {
        let url = api().url("/t-conc/slowpages?pages=6&size=5&ms=50");
        let ids = text(&format!(
            "SELECT string_agg(r->>'id', ',') FROM api_fetch({}, path => '$.data',
                 paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"total_pages_path\": \"$.total_pages\", \"concurrency\": 4}}') r",
            lit(&url)
        ));
        let expected: Vec<String> = (0..30).map(|i| i.to_string()).collect();
        assert_eq!(ids, expected.join(","));
        assert_eq!(api().requests_to("/t-conc/slowpages"), 6);
    }

    #[test]
    fn a_repeated_cursor_or_next_url_does_not_loop() {
        let cursor = api().url("/t-loop1/endless/cursor");
        let rows = text(&format!(
            "SELECT count(*)::text FROM api_fetch({}, path => '$.data', paging => '{{\"type\": \"cursor\", \"cursor_path\": \"$.cursor\", \"cursor_param\": \"after\", \"has_more_path\": \"$.has_more\"}}')",
            lit(&cursor)
        ));
        assert_eq!(rows, "6");
        assert_eq!(api().requests_to("/t-loop1/endless/cursor"), 2);
        let next = api().url("/endless/next?page=1");
        let rows = text(&format!(
            "SELECT count(*)::text FROM api_fetch({}, path => '$.data', paging => '{{\"type\": \"next_url\", \"next_path\": \"$.next\"}}')",
            lit(&next)
        ));
        assert_eq!(rows, "3", "the next URL is the page itself");
    }

    #[test]
    fn max_pages_cuts_with_a_warning() {
        let (mut client, notices) = harness::connect_collecting();
        let url = api().url("/t-cut/endless/pages");
        let rows: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM api_fetch({}, path => '$.data', paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"max_pages\": 4}}')",
                    lit(&url)
                ),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(rows, 12);
        assert_eq!(api().requests_to("/t-cut/endless/pages"), 4);
        let notices = notices.lock().unwrap().clone();
        assert_eq!(
            notices,
            ["WARNING: api_fetch stopped after 4 pages (max_pages): the data was cut"]
        );
        client.batch_execute("SET apisync.max_pages = 2").unwrap();
        let rows: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM api_fetch({}, path => '$.data', paging => '{{\"type\": \"page_number\", \"page_param\": \"page\"}}')", lit(&url)),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(rows, 6);
    }

    /// In the select list the executor pulls rows one by one, so LIMIT stops the paging. (In FROM,
    /// PostgreSQL materializes a set-returning function before LIMIT applies.)
    #[test]
    fn limit_in_the_select_list_stops_requesting_pages() {
        let url = api().url("/t-limit/endless/pages");
        let rows = text(&format!(
            "SELECT count(*)::text FROM (SELECT api_fetch({}, path => '$.data', paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"max_pages\": 1000}}') LIMIT 5) s",
            lit(&url)
        ));
        assert_eq!(rows, "5");
        let requests = api().requests_to("/t-limit/endless/pages");
        assert!(requests <= 5, "{requests} pages requested for 5 rows");
    }
}

mod retries {
    use super::*;

    const FAST: &str = "\"retry_backoff_ms\": 10";

    #[test]
    fn retryable_statuses_are_retried_and_counted() {
        let url = api().url("/flaky/r1?fail=2");
        let attempt = text(&format!("SELECT (r->>'attempt') FROM api_fetch({}, path => '$.data', options => '{{{FAST}}}') r", lit(&url)));
        assert_eq!(attempt, "3");
        let url = api().url("/flaky/r2?fail=9&status=429");
        let (code, message, _) = fails(&format!(
            "SELECT * FROM api_fetch({}, options => '{{\"retries\": 2, {FAST}}}')",
            lit(&url)
        ));
        assert_eq!(code, "38000");
        assert!(
            message.starts_with("HTTP 429 Too Many Requests from")
                && message.ends_with("(tried 3 times)"),
            "{message}"
        );
        assert_eq!(api().requests_to("/flaky/r2"), 3);
    }

    #[test]
    fn other_client_errors_are_never_retried() {
        let url = api().url("/t-once/status/404");
        let (code, _, _) = fails(&format!(
            "SELECT * FROM api_fetch({}, options => '{{{FAST}}}')",
            lit(&url)
        ));
        assert_eq!(code, "38000");
        assert_eq!(api().requests_to("/t-once/status/404"), 1);
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let started = Instant::now();
        let url = api().url("/flaky/r3?fail=1&retry_after=1");
        assert_eq!(text(&format!("SELECT r->>'attempt' FROM api_fetch({}, path => '$.data', options => '{{{FAST}}}') r", lit(&url))), "2");
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "waited {:?}",
            started.elapsed()
        );

        let url = api().url("/flaky/r4?fail=1&retry_after_date=2");
        assert_eq!(text(&format!("SELECT r->>'attempt' FROM api_fetch({}, path => '$.data', options => '{{{FAST}}}') r", lit(&url))), "2");

        let started = Instant::now();
        let url = api().url("/flaky/r5?fail=1&retry_after=30");
        let got = text(&format!(
            "SELECT r->>'attempt' FROM api_fetch({}, path => '$.data', options => '{{{FAST}, \"max_retry_wait_ms\": 100}}') r",
            lit(&url)
        ));
        assert_eq!(got, "2");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the 30 s Retry-After was capped"
        );
    }

    #[test]
    fn cancel_works_while_waiting_to_retry() {
        let mut client = connect();
        client
            .batch_execute("SET statement_timeout = '300ms'")
            .unwrap();
        let url = api().url("/flaky/r6?fail=1&retry_after=60");
        let started = Instant::now();
        let (code, _, _) =
            sql_error(client.batch_execute(&format!("SELECT * FROM api_fetch({})", lit(&url))));
        assert_eq!(code, "57014");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn refused_connections_are_retried() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let (code, _, detail) = fails(&format!(
            "SELECT * FROM api_request('http://127.0.0.1:{port}/x', options => '{{\"retries\": 2, {FAST}}}')"
        ));
        assert_eq!(code, "08001");
        assert_eq!(detail, "tried 3 times");
    }

    #[test]
    fn rate_limit_spaces_requests() {
        let url = api().url("/t-rate/slowpages?pages=5&size=1&ms=0");
        let started = Instant::now();
        let rows = text(&format!(
            "SELECT count(*)::text FROM api_fetch({}, path => '$.data', options => '{{\"rate_limit\": 10}}',
                 paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"total_pages_path\": \"$.total_pages\"}}')",
            lit(&url)
        ));
        assert_eq!(rows, "5");
        assert!(
            started.elapsed() >= Duration::from_millis(390),
            "5 requests at 10/s took {:?}",
            started.elapsed()
        );
    }
}

mod auth {
    use super::*;

    fn ok(path: &str, auth: &str) -> String {
        text(&format!(
            "SELECT r->>'auth' FROM api_fetch({}, path => '$.data', options => '{{\"auth\": {auth}}}') r",
            lit(&api().url(path))
        ))
    }

    #[test]
    fn bearer_basic_and_api_keys() {
        assert_eq!(
            ok(
                "/auth/bearer",
                r#"{"type": "bearer", "token": "tok-secret"}"#
            ),
            "bearer"
        );
        assert_eq!(
            ok(
                "/auth/basic",
                r#"{"type": "basic", "username": "ann", "password": "pw-secret"}"#
            ),
            "basic"
        );
        assert_eq!(
            ok(
                "/auth/key",
                r#"{"type": "api_key", "name": "X-Api-Key", "value": "k-secret"}"#
            ),
            "key"
        );
        assert_eq!(
            ok(
                "/auth/key",
                r#"{"type": "api_key", "name": "api_key", "in": "query", "value": "k-secret"}"#
            ),
            "key"
        );
        let (code, message, _) = fails(&format!(
            "SELECT * FROM api_fetch({}, options => '{{\"auth\": {{\"type\": \"bearer\", \"token\": \"wrong\"}}}}')",
            lit(&api().url("/auth/bearer"))
        ));
        assert_eq!(code, "38000");
        assert!(message.starts_with("HTTP 401 Unauthorized"), "{message}");
    }

    #[test]
    fn secrets_belong_to_their_role_and_never_show() {
        let mut owner = connect_as("api_user");
        owner
            .execute("SELECT apisync.create_secret('gh', $1)", &[&"tok-secret"])
            .unwrap();
        let url = lit(&api().url("/auth/bearer"));
        let got: String = owner
            .query_one(&format!("SELECT r->>'auth' FROM api_fetch({url}, path => '$.data', options => '{{\"auth\": {{\"type\": \"bearer\", \"secret\": \"gh\"}}}}') r"), &[])
            .unwrap()
            .get(0);
        assert_eq!(got, "bearer");

        // The server reflects what it got into its error body: the error shows *** instead.
        let reflect = lit(&api().url("/auth/reflect"));
        let (code, message, detail) = sql_error(owner.batch_execute(&format!(
            "SELECT * FROM api_fetch({reflect}, options => '{{\"auth\": {{\"type\": \"bearer\", \"secret\": \"gh\"}}}}')"
        )));
        assert_eq!(code, "38000");
        assert!(
            !message.contains("tok-secret") && !detail.contains("tok-secret"),
            "{message} / {detail}"
        );
        assert!(detail.contains("Bearer ***"), "{detail}");

        // Another role neither sees nor uses it; a superuser sees it.
        let mut other = connect_as("other_user");
        // No role reads the secrets table: a fetch looks up its caller's own.
        let (code, _, _) = sql_error(other.query_one("SELECT count(*) FROM apisync.secrets", &[]));
        assert_eq!(code, "42501");
        let (code, message, _) = sql_error(other.batch_execute(&format!(
            "SELECT * FROM api_fetch({url}, options => '{{\"auth\": {{\"type\": \"bearer\", \"secret\": \"gh\"}}}}')"
        )));
        assert_eq!(code, "42704", "{message}");
        assert_eq!(message, "secret \"gh\" does not exist");
        let all: i64 = connect()
            .query_one(
                "SELECT count(*) FROM apisync.secrets WHERE name = 'gh'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(all, 1);
        let (code, _, _) = sql_error(other.batch_execute("SELECT apisync.drop_secret('gh')"));
        assert_eq!(code, "42704");
        owner
            .batch_execute("SELECT apisync.drop_secret('gh')")
            .unwrap();
    }

    #[test]
    fn oauth2_client_credentials_cache_and_refresh() {
        let mut client = connect();
        client
            .execute("SELECT apisync.create_secret('oauth', $1)", &[&"c-secret"])
            .unwrap();
        let call = format!(
            "SELECT r->>'token' FROM api_fetch({}, path => '$.data', options => '{{\"auth\": {{\"type\": \"oauth2_client_credentials\", \"token_url\": {}, \"client_id\": \"client\", \"secret\": \"oauth\", \"scope\": \"read\"}}}}') r",
            lit(&api().url("/oauth/data")),
            serde_json::to_string(&api().url("/oauth/token")).unwrap().replace('\'', "''")
        );
        let first: String = client.query_one(&call, &[]).unwrap().get(0);
        let second: String = client.query_one(&call, &[]).unwrap().get(0);
        assert_eq!(first, second, "the token is cached");
        assert_eq!(api().requests_to("/oauth/token"), 1);
        connect()
            .batch_execute(&format!(
                "SELECT * FROM api_request({})",
                lit(&api().url("/oauth/revoke"))
            ))
            .unwrap();
        let third: String = client.query_one(&call, &[]).unwrap().get(0);
        assert_ne!(third, second, "a 401 fetches a new token once");
        assert_eq!(api().requests_to("/oauth/token"), 2);
    }
}

mod policy {
    use super::*;

    #[test]
    fn metadata_addresses_are_denied_by_default_in_every_form() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
            "http://2852039166/",
        ] {
            let started = Instant::now();
            let (code, message, _) = fails(&format!("SELECT * FROM api_request({})", lit(url)));
            assert_eq!(code, "42501", "{url}");
            assert!(
                message.contains("apisync.denied_networks"),
                "{url}: {message}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{url} failed at once"
            );
        }
    }

    #[test]
    fn denied_networks_apply_to_literals_and_resolved_names() {
        let mut client = connect();
        client
            .batch_execute("SET apisync.denied_networks = '127.0.0.0/8, ::1/128'")
            .unwrap();
        let (code, message, _) = sql_error(client.batch_execute(&format!(
            "SELECT * FROM api_request({})",
            lit(&api().url("/echo"))
        )));
        assert_eq!(code, "42501");
        assert!(
            message.contains("address 127.0.0.1 is in 127.0.0.0/8"),
            "{message}"
        );
        let by_name = api().url("/echo").replace("127.0.0.1", "localhost");
        let (code, message, _) = sql_error(
            client.batch_execute(&format!("SELECT * FROM api_request({})", lit(&by_name))),
        );
        assert_eq!(code, "42501");
        assert!(
            message.contains("host \"localhost\" resolves to address"),
            "{message}"
        );
    }

    #[test]
    fn allowed_hosts_apply_to_every_redirect_hop() {
        let mut client = connect();
        client
            .batch_execute("SET apisync.allowed_hosts = '127.0.0.1'")
            .unwrap();
        let status: i32 = client
            .query_one(
                &format!(
                    "SELECT status FROM api_request({})",
                    lit(&api().url("/echo"))
                ),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(status, 200);
        let elsewhere = api().url("/t-hop/echo").replace("127.0.0.1", "localhost");
        let hop = api().url(&format!("/redirect-to?url={elsewhere}"));
        let (code, message, _) =
            sql_error(client.batch_execute(&format!("SELECT * FROM api_request({})", lit(&hop))));
        assert_eq!(code, "42501");
        assert!(
            message.contains("host \"localhost\" is not in apisync.allowed_hosts"),
            "{message}"
        );
        assert_eq!(
            api().requests_to("/t-hop/echo"),
            0,
            "the hop was never sent"
        );
    }

    #[test]
    fn only_superusers_set_the_policy() {
        for setting in [
            "apisync.allowed_hosts = '*'",
            "apisync.denied_networks = ''",
        ] {
            let (code, _, _) =
                sql_error(connect_as("api_user").batch_execute(&format!("SET {setting}")));
            assert_eq!(code, "42501", "{setting}");
        }
    }
}

mod jobs {
    use super::*;

    const FDL_BODY: &str = r#"'{"paging": {"pageSize": 10, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}'"#;
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
            .batch_execute("INSERT INTO job_upsert VALUES (1, 'stale', NULL, NULL), (1000, 'gone', NULL, NULL)")
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
            .query_one("SELECT status, pages, sqlstate FROM apisync.job_runs WHERE job_name = 'job_atomic'", &[])
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
        connect().batch_execute("REVOKE INSERT ON job_private FROM api_user; ALTER TABLE job_private OWNER TO postgres").unwrap();
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
                lit(&api().url("/slowpages?pages=20&size=1&ms=250"))
            ))
            .unwrap();
        let first = std::thread::spawn(|| {
            let mut client = connect_as("api_user");
            client
                .batch_execute("SET statement_timeout = '2s'")
                .unwrap();
            let started = Instant::now();
            let (code, _, _) =
                sql_error(client.batch_execute("SELECT apisync.run_job('job_slow')"));
            (code, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(700));
        let progress: Option<String> = client
            .query_one(
                "SELECT progress FROM apisync.job_progress WHERE job_name = 'job_slow'",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(
            progress.is_some_and(|p| p.contains("pages")),
            "progress is visible"
        );
        let skipped = run(&mut client, "job_slow");
        assert_eq!(skipped.0, "skipped");
        let (code, elapsed) = first.join().unwrap();
        assert_eq!(code, "57014");
        assert!(elapsed < Duration::from_millis(3500), "took {elapsed:?}");
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
        std::thread::sleep(Duration::from_millis(300));
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
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut landed = 0;
        while Instant::now() < deadline && landed == 0 {
            std::thread::sleep(Duration::from_secs(1));
            landed = count(&mut client, "SELECT count(*) FROM job_cron");
        }
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
}

mod scheduler {
    use super::*;

    fn count(client: &mut harness::Client, sql: &str) -> i64 {
        client.query_one(sql, &[]).unwrap().get(0)
    }

    /// Waits up to `seconds` for `sql` to count at least `at_least`.
    fn eventually(client: &mut harness::Client, sql: &str, at_least: i64, seconds: u64) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let got = count(client, sql);
            if got >= at_least || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn launcher_pid(client: &mut harness::Client) -> Option<i32> {
        client
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'apisync launcher'",
                &[],
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

        let mut admin = connect();
        let before = launcher_pid(&mut admin).expect("the launcher runs");
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&before])
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut after = None;
        while Instant::now() < deadline {
            after = launcher_pid(&mut admin).filter(|pid| *pid != before);
            if after.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(after.is_some(), "the postmaster restarted the launcher");
        let runs = count(&mut client, scheduled);
        assert!(
            eventually(&mut client, scheduled, runs + 2, 20) >= runs + 2,
            "the schedule resumed"
        );
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
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut worker = None;
        while worker.is_none() && Instant::now() < deadline {
            worker = admin
                .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'apisync run' AND query LIKE '%pages%'", &[])
                .unwrap()
                .map(|row| row.get::<_, i32>(0));
            std::thread::sleep(Duration::from_millis(100));
        }
        let worker = worker.expect("the run worker reports progress");
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
}

mod incremental {
    use super::*;

    #[test]
    fn each_run_asks_for_rows_after_the_targets_cursor() {
        let mut client = connect_as("api_user");
        let url = |upto: u64| lit(&api().url(&format!("/t-incr/incremental/users?upto={upto}")));
        client
            .batch_execute(&format!(
                "CREATE TABLE incr (id bigint PRIMARY KEY, name text);
                 SELECT apisync.create_job('incr', 'incr', {}, path => '$.data', write_method => 'upsert',
                     options => '{{\"incremental\": {{\"cursor_column\": \"id\", \"param\": \"since\", \"initial\": 0, \"lookback\": 5}}}}')",
                url(30)
            ))
            .unwrap();
        let run = |client: &mut harness::Client| -> (i64, i64, i64) {
            let row = client
                .query_one(
                    "SELECT rows_fetched, rows_inserted, rows_updated FROM apisync.run_job('incr')",
                    &[],
                )
                .unwrap();
            (row.get(0), row.get(1), row.get(2))
        };
        assert_eq!(run(&mut client), (30, 30, 0), "the first run sends initial");
        client
            .batch_execute(&format!(
                "SELECT apisync.alter_job('incr', url => {})",
                url(57)
            ))
            .unwrap();
        // max(id) = 30, minus the lookback of 5: since=25 brings 26..57.
        assert_eq!(run(&mut client), (32, 27, 0));
        assert_eq!(
            client
                .query_one("SELECT count(*) FROM incr", &[])
                .unwrap()
                .get::<_, i64>(0),
            57
        );
        assert_eq!(
            run(&mut client),
            (5, 0, 0),
            "only the lookback window again"
        );

        let (code, message, _) = sql_error(client.batch_execute(&format!(
            "SELECT apisync.create_job('incr2', 'incr', {}, options => '{{\"incremental\": {{\"cursor_column\": \"id\", \"param\": \"since\", \"lookback\": \"1 hour\"}}}}')",
            url(1)
        )));
        assert_eq!(code, "42883", "{message}");
        assert!(message.contains("bigint - interval"), "{message}");
        let (code, _, _) = sql_error(client.batch_execute(&format!(
            "SELECT apisync.create_job('incr3', 'incr', {}, options => '{{\"incremental\": {{\"cursor_column\": \"nope\", \"param\": \"since\"}}}}')",
            url(1)
        )));
        assert_eq!(code, "42703");
    }
}

mod rejected {
    use super::*;

    #[test]
    fn rows_that_fail_conversion_or_a_constraint_are_set_aside() {
        let mut client = connect_as("api_user");
        client
            .batch_execute(&format!(
                "CREATE TYPE rej_city AS ENUM ('Lagos', 'Berlin', 'Lima', 'Osaka');
                 CREATE TABLE rej (id bigint PRIMARY KEY, name text NOT NULL, city rej_city, score numeric CHECK (score < 90));
                 SELECT apisync.create_job('rej', 'rej', {url}, 'POST', '{{\"paging\": {{\"pageSize\": 100, \"pageNum\": 1}}}}', '$.data',
                     write_method => 'upsert', options => '{{\"max_rejected\": 100}}');
                 SELECT apisync.create_job('rej_strict', 'rej', {url}, 'POST', '{{\"paging\": {{\"pageSize\": 100, \"pageNum\": 1}}}}', '$.data',
                     write_method => 'upsert', options => '{{\"max_rejected\": 5}}');",
                url = lit(&api().url("/api/users"))
            ))
            .unwrap();
        // The demo users: city Shanghai when id % 5 = 0 (not in the enum); score 90 or more
        // when (id * 37) % 50 >= 40 (the CHECK).
        let shanghai = (1..=57).filter(|id| id % 5 == 0).count() as i64;
        let high = (1..=57)
            .filter(|id| id % 5 != 0 && (id * 37) % 50 >= 40)
            .count() as i64;
        assert!(shanghai > 5 && high > 0);

        let (code, message, _) =
            sql_error(client.batch_execute("SELECT apisync.run_job('rej_strict')"));
        assert_eq!(code, "22P02", "{message}");
        assert!(
            message.contains("more than 5 rows were rejected"),
            "{message}"
        );
        assert_eq!(
            client
                .query_one("SELECT count(*) FROM rej", &[])
                .unwrap()
                .get::<_, i64>(0),
            0
        );

        let row = client
            .query_one(
                "SELECT run_id, status, rows_inserted, rows_rejected FROM apisync.run_job('rej')",
                &[],
            )
            .unwrap();
        let run_id: i64 = row.get(0);
        assert_eq!(row.get::<_, String>(1), "succeeded");
        assert_eq!(row.get::<_, i64>(3), shanghai + high);
        assert_eq!(row.get::<_, i64>(2), 57 - shanghai - high);
        let by_state: String = client
            .query_one(
                "SELECT string_agg(sqlstate || '=' || n, ',' ORDER BY sqlstate) FROM
                   (SELECT sqlstate, count(*) n FROM apisync.rejected_rows WHERE run_id = $1 GROUP BY sqlstate) s",
                &[&run_id],
            )
            .unwrap()
            .get(0);
        assert_eq!(by_state, format!("22P02={shanghai},23514={high}"));
        let first: String = client
            .query_one(
                "SELECT row_number || ' ' || (raw->>'city') || ' ' || error FROM apisync.rejected_rows
                 WHERE run_id = $1 AND sqlstate = '22P02' ORDER BY row_number LIMIT 1",
                &[&run_id],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            first,
            "5 Shanghai api_fetch row 5, column \"city\": cannot convert \"Shanghai\" to public.rej_city"
        );
        let other = connect_as("other_user")
            .query_one("SELECT count(*) FROM apisync.rejected_rows", &[])
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(other, 0, "rejected rows belong to the job's owner");

        // Appending: the rows already there now also fail the primary key, and are set aside.
        client
            .batch_execute("SELECT apisync.alter_job('rej', write_method => 'append')")
            .unwrap();
        let row = client
            .query_one(
                "SELECT rows_inserted, rows_rejected FROM apisync.run_job('rej')",
                &[],
            )
            .unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 57));
        client.batch_execute("TRUNCATE rej").unwrap();
        let row = client
            .query_one(
                "SELECT rows_inserted, rows_rejected FROM apisync.run_job('rej')",
                &[],
            )
            .unwrap();
        assert_eq!(
            (row.get::<_, i64>(0), row.get::<_, i64>(1)),
            (57 - shanghai - high, shanghai + high)
        );
    }
}

mod commit_every {
    use super::*;

    #[test]
    fn steps_commit_and_a_failure_keeps_the_steps_before_it() {
        let mut client = connect_as("api_user");
        let paging = r#"'{"type": "page_number", "page_param": "page", "total_pages_path": "$.total_pages"}'"#;
        client
            .batch_execute(&format!(
                "CREATE TABLE stepped (id bigint PRIMARY KEY, page int);
                 SELECT apisync.create_job('stepped', 'stepped', {}, path => '$.data', paging => {paging},
                     options => '{{\"commit_every\": 2, \"retries\": 0}}');
                 SELECT apisync.create_job('stepped_ok', 'stepped', {}, path => '$.data', paging => {paging},
                     write_method => 'upsert', options => '{{\"commit_every\": 4}}');",
                lit(&api().url("/slowpages?pages=6&size=5&ms=0&fail_page=5")),
                lit(&api().url("/slowpages?pages=6&size=5&ms=0")),
            ))
            .unwrap();
        let (code, message, _) =
            sql_error(client.batch_execute("SELECT apisync.run_job('stepped')"));
        assert_eq!(code, "38000", "{message}");
        let count: i64 = client
            .query_one("SELECT count(*) FROM stepped", &[])
            .unwrap()
            .get(0);
        assert_eq!(count, 20, "pages 1 to 4 were committed in two steps");
        let row = client
            .query_one("SELECT status, pages, rows_inserted FROM apisync.job_runs WHERE job_name = 'stepped'", &[])
            .unwrap();
        assert_eq!(
            (
                row.get::<_, String>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2)
            ),
            ("failed".into(), 4, 20)
        );

        let row = client.query_one("SELECT status, pages, rows_inserted, rows_updated FROM apisync.run_job('stepped_ok')", &[]).unwrap();
        assert_eq!(
            (
                row.get::<_, String>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2),
                row.get::<_, i64>(3)
            ),
            ("succeeded".into(), 6, 10, 0)
        );
        let (code, message, _) = sql_error(client.batch_execute(&format!(
            "SELECT apisync.create_job('stepped_bad', 'stepped', {}, write_method => 'replace', options => '{{\"commit_every\": 2}}')",
            lit(&api().url("/never-called"))
        )));
        assert_eq!(code, "22023");
        assert!(
            message.contains("commit_every works with append and upsert"),
            "{message}"
        );
    }
}

/// Faults that need a cluster of their own.
mod faults {
    use super::*;
    use harness::{private_cluster, Client};

    fn count(client: &mut Client, sql: &str) -> i64 {
        client.query_one(sql, &[]).unwrap().get(0)
    }

    fn wait_for(client: &mut Client, sql: &str, seconds: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            if client
                .query_one(sql, &[])
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
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
        admin
            .batch_execute("DROP EXTENSION pg_apisync CASCADE")
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        assert!(wait_for(&mut admin, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'apisync launcher')", 5));
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
}
