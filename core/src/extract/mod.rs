//! Turning a response into rows, one stage: JSONPath selection (RFC 9535) and the relative paths
//! of `options.columns` over JSON values, and `cells`, which parses a page straight into cells when
//! the rows are typed and the path is a chain of names. Postgres-free; the Datum step lives in the
//! extension's `sql::rows`.

pub mod cells;
pub mod tape;

use serde_json::Value;
use serde_json_path::JsonPath;

use crate::error::{Error, Result, SqlState};

/// The one rule by which typed rows take object keys: a column takes the key of its exact name,
/// else the first key equal to its name ignoring case. Both row parsers (JSON values and cells)
/// follow it through this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnKey {
    pub name: String,
    folded: String,
}

impl ColumnKey {
    pub fn new(name: impl Into<String>) -> ColumnKey {
        let name = name.into();
        let folded = name.to_lowercase();
        ColumnKey { name, folded }
    }

    /// `key` is this column's exact name.
    pub fn exact(&self, key: &str) -> bool {
        self.name == key
    }

    /// `key` equals this column's name ignoring case.
    pub fn folded(&self, key: &str) -> bool {
        key.to_lowercase() == self.folded
    }

    /// Whether two columns' names are equal ignoring case (then a key's column is ambiguous).
    pub fn clashes(&self, other: &ColumnKey) -> bool {
        self.folded == other.folded
    }

    /// This column's value in `object`.
    pub fn pick<'a>(&self, object: &'a serde_json::Map<String, Value>) -> Option<&'a Value> {
        object.get(&self.name).or_else(|| {
            object
                .iter()
                .find(|(key, _)| self.folded(key))
                .map(|(_, value)| value)
        })
    }
}

/// A parsed JSONPath, kept with its text for messages.
#[derive(Debug, Clone)]
pub struct RowPath {
    text: String,
    path: JsonPath,
    /// Selects at most one node (RFC 9535 §2.3.5.1: names and indexes only).
    singular: bool,
}

impl RowPath {
    pub fn parse(text: &str) -> Result<RowPath> {
        let path = JsonPath::parse(text.trim()).map_err(|e| {
            Error::new(
                SqlState::SyntaxError,
                format!("invalid JSONPath \"{text}\": {e}"),
            )
            .with_hint("a JSONPath starts with $, as in $.data or $.items[*]")
        })?;
        Ok(RowPath {
            text: text.to_string(),
            path,
            singular: is_singular(text.trim()),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The rows of a response: every selected node is a row, except that a single selected
    /// array stands for its elements (`$.data` and `$.data[*]` give the same rows).
    /// Takes the document so that the common case (one array) moves the rows out, copying nothing.
    pub fn rows(&self, mut doc: Value) -> Vec<Value> {
        let located = self.path.query_located(&doc);
        match located.len() {
            0 => Vec::new(),
            1 => {
                let pointer = located.all()[0].location().to_json_pointer();
                match doc.pointer_mut(&pointer).map(Value::take) {
                    Some(Value::Array(items)) => items,
                    Some(node) => vec![node],
                    None => Vec::new(),
                }
            }
            // Nodes may nest (`$..*`), so moving one out could empty another: copy instead.
            _ => located
                .all()
                .into_iter()
                .map(|node| node.node().clone())
                .collect(),
        }
    }

    /// The value a column path picks from a row. A singular path (`$.a.b`, `$.items[0]`) picks
    /// its node, or nothing (NULL); any other path (`$.tags[*].name`) picks the array of all its
    /// nodes, empty when none match, so the column's shape never depends on the data.
    pub fn pick<'a>(&self, row: &'a Value) -> Option<Picked<'a>> {
        let nodes = self.path.query(row).all();
        if self.singular {
            nodes.first().map(|node| Picked::One(node))
        } else {
            Some(Picked::Many(Value::Array(
                nodes.into_iter().cloned().collect(),
            )))
        }
    }
}

/// Whether a (valid) path has only name and index selectors: no wildcard, slice, filter, union
/// or descendant segment outside quoted names.
fn is_singular(text: &str) -> bool {
    let mut quote = None;
    let mut escaped = false;
    let mut previous = ' ';
    for c in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => quote = Some(c),
                '*' | '?' | ':' | ',' => return false,
                '.' if previous == '.' => return false,
                _ => {}
            },
        }
        previous = c;
    }
    true
}

/// A value picked by a column path: borrowed when it is one node.
#[derive(Debug)]
pub enum Picked<'a> {
    One(&'a Value),
    Many(Value),
}

