//! Fan-out (`api_fetch(..., params)`, a job's `options.for_each`): parameter sets, each one
//! request whose templates take its values. The URL is an RFC 6570 URI template (expanded by
//! iri-string: `{id}` percent-encodes, `{+path}` keeps reserved characters); `options.query`
//! values, header values and body strings take `{name}` as text, and a body string that is
//! exactly `"{name}"` becomes the parameter's JSON value, its type kept.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use iri_string::spec::UriSpec;
use iri_string::template::context::{Context, Visitor};
use iri_string::template::UriTemplateStr;
use serde_json::{Map, Value};

use super::{json_kind, Limits, RequestArgs};

use crate::error::{Error, Result};

/// One parameter set: a JSON object.
pub type ParamSet = Arc<Map<String, Value>>;

/// The parameter sets of a call, and the arguments their requests are made from.
#[derive(Debug)]
pub struct FanOut {
    pub sets: ParamSets,
    template: RequestTemplate,
    /// Every name the templates and `options.columns` use.
    names: BTreeSet<String>,
    limits: Limits,
}

/// The request arguments as given, templates unexpanded.
#[derive(Debug, Clone)]
struct RequestTemplate {
    url: String,
    method: Option<String>,
    body: Option<Value>,
    headers: Option<Value>,
    options: Option<Value>,
    secrets: HashMap<String, String>,
    access_token: Option<String>,
}

/// The parameter sets of a call, kept as the JSON text they came in (each parsed when its turn
/// comes): a hundred thousand small objects as JSON values would take many times their text.
#[derive(Debug)]
pub struct ParamSets {
    text: String,
    sets: Vec<(u32, u32)>,
    /// A job's `options.for_each` rows, not `params`: errors say so.
    for_each: bool,
}

impl ParamSets {
    /// The rows of a job's `options.for_each` query, as a JSON array of objects.
    pub fn for_each(text: String) -> Result<ParamSets> {
        let mut sets = ParamSets::parse(text)?;
        sets.for_each = true;
        Ok(sets)
    }

    /// `text` must be a JSON array of objects; 22023 naming the index otherwise.
    pub fn parse(text: String) -> Result<ParamSets> {
        let items: Vec<&serde_json::value::RawValue> =
            match serde_json::from_str::<Vec<&serde_json::value::RawValue>>(&text) {
                Ok(items) => items,
                Err(_) => {
                    let value: Value = serde_json::from_str(&text)
                        .map_err(|e| Error::invalid(format!("params is not valid JSON: {e}")))?;
                    return Err(Error::invalid(format!(
                        "params must be a JSON array of objects, not {}",
                        json_kind(&value)
                    )));
                }
            };
        let base = text.as_ptr() as usize;
        let mut sets = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let raw = item.get();
            if !raw.starts_with('{') {
                let value: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
                return Err(Error::invalid(format!(
                    "params[{i}] must be a JSON object, not {}",
                    json_kind(&value)
                )));
            }
            let start = raw.as_ptr() as usize - base;
            let to_u32 =
                |n: usize| u32::try_from(n).map_err(|_| Error::invalid("params is too large"));
            sets.push((to_u32(start)?, to_u32(start + raw.len())?));
        }
        Ok(ParamSets {
            text,
            sets,
            for_each: false,
        })
    }

    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Set `index`, parsed.
    pub fn get(&self, index: usize) -> Result<ParamSet> {
        let (start, end) = self.sets[index];
        serde_json::from_str(&self.text[start as usize..end as usize])
            .map(Arc::new)
            .map_err(|e| Error::internal(format!("params[{index}] no longer parses: {e}")))
    }
}

/// The parameter sets of `params` given as a JSON value (tests, and callers that have one).
pub fn parse_sets(params: &Value) -> Result<ParamSets> {
    ParamSets::parse(params.to_string())
}

