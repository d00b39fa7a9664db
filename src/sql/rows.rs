//! The Datum step of extract: JSON rows straight to Datums of the requested row type, with no
//! per-row SQL and no jsonb round trip. Common types have fast paths; every other type goes
//! through its own input function, so domains, enums, numerics and dates behave as in SQL.

use std::ffi::CStr;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use pgrx::pg_sys::{self, panic::CaughtError, Datum, Oid};
use pgrx::{IntoDatum, PgTupleDesc};
use serde_json::Value;

use crate::error::{snippet, Error, Result, SqlState};
use crate::extract::cells::{single_name, Cell, Compact, Layout, Want};
use crate::extract::tape::{Tape, Token};
use crate::extract::{iso8601_micros, ColumnKey, RowPath};
use crate::spec::json_kind;
use crate::spec::ColumnSource;

/// Microseconds between the Unix epoch and Postgres's (2000-01-01).
const POSTGRES_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
/// Postgres's timestamp range in its own microseconds (MIN_TIMESTAMP, END_TIMESTAMP).
const TIMESTAMP_RANGE_US: std::ops::Range<i64> =
    -211_813_488_000_000_000..9_223_371_331_200_000_000;

/// Converts JSON rows, one at a time, into the values of the requested row type: as one Datum
/// (`datum`) or straight into a tuplestore (`put`).
pub struct RowMaker {
    typoid: Oid,
    shape: Shape,
    /// The row's columns (one for a non-composite type), in the SRF's multi-call memory context:
    /// lives as long as this maker.
    tupdesc: pg_sys::TupleDesc,
    /// The converted row: one value per column of `tupdesc`.
    values: Vec<Datum>,
    nulls: Vec<bool>,
}

enum Shape {
    /// jsonb (the default), or any non-composite type: the whole row value converts. Parameter
    /// columns (jsonb only) become keys of rows that are objects.
    Scalar(Converter, Vec<(String, String)>),
    Composite(Composite),
}

struct Composite {
    type_name: String,
    columns: Vec<Column>,
}

struct Column {
    /// The column's name, and how it takes a row's key.
    key: ColumnKey,
    path: Option<RowPath>,
    /// The parameter it takes (`"{name}"` in options.columns), from the row's parameter set.
    param: Option<String>,
    /// `None` for a dropped column: always NULL.
    converter: Option<Converter>,
}

/// How one JSON value becomes a Datum of one type.
struct Converter {
    typoid: Oid,
    typmod: i32,
    kind: Kind,
    input: Box<pg_sys::FmgrInfo>,
    ioparam: Oid,
    /// The text handed to the input function, NUL-terminated; reused from value to value.
    text: Vec<u8>,
    /// The arrays of jsonb trees, reused from value to value (jsonb only).
    jsonb: JsonbTree,
}

enum Kind {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    Text,
    /// timestamp (`zoned` false) and timestamptz.
    Timestamp {
        zoned: bool,
    },
    /// json and jsonb: any value, as JSON text.
    Json,
    Array(Box<ArrayElement>),
    /// Everything else: the type's input function on the value's text.
    Input,
}

struct ArrayElement {
    converter: Converter,
    len: i16,
    by_value: bool,
    align: std::ffi::c_char,
}

/// A conversion failure, before it is placed at a row and column.
struct Failure {
    state: SqlState,
    reason: String,
}

impl RowMaker {
    /// Plans the conversion for `typoid`; `columns` are `options.columns`. Call in the memory
    /// context that outlives the rows (the SRF's multi-call context).
    pub fn new(typoid: Oid, columns: Vec<(String, ColumnSource)>) -> Result<RowMaker> {
        // SAFETY: catalog lookups on the backend thread.
        let composite = unsafe { pg_sys::type_is_rowtype(typoid) };
        if typoid == pg_sys::RECORDOID {
            return Err(Error::new(
                SqlState::DatatypeMismatch,
                "row_type must be a named composite type, not record",
            )
            .with_hint("pass NULL::your_table, or create a type with CREATE TYPE"));
        }
        if !composite {
            let params: Vec<(String, String)> = columns
                .iter()
                .filter_map(|(column, source)| match source {
                    ColumnSource::Param(name) => Some((column.clone(), name.clone())),
                    ColumnSource::Path(_) => None,
                })
                .collect();
            // jsonb rows take parameter columns (as keys); nothing else takes options.columns.
            let keyed = params.len() == columns.len() && typoid == pg_sys::JSONBOID;
            if !(columns.is_empty() || keyed) {
                return Err(Error::invalid(format!(
                    "options.columns needs a composite row_type, not {} (jsonb rows take only parameters, as keys)",
                    type_name(typoid)
                )));
            }
            let converter = Converter::new(typoid, -1)?;
            // SAFETY: a one-column descriptor in the current (multi-call) context.
            let tupdesc = unsafe {
                let tupdesc = pg_sys::CreateTemplateTupleDesc(1);
                pg_sys::TupleDescInitEntry(tupdesc, 1, c"api_fetch".as_ptr(), typoid, -1, 0);
                tupdesc
            };
            return Ok(RowMaker::with(
                typoid,
                tupdesc,
                Shape::Scalar(converter, params),
            ));
        }
        // SAFETY: a copy of the type's descriptor in the current (multi-call) context.
        let tupdesc = unsafe { pg_sys::lookup_rowtype_tupdesc_copy(typoid, -1) };
        let composite = Composite::new(typoid, tupdesc, columns)?;
        Ok(RowMaker::with(typoid, tupdesc, Shape::Composite(composite)))
    }

