//! Formats and size (issue #12): JSON, JSON Lines and CSV bodies, gzip files, streaming, bad
//! records and broken transfers, as a non-superuser sees them.

use super::*;
use harness::Client;

/// The benchmark's row shape, which every export serves.
const BENCH_TABLE: &str = "(id bigint PRIMARY KEY, name text, score numeric, email text,
                            created_at timestamptz, active boolean, tags text[])";

fn export(path: &str) -> String {
    lit(&api().url(path))
}

/// What a user checks after a load: the count, the ids, and one row in full.
fn summary(client: &mut Client, table: &str) -> String {
    one(
        client,
        &format!(
            "SELECT count(*) || ' ' || sum(id) || ' | ' || (SELECT t::text FROM {table} t WHERE id = 7) FROM {table}"
        ),
    )
}

const ROW_7: &str =
    "(7,\"user 7\",7.07,user7@example.com,\"2024-08-08 07:07:00+00\",f,\"{t1,g7}\")";

#[test]
fn each_format_loads_typed_and_as_jsonb_by_option_or_content_type() {
    let mut client = user();
    for (format, path) in [("json", "$.data"), ("jsonl", "$"), ("csv", "$")] {
        let table = format!("fmt_{format}");
        client
            .batch_execute(&format!("CREATE TABLE {table} {BENCH_TABLE}"))
            .unwrap();
        // The Content-Type decides.
        client
            .batch_execute(&format!(
                "INSERT INTO {table} SELECT * FROM api_fetch({}, path => '{path}', row_type => NULL::{table})",
                export(&format!("/export/{format}?n=500"))
            ))
            .unwrap();
        assert_eq!(
            summary(&mut client, &table),
            format!("500 125250 | {ROW_7}"),
            "{format}"
        );
        // options.format decides when the Content-Type says nothing.
        client.batch_execute(&format!("TRUNCATE {table}")).unwrap();
        client
            .batch_execute(&format!(
                "INSERT INTO {table} SELECT * FROM api_fetch({}, path => '{path}',
                     options => '{{\"format\": \"{format}\"}}', row_type => NULL::{table})",
                export(&format!("/export/{format}?n=500&ct=none"))
            ))
            .unwrap();
        assert_eq!(
            summary(&mut client, &table),
            format!("500 125250 | {ROW_7}"),
            "{format}"
        );
        // jsonb rows: CSV values are strings.
        let jsonb: String = one(
            &mut client,
            &format!(
                "SELECT count(*) || ' ' || (array_agg(r->'id') FILTER (WHERE r->>'id' = '7'))[1]
                 FROM api_fetch({}, path => '{path}') r",
                export(&format!("/export/{format}?n=500"))
            ),
        );
        let id = if format == "csv" { "\"7\"" } else { "7" };
        assert_eq!(jsonb, format!("500 {id}"), "{format}");
    }
    // Without a format or a known Content-Type, a body is JSON.
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({})",
        export("/export/csv?n=5&ct=none")
    )));
    assert_eq!(code, "22032", "{message}");
}

