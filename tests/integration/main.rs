//! The installed extension in a real cluster, against devapi on loopback: what a user sees. One
//! test binary (one cluster, one devapi server), a file per feature.

use std::time::{Duration, Instant};

use harness::{api, connect, connect_as, lit, sql_error};

/// One text value from a query.
fn text(sql: &str) -> String {
    connect()
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}

/// A connection as the unprivileged role that may reach the network.
fn user() -> harness::Client {
    connect_as("api_user")
}

/// The one value of a query, on `client`; a failure names the statement and the server's message.
fn one<T: for<'a> postgres::types::FromSql<'a>>(client: &mut harness::Client, sql: &str) -> T {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {:?}", e.as_db_error().map(|d| d.message())))
        .get(0)
}

/// The (sqlstate, message, detail) of a statement that must fail.
fn fails(sql: &str) -> (String, String, String) {
    sql_error(connect().batch_execute(sql))
}

/// All 57 demo users come out of `api_fetch(<path>, <args>)`, in order, in `requests` requests
/// to `path` (tagged with a "t-…" segment so that no other test counts there).
fn assert_all_users(path: &str, args: &str, requests: u64) {
    let call = format!("api_fetch({}, {args})", lit(&api().url(path)));
    let ids = text(&format!("SELECT string_agg(r->>'id', ',') FROM {call} r"));
    let expected: Vec<String> = (1..=57).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected.join(","), "{path}");
    assert_eq!(api().requests_to(path), requests, "{path}");
}

/// `text` percent-encoded for a query string (devapi's `/fixture?body=`).
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

mod api_fetch;
mod api_request;
mod auth;
mod bad_input;
mod bulk;
mod cancel;
mod commit_every;
mod docs;
mod fan_out;
mod faults;
mod formats;
mod incremental;
mod jobs;
mod onboarding;
mod operations;
mod paging;
mod policy;
mod privileges;
mod rejected;
mod retries;
mod scheduler;
mod trust;