    fn with(typoid: Oid, tupdesc: pg_sys::TupleDesc, shape: Shape) -> RowMaker {
        // SAFETY: a valid descriptor.
        let width = unsafe { (*tupdesc).natts } as usize;
        RowMaker {
            typoid,
            shape,
            tupdesc,
            values: vec![Datum::from(0); width],
            nulls: vec![true; width],
        }
    }

    pub fn typoid(&self) -> Oid {
        self.typoid
    }

    /// What the rows' columns want, for pages parsed into cells: `None` unless the rows are of a
    /// composite type whose columns are all taken by key — by their name, or by the one member
    /// name their path in `options.columns` is (`$.signupTime`).
    pub fn layout(&self) -> Option<Layout> {
        let Shape::Composite(composite) = &self.shape else {
            return None;
        };
        let mut columns = Vec::with_capacity(composite.columns.len());
        for column in &composite.columns {
            // A parameter column takes no key: the parameter fills it (`fill_params`).
            let want = match column.param {
                Some(_) => Want::Skip,
                None => column
                    .converter
                    .as_ref()
                    .map_or(Want::Skip, Converter::want),
            };
            let (key, exact_only) = match &column.path {
                None => (column.key.name.clone(), false),
                Some(path) => (single_name(path)?, true),
            };
            columns.push((key, want, exact_only));
        }
        Some(Layout::with_keys(columns))
    }

    /// `fill` for row `row` of a page in cells.
    pub fn fill_compact(&mut self, number: u64, page: &Compact, row: usize) -> Result<()> {
        let (Shape::Composite(composite), Some(cells)) = (&mut self.shape, page.cells(row)) else {
            return self.fill(number, &page.row_value(row));
        };
        for (i, column) in composite.columns.iter_mut().enumerate() {
            let Some(converter) = column.converter.as_mut().filter(|_| column.param.is_none())
            else {
                self.nulls[i] = true;
                continue;
            };
            let converted = converter.convert_cell(&cells[i], page).map_err(|failure| {
                failure.at(
                    format!("api_fetch row {number}, column \"{}\"", column.key.name),
                    &page.value(&cells[i]),
                    converter.typoid,
                )
            })?;
            self.nulls[i] = converted.is_none();
            self.values[i] = converted.unwrap_or(Datum::from(0));
        }
        Ok(())
    }

    /// Whether rows are plain jsonb, made best from JSON tokens (`fill_tape`).
    pub fn wants_tape(&self) -> bool {
        matches!(&self.shape, Shape::Scalar(converter, params)
            if converter.typoid == pg_sys::JSONBOID && params.is_empty())
    }

    /// `fill` for row `row` of a page of JSON tokens (jsonb rows).
    pub fn fill_tape(&mut self, number: u64, tape: &Tape, row: usize) -> Result<()> {
        let Shape::Scalar(converter, _) = &mut self.shape else {
            return self.fill(number, &tape.row_value(row));
        };
        let at = tape.row(row);
        let converted = match tape.token(at) {
            Token::Null => None,
            _ => Some(converter.jsonb.tape_datum(tape, at).map_err(|failure| {
                failure.at(
                    format!("api_fetch row {number}"),
                    &tape.row_value(row),
                    converter.typoid,
                )
            })?),
        };
        self.nulls[0] = converted.is_none();
        self.values[0] = converted.unwrap_or(Datum::from(0));
        Ok(())
    }

    /// The descriptor of the rows `put` stores.
    pub fn tupdesc(&self) -> pg_sys::TupleDesc {
        self.tupdesc
    }

    /// Converts `row` (1-based `number` for messages) into this maker's values. Values that are
    /// not passed by value are allocated in the current memory context.
    pub fn fill(&mut self, number: u64, row: &Value) -> Result<()> {
        match &mut self.shape {
            Shape::Scalar(converter, _) => {
                let converted = converter.convert(row).map_err(|failure| {
                    failure.at(format!("api_fetch row {number}"), row, converter.typoid)
                })?;
                self.nulls[0] = converted.is_none();
                self.values[0] = converted.unwrap_or(Datum::from(0));
                Ok(())
            }
            Shape::Composite(composite) => {
                composite.fill(number, row, &mut self.values, &mut self.nulls)
            }
        }
    }

