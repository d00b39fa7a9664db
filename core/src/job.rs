//! Sync jobs (DESIGN.md §2.3): what a job may say, checked once at creation; `sql` is their SQL
//! face and `run` the run worker. The parts here are Postgres-free.

pub mod run;
mod sql;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    /// Insert every row (FineDataLink's "Add").
    Append,
    /// Empty the target, then insert: in one transaction, so readers see old or new.
    Replace,
    /// Insert, or update the row with the same key.
    Upsert,
    /// Upsert, then delete the rows whose key the run did not see.
    Mirror,
}

impl WriteMethod {
    const ALL: [WriteMethod; 4] = [
        WriteMethod::Append,
        WriteMethod::Replace,
        WriteMethod::Upsert,
        WriteMethod::Mirror,
    ];

    pub fn parse(text: &str) -> Result<WriteMethod> {
        let text = text.trim().to_ascii_lowercase();
        WriteMethod::ALL
            .into_iter()
            .find(|w| w.name() == text)
            .ok_or_else(|| {
                Error::invalid(format!("unknown write_method \"{text}\""))
                    .with_hint("one of append, replace, upsert, mirror")
            })
    }

    /// The name SQL uses.
    pub fn name(self) -> &'static str {
        match self {
            WriteMethod::Append => "append",
            WriteMethod::Replace => "replace",
            WriteMethod::Upsert => "upsert",
            WriteMethod::Mirror => "mirror",
        }
    }

    pub fn uses_keys(self) -> bool {
        matches!(self, WriteMethod::Upsert | WriteMethod::Mirror)
    }

    /// The table privileges a run needs besides INSERT.
    pub fn privileges(self) -> &'static [&'static str] {
        match self {
            WriteMethod::Append => &["INSERT"],
            WriteMethod::Replace => &["INSERT", "DELETE"],
            WriteMethod::Upsert => &["INSERT", "UPDATE"],
            WriteMethod::Mirror => &["INSERT", "UPDATE", "DELETE"],
        }
    }
}

/// Options only a job takes; the rest are `api_fetch`'s.
const JOB_OPTIONS: [&str; 3] = ["commit_every", "incremental", "max_rejected"];

/// Splits a job's options into `api_fetch`'s and the job's own, refusing the job options that
/// are not built yet.
pub fn fetch_options(options: Option<&Value>) -> Result<Option<Value>> {
    let Some(Value::Object(all)) = options else {
        return Ok(options.cloned());
    };
    let mut fetch = Map::new();
    for (key, value) in all {
        if !JOB_OPTIONS.contains(&key.as_str()) {
            fetch.insert(key.clone(), value.clone());
        } else if key == "incremental" {
            Incremental::parse(value)?;
        } else if key == "max_rejected" {
            if value.as_u64().is_none() {
                return Err(Error::invalid(
                    "options.max_rejected must be a whole number, 0 or more",
                ));
            }
        } else if key == "commit_every" {
            if !value
                .as_u64()
                .is_some_and(|n| (1..=u64::from(u32::MAX)).contains(&n))
            {
                return Err(Error::invalid(
                    "options.commit_every must be a positive number of pages",
                ));
            }
        } else {
            return Err(Error::not_supported(format!(
                "options.{key} is not supported yet"
            )));
        }
    }
    Ok(Some(Value::Object(fetch)))
}

/// `options.commit_every`: pages a transaction, for runs too big for one.
pub fn commit_every(options: &Value) -> Option<u32> {
    options
        .get("commit_every")
        .and_then(Value::as_u64)
        .map(|n| n as u32)
}