#[test]
fn gzip_files_are_unpacked_and_bombs_stop_at_the_limit() {
    let mut client = user();
    for (format, path) in [("json", "$.data"), ("jsonl", "$"), ("csv", "$")] {
        let table = format!("gz_{format}");
        client
            .batch_execute(&format!("CREATE TABLE {table} {BENCH_TABLE}"))
            .unwrap();
        client
            .batch_execute(&format!(
                "INSERT INTO {table} SELECT * FROM api_fetch({}, path => '{path}',
                     options => '{{\"format\": \"{format}\"}}', row_type => NULL::{table})",
                export(&format!("/export/{format}?n=500&gz=1"))
            ))
            .unwrap();
        assert_eq!(
            summary(&mut client, &table),
            format!("500 125250 | {ROW_7}"),
            "{format}"
        );

        // 64 MB of rows in a file of a few hundred kB, against a limit of 2 MB.
        let (code, message, _) = sql_error(client.batch_execute(&format!(
            "SELECT count(*) FROM api_fetch({}, path => '{path}',
                 options => '{{\"format\": \"{format}\", \"max_response_bytes\": 2000000}}')",
            export(&format!("/bomb/{format}?mb=64"))
        )));
        assert_eq!(code, "54000", "{format}: {message}");
        assert!(
            message.contains("is larger than the limit of 2000000 bytes"),
            "{message}"
        );
    }
    // decompress none reads the file as it is; gzip insists on one.
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({}, path => '$.data', options => '{{\"decompress\": \"none\"}}')",
        export("/export/json?n=5&gz=1")
    )));
    assert_eq!(code, "22032", "{message}");
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({}, path => '$.data', options => '{{\"decompress\": \"gzip\"}}')",
        export("/export/json?n=5")
    )));
    assert_eq!(code, "22000", "{message}");
    assert!(message.contains("is not a gzip file"), "{message}");
    // api_request returns bodies as sent, and says so of format options.
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT api_request({}, options => '{{\"format\": \"csv\"}}')",
        export("/export/csv?n=5")
    )));
    assert_eq!(code, "22023", "{message}");
    assert!(
        message.contains("api_request returns the body as it was sent"),
        "{message}"
    );
    let raw: i32 = one(
        &mut client,
        &format!(
            "SELECT length(convert_to((api_request({})).body, 'UTF8'))",
            export("/fixture?body=%EF%BB%BF%5B1%5D")
        ),
    );
    assert_eq!(raw, 6, "api_request keeps the byte order mark");
}

#[test]
fn bad_lines_and_records_are_named_and_can_be_set_aside_in_a_job() {
    let mut client = user();
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({})",
        export("/export/jsonl?n=20&bad=5")
    )));
    assert_eq!(code, "22032", "{message}");
    assert!(
        message.starts_with("line 5 of the response from http://127.0.0.1:")
            && message.contains("is not valid JSON (format jsonl)"),
        "{message}"
    );
    // Line 4 is the third record after the header.
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({})",
        export("/export/csv?n=20&bad=4")
    )));
    assert_eq!(code, "22P04", "{message}");
    assert!(
        message.starts_with("record 3 (line 4) of the CSV response")
            && message.ends_with("has 2 fields, not 7 as the header"),
        "{message}"
    );
    client
        .batch_execute(&format!(
            "CREATE TABLE bad_lines {BENCH_TABLE};
             SELECT apisync.create_job('bad_lines', 'bad_lines', {},
                 options => '{{\"max_rejected\": 1}}');",
            export("/export/jsonl?n=20&bad=5")
        ))
        .unwrap();
    let row = client
        .query_one(
            "SELECT run_id, status, rows_inserted, rows_rejected FROM apisync.run_job('bad_lines')",
            &[],
        )
        .unwrap();
    let run_id: i64 = row.get(0);
    assert_eq!(
        (
            row.get::<_, String>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3)
        ),
        ("succeeded".into(), 19, 1)
    );
    let rejected: String = one(
        &mut client,
        &format!(
            "SELECT row_number || ' ' || sqlstate || ' ' || (raw #>> '{{}}') || ' ' || error
             FROM apisync.rejected_rows WHERE run_id = {run_id}"
        ),
    );
    assert!(
        rejected.starts_with("5 22032 {\"id\": line 5 of the response"),
        "{rejected}"
    );
    assert_eq!(
        one::<i64>(&mut client, "SELECT count(*) FROM bad_lines"),
        19
    );
}

