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
        assert_eq!(row.get::<_, String>(3), "pg_apisync/0.1.0");
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
            "SELECT * FROM api_fetch({})",
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
        assert!(message.contains("key=***"), "{message}");
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
