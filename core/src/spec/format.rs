//! How a body's bytes become rows: `options.format` (JSON, JSON Lines, CSV and its dialect) and
//! `options.decompress` (gzip files served without Content-Encoding).

use serde::Deserialize;
use serde_json::Value;

use super::paging::{Paging, PagingKind};
use crate::error::{Error, Result};

/// The format of a body, given by `options.format` or read from the Content-Type.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Json,
    /// One JSON value per line; blank lines skipped; `path` applies to each line.
    Jsonl,
    Csv(CsvDialect),
}

/// `options.csv`: RFC 4180 by default (comma, double quote, a header row).
#[derive(Debug, Clone, PartialEq)]
pub struct CsvDialect {
    pub delimiter: u8,
    pub quote: u8,
    pub header: bool,
    /// Keys by position; with `header`, they replace the header row's.
    pub columns: Option<Vec<String>>,
    /// The field that is NULL; `None`: the empty field.
    pub null: Option<String>,
}

impl Default for CsvDialect {
    fn default() -> Self {
        CsvDialect {
            delimiter: b',',
            quote: b'"',
            header: true,
            columns: None,
            null: None,
        }
    }
}

/// `options.decompress`: whether a gzip file (not a Content-Encoding) is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Decompress {
    /// A body that starts with gzip's magic bytes is unpacked.
    #[default]
    Auto,
    Gzip,
    None,
}

/// The format options of a fetch, as given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BodyFormat {
    /// `None`: the Content-Type decides, JSON when it says nothing known.
    pub format: Option<Format>,
    pub decompress: Decompress,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CsvOptions {
    delimiter: Option<String>,
    quote: Option<String>,
    header: Option<bool>,
    columns: Option<Vec<String>>,
    null: Option<String>,
}

impl BodyFormat {
    pub(super) fn parse(
        format: Option<&str>,
        csv: Option<CsvOptions>,
        decompress: Option<&str>,
    ) -> Result<BodyFormat> {
        let given_csv = csv.is_some();
        let format = match format {
            None if given_csv => Some(Format::Csv(dialect(csv.unwrap_or_default())?)),
            None => None,
            Some("json") => Some(Format::Json),
            Some("jsonl") => Some(Format::Jsonl),
            Some("csv") => Some(Format::Csv(dialect(csv.unwrap_or_default())?)),
            Some(other) => {
                return Err(
                    Error::invalid(format!("unknown options.format \"{other}\""))
                        .with_hint("use json, jsonl or csv"),
                )
            }
        };
        if !matches!(format, None | Some(Format::Csv(_))) && given_csv {
            return Err(Error::invalid("options.csv needs options.format csv"));
        }
        let decompress = match decompress {
            None | Some("auto") => Decompress::Auto,
            Some("gzip") => Decompress::Gzip,
            Some("none") => Decompress::None,
            Some(other) => {
                return Err(
                    Error::invalid(format!("unknown options.decompress \"{other}\""))
                        .with_hint("use auto, gzip or none"),
                )
            }
        };
        Ok(BodyFormat { format, decompress })
    }

    /// The format of a response with `content_type`.
    pub fn of(&self, content_type: Option<&str>) -> Format {
        if let Some(format) = &self.format {
            return format.clone();
        }
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        match media.as_deref() {
            Some(
                "application/x-ndjson"
                | "application/jsonl"
                | "application/x-jsonlines"
                | "application/jsonlines",
            ) => Format::Jsonl,
            Some("text/csv" | "application/csv") => Format::Csv(CsvDialect::default()),
            _ => Format::Json,
        }
    }
}

fn dialect(options: CsvOptions) -> Result<CsvDialect> {
    let byte = |value: Option<String>, name: &str, default: u8| -> Result<u8> {
        match value.as_deref() {
            None => Ok(default),
            Some(text) if text.len() == 1 && text != "\n" && text != "\r" => Ok(text.as_bytes()[0]),
            Some(_) => Err(Error::invalid(format!(
                "options.csv.{name} must be one ASCII character other than a line break"
            ))),
        }
    };
    let delimiter = byte(options.delimiter, "delimiter", b',')?;
    let quote = byte(options.quote, "quote", b'"')?;
    if delimiter == quote {
        return Err(Error::invalid(
            "options.csv.delimiter and options.csv.quote must differ",
        ));
    }
    let header = options.header.unwrap_or(true);
    if !header && options.columns.is_none() {
        return Err(Error::invalid(
            "options.csv.header false needs options.csv.columns, the keys by position",
        ));
    }
    if let Some(columns) = &options.columns {
        if columns.is_empty() {
            return Err(Error::invalid(
                "options.csv.columns must name at least one key",
            ));
        }
        if let Some(twice) = columns
            .iter()
            .enumerate()
            .find(|(i, c)| columns[..*i].contains(c))
        {
            return Err(Error::invalid(format!(
                "options.csv.columns names \"{}\" twice",
                twice.1
            )));
        }
    }
    Ok(CsvDialect {
        delimiter,
        quote,
        header,
        columns: options.columns,
        null: options.null,
    })
}

