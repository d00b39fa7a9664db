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
