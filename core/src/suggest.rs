//! `suggest_table`: a table for the rows of a sample. Each key's values propose types, narrowest
//! first; the SQL layer keeps the first that every sampled value converts to by the loader's own
//! conversion (`converts`), so that the table it writes loads the rows it was made from. Names
//! become snake_case columns, with the `options.columns` map that renames the keys.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value};

use crate::error::{Error, Result, SqlState};

/// The most bytes of a Postgres identifier (NAMEDATALEN - 1).
const MAX_NAME_BYTES: usize = 63;

/// A table for a sample of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    /// In order: the primary key first, then the keys in the order the rows list them.
    pub columns: Vec<Column>,
    /// Whether the first column is the primary key.
    pub primary_key: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The column's name (snake_case, unique, at most 63 bytes).
    pub name: String,
    /// The key of the rows it takes.
    pub key: String,
    /// The type, as `format_type` names it (`bigint`, `timestamp with time zone`, `text[]`).
    pub sql_type: String,
    /// Every sampled row has a non-null value.
    pub not_null: bool,
}

/// What JSON values a key held, as far as choosing a type goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Integer,
    Decimal,
    Bool,
    Date,
    Timestamp,
    /// A timestamp with `Z` or an offset.
    TimestampZoned,
    Uuid,
    Text,
    Object,
    Array,
}

/// Everything a key's sampled values say.
struct KeyValues<'a> {
    key: &'a str,
    values: Vec<&'a Value>,
    /// Rows where the key is missing or null.
    nulls: usize,
}

/// Proposes a table for `rows` (JSON objects). `converts(type, values)` says whether every one of
/// `values` converts to the column type named (the loader's conversion); the first type of a
/// key's candidates that does is its column's.
pub fn suggest(
    rows: &[Value],
    mut converts: impl FnMut(&str, &[&Value]) -> Result<bool>,
) -> Result<Suggestion> {
    if rows.is_empty() {
        return Err(
            Error::invalid("the sample has no rows: nothing to suggest a table from")
                .with_hint("check the URL and path: the rows are what api_fetch returns for them"),
        );
    }
    let mut keys: Vec<KeyValues<'_>> = Vec::new();
    for (number, row) in rows.iter().enumerate() {
        let Value::Object(object) = row else {
            return Err(Error::new(
                SqlState::DatatypeMismatch,
                format!(
                    "row {} of the sample is {}, not a JSON object: a table takes objects",
                    number + 1,
                    crate::spec::json_kind(row)
                ),
            )
            .with_hint("point path at the array of objects, as in $.data"));
        };
        for (key, value) in object {
            let at = match keys.iter().position(|k| k.key == key) {
                Some(at) => at,
                None => {
                    // A key first seen in a later row was missing from every row before.
                    keys.push(KeyValues {
                        key,
                        values: Vec::new(),
                        nulls: number,
                    });
                    keys.len() - 1
                }
            };
            match value {
                Value::Null => keys[at].nulls += 1,
                value => keys[at].values.push(value),
            }
        }
        for key in keys.iter_mut().filter(|k| !object.contains_key(k.key)) {
            key.nulls += 1;
        }
    }
    let mut names = Names::default();
    let mut columns = Vec::with_capacity(keys.len());
    for key in &keys {
        let mut chosen = None;
        for candidate in candidates(&key.values) {
            if converts(&candidate, &key.values)? {
                chosen = Some(candidate);
                break;
            }
        }
        columns.push(Column {
            name: names.take(&snake_case(key.key)),
            key: key.key.to_string(),
            // jsonb takes every JSON value: the last candidate of every list.
            sql_type: chosen.unwrap_or_else(|| "jsonb".into()),
            not_null: key.nulls == 0,
        });
    }
    let unique = |key: &KeyValues<'_>| {
        let mut seen = HashSet::new();
        key.nulls == 0
            && !matches!(key.values.first(), Some(Value::Object(_) | Value::Array(_)))
            && key.values.iter().all(|v| seen.insert(v.to_string()))
    };
    let primary = keys
        .iter()
        .position(|k| k.key.eq_ignore_ascii_case("id") && unique(k))
        .or_else(|| {
            (0..keys.len()).find(|&i| columns[i].name.ends_with("_id") && unique(&keys[i]))
        });
    if let Some(at) = primary {
        let column = columns.remove(at);
        columns.insert(0, column);
    }
    Ok(Suggestion {
        columns,
        primary_key: primary.is_some(),
    })
}

