//! Pages parsed straight into flat cells when the rows' layout is known: api_fetch typed by a
//! composite type whose columns are taken by key, under a row path of names (`$.data`). There is
//! no JSON tree per row and no allocation per value: strings and number texts go into one buffer
//! per page, every value is a cell in one vector. What this parser does not take (other paths,
//! rows that are not objects, keys that match a column only in case, twice) goes the general way
//! (`serde_json::Value`), row by row or page by page, so the result never depends on the route.

use std::fmt;
use std::sync::OnceLock;

use serde::de::{
    Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::extract::{ColumnKey, RowPath};
use crate::spec::paging::{Paging, PagingKind};

/// What a column of the row type wants of its key's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// A dropped column: no key fills it.
    Skip,
    /// Any value, as a cell.
    Scalar,
    /// The value's JSON text as sent (jsonb, which parses it anyway).
    Json,
    /// A JSON array's elements as cells; any other value as `Scalar`.
    Array(Box<Want>),
}

/// The row type's columns, in order: each filled from the key of its name, or else from the one
/// key equal to it ignoring case.
#[derive(Debug, Clone)]
pub struct Layout {
    columns: Vec<(ColumnKey, Want)>,
    /// Columns that take only the key of exactly their name: those of `options.columns` whose
    /// path is one member name (`$.signupTime`), as the path would pick it.
    exact_only: Vec<bool>,
}

impl Layout {
    pub fn new(columns: impl IntoIterator<Item = (String, Want)>) -> Layout {
        Layout::with_keys(columns.into_iter().map(|(key, want)| (key, want, false)))
    }

    /// Columns by the key they take, and whether only exactly that key (a path's member name).
    pub fn with_keys(columns: impl IntoIterator<Item = (String, Want, bool)>) -> Layout {
        let (columns, exact_only) = columns
            .into_iter()
            .map(|(key, want, exact)| ((ColumnKey::new(key), want), exact))
            .unzip();
        Layout {
            columns,
            exact_only,
        }
    }

    /// Two columns equal ignoring case: which one a key fills needs the general rule.
    fn ambiguous(&self) -> bool {
        self.columns
            .iter()
            .enumerate()
            .any(|(i, (a, _))| self.columns[i + 1..].iter().any(|(b, _)| a.clashes(b)))
    }

    /// The column `key` fills, and whether by its exact name (`ColumnKey`'s rule).
    fn find(&self, key: &str) -> Option<(usize, bool)> {
        let taken = |want: &Want| *want != Want::Skip;
        if let Some(i) = self
            .columns
            .iter()
            .position(|(column, want)| taken(want) && column.exact(key))
        {
            return Some((i, true));
        }
        self.columns
            .iter()
            .zip(&self.exact_only)
            .position(|((column, want), exact_only)| {
                taken(want) && !exact_only && column.folded(key)
            })
            .map(|i| (i, false))
    }
}

/// How the pages of one fetch are parsed flat: the layout, and the names that lead to the rows.
#[derive(Debug, Clone)]
pub struct Plan {
    layout: Layout,
    route: Vec<String>,
    /// The row path ends in `[*]`: the rows node must be an array.
    star: bool,
}

impl Plan {
    /// A plan for rows at `path`, or `None` when the path is not a chain of names, or when a
    /// paging path reads inside the rows (as Stripe's `$.data[-1].id` does), which needs them
    /// as JSON values.
    pub fn new(layout: Layout, path: &RowPath, paging: Option<&Paging>) -> Option<Plan> {
        if layout.ambiguous() {
            return None;
        }
        let (route, star) = route_of(path, paging)?;
        Some(Plan {
            layout,
            route,
            star,
        })
    }

