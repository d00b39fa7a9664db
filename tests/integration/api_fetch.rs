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
fn jsonb_rows_equal_what_jsonb_in_makes_of_the_body() {
    // Built from the parsed rows, not printed and parsed again: the same values, byte for byte.
    let fixture = r#"[{"b": 1, "aa": 2, "a": {"zz": [], "y": {}, "x": [1, 2.50, -0.0, 1e400, 12345678901234567890123]}},
        {"s": "héllo \"w\"\n\t✓", "e": "", "n": null, "t": true, "f": false, "deep": [[[{"k": [null]}]]]},
        3, "a string", null, [1, "two"], {"key with spaces": 1, "k": 2, "kk": 3, "K": 4}]"#;
    let url = lit(&api().url(&format!("/fixture?body={}", urlencode(fixture))));
    let mut client = user();
    let rows: Vec<(Option<String>, Option<bool>)> = client
        .query(
            &format!(
                "SELECT f::text, f IS NOT DISTINCT FROM nullif(b, 'null')
                 FROM (SELECT row_number() OVER () n, f FROM api_fetch({url}) f) x
                 JOIN (SELECT row_number() OVER () n, e.value AS b FROM jsonb_array_elements((api_request({url})).body_json) e) y USING (n)
                 ORDER BY n"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(rows.len(), 7);
    for (text, equal) in &rows {
        assert_eq!(*equal, Some(true), "{text:?}");
    }
    // A JSON null row is SQL NULL, as ever; the others print alike.
    let texts: Vec<Option<String>> = client
        .query(
            &format!(
                "SELECT nullif(e.value, 'null')::text FROM jsonb_array_elements((api_request({url})).body_json) e"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        rows.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
        texts
    );
    // jsonb cannot hold \u0000: the same error as jsonb_in's, naming the row.
    let url = lit(&api().url(&format!(
        "/fixture?body={}",
        urlencode(r#"[{"a": "x\u0000y"}]"#)
    )));
    let (state, message, _) =
        sql_error(client.batch_execute(&format!("SELECT * FROM api_fetch({url})")));
    assert_eq!(state, "22P05", "{message}");
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
    let mut rows = |path: &str, options: &str| -> String {
        let sql = format!(
            "SELECT string_agg(r::text, ' | ' ORDER BY r.\"int\")
             FROM api_fetch({}, path => '{path}', row_type => NULL::every_type, options => {}) r",
            lit(&api().url("/types")),
            lit(options)
        );
        client.query_one(&sql, &[]).unwrap().get(0)
    };
    let cells = rows("$.data", "{}");
    assert_eq!(cells.matches(" | ").count(), 1, "{cells}");
    assert_eq!(cells, rows("$.data[?@]", "{}"));
    // Columns whose paths are one member name are parsed into cells too, taking exactly that
    // key (the second row's "namedcase" is not "NAMEDCASE"), as the path takes it.
    let mapped = r#"{"columns": {"txt": "$.txt", "namedcase": "$.NAMEDCASE", "vc": "$['vc']"}}"#;
    let by_path = rows("$.data", mapped);
    assert_eq!(by_path, rows("$.data[?@]", mapped));
    assert!(
        by_path.contains("matched") && !by_path.contains("lower"),
        "{by_path}"
    );
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