#[test]
fn a_transfer_cut_after_rows_fails_without_a_retry_and_before_rows_is_retried() {
    let mut client = user();
    // About 9 MB of rows; the connection breaks after 3 MB, once rows reached the reader.
    let late = "/t-cut-late/export/json?n=60000&cut=3000000";
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({}, path => '$.data')",
        export(late)
    )));
    assert_eq!(code, "08006", "{message}");
    assert_eq!(
        api().requests_to(late.split('?').next().unwrap()),
        1,
        "never retried"
    );
    // Cut before the first row is complete: tried again, as a failed request is.
    let early = "/t-cut-early/export/json?n=100&cut=40";
    let (code, message, detail) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({}, path => '$.data',
             options => '{{\"retries\": 2, \"retry_backoff_ms\": 10}}')",
        export(early)
    )));
    assert_eq!(code, "08006", "{message}");
    assert_eq!(detail, "tried 3 times");
    assert_eq!(api().requests_to(early.split('?').next().unwrap()), 3);
    // A job's run fails atomically: nothing of the rows before the cut stays.
    client
        .batch_execute(&format!(
            "CREATE TABLE cut_rows {BENCH_TABLE};
             INSERT INTO cut_rows (id) VALUES (0);
             SELECT apisync.create_job('cut_rows', 'cut_rows', {}, path => '$.data', write_method => 'replace');",
            export("/export/json?n=60000&cut=3000000")
        ))
        .unwrap();
    let (code, _, _) = sql_error(client.batch_execute("SELECT apisync.run_job('cut_rows')"));
    assert_eq!(code, "08006");
    assert_eq!(
        one::<String>(
            &mut client,
            "SELECT string_agg(id::text, ',') FROM cut_rows"
        ),
        "0"
    );
}

#[test]
fn rows_stream_while_the_body_arrives() {
    let mut client = user();
    client
        .batch_execute("SET statement_timeout = '20s'")
        .unwrap();
    // 2 MB in 16 kB pieces 300 ms apart (about 40 s in all): LIMIT stops reading it.
    let rows: i64 = one(
        &mut client,
        &format!(
            "SELECT count(*) FROM (SELECT api_fetch({}, path => '$.data') LIMIT 3) r",
            export("/export/json?n=12000&chunk=16384&ms=300")
        ),
    );
    assert_eq!(rows, 3);
    // A long healthy transfer does not time out: the timeout bounds each wait for data.
    let rows: i64 = one(
        &mut client,
        &format!(
            "SELECT count(*) FROM api_fetch({}, path => '$.data', options => '{{\"timeout_ms\": 2000}}')",
            export("/export/json?n=400&chunk=4096&ms=300")
        ),
    );
    assert_eq!(rows, 400);
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({}, path => '$.data',
             options => '{{\"timeout_ms\": 300, \"retries\": 0}}')",
        export("/export/json?n=400&chunk=4096&ms=1500")
    )));
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("stalled: no data for 300 ms"), "{message}");
}

#[test]
fn paging_reads_a_total_placed_after_the_streamed_rows() {
    let mut client = user();
    let path = "/t-total-after/rows";
    let ids: String = one(
        &mut client,
        &format!(
            "SELECT count(*) || ' ' || count(DISTINCT r->>'id') FROM api_fetch({}, path => '$.data',
                 paging => '{{\"type\": \"offset\", \"offset_param\": \"offset\", \"size_param\": \"n\",
                              \"page_size\": 1000, \"total_path\": \"$.total\", \"concurrency\": 2}}') r",
            export(&format!("{path}?total=2500"))
        ),
    );
    assert_eq!(ids, "2500 2500");
    assert_eq!(api().requests_to(path), 3);
}

