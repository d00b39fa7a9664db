-- Every documented error raised before any request, with its SQLSTATE and message, as an
-- unprivileged role with EXECUTE on the network functions sees it.
CREATE ROLE regress_user;
CREATE ROLE regress_plain;
GRANT CREATE ON SCHEMA public TO regress_user, regress_plain;
GRANT EXECUTE ON FUNCTION api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement, jsonb) TO regress_user;
GRANT EXECUTE ON FUNCTION api_request(text, text, jsonb, jsonb, jsonb) TO regress_user;
SET ROLE regress_user;
CREATE FUNCTION pg_temp.try(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
CREATE TABLE regress_t (id bigint PRIMARY KEY, name text, ts timestamptz);

-- api_fetch and api_request
SELECT pg_temp.try($$SELECT * FROM api_fetch('ftp://example.com/x')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('not a url')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch(NULL)$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', method => 'FETCH')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', path => 'data')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"timeout": 5}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"rate_limit": 0}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"retries": 1000}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', paging => '{"type": "pages"}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"auth": {"type": "bearer", "secret": "nope"}}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"columns": {"nope": "$.x"}}', row_type => NULL::regress_t)$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', row_type => NULL::record)$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://169.254.169.254/latest/meta-data/')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://0.0.0.0:9/')$$);
SELECT pg_temp.try($$SELECT * FROM api_request('http://[::]:9/')$$);

-- formats
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"format": "xml"}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', path => '$.data', options => '{"format": "csv"}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"csv": {"header": false}}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"decompress": "zip"}')$$);
SELECT pg_temp.try($$SELECT * FROM api_request('http://127.0.0.1:9/x', options => '{"format": "csv"}')$$);

-- fan-out
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/{id}', params => '{"id": 1}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/{id}', params => '[{"id": 1}, {"di": 2}]')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://{host}:9/x', params => '[{"host": "h"}]', headers => '{"Authorization": "Bearer t"}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"on_status": {"503": "skip"}}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"columns": {"id": "{id}"}}', row_type => NULL::regress_t)$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/{id}', options => '{"for_each": "DELETE FROM public.regress_t"}')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/{id}', options => '{"for_each": "SELECT name FROM public.regress_t"}')$$);

-- jobs
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', write_method => 'merge')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', write_method => 'append', key_columns => '{id}')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', write_method => 'upsert', key_columns => '{name}')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', schedule => '* * * *')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', schedule => '0 0 30 2 *')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', schedule => '90 seconds')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', headers => '{"Authorization": "Bearer t"}')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', options => '{"auth": {"type": "bearer", "token": "t"}}')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://u:p@127.0.0.1:9/x')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x?token=t')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', write_method => 'replace', options => '{"commit_every": 5}')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', write_method => 'mirror', options => '{"incremental": {"cursor_column": "ts", "param": "since"}}')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', options => '{"incremental": {"cursor_column": "nope", "param": "since"}}')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x', options => '{"max_rejected": -1}')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'pg_class', 'http://127.0.0.1:9/x')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('', 'regress_t', 'http://127.0.0.1:9/x')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j', 'regress_t', 'http://127.0.0.1:9/x')$$);
SELECT pg_temp.try($$SELECT apisync.alter_job('j', owner => 'postgres')$$);
SELECT pg_temp.try($$SELECT apisync.run_job('no_such_job')$$);
SELECT pg_temp.try($$SELECT apisync.drop_job('no_such_job')$$);
SELECT pg_temp.try($$SELECT apisync.drop_secret('no_such_secret')$$);
SELECT pg_temp.try($$SELECT * FROM apisync._job_rows(NULL::regress_t)$$);
SELECT pg_temp.try($$INSERT INTO apisync.job_runs (job_id, job_name, owner, trigger, status) VALUES (1, 'j', 'regress_user', 'manual', 'succeeded')$$);
SELECT pg_temp.try($$SELECT value FROM apisync.secrets$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j2', 'no_such_table', 'http://127.0.0.1:9/x')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j2', 'no_such_schema.t', 'http://127.0.0.1:9/x', create_target => true)$$);
SELECT pg_temp.try($$SELECT apisync.create_job('j2', 'bad name!', 'http://127.0.0.1:9/x')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"max_rows": 0}')$$);
SELECT pg_temp.try($$SELECT api_request('http://127.0.0.1:9/x', options => '{"max_rows": 1}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"auth": {"type": "oauth2_refresh_token", "token_url": "http://127.0.0.1:9/token", "client_id": "c", "client_secret": "s", "refresh_token_secret": "no_such_secret"}}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"auth": {"type": "oauth2_refresh_token", "token_url": "http://127.0.0.1:9/token", "client_id": "c", "refresh_token_secret": "rt"}}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"auth": {"type": "oauth2_refresh_token", "token_url": "http://169.254.169.254/token", "client_id": "c", "client_secret": "cs-9f8e7d", "refresh_token_secret": "rt"}}')$$);
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x', options => '{"auth": {"type": "oauth2_refresh_token", "token_url": "http://127.0.0.1:9/token", "client_id": "c", "client_secret": "s"}}')$$);
SELECT pg_temp.try($$SELECT apisync.suggest_table(NULL, 'http://127.0.0.1:9/x')$$);
SELECT pg_temp.try($$SELECT apisync.suggest_table('t', 'http://127.0.0.1:9/x', options => '{"columns": {}}')$$);
SELECT pg_temp.try($$SELECT apisync.suggest_table('t', 'http://127.0.0.1:9/x', options => '{"max_rows": 0}')$$);
SELECT name, owner, write_method, key_columns FROM apisync.jobs;
SELECT pg_temp.try($$SELECT apisync.drop_job('j')$$);

-- a role without EXECUTE on api_fetch
RESET ROLE;
SET ROLE regress_plain;
SELECT pg_temp.try($$SELECT * FROM api_fetch('http://127.0.0.1:9/x')$$);
SELECT pg_temp.try($$SELECT apisync.create_job('p', 'regress_t', 'http://127.0.0.1:9/x')$$);
SELECT pg_temp.try($$SELECT apisync.suggest_table('t', 'http://127.0.0.1:9/x')$$);
RESET ROLE;
