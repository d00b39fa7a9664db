//! The paging strategies: which request comes next, and when to stop (DESIGN.md §2.4).

use std::collections::HashSet;
use std::sync::Arc;

use reqwest::header::{HeaderMap, LINK};
use serde_json::Value;
use url::Url;

use crate::spec::paging::{set_dotted, set_query};
use crate::spec::{Body, Paging, PagingKind, ParamPlace, RequestSpec};

/// Where paging goes after a page.
#[derive(Debug)]
pub enum Step {
    Next(Box<RequestSpec>),
    /// The data ended, for the reason given (for tests and messages).
    Stop(&'static str),
}

/// What a page said about the pages after it, read before its rows are taken.
#[derive(Debug, Default)]
pub struct PageFacts {
    pub total: Option<u64>,
    pub total_pages: Option<u64>,
    pub has_more: Option<bool>,
    /// The cursor or next URL, as text; `None` when absent, null or empty.
    pub link: Option<String>,
}

pub struct Pager<'a> {
    paging: &'a Paging,
    base: &'a RequestSpec,
    /// Cursors and next URLs already followed: an API that repeats one must not loop.
    seen: HashSet<String>,
    rows_so_far: u64,
}

impl<'a> Pager<'a> {
    pub fn new(paging: &'a Paging, base: &'a RequestSpec) -> Pager<'a> {
        Pager {
            paging,
            base,
            seen: HashSet::new(),
            rows_so_far: 0,
        }
    }

    /// The request for page `index` (0-based) of the addressable kinds, and for the first page
    /// of every kind.
    pub fn request_at(&self, index: u64) -> RequestSpec {
        let mut request = self.base.clone();
        if let Some((param, size)) = self.paging.size_param.as_ref().zip(self.paging.page_size) {
            set_param(&mut request, self.paging.place, param, Value::from(size));
        }
        match &self.paging.kind {
            PagingKind::PageNumber { param, start } => set_param(
                &mut request,
                self.paging.place,
                param,
                Value::from(start.saturating_add(index.min(i64::MAX as u64) as i64)),
            ),
            PagingKind::Offset { param } => {
                let offset = match self.paging.page_size {
                    Some(size) => index.saturating_mul(size),
                    None => self.rows_so_far,
                };
                set_param(&mut request, self.paging.place, param, Value::from(offset))
            }
            _ => {}
        }
        request
    }

    /// The facts of a page's document and headers that paging needs.
    pub fn facts(&self, doc: Option<&Value>, headers: &HeaderMap, url: &str) -> PageFacts {
        let number = |path: &Option<crate::extract::RowPath>| {
            path.as_ref()
                .and_then(|p| doc.and_then(|d| p.pick(d)))
                .and_then(|v| as_u64(v.value()))
        };
        let has_more = self
            .paging
            .has_more_path
            .as_ref()
            .and_then(|p| doc.and_then(|d| p.pick(d)))
            .map(|v| truthy(v.value()));
        let link = match &self.paging.kind {
            PagingKind::Cursor { path, .. } | PagingKind::NextUrl { path } => doc
                .and_then(|d| path.pick(d))
                .and_then(|v| link_text(v.value())),
            PagingKind::LinkHeader => next_link(headers, url),
            _ => None,
        };
        PageFacts {
            total: number(&self.paging.total_path),
            total_pages: number(&self.paging.total_pages_path),
            has_more,
            link,
        }
    }

    /// The number of pages, when the first page tells it.
    pub fn page_count(&self, facts: &PageFacts) -> Option<u64> {
        facts.total_pages.or_else(|| {
            let size = self.paging.page_size?;
            facts.total.map(|total| total.div_ceil(size))
        })
    }

    /// After page `index` with `rows` rows: the next request, or why the data ended.
    pub fn after(
        &mut self,
        index: u64,
        rows: usize,
        facts: PageFacts,
        current: &RequestSpec,
    ) -> Step {
        self.rows_so_far = self.rows_so_far.saturating_add(rows as u64);
        if rows == 0 {
            return Step::Stop("empty page");
        }
        if self
            .paging
            .page_size
            .is_some_and(|size| (rows as u64) < size)
        {
            return Step::Stop("short page");
        }
        if facts.total.is_some_and(|total| self.rows_so_far >= total) {
            return Step::Stop("total reached");
        }
        if facts.total_pages.is_some_and(|pages| index + 1 >= pages) {
            return Step::Stop("total pages reached");
        }
        if facts.has_more == Some(false) {
            return Step::Stop("has_more is false");
        }
        match &self.paging.kind {
            PagingKind::PageNumber { .. } | PagingKind::Offset { .. } => {
                Step::Next(Box::new(self.request_at(index + 1)))
            }
            PagingKind::Cursor { param, .. } => {
                let Some(cursor) = facts.link else {
                    return Step::Stop("no cursor");
                };
                if !self.seen.insert(cursor.clone()) {
                    return Step::Stop("repeated cursor");
                }
                let mut request = self.request_at(0);
                set_param(
                    &mut request,
                    self.paging.place,
                    param,
                    Value::String(cursor),
                );
                Step::Next(Box::new(request))
            }
            PagingKind::NextUrl { .. } | PagingKind::LinkHeader => {
                let Some(next) = facts.link else {
                    return Step::Stop("no next URL");
                };
                let Ok(url) = current.url.join(&next) else {
                    return Step::Stop("invalid next URL");
                };
                if url == current.url || !self.seen.insert(url.to_string()) {
                    return Step::Stop("repeated next URL");
                }
                self.seen.insert(current.url.to_string());
                let mut request = self.base.clone();
                request.url = url;
                Step::Next(Box::new(request))
            }
        }
    }
}

