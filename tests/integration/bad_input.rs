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

    let (code, message, _) = fails("SELECT * FROM api_request('http://no-such-host.invalid/x')");
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