/// The types a key's values may take, narrowest first; each list ends with one that takes them
/// all (text for scalars, jsonb for anything).
fn candidates(values: &[&Value]) -> Vec<String> {
    let kinds: BTreeSet<Kind> = values.iter().map(|v| kind(v)).collect();
    if kinds.contains(&Kind::Array) && kinds.len() == 1 {
        let elements: Vec<&Value> = values
            .iter()
            .filter_map(|v| v.as_array())
            .flatten()
            .filter(|v| !v.is_null())
            .collect();
        let element_kinds: BTreeSet<Kind> = elements.iter().map(|v| kind(v)).collect();
        let nested = element_kinds.contains(&Kind::Object) || element_kinds.contains(&Kind::Array);
        let mut types = Vec::new();
        if !element_kinds.is_empty() && !nested {
            types = scalar_candidates(&element_kinds)
                .into_iter()
                .map(|t| format!("{t}[]"))
                .collect();
        }
        types.push("jsonb".into());
        return types;
    }
    if kinds.contains(&Kind::Object) || kinds.contains(&Kind::Array) {
        return vec!["jsonb".into()];
    }
    let mut types: Vec<String> = scalar_candidates(&kinds)
        .into_iter()
        .map(str::to_string)
        .collect();
    types.push("jsonb".into());
    types
}

/// The types scalars of `kinds` may take, ending with text.
fn scalar_candidates(kinds: &BTreeSet<Kind>) -> Vec<&'static str> {
    use Kind::*;
    let only = |allowed: &[Kind]| !kinds.is_empty() && kinds.iter().all(|k| allowed.contains(k));
    let mut types = Vec::new();
    if only(&[Integer]) {
        types.push("bigint");
    }
    if only(&[Integer, Decimal]) {
        types.push("numeric");
    }
    if only(&[Bool]) {
        types.push("boolean");
    }
    if only(&[Date]) {
        types.push("date");
    }
    if only(&[Date, Timestamp]) {
        types.push("timestamp without time zone");
    }
    if only(&[Date, Timestamp, TimestampZoned]) && kinds.contains(&TimestampZoned) {
        types.push("timestamp with time zone");
    }
    if only(&[Uuid]) {
        types.push("uuid");
    }
    types.push("text");
    types
}

fn kind(value: &Value) -> Kind {
    match value {
        Value::Number(n) => {
            let text = n.to_string();
            if text.contains(['.', 'e', 'E']) {
                Kind::Decimal
            } else {
                Kind::Integer
            }
        }
        Value::Bool(_) => Kind::Bool,
        Value::String(s) => string_kind(s),
        Value::Object(_) => Kind::Object,
        Value::Array(_) => Kind::Array,
        // Nulls are counted apart and never classified.
        Value::Null => Kind::Text,
    }
}

/// ISO 8601 dates (`2024-03-01`), timestamps (`2024-03-01T10:00:00`, `T` or a space, seconds and
/// fraction optional), with `Z` or an offset (zoned), and UUIDs; anything else is text.
fn string_kind(s: &str) -> Kind {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range.clone())
            .is_some_and(|d| d.len() == range.len() && d.iter().all(u8::is_ascii_digit))
    };
    let is_date = |b: &[u8]| {
        b.len() >= 10
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
    };
    if b.len() == 36 && is_uuid(b) {
        return Kind::Uuid;
    }
    if !is_date(b) {
        return Kind::Text;
    }
    if b.len() == 10 {
        return Kind::Date;
    }
    // The time: hh:mm, then :ss and .fraction.
    if !(matches!(b[10], b'T' | b't' | b' ')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16))
    {
        return Kind::Text;
    }
    let mut at = 16;
    if b.get(at) == Some(&b':') {
        if !digits(at + 1..at + 3) {
            return Kind::Text;
        }
        at += 3;
        if b.get(at) == Some(&b'.') {
            let start = at + 1;
            at = start;
            while b.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            if at == start {
                return Kind::Text;
            }
        }
    }
    match &b[at..] {
        [] => Kind::Timestamp,
        [b'Z' | b'z'] => Kind::TimestampZoned,
        [b'+' | b'-', rest @ ..] => {
            let offset = match rest {
                [h1, h2] | [h1, h2, b':', _, _] | [h1, h2, _, _] => [*h1, *h2],
                _ => return Kind::Text,
            };
            let all_digits = rest.iter().filter(|c| **c != b':').all(u8::is_ascii_digit);
            if all_digits && offset.iter().all(u8::is_ascii_digit) {
                Kind::TimestampZoned
            } else {
                Kind::Text
            }
        }
        _ => Kind::Text,
    }
}

