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
