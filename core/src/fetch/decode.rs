//! A body's bytes into rows while it arrives: JSON (the array the path selects, element by
//! element), JSON Lines and CSV. Rows come out in batches of about `BATCH_BYTES`; what a JSON body
//! says besides its rows (the paging values) is read when it ends. Values are parsed by
//! serde_json and csv-core; this module only finds where each row starts and ends.

use std::ops::Range;

use serde_json::Value;

use super::PageRows;
use crate::error::{Error, Result, SqlState};
use crate::extract::cells::{self, FieldPage, Layout, Plan};
use crate::extract::tape::Tape;
use crate::extract::RowPath;
use crate::spec::{CsvDialect, Format, RequestSpec};

/// The text a batch of rows holds, about: small enough that a few in flight stay small, large
/// enough that the per-batch costs vanish.
pub const BATCH_BYTES: usize = 1 << 20;

/// A row that could not be read (a bad line or record), for the reader to raise, or to set aside
/// in a job that allows rejected rows.
#[derive(Debug)]
pub struct BadRecord {
    pub error: Error,
    pub raw: Value,
}

/// How one response's rows are made, whatever its format.
pub struct Shape<'a> {
    /// Typed rows in cells (`None`: rows as JSON values).
    pub plan: Option<&'a Plan>,
    /// Batches are parsed into JSON tokens (jsonb rows).
    pub tape: bool,
    /// The paging values read the first or last row (`cells::keeps_ends`).
    pub ends: bool,
    pub path: &'a RowPath,
    /// The request: its URL as errors show it, and the secrets they never show.
    pub request: &'a RequestSpec,
}

impl Shape<'_> {
    fn url(&self) -> String {
        self.request.display_url()
    }
}

/// The reader of one body in its format.
pub enum Decoder<'a> {
    Json(JsonRows<'a>),
    Lines(Lines<'a>),
    Csv(Box<CsvRecords<'a>>),
}

impl<'a> Decoder<'a> {
    /// The decoder of a body in `format` (checked against the path and paging by
    /// `format::check`); `None` for a JSON path that cannot stream (not a chain of names, or read
    /// by paging inside its rows): that body is read whole.
    pub fn new(
        format: &Format,
        shape: Shape<'a>,
        route: Option<(Vec<String>, bool)>,
    ) -> Option<Decoder<'a>> {
        Some(match format {
            Format::Json => {
                let (route, star) = route?;
                Decoder::Json(JsonRows::new(shape, route, star))
            }
            Format::Jsonl => Decoder::Lines(Lines::new(shape)),
            Format::Csv(dialect) => Decoder::Csv(Box::new(CsvRecords::new(shape, dialect.clone()))),
        })
    }

    /// Reads the next piece of the body; rows completed so far go to `ready`.
    pub fn feed(&mut self, bytes: &[u8], ready: &mut Vec<PageRows>) -> Result<()> {
        match self {
            Decoder::Json(json) => json.feed(bytes, ready),
            Decoder::Lines(lines) => lines.feed(bytes, ready),
            Decoder::Csv(csv) => csv.feed(bytes, ready),
        }
    }

    /// The body paused: the rows read so far go to `ready` now, not when a batch is full.
    pub fn flush(&mut self, ready: &mut Vec<PageRows>) -> Result<()> {
        match self {
            Decoder::Json(json) => {
                let batch = json.take_batch();
                json.shape.batch(batch, Framing::Document, ready)
            }
            Decoder::Lines(lines) => {
                lines.flush_values(ready);
                lines.shape.batch(lines.batch.take(), Framing::Lines, ready)
            }
            Decoder::Csv(csv) => {
                csv.flush(ready);
                Ok(())
            }
        }
    }

    /// The body ended: its last rows go to `ready`; the JSON document without its rows comes back
    /// for the paging values (`None` for other formats).
    pub fn finish(&mut self, ready: &mut Vec<PageRows>) -> Result<Option<Value>> {
        match self {
            Decoder::Json(json) => json.finish(ready).map(Some),
            Decoder::Lines(lines) => lines.finish(ready).map(|()| None),
            Decoder::Csv(csv) => csv.finish(ready).map(|()| None),
        }
    }
}

/// Where a JSON value starts and ends, across pieces: strings, escapes and nesting, no more.
#[derive(Debug, Default, Clone)]
struct ValueScan {
    kind: Option<ValueKind>,
    depth: u32,
    string: bool,
    escaped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ValueKind {
    Container,
    Str,
    /// A number, true, false or null: ends at white space, a comma or a closing bracket.
    Scalar,
}

impl ValueScan {
    /// Scans the value that starts at `bytes[0]` (on the first call) or goes on in it: how many
    /// bytes belong to it, and whether it ended there.
    fn scan(&mut self, bytes: &[u8]) -> (usize, bool) {
        let mut i = 0;
        let kind = match self.kind {
            Some(kind) => kind,
            None => {
                let Some(&first) = bytes.first() else {
                    return (0, false);
                };
                let kind = match first {
                    b'{' | b'[' => {
                        self.depth = 1;
                        i = 1;
                        ValueKind::Container
                    }
                    b'"' => {
                        self.string = true;
                        i = 1;
                        ValueKind::Str
                    }
                    _ => ValueKind::Scalar,
                };
                self.kind = Some(kind);
                kind
            }
        };
        if kind == ValueKind::Scalar {
            let end = bytes
                .iter()
                .position(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b',' | b']' | b'}'))
                .unwrap_or(bytes.len());
            return (end, end < bytes.len());
        }
        while i < bytes.len() {
            if self.escaped {
                self.escaped = false;
                i += 1;
                continue;
            }
            if self.string {
                let Some(at) = bytes[i..].iter().position(|&b| b == b'"' || b == b'\\') else {
                    return (bytes.len(), false);
                };
                i += at;
                if bytes[i] == b'\\' {
                    self.escaped = true;
                } else {
                    self.string = false;
                    if kind == ValueKind::Str {
                        return (i + 1, true);
                    }
                }
                i += 1;
                continue;
            }
            let Some(at) = bytes[i..]
                .iter()
                .position(|&b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']'))
            else {
                return (bytes.len(), false);
            };
            i += at;
            match bytes[i] {
                b'"' => self.string = true,
                b'{' | b'[' => self.depth += 1,
                _ => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return (i + 1, true);
                    }
                }
            }
            i += 1;
        }
        (bytes.len(), false)
    }

    /// A scalar ends where the body does.
    fn ends_at_eof(&self) -> bool {
        self.kind == Some(ValueKind::Scalar)
    }
}