impl FanOut {
    /// Checks that every set has every name the templates (and `columns`) use, and that each
    /// set's URL expands to one the policy allows, before any request.
    pub fn new(
        sets: ParamSets,
        args: &RequestArgs<'_>,
        column_params: &[String],
        limits: &Limits,
    ) -> Result<FanOut> {
        let url = args.url.unwrap_or_default().trim().to_string();
        let template = UriTemplateStr::new(&url).map_err(|e| {
            Error::invalid(format!("invalid URL template \"{url}\": {e}"))
                .with_hint("params expand the URL as an RFC 6570 template: {id}, {+path}, {?q}")
        })?;
        let mut names: BTreeSet<String> = template
            .variables()
            .map(|name| name.as_str().to_string())
            .collect();
        let options_query = args.options.as_ref().and_then(|o| o.get("query"));
        for value in [args.body.as_ref(), args.headers.as_ref(), options_query]
            .into_iter()
            .flatten()
        {
            text_names(value, &mut names);
        }
        names.extend(column_params.iter().cloned());
        if templated_origin(&url) && carries_credentials(args) {
            return Err(Error::invalid(
                "a URL template whose scheme, host or port is a parameter cannot carry credentials",
            )
            .with_hint("credentials belong to one origin: keep the host literal and template the path or query"));
        }
        for i in 0..sets.len() {
            let set = sets.get(i)?;
            let which = match sets.for_each {
                true => format!("options.for_each row {}", i + 1),
                false => format!("params[{i}]"),
            };
            if let Some(missing) = names.iter().find(|name| !set.contains_key(*name)) {
                return Err(Error::invalid(format!(
                    "{which} has no \"{missing}\", which the request uses"
                )));
            }
            let expanded = expand_url(template, &set)?;
            let parsed = url::Url::parse(&expanded).map_err(|e| {
                Error::invalid(format!("{which} expands the URL to \"{expanded}\": {e}"))
            })?;
            limits
                .policy
                .check_url(&parsed)
                .map_err(|denied| denied.into_error())?;
        }
        Ok(FanOut {
            sets,
            template: RequestTemplate {
                url,
                method: args.method.map(str::to_string),
                body: args.body.clone(),
                headers: args.headers.clone(),
                options: args.options.clone(),
                secrets: args.secrets.clone(),
                access_token: args.access_token.clone(),
            },
            names,
            limits: limits.clone(),
        })
    }

    /// The request of `set`, checked as any request is (URL, headers, policy, auth).
    pub fn request(&self, set: &Map<String, Value>) -> Result<super::RequestSpec> {
        let mut url = String::new();
        let args = self.args(set, &mut url)?;
        super::parse_common(args, &self.limits).map(|(spec, _)| spec)
    }

    /// The request arguments of set `index`, every template expanded; `expanded` receives them.
    pub fn args<'a>(
        &'a self,
        set: &Map<String, Value>,
        expanded: &'a mut String,
    ) -> Result<RequestArgs<'a>> {
        let template = &self.template;
        let url = UriTemplateStr::new(&template.url)
            .map_err(|e| Error::invalid(format!("invalid URL template: {e}")))?;
        *expanded = expand_url(url, set)?;
        let mut options = template.options.clone();
        if let Some(query) = options.as_mut().and_then(|o| o.get_mut("query")) {
            substitute(query, set, false);
        }
        let mut headers = template.headers.clone();
        if let Some(headers) = headers.as_mut() {
            substitute(headers, set, false);
        }
        let mut body = template.body.clone();
        if let Some(body) = body.as_mut() {
            substitute(body, set, true);
        }
        Ok(RequestArgs {
            url: Some(expanded.as_str()),
            method: template.method.as_deref(),
            body,
            headers,
            options,
            secrets: template.secrets.clone(),
            access_token: template.access_token.clone(),
        })
    }

    /// A set with every name (each `"x"`), for checking the arguments once when there are no
    /// sets.
    pub fn placeholder(&self) -> Map<String, Value> {
        self.names
            .iter()
            .map(|name| (name.clone(), Value::from("x")))
            .collect()
    }
}

