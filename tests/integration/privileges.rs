use super::*;

#[test]
fn network_functions_need_a_grant() {
    let url = lit(&api().url("/echo"));
    for call in [format!("api_fetch({url})"), format!("api_request({url})")] {
        let (code, message, _) =
            sql_error(connect_as("plain_user").batch_execute(&format!("SELECT * FROM {call}")));
        assert_eq!(code, "42501", "{call}");
        assert!(
            message.contains("permission denied for function"),
            "{message}"
        );
        connect_as("api_user")
            .batch_execute(&format!("SELECT * FROM {call}"))
            .unwrap();
    }
}

#[test]
fn limits_are_superuser_settings() {
    let (code, message, _) =
        sql_error(connect_as("api_user").batch_execute("SET apisync.http_timeout_ms = '1h'"));
    assert_eq!(code, "42501");
    assert!(message.contains("apisync.http_timeout_ms"), "{message}");
    connect_as("api_user")
        .batch_execute("SET apisync.user_agent = 'mine/1'")
        .unwrap();
    let (code, _, _) = sql_error(connect().batch_execute("SET apisync.no_such_setting = 1"));
    assert_eq!(code, "42602");
}
