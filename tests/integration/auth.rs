use super::*;

fn ok(path: &str, auth: &str) -> String {
    text(&format!(
        "SELECT r->>'auth' FROM api_fetch({}, path => '$.data', options => '{{\"auth\": {auth}}}') r",
        lit(&api().url(path))
    ))
}

#[test]
fn bearer_basic_and_api_keys() {
    assert_eq!(
        ok(
            "/auth/bearer",
            r#"{"type": "bearer", "token": "tok-secret"}"#
        ),
        "bearer"
    );
    assert_eq!(
        ok(
            "/auth/basic",
            r#"{"type": "basic", "username": "ann", "password": "pw-secret"}"#
        ),
        "basic"
    );
    assert_eq!(
        ok(
            "/auth/key",
            r#"{"type": "api_key", "name": "X-Api-Key", "value": "k-secret"}"#
        ),
        "key"
    );
    assert_eq!(
        ok(
            "/auth/key",
            r#"{"type": "api_key", "name": "api_key", "in": "query", "value": "k-secret"}"#
        ),
        "key"
    );
    let (code, message, _) = fails(&format!(
        "SELECT * FROM api_fetch({}, options => '{{\"auth\": {{\"type\": \"bearer\", \"token\": \"wrong\"}}}}')",
        lit(&api().url("/auth/bearer"))
    ));
    assert_eq!(code, "38000");
    assert!(message.starts_with("HTTP 401 Unauthorized"), "{message}");
}

#[test]
fn secrets_belong_to_their_role_and_never_show() {
    let mut owner = connect_as("api_user");
    owner
        .execute("SELECT apisync.create_secret('gh', $1)", &[&"tok-secret"])
        .unwrap();
    let url = lit(&api().url("/auth/bearer"));
    let got: String = owner
        .query_one(&format!("SELECT r->>'auth' FROM api_fetch({url}, path => '$.data', options => '{{\"auth\": {{\"type\": \"bearer\", \"secret\": \"gh\"}}}}') r"), &[])
        .unwrap()
        .get(0);
    assert_eq!(got, "bearer");

    // The server reflects what it got into its error body: the error shows *** instead.
    let reflect = lit(&api().url("/auth/reflect"));
    let (code, message, detail) = sql_error(owner.batch_execute(&format!(
        "SELECT * FROM api_fetch({reflect}, options => '{{\"auth\": {{\"type\": \"bearer\", \"secret\": \"gh\"}}}}')"
    )));
    assert_eq!(code, "38000");
    assert!(
        !message.contains("tok-secret") && !detail.contains("tok-secret"),
        "{message} / {detail}"
    );
    assert!(detail.contains("Bearer ***"), "{detail}");

    // Another role neither sees nor uses it; a superuser sees it.
    let mut other = connect_as("other_user");
    // No role reads the secrets table: a fetch looks up its caller's own.
    let (code, _, _) = sql_error(other.query_one("SELECT count(*) FROM apisync.secrets", &[]));
    assert_eq!(code, "42501");
    let (code, message, _) = sql_error(other.batch_execute(&format!(
        "SELECT * FROM api_fetch({url}, options => '{{\"auth\": {{\"type\": \"bearer\", \"secret\": \"gh\"}}}}')"
    )));
    assert_eq!(code, "42704", "{message}");
    assert_eq!(message, "secret \"gh\" does not exist");
    let all: i64 = connect()
        .query_one(
            "SELECT count(*) FROM apisync.secrets WHERE name = 'gh'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(all, 1);
    let (code, _, _) = sql_error(other.batch_execute("SELECT apisync.drop_secret('gh')"));
    assert_eq!(code, "42704");
    owner
        .batch_execute("SELECT apisync.drop_secret('gh')")
        .unwrap();
}

#[test]
fn oauth2_client_credentials_cache_and_refresh() {
    let mut client = connect();
    client
        .execute("SELECT apisync.create_secret('oauth', $1)", &[&"c-secret"])
        .unwrap();
    let call = format!(
        "SELECT r->>'token' FROM api_fetch({}, path => '$.data', options => '{{\"auth\": {{\"type\": \"oauth2_client_credentials\", \"token_url\": {}, \"client_id\": \"client\", \"secret\": \"oauth\", \"scope\": \"read\"}}}}') r",
        lit(&api().url("/oauth/data")),
        serde_json::to_string(&api().url("/oauth/token")).unwrap().replace('\'', "''")
    );
    let first: String = client.query_one(&call, &[]).unwrap().get(0);
    let second: String = client.query_one(&call, &[]).unwrap().get(0);
    assert_eq!(first, second, "the token is cached");
    assert_eq!(api().requests_to("/oauth/token"), 1);
    connect()
        .batch_execute(&format!(
            "SELECT * FROM api_request({})",
            lit(&api().url("/oauth/revoke"))
        ))
        .unwrap();
    let third: String = client.query_one(&call, &[]).unwrap().get(0);
    assert_ne!(third, second, "a 401 fetches a new token once");
    assert_eq!(api().requests_to("/oauth/token"), 2);
}
