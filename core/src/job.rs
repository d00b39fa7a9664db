//! The job model (DESIGN.md §2.3): what a job may say, checked once at creation. Postgres-free;
//! the extension's `jobs` module is its SQL face and run worker.

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

/// A job's arguments as stored in `apisync.jobs` (or given to create_job / alter_job).
#[derive(Debug, Clone, Default)]
pub struct JobArgs {
    pub url: String,
    pub method: String,
    pub body: Option<Value>,
    pub path: String,
    pub headers: Value,
    pub paging: Option<Value>,
    pub options: Value,
    pub write_method: String,
    pub key_columns: Option<Vec<String>>,
    pub schedule: Option<String>,
}

/// A job, parsed and checked once by the same code at create_job, alter_job and run time. What
/// needs the database (the target, the fetch spec with the owner's secrets) is checked by the
/// extension on top of this.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub args: JobArgs,
    pub write: WriteMethod,
    /// `options` without the job's own keys: what the fetch takes.
    pub fetch_options: Value,
    pub options: JobOptions,
    pub schedule: Option<Schedule>,
}

/// The options only a job takes.
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// `commit_every`: pages a transaction, for runs too big for one.
    pub commit_every: Option<u32>,
    /// `max_rejected`: rows that may fail conversion or a constraint, 0 by default.
    pub max_rejected: u64,
    pub incremental: Option<Incremental>,
    /// `for_each`: a SELECT run as the owner at the start of each run; each row is a parameter
    /// set of the fetch (fan-out).
    pub for_each: Option<String>,
}

impl JobSpec {
    pub fn parse(args: JobArgs) -> Result<JobSpec> {
        let write = WriteMethod::parse(&args.write_method)?;
        check_no_inline_credentials(&args.url, Some(&args.headers), Some(&args.options))?;
        let schedule = args.schedule.as_deref().map(Schedule::parse).transpose()?;
        let (fetch_options, options) = split_options(&args.options)?;
        if options.commit_every.is_some()
            && matches!(write, WriteMethod::Replace | WriteMethod::Mirror)
        {
            return Err(Error::invalid(
                "options.commit_every works with append and upsert: replace and mirror need the whole run in one transaction",
            ));
        }
        if options.incremental.is_some()
            && matches!(write, WriteMethod::Replace | WriteMethod::Mirror)
        {
            return Err(Error::invalid(format!(
                "options.incremental does not work with {}: an incremental run sees only new rows, and {} would delete the rest",
                write.name(),
                write.name()
            ))
            .with_hint("use append or upsert"));
        }
        if !write.uses_keys() && args.key_columns.is_some() {
            return Err(Error::invalid(
                "key_columns are for the upsert and mirror write methods",
            ));
        }
        Ok(JobSpec {
            args,
            write,
            fetch_options,
            options,
            schedule,
        })
    }
}

/// Splits a job's options into the job's own (commit_every, incremental, max_rejected, for_each), checked
/// here, and the rest, which are `api_fetch`'s.
fn split_options(options: &Value) -> Result<(Value, JobOptions)> {
    let Value::Object(all) = options else {
        return Err(Error::invalid("options must be a JSON object"));
    };
    let mut fetch = Map::new();
    let mut job = JobOptions::default();
    for (key, value) in all {
        match key.as_str() {
            "incremental" => job.incremental = Some(Incremental::parse(value)?),
            "for_each" => {
                job.for_each = Some(
                    value
                        .as_str()
                        .map(str::trim)
                        .filter(|q| !q.is_empty())
                        .ok_or_else(|| {
                            Error::invalid("options.for_each must be a SELECT query, as text")
                        })?
                        .trim_end_matches(';')
                        .to_string(),
                )
            }
            "max_rejected" => {
                job.max_rejected = value.as_u64().ok_or_else(|| {
                    Error::invalid("options.max_rejected must be a whole number, 0 or more")
                })?
            }
            "commit_every" => {
                job.commit_every = Some(
                    value
                        .as_u64()
                        .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
                        .ok_or_else(|| {
                            Error::invalid(
                                "options.commit_every must be a positive number of pages",
                            )
                        })? as u32,
                )
            }
            _ => {
                fetch.insert(key.clone(), value.clone());
            }
        }
    }
    Ok((Value::Object(fetch), job))
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
            None => format!("pg_catalog.to_jsonb(pg_catalog.max({column}))"),
            Some(Value::String(_)) => format!(
                "pg_catalog.to_jsonb(pg_catalog.max({column}) - $1::pg_catalog.text::pg_catalog.interval)"
            ),
            Some(_) => format!(
                "pg_catalog.to_jsonb(pg_catalog.max({column}) - $1::pg_catalog.text::pg_catalog.numeric)"
            ),
        }
    }
}