    /// Jsonb rows with parameter columns: `row` with those keys added (when it is an object).
    pub fn with_params(
        &self,
        row: &Value,
        params: Option<&serde_json::Map<String, Value>>,
    ) -> Option<Value> {
        let (Shape::Scalar(_, columns), Some(params), Value::Object(object)) =
            (&self.shape, params, row)
        else {
            return None;
        };
        if columns.is_empty() {
            return None;
        }
        let mut object = object.clone();
        for (column, name) in columns {
            object.insert(
                column.clone(),
                params.get(name).cloned().unwrap_or(Value::Null),
            );
        }
        Some(Value::Object(object))
    }

    /// Fills the parameter columns of a typed row from its parameter set.
    pub fn fill_params(
        &mut self,
        number: u64,
        params: Option<&serde_json::Map<String, Value>>,
    ) -> Result<()> {
        let Shape::Composite(composite) = &mut self.shape else {
            return Ok(());
        };
        for (i, column) in composite.columns.iter_mut().enumerate() {
            let (Some(name), Some(converter)) = (&column.param, column.converter.as_mut()) else {
                continue;
            };
            let value = params.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
            let converted = converter.convert(value).map_err(|failure| {
                failure.at(
                    format!("api_fetch row {number}, column \"{}\"", column.key.name),
                    value,
                    converter.typoid,
                )
            })?;
            self.nulls[i] = converted.is_none();
            self.values[i] = converted.unwrap_or(Datum::from(0));
        }
        Ok(())
    }

    /// Copies the last filled row's values into `slot`.
    ///
    /// # Safety
    /// `slot`'s descriptor has this maker's columns.
    pub unsafe fn store(&self, slot: *mut pg_sys::TupleTableSlot) {
        // SAFETY: the slot has one value and null flag per column, as the maker has.
        unsafe {
            let width = self.values.len();
            std::ptr::copy_nonoverlapping(self.values.as_ptr(), (*slot).tts_values, width);
            std::ptr::copy_nonoverlapping(self.nulls.as_ptr(), (*slot).tts_isnull, width);
        }
    }

    /// Copies the values at `positions` of the last filled row into the first columns of `slot`.
    ///
    /// # Safety
    /// `slot` has at least `positions.len()` columns, of those values' types.
    pub unsafe fn store_at(&self, slot: *mut pg_sys::TupleTableSlot, positions: &[usize]) {
        // SAFETY: as the caller promises.
        unsafe {
            for (to, &from) in positions.iter().enumerate() {
                *(*slot).tts_values.add(to) = self.values[from];
                *(*slot).tts_isnull.add(to) = self.nulls[from];
            }
        }
    }

    /// The last filled row as one Datum (a composite's tuple is formed in the current memory
    /// context); `None` is a NULL row.
    pub fn datum(&mut self) -> Option<Datum> {
        match self.shape {
            Shape::Scalar(..) => (!self.nulls[0]).then_some(self.values[0]),
            // SAFETY: values/nulls have one entry per attribute of tupdesc.
            Shape::Composite(_) => unsafe {
                let tuple = pg_sys::heap_form_tuple(
                    self.tupdesc,
                    self.values.as_mut_ptr(),
                    self.nulls.as_mut_ptr(),
                );
                Some(pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data))
            },
        }
    }

    /// Adds the last filled row to `store`, whose rows are described by `tupdesc()`.
    ///
    /// # Safety
    /// `store` is a live tuplestore.
    pub unsafe fn put(&mut self, store: *mut pg_sys::Tuplestorestate) {
        // SAFETY: values/nulls have one entry per attribute of tupdesc.
        unsafe {
            pg_sys::tuplestore_putvalues(
                store,
                self.tupdesc,
                self.values.as_mut_ptr(),
                self.nulls.as_mut_ptr(),
            )
        }
    }

    /// The Datum for `row` (1-based `number` for messages); `None` is a NULL row.
    #[cfg(any(test, feature = "pg_test"))]
    pub fn make(&mut self, number: u64, row: &Value) -> Result<Option<Datum>> {
        self.fill(number, row)?;
        Ok(self.datum())
    }
}

