//! Export endpoints: one large body in JSON, JSON Lines or CSV, as a file (gzip without
//! Content-Encoding) or not, sent in pieces with pauses, cut mid-transfer, or with a bad line.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::{data, json_response, Body, State};

type Query = std::collections::HashMap<String, String>;

fn number(query: &Query, name: &str, default: u64) -> u64 {
    query
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `/export/{json|jsonl|csv}`: `n` rows of the benchmark's shape (`/rows`'s), in one body.
/// `gz=1` sends a gzip file (Content-Type application/gzip, no Content-Encoding); `ct` sets the
/// Content-Type (`none`: application/octet-stream); `chunk` bytes are sent at a time, `ms` apart;
/// `cut` breaks the connection after that many bytes; `bad` makes that line (1-based, the header
/// counting in CSV) malformed; `front=1` puts the JSON total before the rows.
pub async fn export(state: &State, format: &str, query: &Query) -> Response<Body> {
    let n = number(query, "n", 100);
    let bad = number(query, "bad", 0);
    let front = query.get("front").is_some_and(|v| v == "1");
    let gz = query.get("gz").is_some_and(|v| v == "1");
    let default_type = match format {
        "json" => "application/json",
        "jsonl" => "application/x-ndjson",
        "csv" => "text/csv",
        _ => return json_response(StatusCode::NOT_FOUND, &json!({"error": "no such format"})),
    };
    let key = format!("{format}:{n}:{bad}:{front}:{gz}");
    let format_name = format.to_string();
    let body = state
        .export(&key, move || {
            let body = generate(&format_name, n, bad, front);
            if gz {
                gzip(&body)
            } else {
                body
            }
        })
        .await;
    let content_type = match query.get("ct").map(String::as_str) {
        Some("none") => "application/octet-stream".to_string(),
        Some(other) => other.to_string(),
        None if gz => "application/gzip".to_string(),
        None => default_type.to_string(),
    };
    let chunk = number(query, "chunk", 64 * 1024).max(1) as usize;
    let pause = Duration::from_millis(number(query, "ms", 0));
    let cut = query.get("cut").and_then(|c| c.parse::<usize>().ok());
    let length = body.len();
    let frames = futures_util::stream::unfold(0usize, move |at| {
        let body = body.clone();
        async move {
            let end = cut.unwrap_or(usize::MAX).min(body.len());
            if at >= end {
                if cut.is_some() && at < body.len() && at != usize::MAX {
                    // Let what was sent arrive, then break the connection mid-body.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let broken = std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "devapi cuts the export",
                    );
                    return Some((Err(broken), usize::MAX));
                }
                return None;
            }
            if at > 0 && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let next = (at + chunk).min(end);
            Some((Ok(Frame::data(body.slice(at..next))), next))
        }
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_str(&content_type).unwrap());
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// `/bomb/{format}?mb=N`: a gzip file of N MB of rows in the format, a few hundred kB on the wire.
pub async fn bomb(state: &State, format: &str, query: &Query) -> Response<Body> {
    let megabytes = number(query, "mb", 64);
    let key = format!("bomb:{format}:{megabytes}");
    let format = format.to_string();
    let body = state
        .export(&key, move || {
            let (head, row, tail): (&[u8], &[u8], &[u8]) = match format.as_str() {
                "jsonl" => (b"", b"{\"id\": 1, \"name\": \"same row\"}\n", b""),
                "csv" => (b"id,name\n", b"1,same row\n", b""),
                _ => (
                    b"{\"data\": [",
                    b"{\"id\": 1, \"name\": \"same row\"},",
                    b"{}]}",
                ),
            };
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(head).unwrap();
            let rows = row.repeat((1 << 20) / row.len());
            for _ in 0..megabytes {
                encoder.write_all(&rows).unwrap();
            }
            encoder.write_all(tail).unwrap();
            Bytes::from(encoder.finish().unwrap())
        })
        .await;
    let mut response = Response::new(
        http_body_util::Full::new(body)
            .map_err(|never| match never {})
            .boxed(),
    );
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn generate(format: &str, n: u64, bad: u64, front: bool) -> Bytes {
    let mut out = Vec::with_capacity((n as usize) * 160);
    match format {
        "json" => {
            if front {
                write!(out, "{{\"total\": {n}, \"data\": [").unwrap();
            } else {
                out.extend_from_slice(b"{\"data\": [");
            }
            for id in 1..=n {
                if id > 1 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, &data::bench_row(id)).unwrap();
            }
            if front {
                out.extend_from_slice(b"]}");
            } else {
                write!(out, "], \"total\": {n}}}").unwrap();
            }
        }
        "jsonl" => {
            for id in 1..=n {
                if id == bad {
                    out.extend_from_slice(b"{\"id\": \n");
                    continue;
                }
                serde_json::to_writer(&mut out, &data::bench_row(id)).unwrap();
                out.push(b'\n');
            }
        }
        _ => {
            out.extend_from_slice(b"id,name,score,email,created_at,active,tags\n");
            for id in 1..=n {
                if id + 1 == bad {
                    out.extend_from_slice(b"1,2\n");
                    continue;
                }
                let row = data::bench_row(id);
                let field = |v: &Value| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let tags: Vec<String> = row["tags"]
                    .as_array()
                    .map(|t| t.iter().map(field).collect())
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{},{},{},{},{},{},\"{{{}}}\"",
                    field(&row["id"]),
                    field(&row["name"]),
                    field(&row["score"]),
                    field(&row["email"]),
                    field(&row["created_at"]),
                    field(&row["active"]),
                    tags.join(",")
                )
                .unwrap();
            }
        }
    }
    Bytes::from(out)
}

fn gzip(body: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body).unwrap();
    Bytes::from(encoder.finish().unwrap())
}