fn set_param(request: &mut RequestSpec, place: ParamPlace, name: &str, value: Value) {
    match place {
        ParamPlace::Query => set_query(&mut request.url, name, &value),
        ParamPlace::Body => {
            let body = std::mem::replace(&mut request.body, Body::None);
            let (mut value_doc, content_type) = match body {
                Body::Json {
                    value,
                    content_type,
                } => (value, content_type),
                _ => (Arc::new(Value::Null), "application/json".to_string()),
            };
            // The page's own copy, with its parameter; the base body stays shared.
            set_dotted(Arc::make_mut(&mut value_doc), name, value);
            request.body = Body::Json {
                value: value_doc,
                content_type,
            };
        }
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::String(s) => !matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "" | "false" | "0" | "no"
        ),
        Value::Number(n) => n.as_f64() != Some(0.0),
        _ => true,
    }
}

fn link_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The `rel="next"` target of RFC 8288 Link headers, resolved against the page's URL.
pub fn next_link(headers: &HeaderMap, base: &str) -> Option<String> {
    for header in headers.get_all(LINK) {
        let Ok(text) = header.to_str() else { continue };
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            let Some(close) = rest[open..].find('>') else {
                break;
            };
            let target = &rest[open + 1..open + close];
            let after = &rest[open + close + 1..];
            let params_end = after.find('<').unwrap_or(after.len());
            let params = &after[..params_end];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                p.to_ascii_lowercase()
                    .strip_prefix("rel=")
                    .is_some_and(|rel| {
                        rel.trim_matches('"')
                            .split_whitespace()
                            .any(|r| r == "next")
                    })
            });
            if is_next {
                return Url::parse(base)
                    .and_then(|b| b.join(target))
                    .ok()
                    .map(String::from);
            }
            rest = &after[params_end..];
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse_request, test_limits, RequestArgs};
    use reqwest::header::HeaderValue;
    use serde_json::json;

    fn base(body: Option<Value>) -> RequestSpec {
        let limits = test_limits();
        let args = RequestArgs {
            url: Some("http://h/api?keep=1"),
            body,
            ..Default::default()
        };
        parse_request(args, &limits).unwrap()
    }

    fn paging(spec: Value) -> Paging {
        Paging::parse(&spec).unwrap()
    }

    #[test]
    fn page_numbers_in_the_body_keep_the_rest_of_it() {
        let p = paging(
            json!({"type": "page_number", "in": "body", "page_param": "paging.pageNum", "size_param": "paging.pageSize", "page_size": 2, "total_path": "$.totalNum"}),
        );
        let base = base(Some(json!({"params": [{"name": "name", "value": ""}]})));
        let pager = Pager::new(&p, &base);
        let second = pager.request_at(1);
        let Body::Json { value, .. } = &second.body else {
            panic!("a JSON body")
        };
        assert_eq!(
            &**value,
            &json!({"params": [{"name": "name", "value": ""}], "paging": {"pageSize": 2, "pageNum": 2}})
        );
    }

    #[test]
    fn stop_conditions() {
        let p = paging(
            json!({"type": "offset", "offset_param": "offset", "size_param": "limit", "page_size": 2, "total_path": "$.total"}),
        );
        let base = base(None);
        let mut pager = Pager::new(&p, &base);
        let first = pager.request_at(0);
        assert_eq!(first.url.as_str(), "http://h/api?keep=1&limit=2&offset=0");
        let facts = pager.facts(Some(&json!({"total": 5})), &HeaderMap::new(), "http://h/");
        assert_eq!(pager.page_count(&facts), Some(3));
        let Step::Next(second) = pager.after(0, 2, facts, &first) else {
            panic!("more pages")
        };
        assert_eq!(second.url.as_str(), "http://h/api?keep=1&limit=2&offset=2");
        let facts = pager.facts(Some(&json!({"total": 5})), &HeaderMap::new(), "");
        assert!(matches!(pager.after(1, 2, facts, &second), Step::Next(_)));
        let facts = pager.facts(Some(&json!({"total": 4})), &HeaderMap::new(), "");
        assert!(matches!(
            pager.after(2, 2, facts, &second),
            Step::Stop("total reached")
        ));
        assert!(matches!(
            pager.after(3, 1, PageFacts::default(), &second),
            Step::Stop("short page")
        ));
        assert!(matches!(
            pager.after(3, 0, PageFacts::default(), &second),
            Step::Stop("empty page")
        ));
    }

    #[test]
    fn repeated_cursors_and_next_urls_stop() {
        let p = paging(
            json!({"type": "cursor", "cursor_path": "$.data[-1].id", "cursor_param": "after", "has_more_path": "$.has_more"}),
        );
        let base = base(None);
        let mut pager = Pager::new(&p, &base);
        let doc = json!({"data": [{"id": "a"}, {"id": "c9"}], "has_more": true});
        let facts = pager.facts(Some(&doc), &HeaderMap::new(), "");
        let Step::Next(next) = pager.after(0, 2, facts, &base) else {
            panic!("more")
        };
        assert_eq!(next.url.as_str(), "http://h/api?keep=1&after=c9");
        let facts = pager.facts(Some(&doc), &HeaderMap::new(), "");
        assert!(matches!(
            pager.after(1, 2, facts, &next),
            Step::Stop("repeated cursor")
        ));
        let done = json!({"data": [{"id": "z"}], "has_more": false});
        let facts = pager.facts(Some(&done), &HeaderMap::new(), "");
        assert!(matches!(
            pager.after(2, 1, facts, &next),
            Step::Stop("has_more is false")
        ));

        let p = paging(json!({"type": "next_url", "next_path": "$.next"}));
        let mut pager = Pager::new(&p, &base);
        let facts = pager.facts(Some(&json!({"next": "/api?page=2"})), &HeaderMap::new(), "");
        let Step::Next(next) = pager.after(0, 1, facts, &base) else {
            panic!("more")
        };
        assert_eq!(next.url.as_str(), "http://h/api?page=2");
        let facts = pager.facts(
            Some(&json!({"next": "http://h/api?page=2"})),
            &HeaderMap::new(),
            "",
        );
        assert!(matches!(
            pager.after(1, 1, facts, &next),
            Step::Stop("repeated next URL")
        ));
        let facts = pager.facts(Some(&json!({"next": null})), &HeaderMap::new(), "");
        assert!(matches!(
            pager.after(1, 1, facts, &next),
            Step::Stop("no next URL")
        ));
    }

    #[test]
    fn link_headers_follow_rel_next() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LINK,
            HeaderValue::from_static("<https://api.github.com/repos?page=1>; rel=\"prev\", </repos?page=3&per_page=2>; rel=\"next\", <https://x/last>; rel=\"last\""),
        );
        assert_eq!(
            next_link(&headers, "https://api.github.com/repos?page=2").as_deref(),
            Some("https://api.github.com/repos?page=3&per_page=2")
        );
        headers.insert(
            LINK,
            HeaderValue::from_static("<https://x/1>; rel=\"prev first\""),
        );
        assert_eq!(next_link(&headers, "https://x/"), None);
    }

    #[test]
    fn pages_share_the_request_body_unless_they_set_a_parameter_in_it() {
        let query = paging(
            json!({"type": "page_number", "page_param": "page", "size_param": "size", "page_size": 2}),
        );
        let base = base(Some(json!({"filter": "x".repeat(100)})));
        let pager = Pager::new(&query, &base);
        let (first, second) = (pager.request_at(0), pager.request_at(1));
        let (Body::Json { value: a, .. }, Body::Json { value: b, .. }) =
            (&first.body, &second.body)
        else {
            panic!("JSON bodies")
        };
        assert!(Arc::ptr_eq(a, b), "one body, shared by every page");
    }
}