fn is_uuid(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit(),
    })
}

/// `signupTime` → `signup_time`, `userID` → `user_id`, `HTTPStatus` → `http_status`,
/// `first name` → `first_name`; lower case letters, digits and single underscores; never empty,
/// never starting with a digit.
pub fn snake_case(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            continue;
        }
        if c.is_uppercase() {
            let previous = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1);
            let boundary = match previous {
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                _ => false,
            };
            if boundary && !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    let trimmed = out.trim_end_matches('_');
    let mut name = match trimmed {
        "" => "column".to_string(),
        name if name.starts_with(|c: char| c.is_ascii_digit()) => format!("_{name}"),
        name => name.to_string(),
    };
    truncate(&mut name, MAX_NAME_BYTES);
    name
}

/// Cuts `name` to at most `max` bytes, at a character boundary.
fn truncate(name: &mut String, max: usize) {
    if name.len() > max {
        let mut end = max;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
}

/// The names given so far: a clash gets `_2`, `_3`, … (the name cut so that it stays within 63
/// bytes).
#[derive(Default)]
struct Names(HashSet<String>);

impl Names {
    fn take(&mut self, wanted: &str) -> String {
        let mut name = wanted.to_string();
        let mut n = 1;
        while self.0.contains(&name) {
            n += 1;
            let suffix = format!("_{n}");
            let mut base = wanted.to_string();
            truncate(&mut base, MAX_NAME_BYTES - suffix.len());
            name = format!("{base}{suffix}");
        }
        self.0.insert(name.clone());
        name
    }
}

impl Suggestion {
    /// `options.columns` for the table: the columns whose names are not their keys.
    pub fn columns_map(&self) -> Map<String, Value> {
        self.columns
            .iter()
            .filter(|c| c.name != c.key)
            .map(|c| (c.name.clone(), Value::String(key_path(&c.key))))
            .collect()
    }

    /// `CREATE TABLE <table> (...)` and a comment holding the columns map; `table` is the quoted
    /// (qualified) name, `quote` quotes a column name.
    pub fn create_table(&self, table: &str, quote: impl Fn(&str) -> String) -> String {
        let mut sql = format!("CREATE TABLE {table} (\n");
        let lines: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let constraint = match (i, self.primary_key, c.not_null) {
                    (0, true, _) => " PRIMARY KEY",
                    (_, _, true) => " NOT NULL",
                    _ => "",
                };
                format!("    {} {}{constraint}", quote(&c.name), c.sql_type)
            })
            .collect();
        sql.push_str(&lines.join(",\n"));
        sql.push_str("\n);\n");
        let map = Value::Object(self.columns_map()).to_string();
        sql.push_str(&format!(
            "COMMENT ON TABLE {table} IS {};\n",
            quote_literal(&map)
        ));
        sql
    }
}

/// The JSONPath of a row's key: `$.name`, or `$['odd key']` for names that are not identifiers.
fn key_path(key: &str) -> String {
    let simple = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if simple {
        return format!("$.{key}");
    }
    let escaped = key.replace('\\', "\\\\").replace('\'', "\\'");
    format!("$['{escaped}']")
}