/// Whether the origin of a URL template (what comes before its path) has an expression in it.
fn templated_origin(url: &str) -> bool {
    let Some(scheme_end) = url.find("://") else {
        return true;
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    url[..scheme_end].contains('{') || rest[..authority_end].contains('{')
}

/// Whether a request sends credentials: `options.auth`, a credential header, or URL user info.
fn carries_credentials(args: &RequestArgs<'_>) -> bool {
    let auth = args
        .options
        .as_ref()
        .is_some_and(|o| o.get("auth").is_some_and(|a| !a.is_null()));
    let header = args
        .headers
        .as_ref()
        .and_then(Value::as_object)
        .is_some_and(|h| {
            h.keys()
                .any(|k| super::CREDENTIAL_HEADERS.contains(&k.to_ascii_lowercase().as_str()))
        });
    let userinfo = args
        .url
        .unwrap_or_default()
        .split('/')
        .nth(2)
        .is_some_and(|a| a.contains('@'));
    auth || header || userinfo
}

fn expand_url(template: &UriTemplateStr, set: &Map<String, Value>) -> Result<String> {
    template
        .expand::<UriSpec, _>(&SetContext(set))
        .map(|expanded| expanded.to_string())
        .map_err(|e| Error::invalid(format!("cannot expand the URL template: {e}")))
}

/// A parameter set as RFC 6570 variables: strings as they are, numbers and booleans as their JSON
/// text, null undefined, arrays lists, objects associative arrays.
struct SetContext<'a>(&'a Map<String, Value>);

struct Text<'a>(&'a Value);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Value::String(s) => f.write_str(s),
            other => write!(f, "{other}"),
        }
    }
}

impl Context for SetContext<'_> {
    fn visit<V: Visitor>(&self, visitor: V) -> V::Result {
        match self.0.get(visitor.var_name().as_str()) {
            None | Some(Value::Null) => visitor.visit_undefined(),
            Some(Value::Array(items)) => visitor.visit_list_direct(items.iter().map(Text)),
            Some(Value::Object(entries)) => {
                visitor.visit_assoc_direct(entries.iter().map(|(k, v)| (k, Text(v))))
            }
            Some(value) => visitor.visit_string(Text(value)),
        }
    }
}

/// The `{name}` references in the strings of `value`.
fn text_names(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::String(text) => {
            for (_, name) in references(text) {
                names.insert(name.to_string());
            }
        }
        Value::Array(items) => items.iter().for_each(|v| text_names(v, names)),
        Value::Object(entries) => entries.values().for_each(|v| text_names(v, names)),
        _ => {}
    }
}

/// The `{name}` references of a text (names of letters, digits, `_`, `-` and `.`), with their
/// places; other braces are text.
fn references(text: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find('{').map(|i| from + i) {
        let Some(close) = text[open..].find('}').map(|i| open + i) else {
            break;
        };
        let name = &text[open + 1..close];
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if is_name {
            found.push((open..close + 1, name));
            from = close + 1;
        } else {
            from = open + 1;
        }
    }
    found
}

/// Replaces `{name}` in the strings of `value` with the set's values: as text inside a longer
/// string, and (with `typed`) a string that is exactly one reference by the value itself.
fn substitute(value: &mut Value, set: &Map<String, Value>, typed: bool) {
    match value {
        Value::String(text) => {
            let refs = references(text);
            if refs.is_empty() {
                return;
            }
            if typed && refs.len() == 1 && refs[0].0 == (0..text.len()) {
                *value = set.get(refs[0].1).cloned().unwrap_or(Value::Null);
                return;
            }
            let mut out = String::with_capacity(text.len());
            let mut at = 0;
            for (range, name) in refs {
                out.push_str(&text[at..range.start]);
                if let Some(value) = set.get(name) {
                    out.push_str(&Text(value).to_string());
                }
                at = range.end;
            }
            out.push_str(&text[at..]);
            *text = out;
        }
        Value::Array(items) => items.iter_mut().for_each(|v| substitute(v, set, typed)),
        Value::Object(entries) => entries.values_mut().for_each(|v| substitute(v, set, typed)),
        _ => {}
    }
}

