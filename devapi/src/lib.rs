//! devapi: the HTTP/JSON API on 127.0.0.1 that pg_apisync's demo, tests and benchmarks talk to.
//!
//! It serves the demo dataset in the shape of a FineDataLink Data Service (POST paging in the
//! body), generated rows for load tests, and fixtures for every failure a real API can show:
//! error statuses, redirects, slow answers, HTML, truncated and oversized bodies, compression.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub mod data;
mod export;
mod rotating;
mod shapes;

type Body = BoxBody<Bytes, std::io::Error>;

/// Shared by all connections.
#[derive(Default)]
struct State {
    /// Requests by path (without the query string).
    by_path: Mutex<HashMap<String, u64>>,
    /// Generated `/rows` pages, by (offset, count): generating must not be what a benchmark measures.
    pages: Mutex<HashMap<(u64, u64, u64), Bytes>>,
    /// Requests seen per `/flaky/{key}`.
    flaky: Mutex<HashMap<String, u64>>,
    oauth: Mutex<shapes::Tokens>,
    rotating: rotating::Provider,
    /// Generated export bodies, by what they hold (the few most recent).
    exports: Mutex<Vec<(String, Bytes)>>,
    /// Per `/concurrent/{key}`: requests being answered now, and the most there ever were.
    concurrent: Mutex<HashMap<String, (u64, u64)>>,
}

