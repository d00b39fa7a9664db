use super::*;

const FAST: &str = "\"retry_backoff_ms\": 10";

#[test]
fn retryable_statuses_are_retried_and_counted() {
    let url = api().url("/flaky/r1?fail=2");
    let attempt = text(&format!(
        "SELECT (r->>'attempt') FROM api_fetch({}, path => '$.data', options => '{{{FAST}}}') r",
        lit(&url)
    ));
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
    assert_eq!(
        text(&format!(
            "SELECT r->>'attempt' FROM api_fetch({}, path => '$.data', options => '{{{FAST}}}') r",
            lit(&url)
        )),
        "2"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited {:?}",
        started.elapsed()
    );

    let url = api().url("/flaky/r4?fail=1&retry_after_date=2");
    assert_eq!(
        text(&format!(
            "SELECT r->>'attempt' FROM api_fetch({}, path => '$.data', options => '{{{FAST}}}') r",
            lit(&url)
        )),
        "2"
    );

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
