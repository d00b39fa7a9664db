//! Turning a response document into rows: JSONPath selection (RFC 9535), and the relative paths of
//! `options.columns`. Postgres-free; the Datum step lives in `sql::rows`.

use serde_json::Value;
use serde_json_path::JsonPath;

use crate::error::{Error, Result, SqlState};

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