/// A running server on 127.0.0.1; stops when dropped.
pub struct DevApi {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DevApi {
    /// Starts on `port` (0 picks a free one) in a thread of its own.
    pub fn start(port: u16) -> std::io::Result<DevApi> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(State::default());
        let (shutdown, stopped) = oneshot::channel();
        let served = state.clone();
        let thread = std::thread::Builder::new()
            .name("devapi".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("devapi needs a tokio runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    tokio::select! {
                        _ = serve(listener, served) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(DevApi {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests served so far for `path` (without the query string), whatever their answer.
    pub fn requests_to(&self, path: &str) -> u64 {
        let counts = self.state.by_path.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(path).copied().unwrap_or(0)
    }

    /// Blocks until the server is stopped from elsewhere (the binary's main).
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DevApi {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(state: &State, request: Request<Incoming>) -> Response<Body> {
    let query = parse_query(request.uri().query().unwrap_or(""));
    let path = request.uri().path().to_string();
    *state
        .by_path
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(path.clone())
        .or_default() += 1;
    let number = |name: &str, default: u64| {
        query
            .get(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    // A first segment "t-…" only tags a test's requests (see `requests_to`); routing ignores it.
    let mut segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments.len() > 1 && segments[0].starts_with("t-") {
        segments.remove(0);
    }
    let headers = request.headers().clone();
    match segments.as_slice() {
        ["api", "users"] => users(request, &query).await,
        ["github", "users"] => shapes::github(&path, &headers, &query),
        ["stripe", "customers"] => shapes::stripe(&headers, &query),
        ["drf", "users"] => shapes::drf(&path, &headers, &query),
        ["offset", "users"] => shapes::offset(&query),
        ["incremental", "users"] => {
            // Users with since < id <= upto: a source that grows as `upto` does.
            let since = number("since", 0);
            let upto = number("upto", data::USER_COUNT);
            let rows: Vec<Value> = data::users()
                .into_iter()
                .filter(|u| u["id"].as_u64().is_some_and(|id| id > since && id <= upto))
                .collect();
            json_response(StatusCode::OK, &json!({"data": rows, "since": since}))
        }
        ["endless", kind] => shapes::endless(kind, &headers, &query),
        ["slowpages"] => shapes::slow_pages(&query).await,
        ["flaky", key] => shapes::flaky(state, key, &query),
        ["concurrent", key] => {
            // One row after `ms`, counting how many such requests are being answered at once;
            // `/concurrent/{key}/max` says the most there were.
            let key = key.to_string();
            let count = |change: i64| {
                let mut all = state.concurrent.lock().unwrap_or_else(|e| e.into_inner());
                let (now, max) = all.entry(key.clone()).or_default();
                *now = now.saturating_add_signed(change);
                *max = (*max).max(*now);
            };
            count(1);
            tokio::time::sleep(Duration::from_millis(number("ms", 100))).await;
            count(-1);
            json_response(StatusCode::OK, &json!({"data": [{"key": key}]}))
        }
        ["concurrent", key, "max"] => {
            let all = state.concurrent.lock().unwrap_or_else(|e| e.into_inner());
            let max = all.get(*key).map_or(0, |(_, max)| *max);
            json_response(StatusCode::OK, &json!({"max": max}))
        }
        ["auth", "reflect"] => json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "rejected", "received": headers.get("authorization").and_then(|v| v.to_str().ok())}),
        ),
        ["auth", kind] => shapes::auth(kind, &headers, &query),
        ["oauth", action] => {
            let action = action.to_string();
            let body = read_body(request).await;
            shapes::oauth(state, &action, &headers, &String::from_utf8_lossy(&body))
        }
        ["rotating", action] => {
            let action = action.to_string();
            let body = read_body(request).await;
            state
                .rotating
                .serve(&action, &headers, &query, &String::from_utf8_lossy(&body))
                .await
        }
        ["redirect-to"] => {
            let mut response = empty(StatusCode::FOUND);
            let target = query.get("url").cloned().unwrap_or_default();
            response.headers_mut().insert(
                LOCATION,
                HeaderValue::from_str(&target).unwrap_or(HeaderValue::from_static("/")),
            );
            response
        }
        ["echo"] => echo(request, &query).await,
        ["fixture"] => {
            // The body given in the query, with the Content-Type given (JSON by default).
            let body = query.get("body").cloned().unwrap_or_default();
            let content_type = query
                .get("ct")
                .cloned()
                .unwrap_or_else(|| "application/json".into());
            let mut response =
                bytes_response(StatusCode::OK, "application/json", Bytes::from(body));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_str(&content_type)
                    .unwrap_or(HeaderValue::from_static("text/plain")),
            );
            response
        }
        ["repos", owner, repo, "issues"] => {
            // GitHub's issues of a repository: three each, and 404 for a repository named
            // "missing…".
            if repo.starts_with("missing") {
                return json_response(StatusCode::NOT_FOUND, &json!({"message": "Not Found"}));
            }
            let rows: Vec<Value> = (1..=3)
                .map(|n| json!({"number": n, "title": format!("{owner}/{repo} issue {n}"), "repository": format!("{owner}/{repo}")}))
                .collect();
            json_response(StatusCode::OK, &Value::Array(rows))
        }
        ["users", id, "orders"] => {
            // A user's orders (id % 3 of them), after `ms` of latency; 404 for an unknown user.
            tokio::time::sleep(Duration::from_millis(number("ms", 0))).await;
            let Some(id) = id
                .parse::<u64>()
                .ok()
                .filter(|id| (1..=data::USER_COUNT).contains(id))
            else {
                return json_response(StatusCode::NOT_FOUND, &json!({"error": "no such user"}));
            };
            let orders: Vec<Value> = (1..=id % 3)
                .map(|n| json!({"order_id": id * 10 + n, "amount": format!("{}.50", id + n)}))
                .collect();
            json_response(StatusCode::OK, &json!({"user": id, "orders": orders}))
        }
        ["export", format] => export::export(state, format, &query).await,
        ["bomb", format] => export::bomb(state, format, &query).await,
        ["hop"] => {
            // A next_url chain across two origins: step 1 at `home`, step 2 at `other`, step 3
            // at `home` again; each page says what its request carried.
            let step = number("step", 1);
            let base = |key: &str| query.get(key).cloned().unwrap_or_default();
            let next = match step {
                1 => Some(base("other")),
                2 => Some(base("home")),
                _ => None,
            }
            .map(|origin| {
                format!(
                    "{origin}/hop?step={}&home={}&other={}",
                    step + 1,
                    base("home"),
                    base("other")
                )
            });
            let carried: Map<String, Value> = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or(""))))
                .collect();
            let row = json!({"step": step, "headers": carried, "key": query.get("key")});
            json_response(StatusCode::OK, &json!({"data": [row], "next": next}))
        }
        ["status", code] => {
            let code = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            let code = code.unwrap_or(StatusCode::BAD_REQUEST);
            json_response(code, &json!({"error": format!("status {}", code.as_u16())}))
        }
        ["redirect", hops] => {
            let hops = hops.parse::<u32>().unwrap_or(0);
            let next = if hops <= 1 {
                "/echo".to_string()
            } else {
                format!("/redirect/{}", hops - 1)
            };
            let mut response = empty(StatusCode::FOUND);
            response
                .headers_mut()
                .insert(LOCATION, HeaderValue::from_str(&next).unwrap());
            response
        }
        ["types"] => bytes_response(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(data::TYPE_FIXTURE.as_bytes()),
        ),
        ["rows"] => {
            // Generated rows of the benchmark's shape: `n` from `offset` (or after id `after`, a
            // cursor as Stripe's `starting_after`), of `total` in all (no more rows past it),
            // after `ms` of latency.
            let total = number("total", u64::MAX);
            let offset = match query.get("after").and_then(|a| a.parse::<u64>().ok()) {
                Some(after) => after + 1,
                None => number("offset", 0),
            }
            .min(total);
            let count = number("n", 100).min(total - offset);
            tokio::time::sleep(Duration::from_millis(number("ms", 0))).await;
            let body = state.page(offset, count, total);
            bytes_response(StatusCode::OK, "application/json", body)
        }
        ["slow"] => {
            tokio::time::sleep(Duration::from_millis(number("ms", 1000))).await;
            json_response(StatusCode::OK, &json!({"data": [{"slow": true}]}))
        }
        ["big"] => {
            let body = padded_json(number("bytes", 1 << 20) as usize);
            bytes_response(StatusCode::OK, "application/json", Bytes::from(body))
        }
        ["chunked"] => chunked(padded_json(number("bytes", 1 << 20) as usize)),
        ["compressed", encoding] => {
            let body = padded_json(number("bytes", 1000) as usize);
            compressed(encoding, &body)
        }
        ["html"] => bytes_response(
            StatusCode::OK,
            "text/html",
            Bytes::from_static(b"<!DOCTYPE html><html><body><h1>Sign in</h1></body></html>"),
        ),
        ["notjson"] => bytes_response(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(b"hello"),
        ),
        ["truncated-json"] => bytes_response(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(b"{\"data\": [{\"id\": 1}, {\"id\": 2"),
        ),
        ["truncated"] => truncated(),
        ["nocontent"] => empty(StatusCode::NO_CONTENT),
        ["headers"] => {
            let mut response = json_response(StatusCode::OK, &json!({"ok": true}));
            let headers = response.headers_mut();
            headers.append("set-cookie", HeaderValue::from_static("a=1"));
            headers.append("set-cookie", HeaderValue::from_static("b=2"));
            headers.insert("x-request-id", HeaderValue::from_static("req-42"));
            response
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "no such path", "path": path}),
        ),
    }
}

