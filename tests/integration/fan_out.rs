//! Fan-out (issue #11): one request per parameter set, as a non-superuser sees it.

use super::*;
use harness::Client;

fn url(path: &str) -> String {
    lit(&api().url(path))
}

/// The orders devapi has for users `ids`, as `user:order` in order.
fn expected_orders(ids: impl Iterator<Item = u64>) -> String {
    ids.filter(|id| (1..=57).contains(id))
        .flat_map(|id| (1..=id % 3).map(move |n| format!("{id}:{}", id * 10 + n)))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn children_per_id_in_params_order_with_404s_skipped() {
    let mut client = user();
    client
        .batch_execute("CREATE TABLE fan_orders (user_id int, order_id bigint, amount numeric)")
        .unwrap();
    let path = "/t-fan-children/users/{id}/orders";
    let call = |options: &str| {
        format!(
            "api_fetch({}, path => '$.orders', row_type => NULL::fan_orders,
                 params => (SELECT jsonb_agg(jsonb_build_object('id', g) ORDER BY g DESC) FROM generate_series(1, 60) g),
                 options => '{options}')",
            url(path)
        )
    };
    let got: String = one(
        &mut client,
        &format!(
            "SELECT string_agg(user_id || ':' || order_id, ',' ORDER BY n)
             FROM {} WITH ORDINALITY AS f(user_id, order_id, amount, n)",
            call(
                r#"{"concurrency": 8, "on_status": {"404": "skip"}, "columns": {"user_id": "{id}"}}"#
            )
        ),
    );
    assert_eq!(got, expected_orders((1..=60).rev()));
    assert_eq!(api().requests_to("/t-fan-children/users/58/orders"), 1);
    // Without on_status, the first 404 (user 60 comes first) fails the call.
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM {}",
        call(r#"{"concurrency": 8}"#)
    )));
    assert_eq!(code, "38000", "{message}");
    assert!(
        message.starts_with("HTTP 404 Not Found from http://"),
        "{message}"
    );
    // jsonb rows get the parameter as a key; [] makes no request.
    let keyed: String = one(
        &mut client,
        &format!(
            "SELECT string_agg(r->>'user_id' || ':' || (r->>'order_id'), ',') FROM api_fetch({}, path => '$.orders',
                 params => '[{{\"id\": 5}}, {{\"id\": 4}}]', options => '{{\"columns\": {{\"user_id\": \"{{id}}\"}}}}') r",
            url(path)
        ),
    );
    assert_eq!(keyed, expected_orders([5, 4].into_iter()));
    let before = api().requests_to("/t-fan-children/users/1/orders");
    let none: i64 = one(
        &mut client,
        &format!(
            "SELECT count(*) FROM api_fetch({}, params => '[]')",
            url(path)
        ),
    );
    assert_eq!(none, 0);
    assert_eq!(api().requests_to("/t-fan-children/users/1/orders"), before);
}

#[test]
fn repositories_expand_with_reserved_characters_and_bodies_keep_types() {
    let mut client = user();
    let titles: String = one(
        &mut client,
        &format!(
            "SELECT string_agg(r->>'title', '|') FROM api_fetch({},
                 params => '[{{\"full_name\": \"rust-lang/rust\"}}, {{\"full_name\": \"x/missing\"}}, {{\"full_name\": \"a b/c\"}}]',
                 options => '{{\"on_status\": {{\"4xx\": \"skip\"}}}}') r",
            url("/repos/{+full_name}/issues")
        ),
    );
    // {+full_name} keeps the slash and percent-encodes the space (devapi echoes the raw path).
    assert_eq!(
        titles,
        "rust-lang/rust issue 1|rust-lang/rust issue 2|rust-lang/rust issue 3|a%20b/c issue 1|a%20b/c issue 2|a%20b/c issue 3"
    );
    // A body value that is exactly "{n}" keeps its type; inside a string it is text. Headers and
    // options.query take text.
    let echoed: String = one(
        &mut client,
        &format!(
            "SELECT string_agg((r->'body_json')::text || ' ' || (r->'query'->>'k') || ' ' || (r->'headers'->>'x-dept'), ',')
             FROM api_fetch({}, 'POST', body => '{{\"n\": \"{{n}}\", \"s\": \"n={{n}}\", \"raw\": \"{{}}\"}}',
                 headers => '{{\"X-Dept\": \"{{dept}}\"}}',
                 options => '{{\"query\": {{\"k\": \"{{dept}}-{{n}}\"}}}}',
                 params => '[{{\"n\": 7, \"dept\": \"ops\"}}, {{\"n\": [1], \"dept\": \"it\"}}]') r",
            url("/echo")
        ),
    );
    assert_eq!(
        echoed,
        r#"{"n": 7, "s": "n=7", "raw": "{}"} ops-7 ops,{"n": [1], "s": "n=[1]", "raw": "{}"} it-[1] it"#
    );
}