    /// The plan for the elements of the rows array, one at a time (a streamed body's rows
    /// come in batches `[row, row, ...]`).
    pub fn for_elements(&self) -> Plan {
        Plan {
            layout: self.layout.clone(),
            route: Vec::new(),
            star: true,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// The names that lead to the rows and whether the path ends in `[*]`; `None` when the path is not
/// a chain of names, or when a paging path reads inside the rows other than in the first or last
/// row (Stripe's `$.data[-1].id` is read from the last row, which a streamed body keeps).
pub fn route_of(path: &RowPath, paging: Option<&Paging>) -> Option<(Vec<String>, bool)> {
    let (route, rest) = leading_names(path.text());
    let star = match rest.trim() {
        "" => false,
        "[*]" => true,
        _ => return None,
    };
    let reads_inside = paging_paths(paging)
        .into_iter()
        .any(|other| reads_rows(&route, other) == Some(false));
    (!reads_inside).then_some((route, star))
}

/// The paths a paging spec reads in a body.
fn paging_paths(paging: Option<&Paging>) -> Vec<&RowPath> {
    let Some(paging) = paging else {
        return Vec::new();
    };
    let mut paths: Vec<&RowPath> = [
        &paging.total_path,
        &paging.total_pages_path,
        &paging.has_more_path,
    ]
    .into_iter()
    .flatten()
    .collect();
    if let PagingKind::Cursor { path, .. } | PagingKind::NextUrl { path } = &paging.kind {
        paths.push(path);
    }
    paths
}

/// Whether a paging path reads inside the rows at `route`: `None` when it does not; `Some(true)`
/// when it reads only the first or the last row (`$.data[0].x`, `$.data[-1].id`, Stripe's
/// cursor), which a streamed body keeps for it (`keeps_ends`); `Some(false)` for anything else.
fn reads_rows(route: &[String], other: &RowPath) -> Option<bool> {
    let (names, rest) = leading_names(other.text());
    if !names.iter().zip(route).all(|(a, b)| a == b) {
        return None;
    }
    let end = names.len() == route.len() && (rest.starts_with("[0]") || rest.starts_with("[-1]"));
    Some(end)
}

/// Whether a streamed body must keep its first and last rows for the paging values.
pub fn keeps_ends(path: &RowPath, paging: Option<&Paging>) -> bool {
    let Some((route, _)) = route_of(path, paging) else {
        return false;
    };
    paging_paths(paging)
        .into_iter()
        .any(|other| reads_rows(&route, other) == Some(true))
}

/// The member name of a path that is one name and nothing else (`$.a`, `$['a b']`).
pub fn single_name(path: &RowPath) -> Option<String> {
    let (mut names, rest) = leading_names(path.text());
    (names.len() == 1 && rest.trim().is_empty()).then(|| names.remove(0))
}

/// The member names a JSONPath starts with (`$.a['b'][0]` → a, b) and the text after them.
fn leading_names(text: &str) -> (Vec<String>, &str) {
    let mut names = Vec::new();
    let Some(mut rest) = text.trim().strip_prefix('$') else {
        return (names, text);
    };
    loop {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if end == 0 || after.starts_with(|c: char| c.is_ascii_digit()) {
                return (names, rest);
            }
            names.push(after[..end].to_string());
            rest = &after[end..];
        } else if let Some(quoted) = rest
            .strip_prefix("['")
            .and_then(|r| r.split_once("']"))
            .or_else(|| rest.strip_prefix("[\"").and_then(|r| r.split_once("\"]")))
        {
            let (name, after) = quoted;
            if name.contains(['\\', '\'', '"']) {
                return (names, rest);
            }
            names.push(name.to_string());
            rest = after;
        } else {
            return (names, rest);
        }
    }
}

/// A stretch of a page's text buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    start: u32,
    len: u32,
}

/// One value of a row, as parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell {
    /// The row has no such key.
    Missing,
    Null,
    Bool(bool),
    Int(i64),
    /// Any other number: its JSON text, every digit kept.
    Number(Span),
    Str(Span),
    /// JSON text: every value of a `Want::Json` column, and objects and nested arrays.
    Json(Span),
    /// The page's `elements[start..start + len]`.
    Array {
        start: u32,
        len: u32,
    },
}