/// What a format cannot do with `path` and `paging`: checked before any request when
/// `options.format` names it, and at the response when its Content-Type does.
pub fn check(format: &Format, path: &str, paging: Option<&Paging>) -> Result<()> {
    match format {
        Format::Json => Ok(()),
        Format::Jsonl => check_records(format, paging),
        Format::Csv(_) => check_csv(path, paging),
    }
}

/// What CSV cannot do: its rows are the records (`path` `$`), and paging cannot read values from
/// its body.
fn check_csv(path: &str, paging: Option<&Paging>) -> Result<()> {
    if path.trim() != "$" {
        return Err(Error::invalid(format!(
            "path must be $ for CSV, not \"{path}\": a CSV body's rows are its records"
        )));
    }
    check_records(&Format::Csv(CsvDialect::default()), paging)
}

/// A body of lines or records has no document for paging to read values from (`total_path`,
/// `has_more_path`, a cursor or a next URL).
fn check_records(format: &Format, paging: Option<&Paging>) -> Result<()> {
    let Some(paging) = paging else {
        return Ok(());
    };
    let reads_body = paging.total_path.is_some()
        || paging.total_pages_path.is_some()
        || paging.has_more_path.is_some()
        || matches!(
            paging.kind,
            PagingKind::Cursor { .. } | PagingKind::NextUrl { .. }
        );
    if !reads_body {
        return Ok(());
    }
    let name = match format {
        Format::Json => return Ok(()),
        Format::Jsonl => "a JSON Lines",
        Format::Csv(_) => "a CSV",
    };
    Err(Error::invalid(format!(
        "this paging reads values from the body, which {name} body does not have"
    ))
    .with_hint("page it by page number or offset without total_path, or by the Link header"))
}

/// An option only `api_fetch` takes (formats, max_rows), named in `options`: `api_request` returns
/// one whole body as it was sent.
pub fn names_fetch_option(options: Option<&Value>) -> Option<&'static str> {
    let options = options?.as_object()?;
    ["format", "csv", "decompress", "max_rows"]
        .into_iter()
        .find(|key| options.contains_key(*key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<BodyFormat> {
        let csv = value
            .get("csv")
            .map(|c| CsvOptions::deserialize(c.clone()).unwrap());
        BodyFormat::parse(
            value.get("format").and_then(Value::as_str),
            csv,
            value.get("decompress").and_then(Value::as_str),
        )
    }

    #[test]
    fn the_content_type_decides_unless_a_format_is_given() {
        let auto = parse(json!({})).unwrap();
        assert_eq!(auto.of(Some("application/x-ndjson")), Format::Jsonl);
        assert_eq!(
            auto.of(Some("text/csv; charset=utf-8")),
            Format::Csv(CsvDialect::default())
        );
        assert_eq!(auto.of(Some("application/json")), Format::Json);
        assert_eq!(auto.of(None), Format::Json);
        let jsonl = parse(json!({"format": "jsonl"})).unwrap();
        assert_eq!(jsonl.of(Some("text/csv")), Format::Jsonl);
    }

    #[test]
    fn dialects_are_checked() {
        let tsv =
            parse(json!({"format": "csv", "csv": {"delimiter": "\t", "null": "\\N"}})).unwrap();
        let Some(Format::Csv(dialect)) = tsv.format else {
            panic!("csv")
        };
        assert_eq!(
            (dialect.delimiter, dialect.null.as_deref()),
            (b'\t', Some("\\N"))
        );
        for bad in [
            json!({"format": "xml"}),
            json!({"format": "csv", "csv": {"delimiter": ";;"}}),
            json!({"format": "csv", "csv": {"header": false}}),
            json!({"format": "csv", "csv": {"quote": ","}}),
            json!({"format": "csv", "csv": {"header": false, "columns": ["a", "a"]}}),
            json!({"format": "jsonl", "csv": {}}),
            json!({"decompress": "zip"}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_rows_are_records_and_carry_no_paging_values() {
        assert!(check_csv("$", None).is_ok());
        assert!(check_csv("$.data", None).is_err());
        let total = Paging::parse(
            &json!({"type": "offset", "offset_param": "o", "page_size": 10, "total_path": "$.t"}),
        )
        .unwrap();
        assert!(check_csv("$", Some(&total)).is_err());
        let plain = Paging::parse(&json!({"type": "offset", "offset_param": "o", "page_size": 10}))
            .unwrap();
        assert!(check_csv("$", Some(&plain)).is_ok());
    }
}