#[test]
fn bad_input_is_refused_clearly() {
    let mut client = user();
    client
        .batch_execute("CREATE TABLE num_range (n numeric, f float8)")
        .unwrap();
    // Beyond float range: exact in numeric, 22003 in float8; a byte order mark is skipped.
    let body = "%EF%BB%BF%7B%22data%22%3A%5B%7B%22n%22%3A1e400%7D%5D%7D";
    let exact: String = one(
        &mut client,
        &format!(
            "SELECT n::text FROM api_fetch({}, path => '$.data', row_type => NULL::num_range)",
            export(&format!("/fixture?body={body}"))
        ),
    );
    assert_eq!(exact.len(), 401, "1 and 400 zeros");
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT * FROM api_fetch({}, path => '$.data', options => '{{\"columns\": {{\"f\": \"$.n\"}}}}',
             row_type => NULL::num_range)",
        export(&format!("/fixture?body={body}"))
    )));
    assert_eq!(code, "22003", "{message}");
    // CSV: path $ only, no paging values from the body; checked before any request.
    let before = api().requests_to("/t-csv-refused/export/csv");
    for (args, says) in [
        ("path => '$.data', options => '{\"format\": \"csv\"}'", "path must be $ for CSV"),
        (
            "options => '{\"format\": \"csv\"}', paging => '{\"type\": \"offset\", \"offset_param\": \"o\", \"page_size\": 10, \"total_path\": \"$.t\"}'",
            "which a CSV body does not have",
        ),
        ("options => '{\"csv\": {\"header\": false}}'", "needs options.csv.columns"),
        ("options => '{\"format\": \"xml\"}'", "unknown options.format \"xml\""),
    ] {
        let (code, message, _) = sql_error(client.batch_execute(&format!(
            "SELECT count(*) FROM api_fetch({}, {args})",
            export("/t-csv-refused/export/csv")
        )));
        assert_eq!(code, "22023", "{message}");
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(api().requests_to("/t-csv-refused/export/csv"), before);
    // A dialect: semicolons, no header, a NULL marker; the empty field is an empty string then.
    client
        .batch_execute("CREATE TABLE dialect (id int, name text, seen date)")
        .unwrap();
    let rows: String = one(
        &mut client,
        &format!(
            "SELECT string_agg(id || ':' || coalesce(name, 'NULL') || ':' || coalesce(seen::text, 'NULL'), ' ' ORDER BY id)
             FROM api_fetch({}, options => '{{\"format\": \"csv\", \"csv\": {{\"delimiter\": \";\", \"header\": false,
                 \"columns\": [\"id\", \"name\", \"seen\"], \"null\": \"-\"}}}}', row_type => NULL::dialect)",
            export("/fixture?body=1%3B%3B2024-01-02%0A2%3B-%3B-%0A&ct=text/plain")
        ),
    );
    assert_eq!(rows, "1::2024-01-02 2:NULL:NULL");
}

#[test]
fn a_job_loads_a_csv_report() {
    let mut client = user();
    client
        .batch_execute(&format!(
            "CREATE TABLE csv_report {BENCH_TABLE};
             SELECT apisync.create_job('csv_report', 'csv_report', {},
                 options => '{{\"format\": \"csv\"}}', write_method => 'upsert');",
            export("/export/csv?n=300&gz=1&ct=none")
        ))
        .unwrap();
    // The second run finds every row unchanged.
    for inserted in [300, 0] {
        let row = client
            .query_one(
                "SELECT status, rows_fetched, rows_inserted, pages FROM apisync.run_job('csv_report')",
                &[],
            )
            .unwrap();
        assert_eq!(
            (
                row.get::<_, String>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2),
                row.get::<_, i64>(3)
            ),
            ("succeeded".into(), 300, inserted, 1)
        );
    }
    assert_eq!(
        summary(&mut client, "csv_report"),
        format!("300 45150 | {ROW_7}")
    );
}

#[test]
fn a_database_not_in_utf8_refuses_clearly() {
    connect()
        .batch_execute(
            "CREATE DATABASE in_latin1 ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
        )
        .unwrap();
    let config = format!(
        "host=127.0.0.1 port={} user=postgres dbname=in_latin1",
        harness::cluster().port
    );
    let mut client = postgres::Client::connect(&config, postgres::NoTls).unwrap();
    client.batch_execute("CREATE EXTENSION pg_apisync").unwrap();
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT count(*) FROM api_fetch({})",
        export("/export/csv?n=5")
    )));
    assert_eq!(code, "0A000", "{message}");
    assert_eq!(message, "pg_apisync needs a database with encoding UTF8");
}