/// A page of rows in cells. Rows whose cells were not taken are read from the body again, the
/// general way, when asked for.
#[derive(Debug, Default)]
pub struct Compact {
    source: Source,
    /// Per row, where its cells start; `None`: the row goes the general way.
    rows: Vec<Option<u32>>,
    width: usize,
    cells: Vec<Cell>,
    elements: Vec<Cell>,
    text: Vec<u8>,
    /// The rows as JSON values, parsed on first need.
    general: OnceLock<Vec<Value>>,
}

impl Compact {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Keeps the first `len` rows.
    pub fn truncate(&mut self, len: usize) {
        self.rows.truncate(len);
    }

    /// The cells of row `row`, one per column; `None` for a row to take as a JSON value.
    pub fn cells(&self, row: usize) -> Option<&[Cell]> {
        let start = self.rows[row]? as usize;
        Some(&self.cells[start..start + self.width])
    }

    /// Row `row` as a JSON value.
    pub fn row_value(&self, row: usize) -> Value {
        self.general().get(row).cloned().unwrap_or(Value::Null)
    }

    /// The rows as the general parser sees them: the node the route leads to, an array's
    /// elements or the node itself; for fields, objects of their keys.
    fn general(&self) -> &[Value] {
        self.general.get_or_init(|| match &self.source {
            Source::Json { body, route } => {
                let mut node = serde_json::from_slice(body).unwrap_or(Value::Null);
                for name in route {
                    node = node.get_mut(name).map(Value::take).unwrap_or(Value::Null);
                }
                match node {
                    Value::Array(rows) => rows,
                    node => vec![node],
                }
            }
            Source::Fields { keys, fields, null } => fields
                .chunks(keys.len().max(1))
                .map(|row| {
                    let object = keys.iter().zip(row).map(|(key, span)| {
                        let text = self.text(*span);
                        let value = if field_is_null(text, null.as_deref()) {
                            Value::Null
                        } else {
                            Value::String(text.to_string())
                        };
                        (key.clone(), value)
                    });
                    Value::Object(object.collect())
                })
                .collect(),
        })
    }

    pub fn text(&self, span: Span) -> &str {
        let bytes = &self.text[span.start as usize..(span.start + span.len) as usize];
        // SAFETY: spans only cover whole UTF-8 strings copied in by `Builder::text`.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    pub fn elements(&self, start: u32, len: u32) -> &[Cell] {
        &self.elements[start as usize..(start + len) as usize]
    }

    /// A cell as the JSON value it was parsed from.
    pub fn value(&self, cell: &Cell) -> Value {
        match *cell {
            Cell::Missing | Cell::Null => Value::Null,
            Cell::Bool(b) => Value::Bool(b),
            Cell::Int(i) => Value::from(i),
            Cell::Number(span) | Cell::Json(span) => {
                serde_json::from_str(self.text(span)).unwrap_or(Value::Null)
            }
            Cell::Str(span) => Value::String(self.text(span).to_string()),
            Cell::Array { start, len } => Value::Array(
                self.elements(start, len)
                    .iter()
                    .map(|c| self.value(c))
                    .collect(),
            ),
        }
    }

    /// Every row as a JSON value.
    pub fn into_values(self) -> Vec<Value> {
        self.general();
        let len = self.len();
        let mut rows = self.general.into_inner().unwrap_or_default();
        rows.truncate(len);
        rows
    }
}

/// Where a page's rows were read from, to take them as JSON values when asked.
#[derive(Debug)]
enum Source {
    /// A JSON body, and the names that lead to its rows.
    Json { body: Vec<u8>, route: Vec<String> },
    /// Records of fields (CSV): every row's fields, `keys.len()` of them, in the page's text.
    Fields {
        keys: Vec<String>,
        fields: Vec<Span>,
        null: Option<String>,
    },
}

impl Default for Source {
    fn default() -> Self {
        Source::Json {
            body: Vec::new(),
            route: Vec::new(),
        }
    }
}

/// Whether a field is NULL: it equals `null`, or is empty when no `null` is given.
pub fn field_is_null(text: &str, null: Option<&str>) -> bool {
    match null {
        Some(null) => text == null,
        None => text.is_empty(),
    }
}

