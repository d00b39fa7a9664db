//! The one error type of pg_apisync. Postgres-free: `sql::raise` maps it to an ERROR.

use std::fmt;

/// The SQLSTATE an error is raised with. Kept here (not as pgrx's enum) so the core stays
/// Postgres-free and plain unit tests can assert it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlState {
    /// 22023: an argument or option has a wrong value.
    InvalidParameterValue,
    /// 22004: a required argument is NULL.
    NullValueNotAllowed,
    /// 42601: a JSONPath does not parse.
    SyntaxError,
    /// 42703: `options.columns` names a column the row type does not have.
    UndefinedColumn,
    /// 42804: `row_type` is not a type rows can be made of.
    DatatypeMismatch,
    /// 42501: the network policy refuses a host or address.
    InsufficientPrivilege,
    /// 42704: a secret or job that does not exist (for this role).
    UndefinedObject,
    /// 25000: run_job inside a REPEATABLE READ or SERIALIZABLE transaction.
    InvalidTransactionState,
    /// 53400: no background worker slot for a run.
    ConfigurationLimitExceeded,
    /// 0A000: recognised, but not built yet.
    FeatureNotSupported,
    /// 08001: no connection could be made (refused, DNS, TLS).
    UnableToConnect,
    /// 08006: the connection broke or timed out during the exchange.
    ConnectionFailure,
    /// 54000: a response is over the size limit.
    ProgramLimitExceeded,
    /// 38000: the API answered with an error status.
    ExternalRoutineException,
    /// 22032: a response body is not JSON.
    InvalidJsonText,
    /// 22P04: a CSV body's record is malformed (as COPY says of its files).
    BadCsvRecord,
    /// 22021: a body's text is not UTF-8.
    NotUtf8,
    /// 22000: a compressed body is damaged.
    DataException,
    /// 57014: cancelled by the user or by statement_timeout.
    QueryCanceled,
    /// XX000: a bug or a broken environment.
    Internal,
    /// An error Postgres raised (a type's input function, say), kept with its own SQLSTATE in
    /// Postgres's packed form.
    Raised(i32),
}

impl SqlState {
    pub fn code(self) -> String {
        let code = match self {
            SqlState::InvalidParameterValue => "22023",
            SqlState::NullValueNotAllowed => "22004",
            SqlState::SyntaxError => "42601",
            SqlState::UndefinedColumn => "42703",
            SqlState::DatatypeMismatch => "42804",
            SqlState::InsufficientPrivilege => "42501",
            SqlState::UndefinedObject => "42704",
            SqlState::InvalidTransactionState => "25000",
            SqlState::ConfigurationLimitExceeded => "53400",
            SqlState::FeatureNotSupported => "0A000",
            SqlState::UnableToConnect => "08001",
            SqlState::ConnectionFailure => "08006",
            SqlState::ProgramLimitExceeded => "54000",
            SqlState::ExternalRoutineException => "38000",
            SqlState::InvalidJsonText => "22032",
            SqlState::BadCsvRecord => "22P04",
            SqlState::NotUtf8 => "22021",
            SqlState::DataException => "22000",
            SqlState::QueryCanceled => "57014",
            SqlState::Internal => "XX000",
            SqlState::Raised(packed) => return unpack_sqlstate(packed),
        };
        code.to_string()
    }
}

impl SqlState {
    /// A SQLSTATE given as its five characters.
    pub fn from_code(code: &str) -> SqlState {
        SqlState::Raised(pack_sqlstate(code))
    }

    /// Postgres's packed form (MAKE_SQLSTATE), what ereport takes.
    pub fn packed(self) -> i32 {
        match self {
            SqlState::Raised(packed) => packed,
            other => pack_sqlstate(&other.code()),
        }
    }
}

fn pack_sqlstate(code: &str) -> i32 {
    code.bytes()
        .take(5)
        .enumerate()
        .map(|(i, c)| (i32::from(c.wrapping_sub(b'0')) & 0x3F) << (6 * i))
        .sum()
}

/// Postgres packs a SQLSTATE as five 6-bit characters (MAKE_SQLSTATE).
fn unpack_sqlstate(packed: i32) -> String {
    (0..5)
        .map(|i| (((packed >> (6 * i)) & 0x3F) as u8 + b'0') as char)
        .collect()
}

/// An error with what the user needs to fix it: a message, and where it helps a detail and a hint.
/// URLs in it are already redacted (see `spec::RequestSpec::display_url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub state: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// A failure that may pass when tried again (a refused connection, a broken transfer).
    pub transient: bool,
}

impl Error {
    pub fn new(state: SqlState, message: impl Into<String>) -> Self {
        Error {
            state,
            message: message.into(),
            detail: None,
            hint: None,
            transient: false,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(SqlState::InvalidParameterValue, message)
    }

    pub fn not_supported(message: impl Into<String>) -> Self {
        Error::new(SqlState::FeatureNotSupported, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(SqlState::Internal, message)
    }

    pub fn cancelled() -> Self {
        Error::new(
            SqlState::QueryCanceled,
            "canceling statement due to user request",
        )
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }

    /// Replaces every occurrence of each secret by `***` in all the text of the error.
    pub fn redact(mut self, secrets: &[String]) -> Self {
        self.message = scrub(&self.message, secrets);
        if let Some(detail) = self.detail.as_mut() {
            *detail = scrub(detail, secrets);
        }
        if let Some(hint) = self.hint.as_mut() {
            *hint = scrub(hint, secrets);
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `text` with every occurrence of each secret replaced by `***`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    // Longest first: a secret inside another ("x" in "Bearer x") must not break its match.
    let mut ordered: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    ordered.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = text.to_string();
    for secret in ordered {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

/// The start of a body for an error's detail: redacted first, then cut, so that a cut secret
/// cannot show its start.
pub fn body_snippet(body: &[u8], secrets: &[String]) -> String {
    snippet(
        scrub(String::from_utf8_lossy(body).trim(), secrets).as_str(),
        200,
    )
}

/// Cuts `text` to at most `max` characters, marking the cut, for quoting bodies and values.
pub fn snippet(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_scrubs_message_detail_and_hint() {
        let err = Error::invalid("token s3cr3t rejected")
            .with_detail("sent s3cr3t")
            .with_hint("rotate s3cr3t")
            .redact(&["s3cr3t".to_string(), String::new()]);
        assert_eq!(err.message, "token *** rejected");
        assert_eq!(err.detail.as_deref(), Some("sent ***"));
        assert_eq!(err.hint.as_deref(), Some("rotate ***"));
    }

    #[test]
    fn raised_codes_unpack() {
        let packed = (2 | (2 << 6) | (('P' as i32 - '0' as i32) << 12)) | (2 << 24);
        assert_eq!(SqlState::Raised(packed).code(), "22P02");
        assert_eq!(SqlState::from_code("22P02"), SqlState::Raised(packed));
        assert_eq!(SqlState::InvalidJsonText.code(), "22032");
        assert_eq!(
            SqlState::InvalidJsonText.packed(),
            SqlState::from_code("22032").packed()
        );
    }

    #[test]
    fn snippets_are_redacted_before_they_are_cut() {
        let body = format!("{}token=abcdefgh", "x".repeat(195));
        let shown = body_snippet(body.as_bytes(), &["abcdefgh".to_string()]);
        assert!(!shown.contains("abc"), "{shown}");
    }

    #[test]
    fn snippet_cuts_on_characters() {
        assert_eq!(snippet("héllo", 2), "hé…");
        assert_eq!(snippet("hé", 2), "hé");
    }
}
