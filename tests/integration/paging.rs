use super::*;

#[test]
fn finedatalink_page_numbers_in_the_body() {
    assert_all_users(
        "/t-fdl/api/users",
        r#"'POST', '{"paging": {"pageSize": 1, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}', '$.data',
           paging => '{"type": "page_number", "in": "body", "page_param": "paging.pageNum", "size_param": "paging.pageSize", "page_size": 10, "total_path": "$.totalNum"}'"#,
        6,
    );
}

#[test]
fn github_link_header() {
    assert_all_users(
        "/t-gh/github/users",
        r#"paging => '{"type": "link_header", "size_param": "per_page", "page_size": 25}'"#,
        3,
    );
}

#[test]
fn stripe_cursor_with_bearer_auth_and_has_more() {
    assert_all_users(
        "/t-stripe/stripe/customers",
        r#"path => '$.data', options => '{"auth": {"type": "bearer", "token": "sk_test_4eC39HqLyjWDarjtT1zdp7dc"}}',
           paging => '{"type": "cursor", "cursor_path": "$.data[-1].id", "cursor_param": "starting_after", "has_more_path": "$.has_more", "size_param": "limit", "page_size": 20}'"#,
        3,
    );
}

#[test]
fn django_rest_framework_next_url() {
    assert_all_users(
        "/t-drf/drf/users",
        r#"path => '$.results', paging => '{"type": "next_url", "next_path": "$.next"}'"#,
        6,
    );
}

#[test]
fn offset_with_total_and_short_page() {
    // 57 users in pages of 20: the short third page ends it.
    assert_all_users(
        "/t-offset/offset/users",
        r#"path => '$.items', paging => '{"type": "offset", "offset_param": "offset", "size_param": "limit", "page_size": 20}'"#,
        3,
    );
    // 57 users in pages of 19: only the total ends it after three full pages (no fourth request).
    assert_all_users(
        "/t-offset-total/offset/users",
        r#"path => '$.items', paging => '{"type": "offset", "offset_param": "offset", "size_param": "limit", "page_size": 19, "total_path": "$.total"}'"#,
        3,
    );
}

#[test]
fn offset_without_a_size_stops_at_the_empty_page() {
    // Six pages of rows, then the empty one.
    assert_all_users(
        "/t-empty/offset/users",
        r#"path => '$.items', paging => '{"type": "offset", "offset_param": "offset"}'"#,
        7,
    );
}

#[test]
fn total_pages_and_concurrency_keep_page_order() {
    let url = api().url("/t-conc/slowpages?pages=6&size=5&ms=50");
    let ids = text(&format!(
        "SELECT string_agg(r->>'id', ',') FROM api_fetch({}, path => '$.data',
             paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"total_pages_path\": \"$.total_pages\", \"concurrency\": 4}}') r",
        lit(&url)
    ));
    let expected: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected.join(","));
    assert_eq!(api().requests_to("/t-conc/slowpages"), 6);
}

#[test]
fn a_repeated_cursor_or_next_url_does_not_loop() {
    let cursor = api().url("/t-loop1/endless/cursor");
    let rows = text(&format!(
        "SELECT count(*)::text FROM api_fetch({}, path => '$.data', paging => '{{\"type\": \"cursor\", \"cursor_path\": \"$.cursor\", \"cursor_param\": \"after\", \"has_more_path\": \"$.has_more\"}}')",
        lit(&cursor)
    ));
    assert_eq!(rows, "6");
    assert_eq!(api().requests_to("/t-loop1/endless/cursor"), 2);
    let next = api().url("/endless/next?page=1");
    let rows = text(&format!(
        "SELECT count(*)::text FROM api_fetch({}, path => '$.data', paging => '{{\"type\": \"next_url\", \"next_path\": \"$.next\"}}')",
        lit(&next)
    ));
    assert_eq!(rows, "3", "the next URL is the page itself");
}

#[test]
fn max_pages_cuts_with_a_warning() {
    let (mut client, notices) = harness::connect_collecting();
    let url = api().url("/t-cut/endless/pages");
    let rows: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM api_fetch({}, path => '$.data', paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"max_pages\": 4}}')",
                lit(&url)
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 12);
    assert_eq!(api().requests_to("/t-cut/endless/pages"), 4);
    let notices = notices.lock().unwrap().clone();
    assert_eq!(
        notices,
        ["WARNING: api_fetch stopped after 4 pages (max_pages): the data was cut"]
    );
    client.batch_execute("SET apisync.max_pages = 2").unwrap();
    let rows: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM api_fetch({}, path => '$.data', paging => '{{\"type\": \"page_number\", \"page_param\": \"page\"}}')", lit(&url)),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 6);
}

/// In the select list the executor pulls rows one by one, so LIMIT stops the paging. (In FROM,
/// PostgreSQL materializes a set-returning function before LIMIT applies.)
#[test]
fn limit_in_the_select_list_stops_requesting_pages() {
    let url = api().url("/t-limit/endless/pages");
    let rows = text(&format!(
        "SELECT count(*)::text FROM (SELECT api_fetch({}, path => '$.data', paging => '{{\"type\": \"page_number\", \"page_param\": \"page\", \"max_pages\": 1000}}') LIMIT 5) s",
        lit(&url)
    ));
    assert_eq!(rows, "5");
    let requests = api().requests_to("/t-limit/endless/pages");
    assert!(requests <= 5, "{requests} pages requested for 5 rows");
}