/// A page of records of text fields (CSV), in cells: each field fills the column its key names
/// (`ColumnKey`'s rule); a jsonb column takes the field as JSON text, every other column as a
/// string for its input function.
pub struct FieldPage {
    page: Compact,
    /// Per field position, the column it fills and what that column wants.
    targets: Vec<Option<(usize, bool)>>,
    keys: Vec<String>,
    fields: Vec<Span>,
    null: Option<String>,
}

impl FieldPage {
    /// `None` when two keys fill one column and neither by its exact name: which one wins is
    /// the general rule's to say.
    pub fn new(layout: &Layout, keys: &[String], null: Option<&str>) -> Option<FieldPage> {
        let found: Vec<Option<(usize, bool)>> = keys.iter().map(|key| layout.find(key)).collect();
        let mut targets = Vec::with_capacity(keys.len());
        for (position, target) in found.iter().enumerate() {
            let target = match *target {
                Some((column, exact)) => {
                    let rivals = found.iter().enumerate().filter(|(other, t)| {
                        *other != position && matches!(t, Some((c, _)) if *c == column)
                    });
                    let mut beaten = false;
                    for (_, rival) in rivals {
                        let rival_exact = rival.is_some_and(|(_, e)| e);
                        if !exact && !rival_exact {
                            return None;
                        }
                        beaten |= rival_exact && !exact;
                    }
                    (!beaten).then_some((column, layout.columns[column].1 == Want::Json))
                }
                None => None,
            };
            targets.push(target);
        }
        Some(FieldPage {
            page: Compact {
                width: layout.columns.len(),
                ..Compact::default()
            },
            targets,
            keys: keys.to_vec(),
            fields: Vec::new(),
            null: null.map(str::to_string),
        })
    }

    /// Adds a record; `fields` has one text per key.
    pub fn push(&mut self, fields: &[&str]) {
        let first = self.page.cells.len();
        self.page
            .cells
            .resize(first + self.page.width, Cell::Missing);
        for (text, target) in fields.iter().zip(&self.targets) {
            let start = self.page.text.len() as u32;
            self.page.text.extend_from_slice(text.as_bytes());
            let span = Span {
                start,
                len: text.len() as u32,
            };
            self.fields.push(span);
            if let Some((column, json)) = *target {
                self.page.cells[first + column] = if field_is_null(text, self.null.as_deref()) {
                    Cell::Null
                } else if json {
                    Cell::Json(span)
                } else {
                    Cell::Str(span)
                };
            }
        }
        self.page.rows.push(Some(first as u32));
    }

    pub fn len(&self) -> usize {
        self.page.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.page.rows.is_empty()
    }

    /// The bytes of text held so far.
    pub fn text_len(&self) -> usize {
        self.page.text.len()
    }

    /// The page, and a new empty one for the records that follow.
    pub fn take(&mut self) -> Compact {
        let width = self.page.width;
        let mut page = std::mem::replace(
            &mut self.page,
            Compact {
                width,
                ..Compact::default()
            },
        );
        page.source = Source::Fields {
            keys: self.keys.clone(),
            fields: std::mem::take(&mut self.fields),
            null: self.null.clone(),
        };
        page
    }
}

/// The document of a page without its rows (for the paging facts), and its rows in cells; the
/// body back when the page does not fit the plan or is not valid JSON: the general parser then
/// takes it, and names what is wrong.
pub fn parse(body: Vec<u8>, plan: &Plan) -> Result<(Value, Compact), Vec<u8>> {
    let mut builder = Builder {
        plan,
        page: Compact {
            width: plan.layout.columns.len(),
            ..Compact::default()
        },
        keys: Vec::new(),
        filled: vec![Filled::No; plan.layout.columns.len()],
        unfit: false,
        cell_budget: cell_budget(body.len()),
    };
    let mut de = serde_json::Deserializer::from_slice(&body);
    let doc = DocSeed {
        route: &plan.route,
        builder: &mut builder,
    }
    .deserialize(&mut de)
    .and_then(|doc| de.end().map(|()| doc));
    match doc {
        Ok(doc) if !builder.unfit => {
            let mut page = builder.page;
            page.source = Source::Json {
                body,
                route: plan.route.clone(),
            };
            Ok((doc, page))
        }
        _ => Err(body),
    }
}

