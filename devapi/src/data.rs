//! The rows devapi serves: the demo's users, a fixture of every type api_fetch converts, and
//! generated rows in the benchmark's shape.

use serde_json::{json, Value};

const FIRST: [&str; 12] = [
    "Ada", "Bao", "Chen", "Dara", "Emeka", "Fatima", "Goran", "Hana", "Ines", "Jun", "Kofi", "Lena",
];
const LAST: [&str; 7] = [
    "Lovelace", "Nguyen", "Wei", "Okafor", "Haddad", "Petrov", "Sato",
];
const CITIES: [&str; 5] = ["Shanghai", "Lagos", "Berlin", "Lima", "Osaka"];

/// How many users the demo API holds.
pub const USER_COUNT: u64 = 57;

/// The demo dataset: users with ids, names, emails, numeric scores, timestamps with offsets,
/// booleans and tags, as a business API would send them.
pub fn users() -> Vec<Value> {
    (1..=USER_COUNT)
        .map(|id| {
            let first = FIRST[(id as usize * 7) % FIRST.len()];
            let last = LAST[(id as usize * 5) % LAST.len()];
            json!({
                "id": id,
                "name": format!("{first} {last}"),
                "email": format!("{}.{}{id}@example.com", first.to_lowercase(), last.to_lowercase()),
                "city": CITIES[id as usize % CITIES.len()],
                "score": format!("{}.{:02}", 50 + (id * 37) % 50, (id * 13) % 100),
                "signupTime": format!("2024-{:02}-{:02}T{:02}:15:00+08:00", 1 + id % 12, 1 + id % 28, id % 24),
                "active": !id.is_multiple_of(4),
                "tags": if id.is_multiple_of(3) { json!(["vip", "beta"]) } else { json!(["standard"]) },
            })
        })
        .collect()
}

/// One row of the benchmark shape: `id bigint, name text, score numeric, email text,
/// created_at timestamptz, active boolean, tags text[]`.
pub fn bench_row(id: u64) -> Value {
    json!({
        "id": id,
        "name": format!("user {id}"),
        "score": format!("{}.{:02}", id % 1000, id % 100).parse::<Value>().unwrap_or(Value::Null),
        "email": format!("user{id}@example.com"),
        "created_at": format!("2024-{:02}-{:02}T{:02}:{:02}:{:02}Z", 1 + id % 12, 1 + id % 28, id % 24, id % 60, (id / 60) % 60),
        "active": id.is_multiple_of(2),
        "tags": ["t1", format!("g{}", id % 10)],
    })
}

/// Rows with every type api_fetch converts, including the awkward values: integers beyond 2^53,
/// exact decimals, numeric strings, offsets, epoch seconds, nested JSON, arrays with nulls, and
/// keys that differ from the column names only in case. Served as written (never re-serialized),
/// so numbers keep every digit.
pub const TYPE_FIXTURE: &str = r#"{"totalNum": 2, "data": [
  {"small": 12, "int": -2147483648, "big": 9007199254740993,
   "num": 12345678901234567890.123456789, "num_text": "0.10",
   "real": 1.5, "double": 3.141592653589793, "flag": true,
   "txt": "héllo \"world\"", "vc": "short", "day": "2024-02-29",
   "ts": "2024-03-01T12:34:56.789", "tstz": "2024-03-01T12:34:56+05:30",
   "epoch": 1700000000, "id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
   "doc": {"nested": [1, {"x": null}]}, "docb": [1, "two"],
   "ints": [1, null, 3], "texts": ["a", "b c"], "NAMEDCASE": "matched",
   "extra": "ignored"},
  {"small": null, "int": "42", "big": "-9223372036854775808",
   "num": "-0.000000000000000001", "num_text": 7,
   "real": "NaN", "double": -1e-300, "flag": "yes",
   "txt": 42, "vc": "x", "day": null,
   "ts": null, "tstz": "2024-03-01T00:00:00Z",
   "epoch": 0.5, "id": null,
   "doc": "a string", "docb": null,
   "ints": [], "texts": "{x,y}", "namedcase": "lower"}
]}"#;