/// Rows as JSON text, `[row,row,...]`, with where each row is and its number (row or line).
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    records: Vec<(u64, Range<usize>)>,
    /// The record being added: its number and where it starts.
    open: Option<(u64, usize)>,
}

impl Batch {
    fn begin(&mut self, number: u64) {
        self.buf.push(if self.buf.is_empty() { b'[' } else { b',' });
        self.open = Some((number, self.buf.len()));
    }

    fn end(&mut self) {
        if let Some((number, start)) = self.open.take() {
            self.records.push((number, start..self.buf.len()));
        }
    }

    fn full(&self) -> bool {
        self.buf.len() >= BATCH_BYTES
    }

    /// The complete records as one JSON array; a record still open stays, to go on.
    fn take(&mut self) -> Option<Taken> {
        if self.records.is_empty() {
            return None;
        }
        let open = self.open.take().map(|(number, start)| {
            let partial = self.buf[start..].to_vec();
            self.buf.truncate(start - 1);
            (number, partial)
        });
        self.buf.push(b']');
        let buf = std::mem::take(&mut self.buf);
        let records = std::mem::take(&mut self.records);
        if let Some((number, partial)) = open {
            self.begin(number);
            self.buf.extend_from_slice(&partial);
        }
        Some(Taken { buf, records })
    }
}

/// The records a batch held: `[row,row,...]` and each row's number and place.
struct Taken {
    buf: Vec<u8>,
    records: Vec<(u64, Range<usize>)>,
}

/// What a bad row of a batch is: an error of the whole body (JSON), or a bad line (JSON Lines).
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    Document,
    Lines,
}

impl Shape<'_> {
    /// The rows of a batch: in cells when typed and they fit, else as JSON values; a row that is
    /// not valid JSON is named by its number.
    fn batch(
        &self,
        batch: Option<Taken>,
        framing: Framing,
        ready: &mut Vec<PageRows>,
    ) -> Result<()> {
        let Some(Taken { buf, records }) = batch else {
            return Ok(());
        };
        let buf = match self.plan {
            Some(plan) => match cells::parse(buf, &plan.for_elements()) {
                Ok((_, page)) => {
                    ready.push(PageRows::Compact(page));
                    return Ok(());
                }
                Err(buf) => buf,
            },
            None => buf,
        };
        if self.tape {
            if let Ok(tape) = Tape::parse(&buf) {
                ready.push(PageRows::Tape(tape));
                return Ok(());
            }
        } else if let Ok(rows) = serde_json::from_slice::<Vec<Value>>(&buf) {
            ready.push(PageRows::Values(rows));
            return Ok(());
        }
        let mut good = Vec::new();
        for (number, range) in records {
            match serde_json::from_slice::<Value>(&buf[range.clone()]) {
                Ok(row) => good.push(row),
                Err(e) if framing == Framing::Lines => {
                    if !good.is_empty() {
                        ready.push(PageRows::Values(std::mem::take(&mut good)));
                    }
                    ready.push(PageRows::Bad(self.bad_line(number, &buf[range], &e)));
                }
                Err(e) => {
                    return Err(Error::new(
                        SqlState::InvalidJsonText,
                        format!(
                            "response from {} is not valid JSON: row {number} of {}: {e}",
                            self.url(),
                            self.path.text()
                        ),
                    ))
                }
            }
        }
        if !good.is_empty() {
            ready.push(PageRows::Values(good));
        }
        Ok(())
    }

    fn bad_line(&self, line: u64, text: &[u8], error: &dyn std::fmt::Display) -> BadRecord {
        BadRecord {
            error: Error::new(
                SqlState::InvalidJsonText,
                format!(
                    "line {line} of the response from {} is not valid JSON (format jsonl): {error}",
                    self.url()
                ),
            ),
            raw: Value::String(String::from_utf8_lossy(text).into_owned()),
        }
    }
}

