//! The `paging` argument (DESIGN.md §2.4), validated: every field checked against its type, so a
//! misplaced or misspelt field is an error rather than a silent single page.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Body, RequestSpec};
use crate::error::{Error, Result};
use crate::extract::RowPath;

#[derive(Debug, Clone)]
pub struct Paging {
    pub kind: PagingKind,
    /// Where page, offset, cursor and size parameters go.
    pub place: ParamPlace,
    /// The page-size parameter and its value, sent with every request.
    pub size_param: Option<String>,
    /// The expected page size: a shorter page is the last.
    pub page_size: Option<u64>,
    pub total_path: Option<RowPath>,
    pub total_pages_path: Option<RowPath>,
    pub has_more_path: Option<RowPath>,
    pub max_pages: Option<u32>,
    pub concurrency: Option<u32>,
}

#[derive(Debug, Clone)]
pub enum PagingKind {
    PageNumber { param: String, start: i64 },
    Offset { param: String },
    Cursor { path: RowPath, param: String },
    NextUrl { path: RowPath },
    LinkHeader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamPlace {
    Query,
    /// A dotted path inside the JSON body, created when missing.
    Body,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaging {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "in")]
    place: Option<String>,
    page_param: Option<String>,
    start: Option<i64>,
    offset_param: Option<String>,
    cursor_path: Option<String>,
    cursor_param: Option<String>,
    next_path: Option<String>,
    size_param: Option<String>,
    page_size: Option<u64>,
    total_path: Option<String>,
    total_pages_path: Option<String>,
    has_more_path: Option<String>,
    max_pages: Option<u32>,
    concurrency: Option<u32>,
}

const TYPES: &str = "page_number, offset, cursor, next_url, link_header";