struct Builder<'p> {
    plan: &'p Plan,
    page: Compact,
    /// The keys seen at each position of the previous row, with the column each fills: rows of
    /// one API have their keys in one order, so a key is one comparison, not a search.
    keys: Vec<(String, Key)>,
    /// Per column: how a key of this row filled it.
    filled: Vec<Filled>,
    /// The page does not fit the plan: parse it the general way.
    unfit: bool,
    /// The most cells this page may take (`cell_budget`).
    cell_budget: usize,
}

/// Cells are a row type's width per row, whatever the row holds: a wide row type over small rows
/// (1,600 columns, `{}` rows) would take thousands of times the page's size. Past 16 times the
/// body (and a floor for small pages), the page takes the general parser, whose memory follows
/// the body.
fn cell_budget(body_len: usize) -> usize {
    (body_len * 16 / std::mem::size_of::<Cell>()).max(1 << 16)
}

impl Builder<'_> {
    fn text(&mut self, text: &str) -> Span {
        let start = self.page.text.len() as u32;
        self.page.text.extend_from_slice(text.as_bytes());
        Span {
            start,
            len: text.len() as u32,
        }
    }

    /// Starts a row: its cells, all missing until keys fill them.
    fn start_row(&mut self) -> usize {
        let first = self.page.cells.len();
        self.page
            .cells
            .resize(first + self.page.width, Cell::Missing);
        self.filled.fill(Filled::No);
        first
    }

    /// Ends the row started at `first`: its cells are kept when `taken`.
    fn end_row(&mut self, first: usize, taken: bool) {
        if taken {
            self.page.rows.push(Some(first as u32));
        } else {
            self.page.cells.truncate(first);
            self.page.rows.push(None);
        }
    }

    /// A row that is not an object: the general parser says what is wrong with it.
    fn other_row(&mut self) {
        self.page.rows.push(None);
    }

    /// Fills the cells of a row from its keys, or leaves the row to the general parser.
    fn fill_row<'de, A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
        if self.page.cells.len() + self.page.width > self.cell_budget {
            self.unfit = true;
            return Err(serde::de::Error::custom(
                "the row type is too wide for this page's cells",
            ));
        }
        let first = self.start_row();
        let mut taken = true;
        let mut position = 0;
        while let Some(key) = map.next_key_seed(KeySeed {
            builder: &mut *self,
            position,
        })? {
            position += 1;
            let (i, exact) = match key {
                Key::Column(i, exact) => (i, exact),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                Key::Number => {
                    // A number row (serde_json's marker): not an object.
                    map.next_value::<IgnoredAny>()?;
                    taken = false;
                    continue;
                }
            };
            if !exact && self.filled[i] != Filled::No {
                // An exact key wins; two keys differing in case need the general parser's rule.
                taken &= self.filled[i] == Filled::Exact;
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let want = &self.plan.layout.columns[i].1;
            let cell = map.next_value_seed(CellSeed {
                want,
                builder: &mut *self,
            })?;
            self.page.cells[first + i] = cell;
            self.filled[i] = if exact { Filled::Exact } else { Filled::Folded };
        }
        self.end_row(first, taken);
        Ok(())
    }

    /// What the `position`th key of a row is.
    fn key(&mut self, position: usize, key: &str) -> Key {
        if let Some((seen, column)) = self.keys.get(position) {
            if seen == key {
                return *column;
            }
        }
        let column = match self.plan.layout.find(key) {
            Some((i, exact)) => Key::Column(i, exact),
            None if key == NUMBER_TOKEN => Key::Number,
            None => Key::Other,
        };
        if position < self.keys.len() {
            self.keys[position] = (key.to_string(), column);
        } else if position == self.keys.len() {
            self.keys.push((key.to_string(), column));
        }
        column
    }
}

