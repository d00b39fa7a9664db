use super::*;

#[test]
fn steps_commit_and_a_failure_keeps_the_steps_before_it() {
    let mut client = connect_as("api_user");
    let paging =
        r#"'{"type": "page_number", "page_param": "page", "total_pages_path": "$.total_pages"}'"#;
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
    let (code, message, _) = sql_error(client.batch_execute("SELECT apisync.run_job('stepped')"));
    assert_eq!(code, "38000", "{message}");
    let count: i64 = client
        .query_one("SELECT count(*) FROM stepped", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 20, "pages 1 to 4 were committed in two steps");
    let row = client
        .query_one(
            "SELECT status, pages, rows_inserted FROM apisync.job_runs WHERE job_name = 'stepped'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        ("failed".into(), 4, 20)
    );

    let row = client
        .query_one(
            "SELECT status, pages, rows_inserted, rows_updated FROM apisync.run_job('stepped_ok')",
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