/// The parameter a column value `"{name}"` of `options.columns` names, if it is one.
pub fn column_param(text: &str) -> Option<&str> {
    let refs = references(text);
    (refs.len() == 1 && refs[0].0 == (0..text.len())).then(|| refs[0].1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_limits;
    use serde_json::json;

    #[test]
    fn urls_expand_as_rfc_6570_says() {
        let args = RequestArgs {
            url: Some("http://h/repos/{+full_name}/issues/{id}{?state}"),
            ..Default::default()
        };
        let sets =
            parse_sets(&json!([{"full_name": "a/b c", "id": "x/y", "state": null}])).unwrap();
        let fan = FanOut::new(sets, &args, &[], &test_limits()).unwrap();
        let mut url = String::new();
        fan.args(&fan.sets.get(0).unwrap(), &mut url).unwrap();
        assert_eq!(url, "http://h/repos/a/b%20c/issues/x%2Fy");
    }

    #[test]
    fn bodies_keep_types_and_strings_take_text() {
        let args = RequestArgs {
            url: Some("http://h/"),
            body: Some(
                json!({"dept": "{dept}", "label": "dept {dept}!", "literal": "{}", "n": ["{n}"]}),
            ),
            headers: Some(json!({"X-Dept": "{dept}"})),
            options: Some(json!({"query": {"from": "{n}"}})),
            ..Default::default()
        };
        let sets = parse_sets(&json!([{"dept": "ops", "n": 7}])).unwrap();
        let fan = FanOut::new(sets, &args, &[], &test_limits()).unwrap();
        let mut url = String::new();
        let set = fan.sets.get(0).unwrap();
        let expanded = fan.args(&set, &mut url).unwrap();
        assert_eq!(
            expanded.body.unwrap(),
            json!({"dept": "ops", "label": "dept ops!", "literal": "{}", "n": [7]})
        );
        assert_eq!(expanded.headers.unwrap(), json!({"X-Dept": "ops"}));
        assert_eq!(expanded.options.unwrap(), json!({"query": {"from": "7"}}));
    }

    #[test]
    fn missing_names_and_bad_params_name_the_set() {
        let args = RequestArgs {
            url: Some("http://h/{id}"),
            ..Default::default()
        };
        let sets = parse_sets(&json!([{"id": 1}, {"ID": 2}])).unwrap();
        let err = FanOut::new(sets, &args, &[], &test_limits()).unwrap_err();
        assert_eq!(
            err.message,
            "params[1] has no \"id\", which the request uses"
        );
        let err = parse_sets(&json!([{"id": 1}, 3])).unwrap_err();
        assert_eq!(err.message, "params[1] must be a JSON object, not a number");
        assert!(parse_sets(&json!({"id": 1})).is_err());
        let sets = parse_sets(&json!([{"id": 1}])).unwrap();
        let err = FanOut::new(sets, &args, &["user".into()], &test_limits()).unwrap_err();
        assert!(err.message.contains("no \"user\""));
        let denied = RequestArgs {
            url: Some("http://{host}/x"),
            ..Default::default()
        };
        let sets = parse_sets(&json!([{"host": "169.254.169.254"}])).unwrap();
        let err = FanOut::new(sets, &denied, &[], &test_limits()).unwrap_err();
        assert_eq!(err.state, crate::error::SqlState::InsufficientPrivilege);
        let leaking = RequestArgs {
            url: Some("http://{host}/x"),
            headers: Some(json!({"Authorization": "Bearer t"})),
            ..Default::default()
        };
        let sets = parse_sets(&json!([{"host": "h"}])).unwrap();
        let err = FanOut::new(sets, &leaking, &[], &test_limits()).unwrap_err();
        assert!(
            err.message.contains("cannot carry credentials"),
            "{}",
            err.message
        );
    }

    #[test]
    fn column_params_are_whole_references() {
        assert_eq!(column_param("{id}"), Some("id"));
        assert_eq!(column_param("$.id"), None);
        assert_eq!(column_param("x{id}"), None);
    }
}