#[test]
fn a_finedatalink_body_is_posted_once_per_value() {
    let mut client = user();
    let body = r#"{"paging": {"pageSize": 100, "pageNum": 1}, "params": [{"name": "name", "value": "{q}"}]}"#;
    let single = |client: &mut Client, q: &str| -> i64 {
        one(
            client,
            &format!(
                "SELECT count(*) FROM api_fetch({}, 'POST', {}, '$.data')",
                url("/api/users"),
                lit(&body.replace("{q}", q))
            ),
        )
    };
    let expected = single(&mut client, "Ada") + single(&mut client, "Lena");
    let both: i64 = one(
        &mut client,
        &format!(
            "SELECT count(*) FROM api_fetch({}, 'POST', {}, '$.data', params => '[{{\"q\": \"Ada\"}}, {{\"q\": \"Lena\"}}]')",
            url("/api/users"),
            lit(body)
        ),
    );
    assert!(expected > 2);
    assert_eq!(both, expected);
}

#[test]
fn jobs_fan_out_over_their_for_each_rows() {
    let mut client = user();
    let fdl = r#"{"paging": {"pageSize": 100, "pageNum": 1}}"#;
    client
        .batch_execute(&format!(
            "CREATE TABLE fe_users (id int PRIMARY KEY, name text);
             CREATE TABLE fe_orders (user_id int, order_id bigint PRIMARY KEY, amount numeric);
             CREATE TABLE fe_windows (from_epoch bigint, day date);
             SELECT apisync.create_job('fe_users', 'fe_users', {users}, 'POST', '{fdl}', '$.data', write_method => 'upsert');
             SELECT apisync.create_job('fe_orders', 'fe_orders', {orders}, path => '$.orders', write_method => 'mirror',
                 options => '{{\"for_each\": \"SELECT id FROM public.fe_users UNION ALL SELECT 999\",
                               \"on_status\": {{\"404\": \"skip\"}}, \"concurrency\": 4,
                               \"columns\": {{\"user_id\": \"{{id}}\"}}}}');
             SELECT apisync.create_job('fe_windows', 'fe_windows', {echo}, path => '$.query',
                 options => '{{\"for_each\": \"SELECT extract(epoch FROM d)::bigint AS from_epoch, to_char(d, ''YYYY-MM-DD'') AS day FROM generate_series(''2024-01-01''::date, ''2024-01-03'', ''1 day'') d\"}}');",
            users = url("/api/users"),
            orders = url("/users/{id}/orders"),
            echo = url("/echo{?from_epoch,day}"),
        ))
        .unwrap();
    let run = |client: &mut Client, job: &str| -> (String, i64, i64, i64) {
        let row = client
            .query_one(
                &format!("SELECT status, requests, requests_skipped, rows_fetched FROM apisync.run_job('{job}')"),
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    // No users yet: user 999 answers 404, skipped; the mirror of nothing succeeds.
    assert_eq!(run(&mut client, "fe_orders"), ("succeeded".into(), 1, 1, 0));
    assert_eq!(run(&mut client, "fe_users").0, "succeeded");
    let orders = expected_orders(1..=57).split(',').count() as i64;
    assert_eq!(
        run(&mut client, "fe_orders"),
        ("succeeded".into(), 58, 1, orders)
    );
    let got: String = one(
        &mut client,
        "SELECT string_agg(user_id || ':' || order_id, ',' ORDER BY user_id, order_id) FROM fe_orders",
    );
    assert_eq!(got, expected_orders(1..=57));
    assert_eq!(
        run(&mut client, "fe_windows"),
        ("succeeded".into(), 3, 0, 3)
    );
    let windows: String = one(
        &mut client,
        "SELECT string_agg(from_epoch || ' ' || day, ',' ORDER BY day) FROM fe_windows",
    );
    assert_eq!(
        windows,
        "1704067200 2024-01-01,1704153600 2024-01-02,1704240000 2024-01-03"
    );
    // A for_each without rows makes no request; for mirror that is the whole truth: no rows.
    client
        .batch_execute(&format!(
            "CREATE TABLE fe_none (order_id bigint PRIMARY KEY, amount numeric);
             INSERT INTO fe_none VALUES (1, 1);
             SELECT apisync.create_job('fe_none', 'fe_none', {}, path => '$.orders', write_method => 'mirror',
                 options => '{{\"for_each\": \"SELECT id FROM public.fe_users WHERE false\"}}');",
            url("/users/{id}/orders")
        ))
        .unwrap();
    assert_eq!(run(&mut client, "fe_none"), ("succeeded".into(), 0, 0, 0));
    assert_eq!(one::<i64>(&mut client, "SELECT count(*) FROM fe_none"), 0);
    // for_each is checked at create_job: one SELECT, columns that cover the templates.
    for (for_each, code, says) in [
        (
            "DELETE FROM public.fe_users",
            "22023",
            "must be one SELECT statement",
        ),
        (
            "SELECT 1 AS id; SELECT 2 AS id",
            "22023",
            "must be one SELECT statement",
        ),
        (
            "SELECT id INTO fe_copy FROM public.fe_users",
            "22023",
            "without INTO",
        ),
        (
            "SELECT name FROM public.fe_users",
            "22023",
            "has no \"id\", which the request uses",
        ),
        (
            "SELECT id, name AS id FROM public.fe_users",
            "22023",
            "returns two columns named \"id\" (column 2)",
        ),
        ("SELEKT id", "42601", "syntax error"),
        // The query runs with the pinned search_path, as everything a job runs.
        (
            "SELECT id FROM fe_users",
            "42P01",
            "relation \"fe_users\" does not exist",
        ),
    ] {
        let (got, message, _) = sql_error(client.batch_execute(&format!(
            "SELECT apisync.create_job('fe_bad', 'fe_orders', {}, options => {})",
            url("/users/{id}/orders"),
            lit(&format!(
                "{{\"for_each\": {}}}",
                serde_json::Value::from(for_each)
            ))
        )));
        assert_eq!(got, code, "{for_each}: {message}");
        assert!(message.contains(says), "{for_each}: {message}");
    }
}

#[test]
fn bad_params_and_options_are_refused_before_any_request() {
    let mut client = user();
    let path = "/t-fan-refused/users/{id}/orders";
    for (args, says) in [
        (
            "params => '{\"id\": 1}'",
            "params must be a JSON array of objects, not an object",
        ),
        (
            "params => '[{\"id\": 1}, 2]'",
            "params[1] must be a JSON object, not a number",
        ),
        (
            "params => '[{\"id\": 1}, {\"ID\": 2}]'",
            "params[1] has no \"id\", which the request uses",
        ),
        (
            "params => '[{\"id\": 1}]', options => '{\"on_status\": {\"429\": \"skip\"}}'",
            "options.on_status takes 4xx statuses other than 408 and 429",
        ),
        (
            "options => '{\"columns\": {\"user_id\": \"{id}\"}}'",
            "but the call has no params",
        ),
        (
            "params => '[{\"id\": 1}]', options => '{\"columns\": {\"user_id\": \"{user}\"}}'",
            "params[0] has no \"user\"",
        ),
    ] {
        let (code, message, _) = sql_error(client.batch_execute(&format!(
            "SELECT count(*) FROM api_fetch({}, {args})",
            url(path)
        )));
        assert_eq!(code, "22023", "{args}: {message}");
        assert!(message.contains(says), "{args}: {message}");
    }
    // Credentials never go to a host a parameter chooses.
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({}, params => '[{{\"host\": \"127.0.0.1\"}}]',
             options => '{{\"auth\": {{\"type\": \"bearer\", \"token\": \"t0k\"}}}}')",
        lit("http://{host}/x")
    )));
    assert_eq!(code, "22023", "{message}");
    assert!(message.contains("cannot carry credentials"), "{message}");
    // The network policy applies to every expanded URL, all checked before the first request.
    let port = api().addr().port();
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({}, params => '[{{\"host\": \"127.0.0.1\"}}, {{\"host\": \"169.254.169.254\"}}]')",
        lit(&format!("http://{{host}}:{port}/t-fan-refused/policy"))
    )));
    assert_eq!(code, "42501", "{message}");
    assert_eq!(api().requests_to("/t-fan-refused/policy"), 0);
    assert_eq!(api().requests_to("/t-fan-refused/users/1/orders"), 0);
}