/// `options.max_rejected`: rows that may fail conversion or a constraint, 0 by default.
pub fn max_rejected(options: &Value) -> u64 {
    options
        .get("max_rejected")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// `options.incremental`: the cursor lives in the data. Each run sends `param` = the target's
/// `max(cursor_column)` (minus `lookback`), or `initial` while the target is empty.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    pub cursor_column: String,
    pub param: String,
    #[serde(rename = "in", default)]
    pub place: IncrementalPlace,
    pub initial: Option<Value>,
    /// An interval (`"1 hour"`) for time columns, a number for numeric ones.
    pub lookback: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncrementalPlace {
    #[default]
    Query,
    Body,
}

impl Incremental {
    pub fn parse(value: &Value) -> Result<Incremental> {
        let incremental = Incremental::deserialize(value)
            .map_err(|e| Error::invalid(format!("invalid options.incremental: {e}")))?;
        match &incremental.lookback {
            None | Some(Value::String(_)) | Some(Value::Number(_)) => {}
            Some(_) => {
                return Err(Error::invalid(
                    "options.incremental.lookback must be an interval string or a number",
                ))
            }
        }
        if matches!(
            &incremental.initial,
            Some(Value::Object(_) | Value::Array(_))
        ) {
            return Err(Error::invalid(
                "options.incremental.initial must be a scalar",
            ));
        }
        Ok(incremental)
    }

    /// The job's incremental option, if it has one.
    pub fn of(options: &Value) -> Result<Option<Incremental>> {
        options
            .get("incremental")
            .map(Incremental::parse)
            .transpose()
    }

    /// The SQL expression of the value to send, over the target's cursor column `column`
    /// (quoted); `$1` is the lookback.
    pub fn cursor_sql(&self, column: &str) -> String {
        match &self.lookback {
            None => format!("to_jsonb(max({column}))"),
            Some(Value::String(_)) => format!("to_jsonb(max({column}) - $1::text::interval)"),
            Some(_) => format!("to_jsonb(max({column}) - $1::text::numeric)"),
        }
    }
}

/// A job row is readable by every member of its owner's roles: credentials must live in secrets.
pub fn check_no_inline_credentials(headers: Option<&Value>, options: Option<&Value>) -> Result<()> {
    let hint = "store it with apisync.create_secret(name, value) and give {\"secret\": name}";
    if let Some(Value::Object(headers)) = headers {
        if let Some(name) = headers.keys().find(|name| {
            crate::spec::CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str())
        }) {
            return Err(Error::invalid(format!(
                "a job cannot keep the credential header \"{name}\""
            ))
            .with_hint("use options.auth with a secret"));
        }
    }
    let auth = options
        .and_then(|o| o.get("auth"))
        .and_then(Value::as_object);
    if let Some(field) = auth.and_then(|auth| {
        ["token", "password", "value", "client_secret"]
            .into_iter()
            .find(|f| auth.contains_key(*f))
    }) {
        return Err(
            Error::invalid(format!("a job cannot keep options.auth.{field} inline"))
                .with_hint(hint),
        );
    }
    Ok(())
}

/// A job's schedule, in pg_cron's syntax: five cron fields (UTC, as pg_cron's default) or
/// `'N seconds'` (1 to 59).
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(Box<croner::Cron>),
    Every(std::time::Duration),
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule> {
        let text = text.trim();
        let invalid = |why: String| {
            Error::invalid(format!("invalid schedule \"{text}\": {why}")).with_hint(
                "use five cron fields, such as */5 * * * *, or 'N seconds' with N from 1 to 59",
            )
        };
        if let Some(seconds) = text
            .strip_suffix("seconds")
            .or_else(|| text.strip_suffix("second"))
        {
            let seconds: u64 = seconds
                .trim()
                .parse()
                .map_err(|_| invalid("not a number of seconds".into()))?;
            if !(1..=59).contains(&seconds) {
                return Err(invalid("seconds must be from 1 to 59".into()));
            }
            return Ok(Schedule::Every(std::time::Duration::from_secs(seconds)));
        }
        if !text.starts_with('@') && text.split_whitespace().count() != 5 {
            return Err(invalid("a cron schedule has five fields".into()));
        }
        let cron = croner::Cron::new(text)
            .parse()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Schedule::Cron(Box::new(cron)))
    }

    /// The first time after `after` the job is due.
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Schedule::Every(every) => chrono::Duration::from_std(*every).ok().map(|d| after + d),
            Schedule::Cron(cron) => cron.find_next_occurrence(&after, false).ok(),
        }
    }
}