impl Composite {
    fn new(
        typoid: Oid,
        tupdesc: pg_sys::TupleDesc,
        mut mapped: Vec<(String, ColumnSource)>,
    ) -> Result<Composite> {
        // SAFETY: the view does not free the descriptor.
        let view = unsafe { PgTupleDesc::from_pg_unchecked(tupdesc) };
        let mut columns = Vec::with_capacity(view.len());
        for attribute in view.iter() {
            let name = attribute.name().to_string();
            if attribute.is_dropped() {
                columns.push(Column {
                    key: ColumnKey::new(name),
                    path: None,
                    param: None,
                    converter: None,
                });
                continue;
            }
            let source = mapped
                .iter()
                .position(|(column, _)| *column == name)
                .map(|i| mapped.remove(i).1);
            let (path, param) = match source {
                Some(ColumnSource::Path(path)) => (Some(path), None),
                Some(ColumnSource::Param(param)) => (None, Some(param)),
                None => (None, None),
            };
            let converter = Converter::new(attribute.type_oid().value(), attribute.type_mod())?;
            columns.push(Column {
                key: ColumnKey::new(name),
                path,
                param,
                converter: Some(converter),
            });
        }
        let type_name = type_name(typoid);
        if let Some((unknown, _)) = mapped.first() {
            return Err(Error::new(
                SqlState::UndefinedColumn,
                format!(
                    "options.columns names column \"{unknown}\", which {type_name} does not have"
                ),
            ));
        }
        Ok(Composite { type_name, columns })
    }

    fn fill(
        &mut self,
        number: u64,
        row: &Value,
        values: &mut [Datum],
        nulls: &mut [bool],
    ) -> Result<()> {
        let object = row.as_object();
        if object.is_none()
            && self
                .columns
                .iter()
                .any(|c| c.converter.is_some() && c.path.is_none() && c.param.is_none())
        {
            return Err(Error::new(
                SqlState::DatatypeMismatch,
                format!(
                    "api_fetch row {number} is {}, not an object: it cannot fill the columns of {}",
                    json_kind(row),
                    self.type_name
                ),
            )
            .with_detail(format!("row: {}", snippet(&row.to_string(), 100)))
            .with_hint(
                "point path at the objects (as in $.data), or map columns with options.columns",
            ));
        }
        for (i, column) in self.columns.iter_mut().enumerate() {
            let Some(converter) = column.converter.as_mut().filter(|_| column.param.is_none())
            else {
                nulls[i] = true;
                continue;
            };
            let picked = match &column.path {
                Some(path) => path.pick(row),
                None => object
                    .and_then(|o| column.key.pick(o))
                    .map(crate::extract::Picked::One),
            };
            let converted = match &picked {
                Some(value) => converter.convert(value.value()).map_err(|failure| {
                    failure.at(
                        format!("api_fetch row {number}, column \"{}\"", column.key.name),
                        value.value(),
                        converter.typoid,
                    )
                })?,
                None => None,
            };
            nulls[i] = converted.is_none();
            values[i] = converted.unwrap_or(Datum::from(0));
        }
        Ok(())
    }
}

impl Converter {
    fn new(typoid: Oid, typmod: i32) -> Result<Converter> {
        let mut input_fn = Oid::INVALID;
        let mut ioparam = Oid::INVALID;
        // SAFETY: catalog lookups on the backend thread; FmgrInfo lives in a Box we own, its
        // cache in the current (multi-call) memory context.
        let input = unsafe {
            pg_sys::getTypeInputInfo(typoid, &mut input_fn, &mut ioparam);
            let mut input: Box<pg_sys::FmgrInfo> = Box::new(std::mem::zeroed());
            pg_sys::fmgr_info_cxt(input_fn, input.as_mut(), pg_sys::CurrentMemoryContext);
            input
        };
        let kind = match typoid {
            pg_sys::INT2OID => Kind::Int2,
            pg_sys::INT4OID => Kind::Int4,
            pg_sys::INT8OID => Kind::Int8,
            pg_sys::FLOAT4OID => Kind::Float4,
            pg_sys::FLOAT8OID => Kind::Float8,
            pg_sys::BOOLOID => Kind::Bool,
            pg_sys::TEXTOID => Kind::Text,
            pg_sys::VARCHAROID if typmod < 0 => Kind::Text,
            pg_sys::TIMESTAMPOID if typmod < 0 => Kind::Timestamp { zoned: false },
            pg_sys::TIMESTAMPTZOID if typmod < 0 => Kind::Timestamp { zoned: true },
            pg_sys::JSONOID | pg_sys::JSONBOID => Kind::Json,
            _ => {
                // SAFETY: catalog lookups on the backend thread.
                let element = unsafe { pg_sys::get_element_type(typoid) };
                if element == Oid::INVALID {
                    Kind::Input
                } else {
                    let (mut len, mut by_value, mut align) = (0i16, false, 0 as std::ffi::c_char);
                    unsafe {
                        pg_sys::get_typlenbyvalalign(element, &mut len, &mut by_value, &mut align)
                    };
                    Kind::Array(Box::new(ArrayElement {
                        converter: Converter::new(element, typmod)?,
                        len,
                        by_value,
                        align,
                    }))
                }
            }
        };
        Ok(Converter {
            typoid,
            typmod,
            kind,
            input,
            ioparam,
            text: Vec::new(),
            jsonb: JsonbTree::default(),
        })
    }

    /// What this converter wants of a value parsed into cells.
    fn want(&self) -> Want {
        match &self.kind {
            Kind::Json if self.typoid == pg_sys::JSONBOID => Want::Json,
            Kind::Array(element) => Want::Array(Box::new(element.converter.want())),
            _ => Want::Scalar,
        }
    }