impl State {
    /// The export body `key`, made by `make` on a blocking thread when not cached: making a large
    /// one must not stall the other connections' transfers.
    async fn export(&self, key: &str, make: impl FnOnce() -> Bytes + Send + 'static) -> Bytes {
        if let Some(body) = self.cached_export(key) {
            return body;
        }
        let body = tokio::task::spawn_blocking(make)
            .await
            .expect("making an export body does not panic");
        let mut exports = self.exports.lock().unwrap_or_else(|e| e.into_inner());
        if exports.len() >= 4 {
            exports.remove(0);
        }
        exports.push((key.to_string(), body.clone()));
        body
    }

    fn cached_export(&self, key: &str) -> Option<Bytes> {
        let exports = self.exports.lock().unwrap_or_else(|e| e.into_inner());
        exports
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, body)| body.clone())
    }

    fn page(&self, offset: u64, count: u64, total: u64) -> Bytes {
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        pages
            .entry((offset, count, total))
            .or_insert_with(|| {
                let rows: Vec<Value> = (offset..offset + count).map(data::bench_row).collect();
                let total = if total == u64::MAX { count } else { total };
                Bytes::from(serde_json::to_vec(&json!({"data": rows, "total": total})).unwrap())
            })
            .clone()
    }
}

/// The demo dataset as a FineDataLink Data Service answers it: POST with
/// `{"paging": {"pageSize", "pageNum"}, "params": [{"name": "name", "value": ...}]}`.
/// GET takes `pageNum`, `pageSize` and `name` from the query string.
async fn users(request: Request<Incoming>, query: &HashMap<String, String>) -> Response<Body> {
    let (page_num, page_size, name_filter) = if request.method() == Method::POST {
        let body = read_body(request).await;
        let parsed: Value = match serde_json::from_slice(&body) {
            Ok(value) => value,
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"errCode": 400, "message": format!("invalid JSON body: {e}")}),
                )
            }
        };
        let paging = &parsed["paging"];
        let filter = parsed["params"]
            .as_array()
            .and_then(|params| params.iter().find(|p| p["name"] == "name"))
            .and_then(|p| p["value"].as_str())
            .unwrap_or("")
            .to_string();
        (
            paging["pageNum"].as_u64().unwrap_or(1),
            paging["pageSize"].as_u64().unwrap_or(10),
            filter,
        )
    } else {
        let get = |k: &str, d: u64| query.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        (
            get("pageNum", 1),
            get("pageSize", 10),
            query.get("name").cloned().unwrap_or_default(),
        )
    };
    let matching: Vec<Value> = data::users()
        .into_iter()
        .filter(|u| {
            u["name"]
                .as_str()
                .is_some_and(|n| n.to_lowercase().contains(&name_filter.to_lowercase()))
        })
        .collect();
    let total = matching.len();
    let start = ((page_num.max(1) - 1) * page_size) as usize;
    let rows: Vec<Value> = matching
        .into_iter()
        .skip(start)
        .take(page_size as usize)
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "totalNum": total,
            "errCode": 0,
            "pageSize": page_size,
            "pageNum": page_num,
            "rowCount": rows.len(),
            "message": "success",
            "data": rows,
        }),
    )
}

