//! The SQL of each write method, as text: statements over a target's quoted name, columns and
//! keys, and over the run's rows (`apisync._job_rows($1)`, `$1` a NULL of the target's row type).
//! The run worker executes them with the owner's rights and a pinned search_path.

use super::WriteMethod;

/// Where a run's rows come from in its statements.
const FETCHED: &str = "apisync._job_rows($1)";
/// Rows staged for the write methods that need them all at once (keys, rejects).
pub const STAGE: &str = "pg_temp.apisync_stage";

/// The statements of one run's write.
pub struct WriteSql {
    /// Schema-qualified and quoted.
    pub target: String,
    /// Quoted, in the target's order.
    pub columns: Vec<String>,
    /// Quoted key columns (upsert, mirror).
    pub keys: Vec<String>,
}

impl WriteSql {
    fn list(&self) -> String {
        self.columns.join(", ")
    }

    fn key_list(&self) -> String {
        self.keys.join(", ")
    }

    /// `replace` empties the target first, in the run's transaction.
    pub fn delete_all(&self) -> String {
        format!("DELETE FROM {}", self.target)
    }

    /// Append, straight from the API into the table. The set-returning call sits in FROM, where
    /// the fetch fills PostgreSQL's tuplestore itself (spilling to a temporary file past
    /// work_mem): measured, a quarter faster than rows one by one from a select list.
    pub fn insert_fetched(&self) -> String {
        let list = self.list();
        format!(
            "INSERT INTO {} ({list}) SELECT {list} FROM {FETCHED} f",
            self.target
        )
    }

    /// Stages the run's rows, numbered as they came; with `last_of_each_key`, only each key's
    /// last row (rejecting rows needs the kept rows from the start).
    pub fn stage(&self, last_of_each_key: bool) -> String {
        let keys = self.key_list();
        let (distinct, order) = if last_of_each_key {
            (
                format!("DISTINCT ON ({keys})"),
                format!("ORDER BY {keys}, f.apisync_n DESC"),
            )
        } else {
            (String::new(), String::new())
        };
        format!(
            "CREATE TEMP TABLE apisync_stage ON COMMIT DROP AS
             SELECT {distinct} {}, f.apisync_n AS apisync_row
             FROM (SELECT r.*, pg_catalog.row_number() OVER () AS apisync_n FROM {FETCHED} r) f
             {order}",
            self.list()
        )
    }

    /// The stage, empty, with the columns `stage` gives it (their types and collations from the
    /// run's row type): filled by the bulk path, or `fill_stage`.
    pub fn empty_stage(&self) -> String {
        format!(
            "CREATE TEMP TABLE apisync_stage ON COMMIT DROP AS
             SELECT {}, 0::pg_catalog.int8 AS apisync_row FROM {FETCHED} f WITH NO DATA",
            self.list()
        )
    }

    /// The empty stage filled by SQL, the rows numbered as they came.
    pub fn fill_stage(&self) -> String {
        let list = self.list();
        format!(
            "INSERT INTO {STAGE} ({list}, apisync_row)
             SELECT {list}, pg_catalog.row_number() OVER () FROM {FETCHED} f"
        )
    }

    /// The stage's OID.
    pub fn stage_oid() -> String {
        format!("SELECT '{STAGE}'::pg_catalog.regclass::pg_catalog.oid")
    }

    /// The stage rebuilt with each key's last row, when a key repeated within the run.
    pub fn keep_last_of_each_key(&self) -> [String; 3] {
        let keys = self.key_list();
        [
            format!(
                "CREATE TEMP TABLE apisync_kept ON COMMIT DROP AS
                 SELECT DISTINCT ON ({keys}) * FROM {STAGE} ORDER BY {keys}, apisync_row DESC"
            ),
            format!("DROP TABLE {STAGE}"),
            "ALTER TABLE pg_temp.apisync_kept RENAME TO apisync_stage".to_string(),
        ]
    }