/// A JSON body: the rows array the path's names lead to is read element by element; everything
/// else is kept (with `null` for the rows) and parsed when the body ends.
pub struct JsonRows<'a> {
    shape: Shape<'a>,
    route: Vec<String>,
    star: bool,
    /// The document without its rows.
    outer: Vec<u8>,
    /// The first bytes, for error details.
    lead: Vec<u8>,
    at: At,
    /// Objects on the route that are open.
    level: usize,
    key: Vec<u8>,
    /// The key just read leads on along the route.
    leads: bool,
    found: bool,
    rows: u64,
    batch: Batch,
    /// The rows node when it is not an array.
    node: Vec<u8>,
    /// Where `null` stands for the rows in `outer`, and (with `shape.ends`) the texts of the first
    /// and last rows, put back there for the paging values.
    rows_at: Option<usize>,
    first: Option<Vec<u8>>,
    last: Vec<u8>,
}

enum At {
    Root,
    Key,
    KeyText(ValueScan),
    Colon,
    Value,
    CommaOrEnd,
    /// A value off the route, copied as it is.
    Skip(ValueScan),
    /// The rows node, not an array: one row (or, under `[*]`, its members).
    Node(ValueScan),
    RowsStart,
    RowsAfterComma,
    Row(ValueScan),
    RowsBetween,
    /// The document is over (or its structure was not understood): the rest is kept for the
    /// final parse, which names what is wrong.
    Rest,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl<'a> JsonRows<'a> {
    fn new(shape: Shape<'a>, route: Vec<String>, star: bool) -> JsonRows<'a> {
        JsonRows {
            shape,
            route,
            star,
            outer: Vec::new(),
            lead: Vec::new(),
            at: At::Root,
            level: 0,
            key: Vec::new(),
            leads: false,
            found: false,
            rows: 0,
            batch: Batch::default(),
            node: Vec::new(),
            rows_at: None,
            first: None,
            last: Vec::new(),
        }
    }

    fn after_value(&self) -> At {
        if self.level == 0 {
            At::Rest
        } else {
            At::CommaOrEnd
        }
    }

    fn feed(&mut self, bytes: &[u8], ready: &mut Vec<PageRows>) -> Result<()> {
        if self.lead.len() < 256 {
            let more = (256 - self.lead.len()).min(bytes.len());
            self.lead.extend_from_slice(&bytes[..more]);
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match &mut self.at {
                At::Rest => {
                    self.outer.extend_from_slice(&bytes[i..]);
                    return Ok(());
                }
                At::Skip(scan) | At::KeyText(scan) | At::Node(scan) | At::Row(scan) => {
                    let (n, ended) = scan.scan(&bytes[i..]);
                    let piece = &bytes[i..i + n];
                    i += n;
                    match std::mem::replace(&mut self.at, At::Rest) {
                        At::Skip(scan) => {
                            self.outer.extend_from_slice(piece);
                            self.at = if ended {
                                self.after_value()
                            } else {
                                At::Skip(scan)
                            };
                        }
                        At::KeyText(scan) => {
                            self.outer.extend_from_slice(piece);
                            self.key.extend_from_slice(piece);
                            self.at = if ended {
                                let key: Option<String> = serde_json::from_slice(&self.key).ok();
                                self.leads = key.as_deref()
                                    == self.route.get(self.level - 1).map(String::as_str);
                                At::Colon
                            } else {
                                At::KeyText(scan)
                            };
                        }
                        At::Node(scan) => {
                            self.node.extend_from_slice(piece);
                            if ended {
                                self.node_rows(ready)?;
                                self.at = self.after_value();
                            } else {
                                self.at = At::Node(scan);
                            }
                        }
                        At::Row(scan) => {
                            self.batch.buf.extend_from_slice(piece);
                            if ended {
                                self.batch.end();
                                if self.batch.full() {
                                    let batch = self.take_batch();
                                    self.shape.batch(batch, Framing::Document, ready)?;
                                }
                                self.at = At::RowsBetween;
                            } else {
                                self.at = At::Row(scan);
                            }
                        }
                        _ => unreachable!("matched above"),
                    }
                    continue;
                }
                _ if is_space(b) => {
                    if !matches!(
                        self.at,
                        At::RowsStart | At::RowsAfterComma | At::RowsBetween
                    ) {
                        self.outer.push(b);
                    }
                    i += 1;
                    continue;
                }
                At::Root => {
                    if b == b'<' {
                        return Err(super::not_json(self.shape.request, &self.lead, None));
                    }
                    i += self.value(bytes, i, true)?;
                }
                At::Value => {
                    let leads = self.leads;
                    i += self.value(bytes, i, leads)?;
                }
                At::Key => {
                    if b == b'"' {
                        self.key.clear();
                        self.at = At::KeyText(ValueScan::default());
                    } else {
                        self.close_or_rest(b);
                        i += 1;
                    }
                }
                At::Colon => {
                    self.outer.push(b);
                    i += 1;
                    self.at = if b == b':' { At::Value } else { At::Rest };
                }
                At::CommaOrEnd => {
                    if b == b',' {
                        self.outer.push(b);
                        self.at = At::Key;
                    } else {
                        self.close_or_rest(b);
                    }
                    i += 1;
                }
                At::RowsStart | At::RowsAfterComma if b != b']' => {
                    self.rows += 1;
                    self.batch.begin(self.rows);
                    self.at = At::Row(ValueScan::default());
                }
                At::RowsStart | At::RowsBetween if b == b']' => {
                    i += 1;
                    self.at = self.after_value();
                }
                At::RowsBetween if b == b',' => {
                    i += 1;
                    self.at = At::RowsAfterComma;
                }
                At::RowsAfterComma | At::RowsBetween => {
                    let what = if b == b']' {
                        "a row".to_string()
                    } else {
                        format!("',' or ']', not '{}'", char::from(b).escape_default())
                    };
                    return Err(self.malformed(format!(
                        "is not valid JSON: expected {what} after row {}",
                        self.rows
                    )));
                }
                At::RowsStart => unreachable!("a ']' or not, both matched above"),
            }
        }
        Ok(())
    }

    /// A value starts at `bytes[i]`; `leads`: it is on the route. Returns the bytes taken.
    fn value(&mut self, bytes: &[u8], i: usize, leads: bool) -> Result<usize> {
        let b = bytes[i];
        if leads && self.level == self.route.len() {
            if self.found {
                return Err(self.malformed("has twice the rows".into()));
            }
            self.found = true;
            self.rows_at = Some(self.outer.len());
            self.outer.extend_from_slice(b"null");
            if b == b'[' {
                self.at = At::RowsStart;
                return Ok(1);
            }
            self.at = At::Node(ValueScan::default());
            return Ok(0);
        }
        if leads && b == b'{' {
            self.outer.push(b);
            self.level += 1;
            self.at = At::Key;
            return Ok(1);
        }
        self.at = At::Skip(ValueScan::default());
        Ok(0)
    }

    fn close_or_rest(&mut self, b: u8) {
        self.outer.push(b);
        if b == b'}' && self.level > 0 {
            self.level -= 1;
            self.at = self.after_value();
        } else {
            self.at = At::Rest;
        }
    }

    /// The rows of a node that is not an array.
    fn node_rows(&mut self, ready: &mut Vec<PageRows>) -> Result<()> {
        let node: Value = serde_json::from_slice(&std::mem::take(&mut self.node))
            .map_err(|e| self.invalid(&e))?;
        let rows = match node {
            Value::Object(members) if self.star => members.into_iter().map(|(_, v)| v).collect(),
            _ if self.star => Vec::new(),
            node => vec![node],
        };
        self.rows += rows.len() as u64;
        ready.push(PageRows::Values(rows));
        Ok(())
    }

    fn finish(&mut self, ready: &mut Vec<PageRows>) -> Result<Value> {
        if let At::Node(scan) = &self.at {
            if scan.ends_at_eof() {
                self.node_rows(ready)?;
                self.at = At::Rest;
            }
        }
        let batch = self.take_batch();
        self.shape.batch(batch, Framing::Document, ready)?;
        if let At::Node(_) | At::RowsStart | At::RowsAfterComma | At::Row(_) | At::RowsBetween =
            self.at
        {
            return Err(self
                .malformed("is not valid JSON: it ends too early, inside the rows".into())
                .with_detail(format!(
                    "response body: {}",
                    crate::error::body_snippet(&self.lead, &self.shape.request.secrets)
                ))
                .redact(&self.shape.request.secrets));
        }
        if let At::Root = self.at {
            return Err(super::not_json(self.shape.request, &self.lead, None));
        }
        if let (Some(at), Some(first)) = (self.rows_at, self.first.take()) {
            // `[first, last]` where the rows were: `[0]` and `[-1]` read what they would.
            let mut ends = b"[".to_vec();
            ends.extend_from_slice(&first);
            if self.rows > 1 {
                ends.push(b',');
                ends.extend_from_slice(&self.last);
            }
            ends.push(b']');
            self.outer.splice(at..at + 4, ends);
        }
        serde_json::from_slice(&self.outer).map_err(|e| self.invalid(&e))
    }

    /// The batch so far, its first and last rows kept when the paging values read them.
    fn take_batch(&mut self) -> Option<Taken> {
        let taken = self.batch.take();
        if let (true, Some(Taken { buf, records })) = (self.shape.ends, &taken) {
            if let (None, Some((_, range))) = (&self.first, records.first()) {
                self.first = Some(buf[range.clone()].to_vec());
            }
            if let Some((_, range)) = records.last() {
                self.last = buf[range.clone()].to_vec();
            }
        }
        taken
    }

    /// What is wrong with the rows of the path, said of the response.
    fn malformed(&self, what: String) -> Error {
        Error::new(
            SqlState::InvalidJsonText,
            format!(
                "response from {} {what} of {}",
                self.shape.url(),
                self.shape.path.text()
            ),
        )
    }

    fn invalid(&self, e: &serde_json::Error) -> Error {
        super::not_json(self.shape.request, &self.lead, Some(e))
    }
}

/// JSON Lines: one value per line, blank lines skipped, the path applied to each.
pub struct Lines<'a> {
    shape: Shape<'a>,
    /// The path is `$`: lines go to batches as they are.
    whole: bool,
    /// The start of a line whose end has not arrived.
    carry: Vec<u8>,
    line: u64,
    batch: Batch,
    values: Vec<Value>,
    values_bytes: usize,
}

impl<'a> Lines<'a> {
    fn new(shape: Shape<'a>) -> Lines<'a> {
        let whole = shape.path.text().trim() == "$";
        Lines {
            shape,
            whole,
            carry: Vec::new(),
            line: 0,
            batch: Batch::default(),
            values: Vec::new(),
            values_bytes: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8], ready: &mut Vec<PageRows>) -> Result<()> {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            if self.carry.is_empty() {
                self.take_line(&rest[..end], ready)?;
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(&rest[..end]);
                self.take_line(&line, ready)?;
            }
            rest = &rest[end + 1..];
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }

    fn take_line(&mut self, line: &[u8], ready: &mut Vec<PageRows>) -> Result<()> {
        self.line += 1;
        let start = line
            .iter()
            .position(|&b| !is_space(b))
            .unwrap_or(line.len());
        let end = line
            .iter()
            .rposition(|&b| !is_space(b))
            .map_or(start, |e| e + 1);
        let text = &line[start..end];
        if text.is_empty() {
            return Ok(());
        }
        let mut scan = ValueScan::default();
        let (n, ended) = scan.scan(text);
        let framed = n == text.len() && (ended || scan.ends_at_eof());
        if framed && self.whole && text[0] != b'[' {
            self.flush_values(ready);
            self.batch.begin(self.line);
            self.batch.buf.extend_from_slice(text);
            self.batch.end();
            if self.batch.full() {
                self.shape.batch(self.batch.take(), Framing::Lines, ready)?;
            }
            return Ok(());
        }
        self.shape.batch(self.batch.take(), Framing::Lines, ready)?;
        match serde_json::from_slice::<Value>(text) {
            Ok(value) => {
                self.values_bytes += text.len();
                self.values.extend(self.shape.path.rows(value));
                if self.values_bytes >= BATCH_BYTES {
                    self.flush_values(ready);
                }
            }
            Err(e) => {
                self.flush_values(ready);
                ready.push(PageRows::Bad(self.shape.bad_line(self.line, text, &e)));
            }
        }
        Ok(())
    }

    fn flush_values(&mut self, ready: &mut Vec<PageRows>) {
        if !self.values.is_empty() {
            ready.push(PageRows::Values(std::mem::take(&mut self.values)));
        }
        self.values_bytes = 0;
    }

    fn finish(&mut self, ready: &mut Vec<PageRows>) -> Result<()> {
        let last = std::mem::take(&mut self.carry);
        self.take_line(&last, ready)?;
        self.flush_values(ready);
        self.shape.batch(self.batch.take(), Framing::Lines, ready)
    }
}

/// CSV (RFC 4180 and `options.csv`'s dialect) through csv-core: every record a row of strings
/// keyed by the header (or `csv.columns`).
pub struct CsvRecords<'a> {
    shape: Shape<'a>,
    dialect: CsvDialect,
    reader: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    out_len: usize,
    ends_len: usize,
    keys: Option<Vec<String>>,
    /// Data records read so far.
    record: u64,
    rows: CsvRows,
}

enum CsvRows {
    /// Before the keys are known.
    Unknown,
    Cells(Box<FieldPage>),
    Objects {
        rows: Vec<Value>,
        bytes: usize,
    },
}

impl<'a> CsvRecords<'a> {
    fn new(shape: Shape<'a>, dialect: CsvDialect) -> CsvRecords<'a> {
        let reader = csv_core::ReaderBuilder::new()
            .delimiter(dialect.delimiter)
            .quote(dialect.quote)
            .build();
        CsvRecords {
            shape,
            dialect,
            reader,
            out: vec![0; 4096],
            ends: vec![0; 64],
            out_len: 0,
            ends_len: 0,
            keys: None,
            record: 0,
            rows: CsvRows::Unknown,
        }
    }

    fn feed(&mut self, mut input: &[u8], ready: &mut Vec<PageRows>) -> Result<()> {
        let at_end = input.is_empty();
        loop {
            let (result, read, written, ended) = self.reader.read_record(
                input,
                &mut self.out[self.out_len..],
                &mut self.ends[self.ends_len..],
            );
            input = &input[read..];
            self.out_len += written;
            self.ends_len += ended;
            match result {
                csv_core::ReadRecordResult::InputEmpty if !at_end => return Ok(()),
                csv_core::ReadRecordResult::InputEmpty | csv_core::ReadRecordResult::End => {
                    return Ok(())
                }
                csv_core::ReadRecordResult::OutputFull => {
                    let len = self.out.len() * 2;
                    self.out.resize(len, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let len = self.ends.len() * 2;
                    self.ends.resize(len, 0);
                }
                csv_core::ReadRecordResult::Record => {
                    // The line the record ends on: the reader is past its line break, if any.
                    let line = self.reader.line() - u64::from(!at_end || read > 0);
                    self.take_record(line, ready)?;
                    self.out_len = 0;
                    self.ends_len = 0;
                }
            }
        }
    }

    fn take_record(&mut self, line: u64, ready: &mut Vec<PageRows>) -> Result<()> {
        let bytes = &self.out[..self.out_len];
        let text = std::str::from_utf8(bytes);
        let mut fields = Vec::with_capacity(self.ends_len);
        if let Ok(text) = text {
            let mut start = 0;
            for &end in &self.ends[..self.ends_len] {
                fields.push(&text[start..end]);
                start = end;
            }
        }
        let Some(keys) = &self.keys else {
            let Ok(_) = text else {
                return Err(Error::new(
                    SqlState::NotUtf8,
                    format!(
                        "the header of the CSV response from {} is not valid UTF-8",
                        self.shape.url()
                    ),
                ));
            };
            let keys = match &self.dialect.columns {
                Some(columns) => columns.clone(),
                None => fields.iter().map(|f| f.to_string()).collect(),
            };
            self.rows = match self.shape.plan.map(Plan::layout) {
                Some(layout) => self.cells(layout, &keys),
                None => CsvRows::Objects {
                    rows: Vec::new(),
                    bytes: 0,
                },
            };
            self.keys = Some(keys);
            if self.dialect.header {
                return Ok(());
            }
            return self.take_record(line, ready);
        };
        self.record += 1;
        let record = self.record;
        let bad = |error: Error| BadRecord {
            error,
            raw: Value::String(String::from_utf8_lossy(bytes).into_owned()),
        };
        if text.is_err() {
            let bad = bad(Error::new(
                SqlState::NotUtf8,
                format!(
                    "record {record} (line {line}) of the CSV response from {} is not valid UTF-8",
                    self.shape.url()
                ),
            ));
            self.flush(ready);
            ready.push(PageRows::Bad(bad));
            return Ok(());
        }
        if fields.len() != keys.len() {
            let bad = bad(Error::new(
                SqlState::BadCsvRecord,
                format!(
                    "record {record} (line {line}) of the CSV response from {} has {} fields, not {} as the header",
                    self.shape.url(),
                    fields.len(),
                    keys.len()
                ),
            ));
            self.flush(ready);
            ready.push(PageRows::Bad(bad));
            return Ok(());
        }
        let full = match &mut self.rows {
            CsvRows::Cells(page) => {
                page.push(&fields);
                page.text_len() >= BATCH_BYTES
            }
            CsvRows::Objects { rows, bytes } => {
                let null = self.dialect.null.as_deref();
                let object = keys.iter().zip(&fields).map(|(key, field)| {
                    let value = if cells::field_is_null(field, null) {
                        Value::Null
                    } else {
                        Value::String(field.to_string())
                    };
                    (key.clone(), value)
                });
                rows.push(Value::Object(object.collect()));
                *bytes += self.out_len;
                *bytes >= BATCH_BYTES
            }
            CsvRows::Unknown => unreachable!("the keys are known"),
        };
        if full {
            self.flush(ready);
        }
        Ok(())
    }

    fn cells(&self, layout: &Layout, keys: &[String]) -> CsvRows {
        match FieldPage::new(layout, keys, self.dialect.null.as_deref()) {
            Some(page) => CsvRows::Cells(Box::new(page)),
            None => CsvRows::Objects {
                rows: Vec::new(),
                bytes: 0,
            },
        }
    }

    fn flush(&mut self, ready: &mut Vec<PageRows>) {
        match &mut self.rows {
            CsvRows::Cells(page) if !page.is_empty() => ready.push(PageRows::Compact(page.take())),
            CsvRows::Objects { rows, bytes } if !rows.is_empty() => {
                *bytes = 0;
                ready.push(PageRows::Values(std::mem::take(rows)));
            }
            _ => {}
        }
    }

    fn finish(&mut self, ready: &mut Vec<PageRows>) -> Result<()> {
        self.feed(&[], ready)?;
        self.flush(ready);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::cells::Want;
    use serde_json::json;

    fn path(text: &str) -> RowPath {
        RowPath::parse(text).unwrap()
    }

    #[test]
    fn a_cursor_read_from_the_last_row_keeps_the_first_and_last() {
        let paging = crate::spec::Paging::parse(
            &json!({"type": "cursor", "cursor_path": "$.data[-1].id", "cursor_param": "after"}),
        )
        .unwrap();
        assert!(cells::route_of(&path("$.data"), Some(&paging)).is_some());
        assert!(cells::keeps_ends(&path("$.data"), Some(&paging)));
        let inside = crate::spec::Paging::parse(
            &json!({"type": "cursor", "cursor_path": "$.data[1].id", "cursor_param": "after"}),
        )
        .unwrap();
        assert!(cells::route_of(&path("$.data"), Some(&inside)).is_none());
        let body = br#"{"data": [{"id": 1}, {"id": 2}, {"id": 3}], "has_more": true}"#;
        for piece in [1, 7, body.len()] {
            let (rows, doc) = decode_keeping(Format::Json, "$.data", None, body, piece, true);
            assert_eq!(rows.len(), 3);
            assert_eq!(
                doc.unwrap().unwrap(),
                json!({"data": [{"id": 1}, {"id": 3}], "has_more": true})
            );
        }
        let (_, doc) = decode_keeping(
            Format::Json,
            "$.data",
            None,
            br#"{"data": [{"id": 9}]}"#,
            4,
            true,
        );
        assert_eq!(doc.unwrap().unwrap(), json!({"data": [{"id": 9}]}));
        let (_, doc) = decode_keeping(Format::Json, "$.data", None, br#"{"data": []}"#, 4, true);
        assert_eq!(doc.unwrap().unwrap(), json!({"data": null}));
    }

    /// Every row, fed in pieces of `piece` bytes, and the document or the error.
    fn decode(
        format: Format,
        path_text: &str,
        plan: Option<&Plan>,
        body: &[u8],
        piece: usize,
    ) -> (Vec<Value>, Result<Option<Value>>) {
        decode_keeping(format, path_text, plan, body, piece, false)
    }

    /// `decode`, keeping the first and last rows in the document when `ends`.
    fn decode_keeping(
        format: Format,
        path_text: &str,
        plan: Option<&Plan>,
        body: &[u8],
        piece: usize,
        ends: bool,
    ) -> (Vec<Value>, Result<Option<Value>>) {
        let path = path(path_text);
        let args = crate::spec::RequestArgs {
            url: Some("http://h/x"),
            ..Default::default()
        };
        let request = crate::spec::parse_request(args, &crate::spec::test_limits()).unwrap();
        let shape = Shape {
            plan,
            tape: false,
            ends,
            path: &path,
            request: &request,
        };
        let route = cells::route_of(&path, None);
        let mut decoder = Decoder::new(&format, shape, route).unwrap();
        let mut ready = Vec::new();
        let mut rows = Vec::new();
        let mut take = |ready: &mut Vec<PageRows>| {
            for page in ready.drain(..) {
                match page {
                    PageRows::Bad(bad) => rows.push(json!({"bad": bad.error.message})),
                    page => rows.extend(page.into_values()),
                }
            }
        };
        for chunk in body.chunks(piece.max(1)) {
            if let Err(e) = decoder
                .feed(chunk, &mut ready)
                .and_then(|()| decoder.flush(&mut ready))
            {
                take(&mut ready);
                return (rows, Err(e));
            }
            take(&mut ready);
        }
        let doc = decoder.finish(&mut ready);
        take(&mut ready);
        (rows, doc)
    }

    fn typed() -> Plan {
        let layout = Layout::new([
            ("id".to_string(), Want::Scalar),
            ("name".to_string(), Want::Scalar),
        ]);
        Plan::new(layout, &path("$"), None).unwrap()
    }

    #[test]
    fn json_rows_come_element_by_element_whatever_the_pieces() {
        let body = br#" {"total": 3, "meta": {"data": [9]}, "data": [{"id": 1, "name": "a,]}\"b"}, 2 , [3, {"x": "]"}], {"id": 4}], "after": {"k": [1]}}"#;
        for piece in [1, 2, 3, 7, 1000] {
            for plan in [None, Some(typed())] {
                let (rows, doc) = decode(Format::Json, "$.data", plan.as_ref(), body, piece);
                assert_eq!(
                    rows,
                    vec![
                        json!({"id": 1, "name": "a,]}\"b"}),
                        json!(2),
                        json!([3, {"x": "]"}]),
                        json!({"id": 4})
                    ],
                    "piece {piece}"
                );
                assert_eq!(
                    doc.unwrap().unwrap(),
                    json!({"total": 3, "meta": {"data": [9]}, "data": null, "after": {"k": [1]}})
                );
            }
        }
    }

    #[test]
    fn json_roots_nodes_and_missing_rows() {
        let (rows, _) = decode(Format::Json, "$", None, b"[1, 2]", 1);
        assert_eq!(rows, vec![json!(1), json!(2)]);
        let (rows, _) = decode(Format::Json, "$", None, br#"{"a": 1}"#, 3);
        assert_eq!(rows, vec![json!({"a": 1})]);
        let (rows, _) = decode(Format::Json, "$", None, b"42", 1);
        assert_eq!(rows, vec![json!(42)]);
        let (rows, doc) = decode(Format::Json, "$.a.b", None, br#"{"a": {"b": {"x": 1}}}"#, 2);
        assert_eq!(rows, vec![json!({"x": 1})]);
        assert_eq!(doc.unwrap().unwrap(), json!({"a": {"b": null}}));
        let (rows, _) = decode(
            Format::Json,
            "$.a[*]",
            None,
            br#"{"a": {"p": 1, "q": 2}}"#,
            2,
        );
        assert_eq!(rows, vec![json!(1), json!(2)]);
        let (rows, doc) = decode(Format::Json, "$.data", None, br#"{"other": []}"#, 2);
        assert!(rows.is_empty());
        assert_eq!(doc.unwrap().unwrap(), json!({"other": []}));
        let (rows, _) = decode(Format::Json, "$.data", None, br#"{"d\u0061ta": [1]}"#, 2);
        assert_eq!(rows, vec![json!(1)]);
    }

    #[test]
    fn broken_json_is_an_error_after_the_rows_before_it() {
        let (_, doc) = decode(Format::Json, "$", None, br#"{"data": [{"id": 1}"#, 4);
        assert!(doc.unwrap_err().message.contains("ends too early"));
        let (rows, doc) = decode(
            Format::Json,
            "$.data",
            None,
            br#"{"data": [{"id": 1}, {"id": 2"#,
            4,
        );
        assert_eq!(rows, vec![json!({"id": 1})]);
        let err = doc.unwrap_err();
        assert!(err.message.contains("ends too early"), "{}", err.message);
        for (body, says) in [
            (&br#"{"data": [1 2]}"#[..], "expected ',' or ']'"),
            (br#"{"data": [1,]}"#, "expected a row"),
            (br#"{"data": [1, {"a" 1}]}"#, "row 2 of $.data"),
            (b"<html>", "is HTML"),
            (b"  ", "empty body"),
            (br#"{"data": [1], "data": [2]}"#, "twice"),
            (br#"{"data": [1]} x"#, "trailing characters"),
        ] {
            let (_, doc) = decode(Format::Json, "$.data", None, body, 3);
            let err = doc.unwrap_err();
            assert!(
                err.message.contains(says),
                "{}: {}",
                String::from_utf8_lossy(body),
                err.message
            );
            assert_eq!(err.state, SqlState::InvalidJsonText);
        }
    }

    #[test]
    fn streamed_errors_never_show_a_secret() {
        let args = crate::spec::RequestArgs {
            url: Some("http://h/x"),
            ..Default::default()
        };
        let mut request = crate::spec::parse_request(args, &crate::spec::test_limits()).unwrap();
        request.secrets.push("s3cret".into());
        let path = path("$.data");
        let shape = Shape {
            plan: None,
            tape: false,
            ends: false,
            path: &path,
            request: &request,
        };
        let mut decoder = Decoder::new(&Format::Json, shape, cells::route_of(&path, None)).unwrap();
        let mut ready = Vec::new();
        let body = br#"{"echo": "s3cret", "data": [1], "x": oops}"#;
        decoder.feed(body, &mut ready).unwrap();
        let err = decoder.finish(&mut ready).unwrap_err();
        assert!(err.message.contains("is not valid JSON"), "{}", err.message);
        let detail = err.detail.unwrap_or_default();
        assert!(
            detail.contains("***") && !detail.contains("s3cret"),
            "{detail}"
        );
    }

    #[test]
    fn lines_are_rows_and_bad_lines_are_named() {
        let body = b"{\"id\": 1}\r\n\n  {\"id\": 2, \"name\": \"x\"}\n[3, 4]\n{\"id\": \nnull\n1, 2\n{\"id\": 5}";
        for piece in [1, 5, 100] {
            for plan in [None, Some(typed())] {
                let (rows, doc) = decode(Format::Jsonl, "$", plan.as_ref(), body, piece);
                assert!(doc.unwrap().is_none());
                assert_eq!(rows.len(), 8, "{rows:?}");
                assert_eq!(rows[0], json!({"id": 1}));
                assert_eq!(rows[2..4], [json!(3), json!(4)]);
                assert!(
                    rows[4]["bad"].as_str().unwrap().starts_with("line 5 of"),
                    "{rows:?}"
                );
                assert_eq!(rows[5], Value::Null);
                assert!(rows[6]["bad"].as_str().unwrap().starts_with("line 7 of"));
                assert_eq!(rows[7], json!({"id": 5}));
            }
        }
        let (rows, _) = decode(
            Format::Jsonl,
            "$.a",
            None,
            b"{\"a\": [1, 2]}\n{\"a\": 3}\n",
            4,
        );
        assert_eq!(rows, vec![json!(1), json!(2), json!(3)]);
    }

    #[test]
    fn csv_records_are_rows_of_strings() {
        let body =
            "id,name,note\r\n1,\"a, \"\"b\"\"\",\n2,,x\n\n3,c\n4,\"multi\nline\",y\n".as_bytes();
        for piece in [1, 4, 1000] {
            for plan in [None, Some(typed())] {
                let (rows, _) = decode(
                    Format::Csv(CsvDialect::default()),
                    "$",
                    plan.as_ref(),
                    body,
                    piece,
                );
                // Typed or not, a row as a JSON value has every field.
                assert_eq!(rows.len(), 4, "{rows:?}");
                assert_eq!(
                    rows[0],
                    json!({"id": "1", "name": "a, \"b\"", "note": null})
                );
                assert_eq!(rows[1]["name"], Value::Null);
                assert!(
                    rows[2]["bad"]
                        .as_str()
                        .unwrap()
                        .starts_with("record 3 (line 5)"),
                    "{rows:?}"
                );
                assert_eq!(rows[3]["name"], json!("multi\nline"));
            }
        }
        let dialect = CsvDialect {
            delimiter: b';',
            header: false,
            columns: Some(vec!["id".into(), "name".into()]),
            null: Some("NULL".into()),
            ..CsvDialect::default()
        };
        let (rows, _) = decode(
            Format::Csv(dialect),
            "$",
            None,
            b"\xef\xbb\xbf1;NULL\n2;\n",
            3,
        );
        assert_eq!(
            rows,
            vec![
                json!({"id": "1", "name": null}),
                json!({"id": "2", "name": ""})
            ]
        );
        let (rows, _) = decode(
            Format::Csv(CsvDialect::default()),
            "$",
            None,
            b"a\n\xff\n",
            3,
        );
        assert!(rows[0]["bad"].as_str().unwrap().contains("not valid UTF-8"));
    }
}