impl Picked<'_> {
    pub fn value(&self) -> &Value {
        match self {
            Picked::One(value) => value,
            Picked::Many(value) => value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(path: &str, doc: Value) -> Vec<Value> {
        RowPath::parse(path).unwrap().rows(doc)
    }

    #[test]
    fn an_array_and_its_elements_give_the_same_rows() {
        let doc = json!({"data": [{"id": 1}, {"id": 2}], "totalNum": 2});
        assert_eq!(
            rows("$.data", doc.clone()),
            vec![json!({"id": 1}), json!({"id": 2})]
        );
        assert_eq!(rows("$.data[*]", doc.clone()), rows("$.data", doc));
    }

    #[test]
    fn no_match_is_no_rows_and_scalars_are_rows() {
        assert!(rows("$.missing", json!({"data": []})).is_empty());
        assert!(rows("$.data", json!({"data": []})).is_empty());
        assert_eq!(rows("$.count", json!({"count": 3})), vec![json!(3)]);
        assert_eq!(rows("$", json!({"a": 1})), vec![json!({"a": 1})]);
        assert_eq!(rows("$", json!([1, [2]])), vec![json!(1), json!([2])]);
    }

    #[test]
    fn several_nodes_are_several_rows_even_when_nested() {
        let doc = json!({"a": {"b": 1}});
        assert_eq!(rows("$..*", doc), vec![json!({"b": 1}), json!(1)]);
        let doc = json!({"groups": [{"items": [1, 2]}, {"items": [3]}]});
        assert_eq!(
            rows("$.groups[*].items[*]", doc),
            vec![json!(1), json!(2), json!(3)]
        );
    }

    #[test]
    fn invalid_paths_name_the_problem() {
        let err = RowPath::parse("data").unwrap_err();
        assert_eq!(err.state, SqlState::SyntaxError);
        assert!(
            err.message.starts_with("invalid JSONPath \"data\""),
            "{}",
            err.message
        );
        assert!(RowPath::parse("$.data[").is_err());
    }

    #[test]
    fn column_paths_pick_one_none_or_many() {
        let row = json!({"user": {"name": "ann"}, "tags": [{"n": "a"}, {"n": "b"}]});
        let pick = |p: &str| {
            RowPath::parse(p)
                .unwrap()
                .pick(&row)
                .map(|v| v.value().clone())
        };
        assert_eq!(pick("$.user.name"), Some(json!("ann")));
        assert_eq!(pick("$.user.age"), None);
        assert_eq!(pick("$.tags[*].n"), Some(json!(["a", "b"])));
        assert_eq!(pick("$.tags[0:1].n"), Some(json!(["a"])));
        assert_eq!(pick("$.nothing[*]"), Some(json!([])));
        assert_eq!(pick("$['user']['name']"), Some(json!("ann")));
    }

    #[test]
    fn singular_paths_are_names_and_indexes() {
        for path in ["$", "$.a", "$.a.b[0]", "$['a.b']", "$[\"x*y\"]", "$.a[-1]"] {
            assert!(is_singular(path), "{path}");
        }
        for path in ["$.*", "$..a", "$.a[*]", "$.a[0,1]", "$.a[1:]", "$.a[?@.b]"] {
            assert!(!is_singular(path), "{path}");
        }
    }
}

/// Microseconds since 2000-01-01 00:00 UTC (Postgres's timestamp epoch) of an ISO 8601 text in
/// the strict form APIs send: `YYYY-MM-DD[T ]HH:MM:SS[.ffffff][Z|±HH[:MM]]`. With `zoned`, the
/// offset is required and applied (timestamptz); without, it must be absent (timestamp). Anything
/// else — other forms, more than six fraction digits, leap seconds — is `None`, and the caller
/// leaves it to Postgres's own parser, so the result is always what Postgres would give.
pub fn iso8601_micros(text: &str, zoned: bool) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut micros = 0i64;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start || end - start > 6 {
            return None;
        }
        micros = digits(start..end)? * 10i64.pow((6 - (end - start)) as u32);
        at = end;
    }
    let offset_seconds = match b.get(at) {
        None if !zoned => 0,
        Some(b'Z' | b'z') if zoned && at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if zoned => {
            let hours = digits(at + 1..at + 3)?;
            let minutes = match b.len() - (at + 3) {
                0 => 0,
                3 if b[at + 3] == b':' => digits(at + 4..at + 6)?,
                2 => digits(at + 3..at + 5)?,
                _ => return None,
            };
            if hours > 15 || minutes > 59 {
                return None;
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day) - days_from_civil(2000, 1, 1);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(seconds * 1_000_000 + micros)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod time_tests {
    use super::iso8601_micros;

    #[test]
    fn strict_iso8601_forms() {
        let utc = |s| iso8601_micros(s, true);
        assert_eq!(utc("2000-01-01T00:00:00Z"), Some(0));
        assert_eq!(utc("2000-01-01T00:00:00.5Z"), Some(500_000));
        assert_eq!(utc("2000-01-01 05:30:00+05:30"), Some(0));
        assert_eq!(utc("1999-12-31T19:00:00-0500"), Some(0));
        assert_eq!(utc("2024-03-01T12:34:56+05"), Some(762_593_696_000_000));
        assert_eq!(utc("2024-02-29T00:00:00Z"), Some(762_480_000_000_000));
        assert_eq!(utc("1970-01-01T00:00:00Z"), Some(-946_684_800_000_000));
        for left_to_postgres in [
            "2023-02-29T00:00:00Z",
            "2024-03-01T12:34:56",
            "2024-03-01T24:00:00Z",
            "2024-03-01T12:34:60Z",
            "2024-03-01T12:34:56.1234567Z",
            "2024-03-01",
            "March 1 2024",
            "2024-03-01T12:34:56 PST",
            "0000-01-01T00:00:00Z",
            "2024-03-01T12:34:56+16:00",
        ] {
            assert_eq!(utc(left_to_postgres), None, "{left_to_postgres}");
        }
        assert_eq!(
            iso8601_micros("2000-01-02T00:00:00", false),
            Some(86_400_000_000)
        );
        assert_eq!(iso8601_micros("2000-01-02T00:00:00Z", false), None);
    }
}
