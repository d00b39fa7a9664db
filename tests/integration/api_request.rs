use super::*;

#[test]
fn get_returns_status_headers_body_and_timing() {
    let url = api().url("/echo?x=1");
    let row = connect()
        .query_one(
            &format!(
                "SELECT status, headers->>'content-type', body_json->>'method',
                        body_json->'headers'->>'user-agent', final_url, elapsed_ms > 0, body_json IS NOT NULL
                 FROM api_request({})",
                lit(&url)
            ),
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 200);
    assert_eq!(row.get::<_, String>(1), "application/json");
    assert_eq!(row.get::<_, String>(2), "GET");
    assert_eq!(row.get::<_, String>(3), "pg_apisync/0.2.0");
    assert_eq!(row.get::<_, String>(4), url);
    assert!(row.get::<_, bool>(5));
    assert!(row.get::<_, bool>(6));
}

#[test]
fn every_method_sends_its_json_body() {
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let got = text(&format!(
            "SELECT concat_ws(' ', body_json->>'method', body_json->'headers'->>'content-type', body_json->'body_json'->>'a')
             FROM api_request({}, {}, '{{\"a\": \"é\"}}')",
            lit(&api().url("/echo")),
            lit(&method.to_lowercase())
        ));
        assert_eq!(got, format!("{method} application/json é"));
    }
    let head = text(&format!(
        "SELECT status || ':' || body FROM api_request({}, 'HEAD')",
        lit(&api().url("/echo"))
    ));
    assert_eq!(head, "200:");
}

#[test]
fn form_text_bodies_headers_and_query_parameters() {
    let echo = lit(&api().url("/echo"));
    let form = text(&format!(
        "SELECT (body_json->>'body') || ' ' || (body_json->'headers'->>'content-type')
         FROM api_request({echo}, 'POST', options => '{{\"form\": {{\"a\": 1, \"b\": \"x y&z\"}}}}')"
    ));
    assert_eq!(form, "a=1&b=x+y%26z application/x-www-form-urlencoded");
    let xml = text(&format!(
        "SELECT (body_json->>'body') || ' ' || (body_json->'headers'->>'content-type')
         FROM api_request({echo}, 'POST', options => '{{\"body_text\": \"<a/>\", \"content_type\": \"application/xml\"}}')"
    ));
    assert_eq!(xml, "<a/> application/xml");
    let headers = text(&format!(
        "SELECT (body_json->'headers'->>'x-tenant') || ' ' || (body_json->'query'->>'q') || ' ' || (body_json->'query'->>'page')
         FROM api_request({echo}, headers => '{{\"X-Tenant\": \"acme\"}}', options => '{{\"query\": {{\"q\": \"a b\", \"page\": 2}}}}')"
    ));
    assert_eq!(headers, "acme a b 2");
}

#[test]
fn redirects_are_followed_up_to_ten() {
    let row = connect()
        .query_one(
            &format!(
                "SELECT status, final_url FROM api_request({})",
                lit(&api().url("/redirect/3"))
            ),
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 200);
    assert_eq!(row.get::<_, String>(1), api().url("/echo"));
    let (code, message, _) = fails(&format!(
        "SELECT * FROM api_request({})",
        lit(&api().url("/redirect/11"))
    ));
    assert_eq!(code, "08006");
    assert!(message.contains("too many redirects"), "{message}");
}

#[test]
fn compressed_bodies_are_decoded() {
    for encoding in ["gzip", "deflate", "br"] {
        let length = text(&format!(
            "SELECT length(body_json->>'padding')::text FROM api_request({})",
            lit(&api().url(&format!("/compressed/{encoding}?bytes=5000")))
        ));
        assert_eq!(length, "4973", "{encoding}");
    }
}

#[test]
fn error_statuses_are_returned_not_raised() {
    let row = connect()
        .query_one(
            &format!(
                "SELECT status, body_json->>'error' FROM api_request({})",
                lit(&api().url("/status/404"))
            ),
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 404);
    assert_eq!(row.get::<_, String>(1), "status 404");
    let html = text(&format!(
        "SELECT (body_json IS NULL)::text || ' ' || left(body, 15) FROM api_request({})",
        lit(&api().url("/html"))
    ));
    assert_eq!(html, "true <!DOCTYPE html>");
}

#[test]
fn repeated_response_headers_are_joined() {
    let cookies = text(&format!(
        "SELECT headers->>'set-cookie' || ' ' || (headers->>'x-request-id') FROM api_request({})",
        lit(&api().url("/headers"))
    ));
    assert_eq!(cookies, "a=1, b=2 req-42");
}