/// What the server received, for tests of methods, headers, bodies and query strings.
async fn echo(request: Request<Incoming>, query: &HashMap<String, String>) -> Response<Body> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let headers: Map<String, Value> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let raw_query = request.uri().query().unwrap_or("").to_string();
    let body = read_body(request).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    json_response(
        StatusCode::OK,
        &json!({
            "method": method,
            "path": path,
            "query": query,
            "raw_query": raw_query,
            "headers": headers,
            "body": text,
            "body_json": serde_json::from_slice::<Value>(&body).ok(),
        }),
    )
}

async fn read_body(request: Request<Incoming>) -> Bytes {
    request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON document of about `bytes` bytes: `{"data": [], "padding": "xxxx…"}`.
fn padded_json(bytes: usize) -> Vec<u8> {
    let mut body = b"{\"data\": [], \"padding\": \"".to_vec();
    body.resize(bytes.saturating_sub(2).max(body.len()), b'x');
    body.extend_from_slice(b"\"}");
    body
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    bytes_response(
        status,
        "application/json",
        Bytes::from(serde_json::to_vec(value).unwrap()),
    )
}

fn bytes_response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

/// A body sent in 64 KiB chunks with no Content-Length.
fn chunked(body: Vec<u8>) -> Response<Body> {
    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = body
        .chunks(64 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Announces 1000 bytes, sends a few, then breaks the connection.
fn truncated() -> Response<Body> {
    // The pause lets the head and the first bytes go out before the connection breaks.
    let frames = futures_util::stream::unfold(0, |step| async move {
        match step {
            0 => Some((
                Ok(Frame::data(Bytes::from_static(b"{\"data\": [{\"id\": 1}"))),
                1,
            )),
            1 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let cut = std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "devapi cuts the body",
                );
                Some((Err(cut), 2))
            }
            _ => None,
        }
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("1000"));
    response
}

/// `body` encoded with gzip, deflate (zlib) or br, with its Content-Encoding.
fn compressed(encoding: &str, body: &[u8]) -> Response<Body> {
    let encoded = match encoding {
        "gzip" => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(body).and_then(|_| encoder.finish())
        }
        "deflate" => {
            let mut encoder =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(body).and_then(|_| encoder.finish())
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut encoder = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
                let _ = encoder.write_all(body);
            }
            Ok(out)
        }
        _ => return json_response(StatusCode::NOT_FOUND, &json!({"error": "unknown encoding"})),
    };
    let encoded = encoded.expect("compressing into memory does not fail");
    let mut response = bytes_response(StatusCode::OK, "application/json", Bytes::from(encoded));
    response
        .headers_mut()
        .insert(CONTENT_ENCODING, HeaderValue::from_str(encoding).unwrap());
    response
}