pub fn check_schedule(schedule: Option<&str>) -> Result<()> {
    schedule.map(Schedule::parse).transpose().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn write_methods() {
        assert_eq!(WriteMethod::parse(" Upsert ").unwrap(), WriteMethod::Upsert);
        assert!(WriteMethod::parse("merge")
            .unwrap_err()
            .message
            .contains("unknown write_method \"merge\""));
        assert!(WriteMethod::Mirror.uses_keys() && !WriteMethod::Replace.uses_keys());
    }

    #[test]
    fn job_options_are_split_off() {
        let options = json!({"timeout_ms": 5, "max_rejected": 0});
        assert_eq!(
            fetch_options(Some(&options)).unwrap(),
            Some(json!({"timeout_ms": 5}))
        );
        assert!(fetch_options(Some(&json!({"max_rejected": -1}))).is_err());
        assert_eq!(max_rejected(&json!({"max_rejected": 7})), 7);
        let err = fetch_options(Some(&json!({"commit_every": 0}))).unwrap_err();
        assert!(
            err.message
                .contains("commit_every must be a positive number"),
            "{}",
            err.message
        );
        assert_eq!(commit_every(&json!({"commit_every": 10})), Some(10));
        let incremental = json!({"incremental": {"cursor_column": "id", "param": "since", "initial": 0}, "retries": 1});
        assert_eq!(
            fetch_options(Some(&incremental)).unwrap(),
            Some(json!({"retries": 1}))
        );
        let typo = json!({"incremental": {"cursor_colum": "id", "param": "since"}});
        assert!(fetch_options(Some(&typo))
            .unwrap_err()
            .message
            .contains("unknown field `cursor_colum`"));
        let lookback =
            Incremental::parse(&json!({"cursor_column": "ts", "param": "p", "lookback": "1 hour"}))
                .unwrap();
        assert_eq!(
            lookback.cursor_sql("ts"),
            "to_jsonb(max(ts) - $1::text::interval)"
        );
    }

    #[test]
    fn schedules_take_pg_crons_syntax() {
        use chrono::TimeZone;
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 12, 1, 10, 2, 30)
            .unwrap();
        let utc = |d, h, m, sec| {
            chrono::Utc
                .with_ymd_and_hms(2026, 12, d, h, m, sec)
                .unwrap()
        };
        for (schedule, due) in [
            ("*/5 * * * *", utc(1, 10, 5, 0)),
            ("30 seconds", utc(1, 10, 3, 0)),
            ("0 3 * * 1", utc(7, 3, 0, 0)),
        ] {
            assert_eq!(
                Schedule::parse(schedule).unwrap().next_after(at),
                Some(due),
                "{schedule}"
            );
        }
        for bad in [
            "* * * *",
            "61 * * * *",
            "0 seconds",
            "90 seconds",
            "every minute",
            "0 0 * * * *",
        ] {
            let err = Schedule::parse(bad).unwrap_err();
            assert!(
                err.message.starts_with("invalid schedule"),
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn credentials_must_be_secrets() {
        let err = check_no_inline_credentials(
            None,
            Some(&json!({"auth": {"type": "bearer", "token": "t"}})),
        )
        .unwrap_err();
        assert!(
            err.message.contains("options.auth.token"),
            "{}",
            err.message
        );
        let err = check_no_inline_credentials(Some(&json!({"Authorization": "Bearer t"})), None)
            .unwrap_err();
        assert!(err.message.contains("\"Authorization\""), "{}", err.message);
        check_no_inline_credentials(
            Some(&json!({"X-Tenant": "a"})),
            Some(&json!({"auth": {"type": "bearer", "secret": "s"}})),
        )
        .unwrap();
    }
}