impl Paging {
    pub fn parse(value: &Value) -> Result<Paging> {
        let Value::Object(_) = value else {
            return Err(Error::invalid(format!(
                "paging must be a JSON object, not {}",
                super::json_kind(value)
            )));
        };
        let raw = RawPaging::deserialize(value)
            .map_err(|e| Error::invalid(format!("invalid paging: {e}")))?;
        let kind_name = raw.kind.clone().ok_or_else(|| {
            Error::invalid("paging needs a \"type\"").with_hint(format!("one of {TYPES}"))
        })?;
        // Fields that belong to other types: naming them is a mistake worth reporting.
        let mut foreign: Vec<&str> = Vec::new();
        let mut take = |name: &'static str, field: &Option<String>, wanted: bool| {
            if field.is_some() && !wanted {
                foreign.push(name);
            }
        };
        let is = |k: &str| kind_name == k;
        take("page_param", &raw.page_param, is("page_number"));
        take("offset_param", &raw.offset_param, is("offset"));
        take("cursor_path", &raw.cursor_path, is("cursor"));
        take("cursor_param", &raw.cursor_param, is("cursor"));
        take("next_path", &raw.next_path, is("next_url"));
        let follows_links = is("next_url") || is("link_header");
        take("in", &raw.place, !follows_links);
        if raw.start.is_some() && !is("page_number") {
            foreign.push("start");
        }
        if !foreign.is_empty() {
            return Err(Error::invalid(format!(
                "paging of type {kind_name} does not take {}",
                foreign.join(", ")
            )));
        }
        let required = |name: &str, field: Option<String>| {
            field.filter(|f| !f.trim().is_empty()).ok_or_else(|| {
                Error::invalid(format!("paging of type {kind_name} needs \"{name}\""))
            })
        };
        let kind = match kind_name.as_str() {
            "page_number" => PagingKind::PageNumber {
                param: required("page_param", raw.page_param)?,
                start: raw.start.unwrap_or(1),
            },
            "offset" => PagingKind::Offset {
                param: required("offset_param", raw.offset_param)?,
            },
            "cursor" => PagingKind::Cursor {
                path: RowPath::parse(&required("cursor_path", raw.cursor_path)?)?,
                param: required("cursor_param", raw.cursor_param)?,
            },
            "next_url" => PagingKind::NextUrl {
                path: RowPath::parse(&required("next_path", raw.next_path)?)?,
            },
            "link_header" => PagingKind::LinkHeader,
            other => {
                return Err(Error::invalid(format!("unknown paging type \"{other}\""))
                    .with_hint(format!("one of {TYPES}")))
            }
        };
        let place = match raw.place.as_deref() {
            None | Some("query") => ParamPlace::Query,
            Some("body") => ParamPlace::Body,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "paging \"in\" must be query or body, not \"{other}\""
                )))
            }
        };
        if raw.size_param.is_some() && raw.page_size.is_none() {
            return Err(Error::invalid("paging.size_param needs paging.page_size"));
        }
        if raw.page_size == Some(0) || raw.max_pages == Some(0) || raw.concurrency == Some(0) {
            return Err(Error::invalid(
                "paging.page_size, max_pages and concurrency must be positive",
            ));
        }
        let path = |p: Option<String>| p.as_deref().map(RowPath::parse).transpose();
        Ok(Paging {
            kind,
            place,
            size_param: raw.size_param,
            page_size: raw.page_size,
            total_path: path(raw.total_path)?,
            total_pages_path: path(raw.total_pages_path)?,
            has_more_path: path(raw.has_more_path)?,
            max_pages: raw.max_pages,
            concurrency: raw.concurrency,
        })
    }

    /// Checks that need the request too: body parameters need a JSON object body, and fetching
    /// pages at once needs pages that can be addressed and counted.
    pub fn check_against(&self, request: &RequestSpec, concurrency: u32) -> Result<()> {
        if self.place == ParamPlace::Body {
            match &request.body {
                Body::None => {}
                Body::Json { value, .. } if value.is_object() => {}
                _ => {
                    return Err(Error::invalid(
                        "paging \"in\": \"body\" needs a JSON object body",
                    ))
                }
            }
        }
        if concurrency > 1 {
            let addressable = matches!(
                self.kind,
                PagingKind::PageNumber { .. } | PagingKind::Offset { .. }
            );
            let counted = self.total_pages_path.is_some()
                || (self.total_path.is_some() && self.page_size.is_some());
            if !addressable || !counted {
                return Err(Error::invalid(
                    "concurrency above 1 needs page_number or offset paging with a known page count",
                )
                .with_hint("give total_pages_path, or total_path with page_size"));
            }
        }
        if let PagingKind::Offset { .. } = self.kind {
            if self.page_size.is_none() && concurrency > 1 {
                return Err(Error::invalid(
                    "offset paging with concurrency needs page_size",
                ));
            }
        }
        Ok(())
    }
}

/// Sets query parameter `name` of `url` to `value` (strings as they are, other values as JSON
/// text), replacing any it had.
pub fn set_query(url: &mut url::Url, name: &str, value: &Value) {
    let text = super::value_text(value);
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut pairs = url.query_pairs_mut();
    pairs.clear();
    for (k, v) in &kept {
        pairs.append_pair(k, v);
    }
    pairs.append_pair(name, &text);
}