pub(crate) const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// How a column of the row being parsed was filled.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Filled {
    No,
    /// By a key equal to its name only ignoring case.
    Folded,
    /// By its exact name.
    Exact,
}

/// A key of a row.
#[derive(Debug, Clone, Copy)]
enum Key {
    /// Fills column `.0`, by its exact name (`.1`) or ignoring case.
    Column(usize, bool),
    Other,
    /// serde_json's marker of a number kept as text: the "row" is a number.
    Number,
}

struct DocSeed<'a, 'p> {
    route: &'a [String],
    builder: &'a mut Builder<'p>,
}

impl<'de> DeserializeSeed<'de> for DocSeed<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.route.is_empty() {
            d.deserialize_any(RowSeed {
                builder: self.builder,
                node: true,
            })?;
            return Ok(Value::Null);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DocSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut doc = Map::new();
        let mut found = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == NUMBER_TOKEN {
                self.builder.unfit = true;
            }
            let value = if key == self.route[0] && !found {
                found = true;
                map.next_value_seed(DocSeed {
                    route: &self.route[1..],
                    builder: self.builder,
                })?
            } else {
                if key == self.route[0] {
                    // A second rows key: the general parser keeps the last.
                    self.builder.unfit = true;
                }
                map.next_value::<Value>()?
            };
            doc.insert(key, value);
        }
        Ok(Value::Object(doc))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
}