    /// `convert` for a cell: the same result, without a JSON value for the common cases.
    fn convert_cell(&mut self, cell: &Cell, page: &Compact) -> Result<Option<Datum>, Failure> {
        let fast = match (&self.kind, *cell) {
            (_, Cell::Missing | Cell::Null) => return Ok(None),
            (Kind::Int2, Cell::Int(v)) => i16::try_from(v).ok().map(Datum::from),
            (Kind::Int4, Cell::Int(v)) => i32::try_from(v).ok().map(Datum::from),
            (Kind::Int8, Cell::Int(v)) => Some(Datum::from(v)),
            (Kind::Bool, Cell::Bool(b)) => Some(Datum::from(b)),
            (Kind::Text, Cell::Str(span) | Cell::Number(span) | Cell::Json(span)) => {
                Some(text_datum(page.text(span))?)
            }
            (Kind::Timestamp { zoned }, Cell::Str(span)) => iso8601_micros(page.text(span), *zoned)
                .filter(|micros| TIMESTAMP_RANGE_US.contains(micros))
                .map(Datum::from),
            (Kind::Json, Cell::Json(span)) => Some(self.input_text(page.text(span))?),
            (Kind::Input, Cell::Str(span) | Cell::Number(span)) => {
                Some(self.input_text(page.text(span))?)
            }
            // A string (every CSV field) goes to the type's input function, as `convert` does.
            (
                Kind::Int2 | Kind::Int4 | Kind::Int8 | Kind::Float4 | Kind::Float8 | Kind::Bool,
                Cell::Str(span),
            ) => Some(self.input_text(page.text(span))?),
            (Kind::Array(_), Cell::Array { start, len }) => {
                Some(self.array(page.elements(start, len), |element, item| {
                    element.convert_cell(item, page)
                })?)
            }
            _ => None,
        };
        match fast {
            Some(datum) => Ok(Some(datum)),
            None => self.convert(&page.value(cell)),
        }
    }

    /// JSON null is SQL NULL; anything the fast path does not take goes to the input function.
    fn convert(&mut self, value: &Value) -> Result<Option<Datum>, Failure> {
        if value.is_null() {
            return Ok(None);
        }
        let fast = match (&self.kind, value) {
            (Kind::Int2, Value::Number(n)) => n
                .as_i64()
                .and_then(|v| i16::try_from(v).ok())
                .map(Datum::from),
            (Kind::Int4, Value::Number(n)) => n
                .as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .map(Datum::from),
            (Kind::Int8, Value::Number(n)) => n.as_i64().map(Datum::from),
            // Beyond float range: the input function says so (22003), never infinity.
            (Kind::Float8, Value::Number(n)) => n
                .as_f64()
                .filter(|v| v.is_finite())
                .and_then(|v| v.into_datum()),
            (Kind::Float4, Value::Number(n)) => n
                .as_f64()
                .map(|v| v as f32)
                .filter(|v| v.is_finite())
                .and_then(|v| v.into_datum()),
            (Kind::Bool, Value::Bool(b)) => Some(Datum::from(*b)),
            (Kind::Json, value) if self.typoid == pg_sys::JSONBOID => {
                Some(self.jsonb.value_datum(value)?)
            }
            (Kind::Text, Value::String(s)) => Some(text_datum(s)?),
            (Kind::Text, other) => Some(text_datum(&other.to_string())?),
            (Kind::Timestamp { .. }, Value::Number(n)) => {
                n.as_f64().and_then(epoch_seconds_to_timestamp)
            }
            (Kind::Timestamp { zoned }, Value::String(s)) => iso8601_micros(s, *zoned)
                .filter(|micros| TIMESTAMP_RANGE_US.contains(micros))
                .map(Datum::from),
            (Kind::Array(_), Value::Array(items)) => {
                Some(self.array(items, |element, item| element.convert(item))?)
            }
            _ => None,
        };
        match fast {
            Some(datum) => Ok(Some(datum)),
            None => self.input(value).map(Some),
        }
    }