/// Sets `value` at the dotted `path` of a JSON object, creating objects on the way.
pub fn set_dotted(body: &mut Value, path: &str, value: Value) {
    if !body.is_object() {
        *body = Value::Object(Map::new());
    }
    let mut node = body;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let object = match node {
            Value::Object(object) => object,
            other => {
                *other = Value::Object(Map::new());
                other.as_object_mut().expect("just made an object")
            }
        };
        if parts.peek().is_none() {
            object.insert(part.to_string(), value);
            return;
        }
        node = object
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(value: Value) -> String {
        Paging::parse(&value).unwrap_err().message
    }

    #[test]
    fn the_shapes_of_real_apis_parse() {
        for spec in [
            json!({"type": "page_number", "in": "body", "page_param": "paging.pageNum", "size_param": "paging.pageSize", "page_size": 500, "total_path": "$.totalNum"}),
            json!({"type": "link_header", "size_param": "per_page", "page_size": 100}),
            json!({"type": "cursor", "cursor_path": "$.data[-1].id", "cursor_param": "starting_after", "has_more_path": "$.has_more", "size_param": "limit", "page_size": 100}),
            json!({"type": "next_url", "next_path": "$.next"}),
            json!({"type": "offset", "offset_param": "offset", "size_param": "limit", "page_size": 100, "total_path": "$.total"}),
        ] {
            Paging::parse(&spec).unwrap_or_else(|e| panic!("{spec}: {}", e.message));
        }
        // What each shape means, not only that it parses.
        let fdl = Paging::parse(&json!({"type": "page_number", "in": "body", "page_param": "paging.pageNum", "size_param": "paging.pageSize", "page_size": 500, "total_path": "$.totalNum"})).unwrap();
        assert!(
            matches!(&fdl.kind, PagingKind::PageNumber { param, start: 1 } if param == "paging.pageNum")
        );
        assert_eq!(fdl.place, ParamPlace::Body);
        assert_eq!(
            (fdl.size_param.as_deref(), fdl.page_size),
            (Some("paging.pageSize"), Some(500))
        );
        assert_eq!(
            fdl.total_path.as_ref().map(|p| p.text()),
            Some("$.totalNum")
        );
        let stripe = Paging::parse(&json!({"type": "cursor", "cursor_path": "$.data[-1].id", "cursor_param": "starting_after", "has_more_path": "$.has_more", "size_param": "limit", "page_size": 100})).unwrap();
        assert!(
            matches!(&stripe.kind, PagingKind::Cursor { path, param } if param == "starting_after" && path.text() == "$.data[-1].id")
        );
        assert_eq!(stripe.place, ParamPlace::Query);
        assert_eq!(
            stripe.has_more_path.as_ref().map(|p| p.text()),
            Some("$.has_more")
        );
        let drf = Paging::parse(&json!({"type": "next_url", "next_path": "$.next"})).unwrap();
        assert!(matches!(&drf.kind, PagingKind::NextUrl { path } if path.text() == "$.next"));
        let github = Paging::parse(
            &json!({"type": "link_header", "size_param": "per_page", "page_size": 100}),
        )
        .unwrap();
        assert!(matches!(github.kind, PagingKind::LinkHeader));
        let offset = Paging::parse(&json!({"type": "offset", "offset_param": "offset", "size_param": "limit", "page_size": 100, "total_path": "$.total"})).unwrap();
        assert!(matches!(&offset.kind, PagingKind::Offset { param } if param == "offset"));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(err(json!({"type": "pages"})).contains("unknown paging type \"pages\""));
        assert!(err(json!({"page_param": "p"})).contains("needs a \"type\""));
        assert!(err(json!({"type": "page_number"})).contains("needs \"page_param\""));
        assert!(
            err(json!({"type": "cursor", "cursor_path": "$.c"})).contains("needs \"cursor_param\"")
        );
        assert!(
            err(json!({"type": "offset", "offset_param": "o", "page_param": "p"}))
                .contains("does not take page_param")
        );
        assert!(
            err(json!({"type": "next_url", "next_path": "$.n", "in": "body"}))
                .contains("does not take in")
        );
        assert!(err(json!({"type": "link_header", "size_param": "n"}))
            .contains("needs paging.page_size"));
        assert!(
            err(json!({"type": "link_header", "pagesize": 5})).contains("unknown field `pagesize`")
        );
        assert!(err(json!({"type": "next_url", "next_path": "next"})).contains("invalid JSONPath"));
        assert!(err(json!([1])).contains("must be a JSON object"));
    }

    #[test]
    fn dotted_paths_are_created_and_the_rest_kept() {
        let mut body = json!({"paging": {"pageSize": 10}, "params": [1]});
        set_dotted(&mut body, "paging.pageNum", json!(3));
        set_dotted(&mut body, "a.b.c", json!("x"));
        assert_eq!(
            body,
            json!({"paging": {"pageSize": 10, "pageNum": 3}, "params": [1], "a": {"b": {"c": "x"}}})
        );
        let mut empty = Value::Null;
        set_dotted(&mut empty, "page", json!(1));
        assert_eq!(empty, json!({"page": 1}));
    }
}
