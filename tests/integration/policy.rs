use super::*;

#[test]
fn metadata_addresses_are_denied_by_default_in_every_form() {
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://2852039166/",
    ] {
        let started = Instant::now();
        let (code, message, _) = fails(&format!("SELECT * FROM api_request({})", lit(url)));
        assert_eq!(code, "42501", "{url}");
        assert!(
            message.contains("apisync.denied_networks"),
            "{url}: {message}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{url} failed at once"
        );
    }
}

#[test]
fn denied_networks_apply_to_literals_and_resolved_names() {
    let mut client = connect();
    client
        .batch_execute("SET apisync.denied_networks = '127.0.0.0/8, ::1/128'")
        .unwrap();
    let (code, message, _) = sql_error(client.batch_execute(&format!(
        "SELECT * FROM api_request({})",
        lit(&api().url("/echo"))
    )));
    assert_eq!(code, "42501");
    assert!(
        message.contains("address 127.0.0.1 is in 127.0.0.0/8"),
        "{message}"
    );
    let by_name = api().url("/echo").replace("127.0.0.1", "localhost");
    let (code, message, _) =
        sql_error(client.batch_execute(&format!("SELECT * FROM api_request({})", lit(&by_name))));
    assert_eq!(code, "42501");
    assert!(
        message.contains("host \"localhost\" resolves to address"),
        "{message}"
    );
}

#[test]
fn allowed_hosts_apply_to_every_redirect_hop() {
    let mut client = connect();
    client
        .batch_execute("SET apisync.allowed_hosts = '127.0.0.1'")
        .unwrap();
    let status: i32 = client
        .query_one(
            &format!(
                "SELECT status FROM api_request({})",
                lit(&api().url("/echo"))
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, 200);
    let elsewhere = api().url("/t-hop/echo").replace("127.0.0.1", "localhost");
    let hop = api().url(&format!("/redirect-to?url={elsewhere}"));
    let (code, message, _) =
        sql_error(client.batch_execute(&format!("SELECT * FROM api_request({})", lit(&hop))));
    assert_eq!(code, "42501");
    assert!(
        message.contains("host \"localhost\" is not in apisync.allowed_hosts"),
        "{message}"
    );
    assert_eq!(
        api().requests_to("/t-hop/echo"),
        0,
        "the hop was never sent"
    );
}

#[test]
fn only_superusers_set_the_policy() {
    for setting in [
        "apisync.allowed_hosts = '*'",
        "apisync.denied_networks = ''",
    ] {
        let (code, _, _) =
            sql_error(connect_as("api_user").batch_execute(&format!("SET {setting}")));
        assert_eq!(code, "42501", "{setting}");
    }
}
