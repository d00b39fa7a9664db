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