    /// A one-dimensional array of `items`, each converted by `convert` with the element's
    /// converter; a failing element is named by its position.
    fn array<T>(
        &mut self,
        items: &[T],
        mut convert: impl FnMut(&mut Converter, &T) -> Result<Option<Datum>, Failure>,
    ) -> Result<Datum, Failure> {
        let Kind::Array(element) = &mut self.kind else {
            unreachable!("array() is only called for array kinds")
        };
        let mut values = Vec::with_capacity(items.len());
        let mut nulls = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let converted = convert(&mut element.converter, item).map_err(|f| f.element(i))?;
            nulls.push(converted.is_none());
            values.push(converted.unwrap_or(Datum::from(0)));
        }
        Ok(element.construct(&mut values, &mut nulls))
    }

    /// The type's own input function on the value's text: strings as they are, everything else
    /// (and every value for json/jsonb) as JSON text. Its ERROR is caught and re-raised with the
    /// row and column by the caller.
    fn input(&mut self, value: &Value) -> Result<Datum, Failure> {
        self.text.clear();
        match (value, &self.kind) {
            (Value::String(s), kind) if !matches!(kind, Kind::Json) => {
                self.text.extend_from_slice(s.as_bytes())
            }
            _ => serde_json::to_writer(&mut self.text, value).map_err(|e| Failure {
                state: SqlState::Internal,
                reason: e.to_string(),
            })?,
        }
        self.call_input()
    }

    /// The input function on `text`.
    fn input_text(&mut self, text: &str) -> Result<Datum, Failure> {
        self.text.clear();
        self.text.extend_from_slice(text.as_bytes());
        self.call_input()
    }

    /// The input function on the text in `self.text`.
    fn call_input(&mut self) -> Result<Datum, Failure> {
        if self.text.contains(&0) {
            return Err(Failure::nul());
        }
        self.text.push(0);
        let (input, ioparam, typmod) = (&mut *self.input, self.ioparam, self.typmod);
        let text = self.text.as_mut_ptr().cast::<std::ffi::c_char>();
        let called = catch_unwind(AssertUnwindSafe(|| unsafe {
            // SAFETY: a valid FmgrInfo for the type's input function and a NUL-terminated string.
            pg_sys::InputFunctionCall(input, text, ioparam, typmod)
        }));
        called.map_err(Failure::caught)
    }
}

impl ArrayElement {
    /// A one-dimensional array of `values` (NULL where `nulls` says), in the current context.
    fn construct(&self, values: &mut [Datum], nulls: &mut [bool]) -> Datum {
        let elem_type = self.converter.typoid;
        // SAFETY: values/nulls have one entry per element, of the element type described.
        let array = unsafe {
            if values.is_empty() {
                pg_sys::construct_empty_array(elem_type)
            } else {
                let mut dims = [values.len() as i32];
                let mut lower_bounds = [1i32];
                pg_sys::construct_md_array(
                    values.as_mut_ptr(),
                    nulls.as_mut_ptr(),
                    1,
                    dims.as_mut_ptr(),
                    lower_bounds.as_mut_ptr(),
                    elem_type,
                    self.len as i32,
                    self.by_value,
                    self.align,
                )
            }
        };
        Datum::from(array)
    }
}

impl Failure {
    /// The ERROR a Postgres function raised (caught as pgrx's panic); anything else unwinds on.
    fn caught(payload: Box<dyn std::any::Any + Send>) -> Failure {
        match payload.downcast::<CaughtError>() {
            Ok(caught) => match *caught {
                CaughtError::PostgresError(report) => Failure {
                    state: SqlState::Raised(report.sql_error_code() as i32),
                    reason: report.message().to_string(),
                },
                other => resume_unwind(Box::new(other)),
            },
            Err(payload) => resume_unwind(payload),
        }
    }

    /// The failure of element `i` (0-based) of an array.
    fn element(self, i: usize) -> Failure {
        Failure {
            state: self.state,
            reason: format!("element {}: {}", i + 1, self.reason),
        }
    }

    fn nul() -> Failure {
        Failure {
            state: SqlState::Raised(pgrx::PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER as i32),
            reason:
                "the value contains a NUL character (\\u0000), which PostgreSQL text cannot hold"
                    .into(),
        }
    }

    fn at(self, place: String, value: &Value, typoid: Oid) -> Error {
        Error::new(
            self.state,
            format!(
                "{place}: cannot convert {} to {}",
                snippet(&value.to_string(), 100),
                type_name(typoid)
            ),
        )
        .with_detail(self.reason)
    }
}

/// Whether every one of `values` converts to a column of type `typoid`, by the conversion that
/// loads rows (what `suggest_table` decides types by). The values made are freed at once.
pub fn converts_all(typoid: Oid, values: &[&Value]) -> Result<bool> {
    let mut trial = pgrx::PgMemoryContexts::new("suggest_table trial conversions");
    // SAFETY: the converter and the values it makes live in the trial context, dropped below.
    unsafe {
        trial.switch_to(|_| {
            let mut converter = Converter::new(typoid, -1)?;
            Ok(values.iter().all(|value| converter.convert(value).is_ok()))
        })
    }
}

/// jsonb Datums made by Postgres's own builder (`JsonbValueToJsonb` over a `JsonbValue` tree)
/// from a parsed value or from JSON tokens: no JSON text printed for `jsonb_in` to lex again.
/// Object keys are put in jsonb's order (length first) here, duplicates keeping the last value as
/// jsonb_in does. The tree's arrays are kept from value to value: no allocation per node.
#[derive(Default)]
struct JsonbTree {
    /// Arrays of the tree being built, and spare ones.
    elements: Vec<Vec<pg_sys::JsonbValue>>,
    pairs: Vec<Vec<pg_sys::JsonbPair>>,
    used_elements: usize,
    used_pairs: usize,
}

