//! Rows as a tape of JSON tokens: what jsonb rows are made from. Parsing a batch into one flat
//! token list and one text buffer (unescaped strings, number texts) costs a few allocations per
//! batch instead of a map and a string per node; the backend walks the tokens into Postgres's
//! jsonb builder.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::cells::NUMBER_TOKEN;

/// One JSON token. Containers say how many children they have and where they end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Token {
    Null,
    Bool(bool),
    /// The number's text, as sent.
    Number(Span),
    String(Span),
    /// `len` elements follow, up to token `end` (exclusive).
    Array {
        len: u32,
        end: u32,
    },
    /// `len` pairs (a String key, then its value) follow, up to token `end` (exclusive).
    Object {
        len: u32,
        end: u32,
    },
}

/// Bytes of the tape's text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub at: u32,
    pub len: u32,
}

/// The rows of a batch.
#[derive(Debug, Default)]
pub struct Tape {
    tokens: Vec<Token>,
    text: Vec<u8>,
    /// The first token of each row.
    rows: Vec<u32>,
}

impl Tape {
    /// The elements of the JSON array `batch` as rows.
    pub fn parse(batch: &[u8]) -> Result<Tape, serde_json::Error> {
        let mut tape = Tape {
            tokens: Vec::with_capacity(batch.len() / 8),
            text: Vec::with_capacity(batch.len() / 2),
            rows: Vec::new(),
        };
        let mut deserializer = serde_json::Deserializer::from_slice(batch);
        deserializer.deserialize_seq(Rows(&mut tape))?;
        deserializer.end()?;
        Ok(tape)
    }

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

    /// The index of row `row`'s first token.
    pub fn row(&self, row: usize) -> usize {
        self.rows[row] as usize
    }

    pub fn token(&self, at: usize) -> Token {
        self.tokens[at]
    }

    pub fn text(&self, span: Span) -> &[u8] {
        &self.text[span.at as usize..(span.at + span.len) as usize]
    }

    /// The string of a span (the tape holds only UTF-8 from a parsed str).
    pub fn str(&self, span: Span) -> &str {
        std::str::from_utf8(self.text(span)).unwrap_or_default()
    }

    /// The index after the value starting at `at`.
    pub fn next(&self, at: usize) -> usize {
        match self.tokens[at] {
            Token::Array { end, .. } | Token::Object { end, .. } => end as usize,
            _ => at + 1,
        }
    }

    /// Row `row` as a JSON value (for samples and rejected rows).
    pub fn row_value(&self, row: usize) -> Value {
        self.value(self.row(row))
    }

    fn value(&self, at: usize) -> Value {
        match self.tokens[at] {
            Token::Null => Value::Null,
            Token::Bool(b) => Value::Bool(b),
            Token::Number(span) => serde_json::from_slice(self.text(span)).unwrap_or(Value::Null),
            Token::String(span) => Value::String(self.str(span).to_string()),
            Token::Array { len, .. } => {
                let mut items = Vec::with_capacity(len as usize);
                let mut i = at + 1;
                for _ in 0..len {
                    items.push(self.value(i));
                    i = self.next(i);
                }
                Value::Array(items)
            }
            Token::Object { len, .. } => {
                let mut map = Map::new();
                let mut i = at + 1;
                for _ in 0..len {
                    let Token::String(key) = self.tokens[i] else {
                        break;
                    };
                    map.insert(self.str(key).to_string(), self.value(i + 1));
                    i = self.next(i + 1);
                }
                Value::Object(map)
            }
        }
    }

    fn push_text(&mut self, bytes: &[u8]) -> Span {
        let span = Span {
            at: self.text.len() as u32,
            len: bytes.len() as u32,
        };
        self.text.extend_from_slice(bytes);
        span
    }
}

/// The top-level array: each element a row.
struct Rows<'t>(&'t mut Tape);

impl<'de> Visitor<'de> for Rows<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let start = self.0.tokens.len() as u32;
            if seq.next_element_seed(Node(self.0))?.is_none() {
                return Ok(());
            }
            self.0.rows.push(start);
        }
    }
}

/// One value onto the tape.
struct Node<'t>(&'t mut Tape);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.tokens.push(Token::Null);
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.0.tokens.push(Token::Bool(b));
        Ok(())
    }

    // Without arbitrary_precision numbers would come this way; with it they come as a map.
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        let span = self.0.push_text(n.to_string().as_bytes());
        self.0.tokens.push(Token::Number(span));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        let span = self.0.push_text(n.to_string().as_bytes());
        self.0.tokens.push(Token::Number(span));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        let span = self.0.push_text(n.to_string().as_bytes());
        self.0.tokens.push(Token::Number(span));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        let span = self.0.push_text(s.as_bytes());
        self.0.tokens.push(Token::String(span));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let at = self.0.tokens.len();
        self.0.tokens.push(Token::Array { len: 0, end: 0 });
        let mut len = 0;
        while seq.next_element_seed(Node(self.0))?.is_some() {
            len += 1;
        }
        let end = self.0.tokens.len() as u32;
        self.0.tokens[at] = Token::Array { len, end };
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let at = self.0.tokens.len();
        self.0.tokens.push(Token::Object { len: 0, end: 0 });
        let mut len = 0;
        while let Some(key) = map.next_key_seed(Key(self.0))? {
            if key {
                // Not an object: a number kept as its text.
                let text: String = map.next_value()?;
                let span = self.0.push_text(text.as_bytes());
                self.0.tokens[at] = Token::Number(span);
                return Ok(());
            }
            map.next_value_seed(Node(self.0))?;
            len += 1;
        }
        let end = self.0.tokens.len() as u32;
        self.0.tokens[at] = Token::Object { len, end };
        Ok(())
    }
}

/// An object's key onto the tape; `true` when it is serde_json's number marker instead.
struct Key<'t>(&'t mut Tape);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<bool, E> {
        if s == NUMBER_TOKEN {
            return Ok(true);
        }
        let span = self.0.push_text(s.as_bytes());
        self.0.tokens.push(Token::String(span));
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_come_back_as_they_were_sent() {
        let rows = json!([{"id": 1, "s": "a \"q\" ✓", "n": null, "t": true, "x": [1.50, {"k": []}], "big": 123456789012345678901234567890u128.to_string()}, 3, "s", [], {}]);
        let text = serde_json::to_vec(&rows).unwrap();
        let mut tape = Tape::parse(&text).unwrap();
        assert_eq!(tape.len(), 5);
        for (i, row) in rows.as_array().unwrap().iter().enumerate() {
            assert_eq!(&tape.row_value(i), row);
        }
        // Numbers keep their text.
        let tape2 = Tape::parse(b"[1.50, 1e400, -0]").unwrap();
        let texts: Vec<&[u8]> = (0..3)
            .map(|i| match tape2.token(tape2.row(i)) {
                Token::Number(span) => tape2.text(span),
                other => panic!("{other:?}"),
            })
            .collect();
        // serde_json writes the exponent with its sign.
        assert_eq!(texts, [&b"1.50"[..], b"1e+400", b"-0"]);
        tape.truncate(2);
        assert_eq!(tape.len(), 2);
        assert!(Tape::parse(b"[1, ").is_err());
    }
}