#[test]
fn one_rate_limit_spans_every_parameter_set() {
    let mut client = user();
    let started = Instant::now();
    let rows: i64 = one(
        &mut client,
        &format!(
            "SELECT count(*) FROM api_fetch({}, path => '$.orders',
                 params => (SELECT jsonb_agg(jsonb_build_object('id', g)) FROM generate_series(1, 21) g),
                 options => '{{\"concurrency\": 8, \"rate_limit\": 20}}')",
            url("/users/{id}/orders")
        ),
    );
    assert_eq!(rows as usize, expected_orders(1..=21).split(',').count());
    // 21 requests at 20 a second: the last starts a second after the first, whatever the
    // concurrency.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn for_each_works_with_commit_every_max_rejected_and_incremental() {
    let mut client = user();
    client
        .batch_execute(&format!(
            "CREATE TABLE fs_users (id int PRIMARY KEY);
             INSERT INTO fs_users SELECT generate_series(1, 57);
             CREATE TABLE fs_orders (user_id int, order_id bigint, amount numeric CHECK (amount < 30));
             SELECT apisync.create_job('fs_orders', 'fs_orders', {orders}, path => '$.orders',
                 options => '{{\"for_each\": \"SELECT id FROM public.fs_users\", \"commit_every\": 5,
                               \"max_rejected\": 100, \"columns\": {{\"user_id\": \"{{id}}\"}}}}');
             CREATE TABLE fs_echo (query jsonb, method text, joined text);
             SELECT apisync.create_job('fs_echo', 'fs_echo', {echo}, write_method => 'append',
                 options => '{{\"for_each\": \"SELECT id FROM public.fs_users WHERE id <= 2\",
                               \"incremental\": {{\"cursor_column\": \"method\", \"param\": \"after\", \"initial\": \"A\"}},
                               \"columns\": {{\"joined\": \"{{after}}\"}}}}');",
            orders = url("/users/{id}/orders"),
            echo = url("/echo{?id}"),
        ))
        .unwrap();
    // Orders of amount (id + n).50 ≥ 30 fail the CHECK and are set aside; 57 pages in steps of 5.
    let rejected = (1..=57u64)
        .flat_map(|id| (1..=id % 3).map(move |n| id + n))
        .filter(|sum| *sum >= 30)
        .count() as i64;
    let row = client
        .query_one(
            "SELECT status, pages, rows_inserted, rows_rejected FROM apisync.run_job('fs_orders')",
            &[],
        )
        .unwrap();
    let orders = expected_orders(1..=57).split(',').count() as i64;
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3)
        ),
        ("succeeded".into(), 57, orders - rejected, rejected)
    );
    // The incremental cursor goes with every request and joins every set.
    for _ in 0..2 {
        client
            .batch_execute("SELECT apisync.run_job('fs_echo')")
            .unwrap();
    }
    let seen: String = one(
        &mut client,
        "SELECT string_agg((query->>'id') || ':' || (query->>'after') || ':' || joined, ',' ORDER BY ctid) FROM fs_echo",
    );
    assert_eq!(seen, "1:A:A,2:A:A,1:GET:GET,2:GET:GET");
}