/// Where a tree's values come from.
trait JsonSource {
    fn node(&self, tree: &mut JsonbTree) -> Result<pg_sys::JsonbValue, Failure>;
}

impl JsonbTree {
    fn value_datum(&mut self, value: &Value) -> Result<Datum, Failure> {
        self.datum(value)
    }

    fn tape_datum(&mut self, tape: &Tape, at: usize) -> Result<Datum, Failure> {
        self.datum(&(tape, at))
    }

    fn datum(&mut self, source: &dyn JsonSource) -> Result<Datum, Failure> {
        self.used_elements = 0;
        self.used_pairs = 0;
        let mut root = source.node(self)?;
        // SAFETY: `root` and every array it points to live in `self` (and the source) until the
        // call returns; the result is palloc'd in the current context.
        let jsonb = unsafe { pg_sys::JsonbValueToJsonb(&mut root) };
        Ok(Datum::from(jsonb))
    }

    /// A spare array for elements (cleared), its index in `elements`.
    fn take_elements(&mut self) -> usize {
        if self.used_elements == self.elements.len() {
            self.elements.push(Vec::new());
        }
        self.used_elements += 1;
        let at = self.used_elements - 1;
        self.elements[at].clear();
        at
    }

    fn take_pairs(&mut self) -> usize {
        if self.used_pairs == self.pairs.len() {
            self.pairs.push(Vec::new());
        }
        self.used_pairs += 1;
        let at = self.used_pairs - 1;
        self.pairs[at].clear();
        at
    }

    /// The array node of the elements in `elements[at]`.
    fn array(&self, at: usize) -> pg_sys::JsonbValue {
        let elements = &self.elements[at];
        let mut node = pg_sys::JsonbValue {
            type_: pg_sys::jbvType::jbvArray,
            ..Default::default()
        };
        node.val.array.nElems = elements.len() as i32;
        node.val.array.elems = elements.as_ptr().cast_mut();
        node.val.array.rawScalar = false;
        node
    }

    /// The object node of the pairs in `pairs[at]`, sorted and made unique first.
    fn object(&mut self, at: usize) -> pg_sys::JsonbValue {
        let pairs = &mut self.pairs[at];
        for (i, pair) in pairs.iter_mut().enumerate() {
            pair.order = i as u32;
        }
        // Stable: of equal keys the last sent stays last, and is the one kept.
        pairs.sort_by(|a, b| {
            let (a, b) = (key_bytes(&a.key), key_bytes(&b.key));
            a.len().cmp(&b.len()).then_with(|| a.cmp(b))
        });
        let mut kept = 0;
        for i in 0..pairs.len() {
            if kept > 0 && key_bytes(&pairs[kept - 1].key) == key_bytes(&pairs[i].key) {
                pairs[kept - 1] = pairs[i];
            } else {
                pairs[kept] = pairs[i];
                kept += 1;
            }
        }
        pairs.truncate(kept);
        let mut node = pg_sys::JsonbValue {
            type_: pg_sys::jbvType::jbvObject,
            ..Default::default()
        };
        node.val.object.nPairs = pairs.len() as i32;
        node.val.object.pairs = pairs.as_mut_ptr();
        node
    }
}

/// The bytes of a string node.
fn key_bytes(node: &pg_sys::JsonbValue) -> &[u8] {
    // SAFETY: key nodes are strings pointing at text that outlives the tree.
    unsafe {
        std::slice::from_raw_parts(
            node.val.string.val.cast::<u8>(),
            node.val.string.len as usize,
        )
    }
}

impl JsonSource for Value {
    fn node(&self, tree: &mut JsonbTree) -> Result<pg_sys::JsonbValue, Failure> {
        Ok(match self {
            Value::Null => scalar(pg_sys::jbvType::jbvNull),
            Value::Bool(b) => {
                let mut node = scalar(pg_sys::jbvType::jbvBool);
                node.val.boolean = *b;
                node
            }
            Value::Number(n) => numeric_node(&n.to_string())?,
            Value::String(s) => jsonb_string(s)?,
            Value::Array(items) => {
                // The array is this node's before its children take theirs; its buffer may grow
                // until `array` points at it.
                let at = tree.take_elements();
                for item in items {
                    let element = item.node(tree)?;
                    tree.elements[at].push(element);
                }
                tree.array(at)
            }
            Value::Object(map) => {
                let at = tree.take_pairs();
                for (key, item) in map {
                    let pair = pg_sys::JsonbPair {
                        key: jsonb_string(key)?,
                        value: item.node(tree)?,
                        order: 0,
                    };
                    tree.pairs[at].push(pair);
                }
                tree.object(at)
            }
        })
    }
}

