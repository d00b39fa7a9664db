//! Append runs by COPY's bulk path (multi-insert into plain tables): what INSERT would enforce
//! is enforced, and targets the path does not take are written by INSERT … SELECT as before.

use super::*;

const FDL: &str = r#"'POST', '{"paging": {"pageSize": 10, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}', '$.data',
    paging => '{"type": "page_number", "in": "body", "page_param": "paging.pageNum", "size_param": "paging.pageSize", "page_size": 10, "total_path": "$.totalNum"}'"#;

/// A job `name` appending the 57 demo users into table `name`, made by `ddl`.
fn append_job(client: &mut harness::Client, name: &str, ddl: &str) {
    client
        .batch_execute(&format!(
            "{ddl};
             SELECT apisync.create_job('{name}', '{name}', {}, {FDL});",
            lit(&api().url("/api/users"))
        ))
        .unwrap();
}

fn run_error(client: &mut harness::Client, name: &str) -> (String, String) {
    let (state, message, _) =
        sql_error(client.batch_execute(&format!("SELECT apisync.run_job('{name}')")));
    (state, message)
}

#[test]
fn the_bulk_path_keeps_keys_indexes_and_constraints() {
    let mut client = user();
    append_job(
        &mut client,
        "bulk_users",
        "CREATE TABLE bulk_users (id bigint PRIMARY KEY, name text NOT NULL, email text, city text);
         CREATE INDEX ON bulk_users (email)",
    );
    let inserted: i64 = one(
        &mut client,
        "SELECT rows_inserted FROM apisync.run_job('bulk_users')",
    );
    assert_eq!(inserted, 57);
    // Every index has every row.
    client.batch_execute("SET enable_seqscan = off").unwrap();
    let by_index: i64 = one(
        &mut client,
        "SELECT count(*) FROM bulk_users WHERE email IN (SELECT email FROM bulk_users) AND id BETWEEN 1 AND 57",
    );
    assert_eq!(by_index, 57);
    let found: String = one(
        &mut client,
        "SELECT name FROM bulk_users WHERE email = 'jun.nguyen3@example.com'",
    );
    assert_eq!(found, "Jun Nguyen");
    client.batch_execute("RESET enable_seqscan").unwrap();
    // The same rows again: the primary key refuses them, and the run leaves nothing behind.
    let (state, message) = run_error(&mut client, "bulk_users");
    assert_eq!(state, "23505", "{message}");
    assert_eq!(
        one::<i64>(&mut client, "SELECT count(*) FROM bulk_users"),
        57
    );
    // NOT NULL and CHECK, with INSERT's own messages.
    append_job(
        &mut client,
        "bulk_not_null",
        "CREATE TABLE bulk_not_null (id bigint, name text, required text NOT NULL)",
    );
    let (state, message) = run_error(&mut client, "bulk_not_null");
    assert_eq!(state, "23502", "{message}");
    assert!(
        message.contains("null value in column \"required\" of relation \"bulk_not_null\" violates not-null constraint"),
        "{message}"
    );
    append_job(
        &mut client,
        "bulk_check",
        "CREATE TABLE bulk_check (id bigint CHECK (id < 50), name text)",
    );
    let (state, message) = run_error(&mut client, "bulk_check");
    assert_eq!(state, "23514", "{message}");
    assert_eq!(
        one::<i64>(&mut client, "SELECT count(*) FROM bulk_check"),
        0
    );
}

#[test]
fn triggers_and_row_security_still_apply() {
    let mut client = user();
    append_job(
        &mut client,
        "bulk_trigger",
        "CREATE TABLE bulk_trigger (id bigint, name text);
         CREATE TABLE bulk_trigger_seen (n int);
         INSERT INTO bulk_trigger_seen VALUES (0);
         CREATE FUNCTION bulk_trigger_count() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN UPDATE public.bulk_trigger_seen SET n = n + 1; RETURN NEW; END $$;
         CREATE TRIGGER counted AFTER INSERT ON bulk_trigger FOR EACH ROW EXECUTE FUNCTION bulk_trigger_count()",
    );
    let inserted: i64 = one(
        &mut client,
        "SELECT rows_inserted FROM apisync.run_job('bulk_trigger')",
    );
    assert_eq!(inserted, 57);
    assert_eq!(
        one::<i32>(&mut client, "SELECT n FROM bulk_trigger_seen"),
        57
    );
    // Row-level security forced on the owner: its policy is checked row by row.
    append_job(
        &mut client,
        "bulk_rls",
        "CREATE TABLE bulk_rls (id bigint, name text);
         ALTER TABLE bulk_rls ENABLE ROW LEVEL SECURITY;
         ALTER TABLE bulk_rls FORCE ROW LEVEL SECURITY;
         CREATE POLICY few ON bulk_rls USING (true) WITH CHECK (id < 10)",
    );
    let (state, message) = run_error(&mut client, "bulk_rls");
    assert_eq!(state, "42501", "{message}");
    assert!(message.contains("row-level security policy"), "{message}");
}