/// The node the route leads to (`node`: an array of rows, or one row), or an element of it.
struct RowSeed<'a, 'p> {
    builder: &'a mut Builder<'p>,
    node: bool,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl RowSeed<'_, '_> {
    /// Not an object: one row for the general parser to judge; under `[*]`, the node selects
    /// what the general parser says.
    fn other<E>(self) -> Result<(), E> {
        if self.node && self.builder.plan.star {
            self.builder.unfit = true;
        } else {
            self.builder.other_row();
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if !self.node {
            IgnoredAny.visit_seq(seq)?;
            return self.other();
        }
        while seq
            .next_element_seed(RowSeed {
                builder: &mut *self.builder,
                node: false,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        if self.node && self.builder.plan.star {
            IgnoredAny.visit_map(map)?;
            return self.other();
        }
        self.builder.fill_row(map)
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.other()
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.other()
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.other()
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.other()
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.other()
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.other()
    }
}

struct KeySeed<'a, 'p> {
    builder: &'a mut Builder<'p>,
    position: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.builder.key(self.position, key))
    }
}

struct CellSeed<'a, 'p> {
    want: &'a Want,
    builder: &'a mut Builder<'p>,
}

impl<'de> DeserializeSeed<'de> for CellSeed<'_, '_> {
    type Value = Cell;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cell, D::Error> {
        if *self.want == Want::Json {
            let raw = <&RawValue>::deserialize(d)?;
            return Ok(match raw.get() {
                "null" => Cell::Null,
                text => Cell::Json(self.builder.text(text)),
            });
        }
        d.deserialize_any(self)
    }
}

impl CellSeed<'_, '_> {
    fn json(self, value: &Value) -> Cell {
        Cell::Json(self.builder.text(&value.to_string()))
    }
}

impl<'de> Visitor<'de> for CellSeed<'_, '_> {
    type Value = Cell;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Cell, E> {
        Ok(Cell::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Cell, E> {
        Ok(Cell::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Cell, E> {
        Ok(match i64::try_from(v) {
            Ok(v) => Cell::Int(v),
            Err(_) => Cell::Number(self.builder.text(&v.to_string())),
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<Cell, E> {
        Ok(Cell::Number(self.builder.text(&Value::from(v).to_string())))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cell, E> {
        Ok(Cell::Str(self.builder.text(v)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cell, A::Error> {
        let Some(key) = map.next_key_seed(KeyText)? else {
            return Ok(self.json(&Value::Object(Map::new())));
        };
        if key.is_none() {
            let number = map.next_value_seed(TextSeed {
                builder: self.builder,
            })?;
            return Ok(Cell::Number(number));
        }
        let mut object = Map::new();
        object.insert(key.unwrap_or_default(), map.next_value()?);
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            object.insert(key, value);
        }
        Ok(self.json(&Value::Object(object)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Cell, A::Error> {
        match self.want {
            Want::Array(element) => {
                let start = self.builder.page.elements.len() as u32;
                while let Some(cell) = seq.next_element_seed(CellSeed {
                    want: element,
                    builder: self.builder,
                })? {
                    self.builder.page.elements.push(cell);
                }
                let len = self.builder.page.elements.len() as u32 - start;
                Ok(Cell::Array { start, len })
            }
            _ => {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Value>()? {
                    items.push(item);
                }
                Ok(self.json(&Value::Array(items)))
            }
        }
    }
}

/// A string copied into the page's text.
struct TextSeed<'a, 'p> {
    builder: &'a mut Builder<'p>,
}

impl<'de> DeserializeSeed<'de> for TextSeed<'_, '_> {
    type Value = Span;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Span, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TextSeed<'_, '_> {
    type Value = Span;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E>(self, v: &str) -> Result<Span, E> {
        Ok(self.builder.text(v))
    }
}

/// A key: `None` for serde_json's marker of a number kept as text (`arbitrary_precision`), which
/// is then not copied.
struct KeyText;

impl<'de> DeserializeSeed<'de> for KeyText {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyText {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok((key != NUMBER_TOKEN).then(|| key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layout() -> Layout {
        Layout::new([
            ("id".to_string(), Want::Scalar),
            ("Name".to_string(), Want::Scalar),
            ("doc".to_string(), Want::Json),
            ("tags".to_string(), Want::Array(Box::new(Want::Scalar))),
        ])
    }

    fn plan(path: &str, paging: Option<Value>) -> Option<Plan> {
        let paging = paging.map(|p| Paging::parse(&p).unwrap());
        Plan::new(layout(), &RowPath::parse(path).unwrap(), paging.as_ref())
    }

    fn page(body: &str) -> (Value, Compact) {
        parse(body.as_bytes().to_vec(), &plan("$.data", None).unwrap()).unwrap()
    }

    #[test]
    fn rows_become_cells_and_the_rest_stays_a_document() {
        let (doc, page) = page(
            r#"{"total": 2, "data": [
                {"id": 1, "name": "a\"b", "doc": {"k": [1, 2.50]}, "tags": ["x", 2, null], "extra": {"deep": 1}},
                {"tags": "{y}", "id": 18446744073709551615, "NAME": 1.50, "doc": null}
            ], "after": [1]}"#,
        );
        assert_eq!(doc, json!({"total": 2, "data": null, "after": [1]}));
        assert_eq!(page.len(), 2);
        let first = page.cells(0).unwrap();
        assert_eq!(first[0], Cell::Int(1));
        assert_eq!(page.value(&first[1]), json!("a\"b"));
        assert!(matches!(first[2], Cell::Json(span) if page.text(span) == r#"{"k": [1, 2.50]}"#));
        assert_eq!(page.value(&first[3]), json!(["x", 2, null]));
        let second = page.cells(1).unwrap();
        assert!(
            matches!(second[0], Cell::Number(span) if page.text(span) == "18446744073709551615")
        );
        assert!(matches!(second[1], Cell::Number(span) if page.text(span) == "1.50"));
        assert_eq!(second[2], Cell::Null);
        assert_eq!(page.value(&second[3]), json!("{y}"));
        assert_eq!(page.row_value(1)["NAME"].to_string(), "1.50");
    }

    #[test]
    fn a_wide_row_type_over_small_rows_goes_the_general_way() {
        let layout = Layout::new((0..1600).map(|i| (format!("c{i}"), Want::Scalar)));
        let plan = Plan::new(layout, &RowPath::parse("$.data").unwrap(), None).unwrap();
        let rows = vec!["{}"; 10_000].join(",");
        let body = format!("{{\"data\": [{rows}]}}").into_bytes();
        let len = body.len();
        let back = parse(body, &plan).expect_err("16M cells for a 30 kB page");
        assert_eq!(
            back.len(),
            len,
            "the body comes back whole for the general parser"
        );
    }

    #[test]
    fn exact_keys_win_and_keys_equal_in_case_only_go_the_general_way() {
        let (_, page) = page(
            r#"{"data": [{"name": "lower", "Name": "exact"}, {"NAME": "a", "name": "b"}, {"id": 1}, 7]}"#,
        );
        assert_eq!(page.value(&page.cells(0).unwrap()[1]), json!("exact"));
        assert!(page.cells(1).is_none());
        assert_eq!(page.row_value(1), json!({"NAME": "a", "name": "b"}));
        assert_eq!(page.cells(2).unwrap()[1], Cell::Missing);
        assert!(page.cells(3).is_none());
        assert_eq!(page.row_value(3), json!(7));
    }

    #[test]
    fn a_single_object_is_a_row_and_a_missing_node_no_rows() {
        let (_, one) = page(r#"{"data": {"id": 5}}"#);
        assert_eq!(one.cells(0).unwrap()[0], Cell::Int(5));
        let (_, none) = page(r#"{"other": []}"#);
        assert!(none.is_empty());
    }

    #[test]
    fn what_does_not_fit_is_left_to_the_general_parser() {
        let plan = plan("$.data", None).unwrap();
        for body in [
            r#"{"data": [{"id": 1}], "data": []}"#,
            r#"{"data": [{"id": 1}"#,
            "<html>",
            "",
        ] {
            assert!(parse(body.as_bytes().to_vec(), &plan).is_err(), "{body}");
        }
        let star = plan_star();
        assert!(parse(br#"{"data": {"a": {"id": 1}}}"#.to_vec(), &star).is_err());
        assert_eq!(
            parse(br#"{"data": [{"id": 1}]}"#.to_vec(), &star)
                .unwrap()
                .1
                .len(),
            1
        );
    }

    fn plan_star() -> Plan {
        plan("$.data[*]", None).unwrap()
    }

    #[test]
    fn plans_need_a_path_of_names_that_paging_reads_only_at_the_ends() {
        assert!(plan("$", None).is_some());
        assert!(plan("$['a'].b", None).is_some());
        assert!(plan("$..data", None).is_none());
        assert!(plan("$.data[0]", None).is_none());
        assert!(plan("$.data[?@.id]", None).is_none());
        let total = json!({"type": "offset", "offset_param": "o", "page_size": 10, "total_path": "$.meta.total"});
        assert!(plan("$.data", Some(total.clone())).is_some());
        assert!(plan("$.meta", Some(total.clone())).is_none());
        assert!(plan("$", Some(total)).is_none());
        // Stripe's cursor reads the last row, which a streamed body keeps; other rows, no.
        let stripe =
            json!({"type": "cursor", "cursor_path": "$.data[-1].id", "cursor_param": "after"});
        assert!(plan("$.data", Some(stripe)).is_some());
        let second =
            json!({"type": "cursor", "cursor_path": "$.data[1].id", "cursor_param": "after"});
        assert!(plan("$.data", Some(second)).is_none());
        let ambiguous = Layout::new([
            ("a".to_string(), Want::Scalar),
            ("A".to_string(), Want::Scalar),
        ]);
        assert!(Plan::new(ambiguous, &RowPath::parse("$").unwrap(), None).is_none());
    }

    #[test]
    fn names_lead_the_way() {
        assert_eq!(
            leading_names("$.a.b_2"),
            (vec!["a".into(), "b_2".into()], "")
        );
        assert_eq!(leading_names("$['x y'][*]"), (vec!["x y".into()], "[*]"));
        assert_eq!(leading_names("$..a"), (vec![], "..a"));
        assert_eq!(leading_names("$.1a"), (vec![], ".1a"));
    }
}
