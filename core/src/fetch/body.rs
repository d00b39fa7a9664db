//! A response body as it arrives: piece by piece, each within the idle timeout, counted against
//! the size limit after every decompression, a gzip file unpacked on the way
//! (`options.decompress`), a UTF-8 byte order mark dropped.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::MultiGzDecoder;

use crate::error::{Error, Result, SqlState};
use crate::spec::{Decompress, RequestSpec};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const BOM: [u8; 3] = [0xef, 0xbb, 0xbf];

/// The body of a response whose head was read.
pub struct BodyStream<'a> {
    response: reqwest::Response,
    /// The request's place among the requests in flight: given back with the body.
    _place: super::http::Place,
    spec: &'a RequestSpec,
    /// `None`: the body as sent, byte for byte (`api_request`).
    decompress: Option<Decompress>,
    state: State,
    /// The first bytes, held until they say whether the body is a gzip file or starts with a BOM.
    lead: Vec<u8>,
    /// Bytes handed out so far, after every decompression.
    pub read: u64,
}

enum State {
    /// Nothing handed out yet: the lead decides how the rest is read.
    Start,
    Plain,
    Gzip(Box<MultiGzDecoder<Limited>>),
    Done,
}

/// The output of the gzip decoder, refused once past the size limit: a small file cannot
/// inflate past it (a gzip bomb stops at the limit).
struct Limited {
    out: Vec<u8>,
    total: u64,
    limit: u64,
    over: bool,
}

impl Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.total += buf.len() as u64;
        if self.total > self.limit {
            self.over = true;
            return Err(std::io::Error::other("over the size limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> BodyStream<'a> {
    /// The body of `response`; a Content-Length over the size limit is refused before any read.
    pub fn new(
        response: reqwest::Response,
        place: super::http::Place,
        spec: &'a RequestSpec,
        decompress: Option<Decompress>,
    ) -> Result<BodyStream<'a>> {
        if let Some(length) = response.content_length() {
            if length > spec.max_response_bytes {
                return Err(too_large(spec, Some(length)));
            }
        }
        Ok(BodyStream {
            response,
            _place: place,
            spec,
            decompress,
            state: State::Start,
            lead: Vec::new(),
            read: 0,
        })
    }

    /// The next piece of the body, `None` at its end. Each piece arrives within the timeout of
    /// the request (an idle gap, not the whole transfer).
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let State::Done = self.state {
                return Ok(None);
            }
            let chunk = self.chunk().await?;
            let out = match chunk {
                Some(chunk) => {
                    if let State::Start = self.state {
                        self.lead.extend_from_slice(&chunk);
                        if self.lead.len() < BOM.len() {
                            continue;
                        }
                        let lead = Bytes::from(std::mem::take(&mut self.lead));
                        self.start(lead)?
                    } else {
                        self.pass(chunk)?
                    }
                }
                None => {
                    let mut out = match self.state {
                        State::Start => {
                            let lead = Bytes::from(std::mem::take(&mut self.lead));
                            self.start(lead)?
                        }
                        _ => Bytes::new(),
                    };
                    if let State::Gzip(decoder) = &mut self.state {
                        let finished = decoder.try_finish();
                        let tail = std::mem::take(&mut decoder.get_mut().out);
                        self.gzip_result(finished)?;
                        let mut joined = out.to_vec();
                        joined.extend_from_slice(&tail);
                        out = Bytes::from(joined);
                    }
                    self.state = State::Done;
                    self.count(out)?
                }
            };
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }

    /// Decides from the first bytes how the body is read, and reads them.
    fn start(&mut self, lead: Bytes) -> Result<Bytes> {
        let gzip = match self.decompress {
            None | Some(Decompress::None) => false,
            Some(Decompress::Auto) => lead.starts_with(&GZIP_MAGIC),
            Some(Decompress::Gzip) => {
                if !lead.starts_with(&GZIP_MAGIC) {
                    return Err(Error::new(
                        SqlState::DataException,
                        format!(
                            "response from {} is not a gzip file (options.decompress is gzip)",
                            self.spec.display_url()
                        ),
                    ));
                }
                true
            }
        };
        self.state = if gzip {
            State::Gzip(Box::new(MultiGzDecoder::new(Limited {
                out: Vec::new(),
                total: 0,
                limit: self.spec.max_response_bytes,
                over: false,
            })))
        } else {
            State::Plain
        };
        let out = self.pass(lead)?;
        // The byte order mark is dropped once, at the start of the text.
        if self.decompress.is_some() && out.starts_with(&BOM) {
            return Ok(out.slice(BOM.len()..));
        }
        Ok(out)
    }

    /// A piece of the wire body, unpacked and counted.
    fn pass(&mut self, chunk: Bytes) -> Result<Bytes> {
        let out = match &mut self.state {
            State::Gzip(decoder) => {
                let written = decoder.write_all(&chunk);
                let out = Bytes::from(std::mem::take(&mut decoder.get_mut().out));
                self.gzip_result(written)?;
                out
            }
            _ => chunk,
        };
        self.count(out)
    }

    fn gzip_result(&self, result: std::io::Result<()>) -> Result<()> {
        let Err(error) = result else {
            return Ok(());
        };
        if let State::Gzip(decoder) = &self.state {
            if decoder.get_ref().over {
                return Err(too_large(self.spec, None));
            }
        }
        Err(Error::new(
            SqlState::DataException,
            format!(
                "response from {} is a damaged gzip file: {error}",
                self.spec.display_url()
            ),
        )
        .with_hint("a body that starts with gzip's magic bytes is unpacked; options.decompress none reads it as it is"))
    }

    fn count(&mut self, out: Bytes) -> Result<Bytes> {
        self.read += out.len() as u64;
        if self.read > self.spec.max_response_bytes {
            return Err(too_large(self.spec, None));
        }
        Ok(out)
    }

    /// The next piece from the wire, within the idle timeout.
    async fn chunk(&mut self) -> Result<Option<Bytes>> {
        let idle = self.spec.timeout;
        match tokio::time::timeout(idle, self.response.chunk()).await {
            Ok(chunk) => chunk.map_err(|e| super::http::transport_error(e, self.spec)),
            Err(_) => Err(stalled(self.spec, idle)),
        }
    }
}

fn stalled(spec: &RequestSpec, idle: Duration) -> Error {
    Error::new(
        SqlState::ConnectionFailure,
        format!(
            "response from {} stalled: no data for {} ms",
            spec.display_url(),
            idle.as_millis()
        ),
    )
    .with_hint("options.timeout_ms bounds each wait for data (up to apisync.http_timeout_ms)")
    .transient()
}

fn too_large(spec: &RequestSpec, length: Option<u64>) -> Error {
    let limit = spec.max_response_bytes;
    let size = match length {
        Some(length) => format!(" (Content-Length {length})"),
        None => String::new(),
    };
    Error::new(
        SqlState::ProgramLimitExceeded,
        format!(
            "response from {} is larger than the limit of {limit} bytes{size}",
            spec.display_url()
        ),
    )
    .with_hint(
        "raise options.max_response_bytes (up to apisync.max_response_bytes), or page the API",
    )
}