    /// Writes the staged rows `$1..=$2`; returns (inserted, updated).
    pub fn write_staged(&self, write: WriteMethod) -> String {
        let (target, list) = (&self.target, self.list());
        let range = format!("FROM {STAGE} WHERE apisync_row BETWEEN $1 AND $2");
        if write.uses_keys() {
            format!(
                "WITH written AS (
                     INSERT INTO {target} AS t ({list}) SELECT {list} {range}
                     ON CONFLICT ({}) DO {}
                     RETURNING (t.xmax = 0) AS inserted)
                 SELECT pg_catalog.count(*) FILTER (WHERE inserted),
                        pg_catalog.count(*) FILTER (WHERE NOT inserted) FROM written",
                self.key_list(),
                self.conflict_action()
            )
        } else {
            format!(
                "WITH written AS (INSERT INTO {target} ({list}) SELECT {list} {range} RETURNING 1)
                 SELECT pg_catalog.count(*), 0::pg_catalog.int8 FROM written"
            )
        }
    }

    /// `DO UPDATE` of the non-key columns, skipping rows whose values are unchanged; `DO NOTHING`
    /// when every column is a key.
    fn conflict_action(&self) -> String {
        let others: Vec<&String> = self
            .columns
            .iter()
            .filter(|c| !self.keys.contains(c))
            .collect();
        if others.is_empty() {
            return "NOTHING".into();
        }
        let set: Vec<String> = others
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let old: Vec<String> = others.iter().map(|c| format!("t.{c}")).collect();
        let new: Vec<String> = others.iter().map(|c| format!("EXCLUDED.{c}")).collect();
        format!(
            "UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})",
            set.join(", "),
            old.join(", "),
            new.join(", ")
        )
    }

    /// `mirror`: the target rows whose key the run did not see go.
    pub fn delete_unseen(&self, citus: bool) -> String {
        if citus {
            // Citus plans no correlated subquery against a local (temporary) table in a DELETE
            // of a distributed one; NOT IN it does plan. Keys include the distribution column,
            // never NULL there; a row whose other key column is NULL is kept (NOT IN cannot say).
            let keys = |alias: &str| {
                let listed: Vec<String> =
                    self.keys.iter().map(|k| format!("{alias}.{k}")).collect();
                format!("({})", listed.join(", "))
            };
            return format!(
                "DELETE FROM {} t WHERE {} NOT IN (SELECT {} FROM {STAGE} s)",
                self.target,
                keys("t"),
                keys("s").trim_start_matches('(').trim_end_matches(')')
            );
        }
        let matches: Vec<String> = self.keys.iter().map(|k| format!("s.{k} = t.{k}")).collect();
        format!(
            "DELETE FROM {} t WHERE NOT EXISTS (SELECT 1 FROM {STAGE} s WHERE {})",
            self.target,
            matches.join(" AND ")
        )
    }

    /// The number of the last staged row.
    pub fn last_staged() -> String {
        format!("SELECT coalesce(pg_catalog.max(apisync_row), 0) FROM {STAGE}")
    }

    /// A staged row as JSON, for the rejected rows.
    pub fn staged_row() -> String {
        format!(
            "SELECT pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.-) 'apisync_row'
             FROM {STAGE} s WHERE apisync_row OPERATOR(pg_catalog.=) $1"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql() -> WriteSql {
        WriteSql {
            target: "public.\"Users\"".into(),
            columns: vec!["id".into(), "\"order\"".into(), "name".into()],
            keys: vec!["id".into(), "\"order\"".into()],
        }
    }

    fn squeeze(text: String) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn append_inserts_straight_from_the_fetch() {
        assert_eq!(
            sql().insert_fetched(),
            "INSERT INTO public.\"Users\" (id, \"order\", name) SELECT id, \"order\", name FROM apisync._job_rows($1) f"
        );
    }

    #[test]
    fn upsert_updates_only_changed_non_key_columns() {
        let upsert = squeeze(sql().write_staged(WriteMethod::Upsert));
        assert!(
            upsert.contains("ON CONFLICT (id, \"order\") DO UPDATE SET name = EXCLUDED.name WHERE (t.name) IS DISTINCT FROM (EXCLUDED.name)"),
            "{upsert}"
        );
        let all_keys = WriteSql {
            keys: sql().columns,
            ..sql()
        };
        assert!(squeeze(all_keys.write_staged(WriteMethod::Upsert)).contains("DO NOTHING"));
        let append = squeeze(sql().write_staged(WriteMethod::Append));
        assert!(!append.contains("ON CONFLICT"), "{append}");
    }

    #[test]
    fn mirror_deletes_by_every_key_column() {
        assert_eq!(
            squeeze(sql().delete_unseen(false)),
            "DELETE FROM public.\"Users\" t WHERE NOT EXISTS (SELECT 1 FROM pg_temp.apisync_stage s WHERE s.id = t.id AND s.\"order\" = t.\"order\")"
        );
    }

    #[test]
    fn mirror_into_a_citus_table_deletes_by_not_in() {
        assert_eq!(
            squeeze(sql().delete_unseen(true)),
            "DELETE FROM public.\"Users\" t WHERE (t.id, t.\"order\") NOT IN (SELECT s.id, s.\"order\" FROM pg_temp.apisync_stage s)"
        );
    }

    #[test]
    fn staging_keeps_each_keys_last_row_when_asked() {
        assert!(squeeze(sql().stage(true)).contains(
            "SELECT DISTINCT ON (id, \"order\") id, \"order\", name, f.apisync_n AS apisync_row"
        ));
        assert!(!sql().stage(false).contains("DISTINCT"));
    }
}