/// A job row is readable by every member of its owner's roles: credentials must live in secrets.
pub fn check_no_inline_credentials(
    url: &str,
    headers: Option<&Value>,
    options: Option<&Value>,
) -> Result<()> {
    let hint = "store it with apisync.create_secret(name, value) and give {\"secret\": name}";
    if let Ok(parsed) = url::Url::parse(url) {
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Error::invalid(
                "a job cannot keep credentials in its URL (user:password@)",
            )
            .with_hint("use options.auth with a secret"));
        }
        if let Some((key, _)) = parsed
            .query_pairs()
            .find(|(key, _)| crate::spec::key_like(key))
        {
            return Err(Error::invalid(format!(
                "a job cannot keep the credential query parameter \"{key}\" in its URL"
            ))
            .with_hint("use options.auth of type api_key with \"in\": \"query\" and a secret"));
        }
    }
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

/// A job's schedule, in pg_cron's syntax: five cron fields or `'N seconds'` (1 to 59). The cron
/// fields are read in a time zone: the job's own when the schedule starts with `CRON_TZ=<zone> `
/// (or `TZ=<zone> `, as cronie and Kubernetes write it), else `apisync.timezone` (UTC by default).
/// Daylight-saving changes follow croner's rules: a time that a spring-forward gap skips fires at
/// the end of the gap, and a time that a fall-back hour repeats fires once, at its first instant.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron {
        cron: Box<croner::Cron>,
        /// The job's own zone; `None` takes the setting's.
        zone: Option<chrono_tz::Tz>,
    },
    Every(std::time::Duration),
}