impl JsonSource for (&Tape, usize) {
    fn node(&self, tree: &mut JsonbTree) -> Result<pg_sys::JsonbValue, Failure> {
        let (tape, at) = *self;
        Ok(match tape.token(at) {
            Token::Null => scalar(pg_sys::jbvType::jbvNull),
            Token::Bool(b) => {
                let mut node = scalar(pg_sys::jbvType::jbvBool);
                node.val.boolean = b;
                node
            }
            Token::Number(span) => numeric_node(tape.str(span))?,
            Token::String(span) => jsonb_string(tape.str(span))?,
            Token::Array { len, .. } => {
                let array = tree.take_elements();
                let mut i = at + 1;
                for _ in 0..len {
                    let element = (tape, i).node(tree)?;
                    tree.elements[array].push(element);
                    i = tape.next(i);
                }
                tree.array(array)
            }
            Token::Object { len, .. } => {
                let object = tree.take_pairs();
                let mut i = at + 1;
                for _ in 0..len {
                    let Token::String(key) = tape.token(i) else {
                        break;
                    };
                    let pair = pg_sys::JsonbPair {
                        key: jsonb_string(tape.str(key))?,
                        value: (tape, i + 1).node(tree)?,
                        order: 0,
                    };
                    tree.pairs[object].push(pair);
                    i = tape.next(i + 1);
                }
                tree.object(object)
            }
        })
    }
}

fn scalar(kind: pg_sys::jbvType::Type) -> pg_sys::JsonbValue {
    pg_sys::JsonbValue {
        type_: kind,
        ..Default::default()
    }
}

fn numeric_node(text: &str) -> Result<pg_sys::JsonbValue, Failure> {
    let mut node = scalar(pg_sys::jbvType::jbvNumeric);
    node.val.numeric = numeric(text)?;
    Ok(node)
}

/// A jsonb string node pointing at `s`, which outlives the tree; jsonb cannot hold NUL.
fn jsonb_string(s: &str) -> Result<pg_sys::JsonbValue, Failure> {
    if s.contains('\0') {
        return Err(Failure {
            state: SqlState::Raised(pgrx::PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER as i32),
            reason: "unsupported Unicode escape sequence: \\u0000 cannot be converted to text"
                .into(),
        });
    }
    let mut node = pg_sys::JsonbValue {
        type_: pg_sys::jbvType::jbvString,
        ..Default::default()
    };
    node.val.string.len = s.len() as i32;
    node.val.string.val = s.as_ptr().cast_mut().cast();
    Ok(node)
}

/// A JSON number's text as numeric, as jsonb_in makes it: integers directly, the rest by
/// numeric_in.
fn numeric(text: &str) -> Result<pg_sys::Numeric, Failure> {
    if let Ok(i) = text.parse::<i64>() {
        // SAFETY: a palloc'd numeric in the current context.
        return Ok(unsafe { pg_sys::int64_to_numeric(i) });
    }
    let text = std::ffi::CString::new(text).map_err(|_| Failure::nul())?;
    let called = catch_unwind(AssertUnwindSafe(|| unsafe {
        // SAFETY: numeric_in on a NUL-terminated string, typmod -1.
        pgrx::direct_function_call::<Datum>(
            pg_sys::numeric_in,
            &[
                Some(Datum::from(text.as_ptr())),
                Some(Datum::from(pg_sys::InvalidOid)),
                Some(Datum::from(-1i32)),
            ],
        )
    }));
    match called.map_err(Failure::caught)? {
        Some(datum) => Ok(datum.cast_mut_ptr()),
        None => Err(Failure {
            state: SqlState::Internal,
            reason: "numeric_in returned NULL".into(),
        }),
    }
}

fn text_datum(text: &str) -> Result<Datum, Failure> {
    if text.contains('\0') {
        return Err(Failure::nul());
    }
    // SAFETY: a UTF-8 buffer of the given length (the database is UTF8, checked by the caller).
    Ok(Datum::from(unsafe {
        pg_sys::cstring_to_text_with_len(text.as_ptr().cast(), text.len() as i32)
    }))
}

/// Unix epoch seconds (as APIs such as Stripe send them) to a timestamp Datum, when in range.
fn epoch_seconds_to_timestamp(seconds: f64) -> Option<Datum> {
    let micros = (seconds * 1_000_000.0).round();
    if !micros.is_finite() || micros.abs() > 9.0e18 {
        return None;
    }
    // Out of range falls through to the input function, whose error names the value.
    let postgres = micros as i64 - POSTGRES_EPOCH_OFFSET_US;
    TIMESTAMP_RANGE_US
        .contains(&postgres)
        .then(|| Datum::from(postgres))
}

pub fn type_name(typoid: Oid) -> String {
    // SAFETY: format_type_be returns a palloc'd C string for any OID.
    unsafe {
        CStr::from_ptr(pg_sys::format_type_be(typoid))
            .to_string_lossy()
            .into_owned()
    }
}