/// A SQL string literal (standard_conforming_strings, on since PostgreSQL 9.1).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A stand-in for the loader: the types each JSON kind obviously converts to.
    fn loose(sql_type: &str, values: &[&Value]) -> Result<bool> {
        Ok(match sql_type {
            "bigint" => values.iter().all(|v| v.as_i64().is_some()),
            t if t == "date" || t.starts_with("timestamp") => values
                .iter()
                .all(|v| v.as_str().is_some_and(|s| &s[5..7] <= "12")),
            _ => true,
        })
    }

    fn types(rows: Value) -> Vec<(String, String, bool)> {
        let rows = rows.as_array().unwrap().clone();
        suggest(&rows, loose)
            .unwrap()
            .columns
            .into_iter()
            .map(|c| (c.name, c.sql_type, c.not_null))
            .collect()
    }

    #[test]
    fn names_become_snake_case_and_stay_unique_and_short() {
        for (key, name) in [
            ("signupTime", "signup_time"),
            ("userID", "user_id"),
            ("HTTPStatus", "http_status"),
            ("first name", "first_name"),
            ("_links", "links"),
            ("2fa", "_2fa"),
            ("Ümlaut", "ümlaut"),
            ("---", "column"),
        ] {
            assert_eq!(snake_case(key), name, "{key}");
        }
        let long = "a".repeat(70);
        let mut names = Names::default();
        assert_eq!(names.take(&snake_case(&long)).len(), 63);
        let second = names.take(&snake_case(&long));
        assert!(second.ends_with("_2") && second.len() == 63, "{second}");
        assert_eq!(names.take("name"), "name");
        assert_eq!(names.take("name"), "name_2");
    }

    #[test]
    fn types_are_the_narrowest_every_value_takes() {
        let got = types(json!([
            {"id": 1, "price": 2.5, "ok": true, "day": "2024-01-31", "at": "2024-01-31T10:00:00Z",
             "local": "2024-01-31 10:00", "code": "00123", "tags": ["a"], "nums": [1, 2],
             "meta": {"a": 1}, "mixed": 1, "uid": "123e4567-e89b-12d3-a456-426614174000", "gone": null},
            {"id": 2, "price": 3, "ok": false, "day": "2024-02-01", "at": "2024-01-31T10:00:00+02:00",
             "local": "2024-01-31", "code": "yes", "tags": [], "nums": [3], "meta": {}, "mixed": "x",
             "uid": "123e4567-e89b-12d3-a456-426614174001"}
        ]));
        let expect = [
            ("id", "bigint", true),
            ("at", "timestamp with time zone", true),
            ("code", "text", true),
            ("day", "date", true),
            ("gone", "text", false),
            ("local", "timestamp without time zone", true),
            ("meta", "jsonb", true),
            ("mixed", "text", true),
            ("nums", "bigint[]", true),
            ("ok", "boolean", true),
            ("price", "numeric", true),
            ("tags", "text[]", true),
            ("uid", "uuid", true),
        ];
        let expect: Vec<_> = expect
            .iter()
            .map(|(n, t, nn)| (n.to_string(), t.to_string(), *nn))
            .collect();
        assert_eq!(got, expect);
        // A value the loader refuses moves the key to the next type: a month 13 is text.
        let got = types(json!([{"d": "2024-01-01"}, {"d": "2024-13-01"}]));
        assert_eq!(got[0].1, "text");
        // Keys missing from some rows are nullable; objects mixed with scalars are jsonb.
        let got = types(json!([{"a": 1, "b": {"x": 1}}, {"b": 2}]));
        assert_eq!(got[0], ("a".into(), "bigint".into(), false));
        assert_eq!(got[1], ("b".into(), "jsonb".into(), true));
    }

    #[test]
    fn the_primary_key_is_id_or_a_unique_something_id() {
        let rows = json!([{"ID": 1, "name": "a"}, {"ID": 2, "name": "b"}]);
        let s = suggest(rows.as_array().unwrap(), loose).unwrap();
        assert!(s.primary_key);
        assert_eq!(s.columns[0].name, "id");
        let rows = json!([{"name": "a", "customerId": "c1", "orderId": 7}, {"name": "b", "customerId": "c1", "orderId": 8}]);
        let s = suggest(rows.as_array().unwrap(), loose).unwrap();
        assert_eq!(s.columns[0].name, "order_id", "customer_id repeats");
        let rows = json!([{"id": 1}, {"id": 1}]);
        assert!(
            !suggest(rows.as_array().unwrap(), loose)
                .unwrap()
                .primary_key
        );
        let sql = suggest(
            json!([{"id": 1, "signupTime": "x", "odd key": 1}])
                .as_array()
                .unwrap(),
            loose,
        )
        .unwrap()
        .create_table("public.t", |n| format!("\"{n}\""));
        assert_eq!(
            sql,
            "CREATE TABLE public.t (\n    \"id\" bigint PRIMARY KEY,\n    \"odd_key\" bigint NOT NULL,\n    \"signup_time\" text NOT NULL\n);\nCOMMENT ON TABLE public.t IS '{\"odd_key\":\"$[''odd key'']\",\"signup_time\":\"$.signupTime\"}';\n"
        );
    }

    #[test]
    fn rows_must_be_objects() {
        assert_eq!(
            suggest(&[json!(1)], loose).unwrap_err().state,
            SqlState::DatatypeMismatch
        );
        assert_eq!(
            suggest(&[], loose).unwrap_err().state,
            SqlState::InvalidParameterValue
        );
    }
}