/// An IANA time zone name (`Europe/Berlin`, `UTC`).
pub fn parse_zone(name: &str) -> std::result::Result<chrono_tz::Tz, String> {
    name.trim().parse::<chrono_tz::Tz>().map_err(|_| {
        format!(
            "unknown time zone \"{}\": use an IANA name such as Europe/Berlin or UTC",
            name.trim()
        )
    })
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule> {
        let text = text.trim();
        let invalid = |why: String| {
            Error::invalid(format!("invalid schedule \"{text}\": {why}")).with_hint(
                "use five cron fields, such as */5 * * * *, optionally after CRON_TZ=<zone>, or 'N seconds' with N from 1 to 59",
            )
        };
        let (zone, fields) = match text
            .strip_prefix("CRON_TZ=")
            .or_else(|| text.strip_prefix("TZ="))
        {
            Some(rest) => {
                let (name, fields) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                (Some(parse_zone(name).map_err(invalid)?), fields.trim())
            }
            None => (None, text),
        };
        if let Some(seconds) = fields
            .strip_suffix("seconds")
            .or_else(|| fields.strip_suffix("second"))
        {
            if zone.is_some() {
                return Err(invalid(
                    "a time zone applies to cron fields, not to seconds".into(),
                ));
            }
            let seconds: u64 = seconds
                .trim()
                .parse()
                .map_err(|_| invalid("not a number of seconds".into()))?;
            if !(1..=59).contains(&seconds) {
                return Err(invalid("seconds must be from 1 to 59".into()));
            }
            return Ok(Schedule::Every(std::time::Duration::from_secs(seconds)));
        }
        if !fields.starts_with('@') && fields.split_whitespace().count() != 5 {
            return Err(invalid("a cron schedule has five fields".into()));
        }
        let cron = croner::Cron::new(fields)
            .parse()
            .map_err(|e| invalid(e.to_string()))?;
        // A pattern such as "0 0 30 2 *" parses but never fires: refused, never run every tick.
        if cron
            .find_next_occurrence(&chrono::Utc::now(), false)
            .is_err()
        {
            return Err(invalid("it never fires".into()));
        }
        Ok(Schedule::Cron {
            cron: Box::new(cron),
            zone,
        })
    }

    /// The first time after `after` the job is due; cron fields are read in the job's zone, or
    /// else in `default_zone` (`apisync.timezone`).
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
        default_zone: chrono_tz::Tz,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Schedule::Every(every) => chrono::Duration::from_std(*every).ok().map(|d| after + d),
            Schedule::Cron { cron, zone } => {
                let local = after.with_timezone(&zone.unwrap_or(default_zone));
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(|next| next.with_timezone(&chrono::Utc))
            }
        }
    }
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

    fn args(options: Value, write_method: &str) -> JobArgs {
        JobArgs {
            url: "http://127.0.0.1/x".into(),
            method: "GET".into(),
            path: "$".into(),
            headers: json!({}),
            options,
            write_method: write_method.into(),
            ..JobArgs::default()
        }
    }

    #[test]
    fn job_options_are_split_off() {
        let spec =
            JobSpec::parse(args(json!({"timeout_ms": 5, "max_rejected": 7}), "append")).unwrap();
        assert_eq!(spec.fetch_options, json!({"timeout_ms": 5}));
        assert_eq!(spec.options.max_rejected, 7);
        let err =
            |options: Value, write: &str| JobSpec::parse(args(options, write)).unwrap_err().message;
        assert!(err(json!({"max_rejected": -1}), "append").contains("max_rejected"));
        assert!(err(json!({"commit_every": 0}), "append")
            .contains("commit_every must be a positive number"));
        assert!(err(json!({"commit_every": 5}), "replace")
            .contains("replace and mirror need the whole run"));
        let spec = JobSpec::parse(args(json!({"commit_every": 10}), "upsert")).unwrap();
        assert_eq!(spec.options.commit_every, Some(10));
        let incremental = json!({"incremental": {"cursor_column": "id", "param": "since", "initial": 0}, "retries": 1});
        let spec = JobSpec::parse(args(incremental.clone(), "append")).unwrap();
        assert_eq!(spec.fetch_options, json!({"retries": 1}));
        for write in ["replace", "mirror"] {
            assert!(
                err(incremental.clone(), write).contains("does not work with"),
                "{write}"
            );
        }
        let typo = json!({"incremental": {"cursor_colum": "id", "param": "since"}});
        assert!(err(typo, "append").contains("unknown field `cursor_colum`"));
        let lookback =
            Incremental::parse(&json!({"cursor_column": "ts", "param": "p", "lookback": "1 hour"}))
                .unwrap();
        assert_eq!(
            lookback.cursor_sql("ts"),
            "pg_catalog.to_jsonb(pg_catalog.max(ts) - $1::pg_catalog.text::pg_catalog.interval)"
        );
        assert!(err(json!({}), "merge").contains("unknown write_method \"merge\""));
        let mut keyed = args(json!({}), "append");
        keyed.key_columns = Some(vec!["id".into()]);
        assert!(JobSpec::parse(keyed)
            .unwrap_err()
            .message
            .contains("key_columns are for"));
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
                Schedule::parse(schedule)
                    .unwrap()
                    .next_after(at, chrono_tz::UTC),
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
            "0 0 30 2 *",
            "CRON_TZ=Mars/Olympus 0 9 * * *",
            "TZ=Europe/Berlin 30 seconds",
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
    fn schedules_read_their_fields_in_a_time_zone_through_daylight_saving() {
        use chrono::TimeZone;
        let utc = |y, mo, d, h, mi| chrono::Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap();
        let berlin: chrono_tz::Tz = parse_zone("Europe/Berlin").unwrap();
        let nine = Schedule::parse("0 9 * * *").unwrap();
        // 09:00 in Berlin is 08:00 UTC in winter, 07:00 in summer; UTC is the default.
        assert_eq!(
            nine.next_after(utc(2026, 12, 1, 10, 0), berlin),
            Some(utc(2026, 12, 2, 8, 0))
        );
        assert_eq!(
            nine.next_after(utc(2026, 7, 1, 10, 0), berlin),
            Some(utc(2026, 7, 2, 7, 0))
        );
        assert_eq!(
            nine.next_after(utc(2026, 7, 1, 10, 0), chrono_tz::UTC),
            Some(utc(2026, 7, 2, 9, 0))
        );
        // The job's own zone wins over the setting's.
        let own = Schedule::parse("CRON_TZ=America/New_York 0 9 * * *").unwrap();
        assert_eq!(
            own.next_after(utc(2026, 12, 1, 10, 0), berlin),
            Some(utc(2026, 12, 1, 14, 0))
        );
        assert!(Schedule::parse("TZ=Asia/Tokyo 0 9 * * *").is_ok());
        // Spring forward (2026-03-29, 02:00 -> 03:00 in Berlin): 02:30 does not exist and fires
        // at the end of the gap, 03:00 CEST = 01:00 UTC.
        let gap = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(
            gap.next_after(utc(2026, 3, 28, 12, 0), berlin),
            Some(utc(2026, 3, 29, 1, 0))
        );
        // Fall back (2026-10-25, 03:00 -> 02:00): 02:30 happens twice and fires once, at the
        // first (00:30 UTC); the next is the day after.
        let first = gap.next_after(utc(2026, 10, 24, 12, 0), berlin).unwrap();
        assert_eq!(first, utc(2026, 10, 25, 0, 30));
        assert_eq!(
            gap.next_after(first, berlin),
            Some(utc(2026, 10, 26, 1, 30))
        );
    }

    #[test]
    fn credentials_must_be_secrets() {
        let url = "https://api.example.com/v1";
        let err = check_no_inline_credentials(
            url,
            None,
            Some(&json!({"auth": {"type": "bearer", "token": "t"}})),
        )
        .unwrap_err();
        assert!(
            err.message.contains("options.auth.token"),
            "{}",
            err.message
        );
        let err =
            check_no_inline_credentials(url, Some(&json!({"Authorization": "Bearer t"})), None)
                .unwrap_err();
        assert!(err.message.contains("\"Authorization\""), "{}", err.message);
        let err =
            check_no_inline_credentials("https://u:p@api.example.com/", None, None).unwrap_err();
        assert!(err.message.contains("user:password@"), "{}", err.message);
        let err =
            check_no_inline_credentials("https://api.example.com/?page=1&api_key=k", None, None)
                .unwrap_err();
        assert!(err.message.contains("\"api_key\""), "{}", err.message);
        check_no_inline_credentials(
            "https://api.example.com/?page=1",
            Some(&json!({"X-Tenant": "a"})),
            Some(&json!({"auth": {"type": "bearer", "secret": "s"}})),
        )
        .unwrap();
    }
}
