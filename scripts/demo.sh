#!/usr/bin/env bash
# The demo: build and install pg_apisync, start the bundled demo API on loopback and a throwaway
# PostgreSQL 15 cluster, load the API's users into a table with one INSERT ... SELECT, show them,
# and stop everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/setup.sh

echo "== building pg_apisync and the demo API (release)"
build_release

echo "== starting the demo API on 127.0.0.1"
start_api
echo "   $api_url"

echo "== starting a throwaway PostgreSQL 15 cluster"
start_cluster

echo "== syncing $api_url/api/users into table users"
psql_run -q <<'SQL'
CREATE EXTENSION pg_apisync;
CREATE TABLE users (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    email text,
    city text,
    score numeric(5,2),
    signup_time timestamptz,
    active boolean,
    tags text[]
);
SQL
psql_run -e <<'SQL'
-- A preview of the API: the first rows as jsonb.
SELECT * FROM api_fetch(:'api' || '/api/users', 'POST',
                        '{"paging": {"pageSize": 3, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}',
                        '$.data');

-- The load: typed by the table's row type, signupTime mapped to signup_time.
INSERT INTO users
SELECT * FROM api_fetch(:'api' || '/api/users', 'POST',
                        '{"paging": {"pageSize": 100, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}',
                        '$.data',
                        options  => '{"columns": {"signup_time": "$.signupTime"}}',
                        row_type => NULL::users);

SELECT id, name, email, city, score, signup_time, active, tags FROM users ORDER BY id LIMIT 10;
SELECT count(*) AS users, round(avg(score), 2) AS avg_score, count(*) FILTER (WHERE 'vip' = ANY (tags)) AS vips FROM users;

-- A sync job: all pages, 20 users a page, upserted by primary key, every 5 seconds by the
-- extension's background worker (and now, by hand).
CREATE TABLE users_synced (LIKE users INCLUDING ALL);
SELECT apisync.create_job('users', 'users_synced', :'api' || '/api/users', 'POST',
                          '{"paging": {"pageSize": 20, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}',
                          '$.data',
                          paging => '{"type": "page_number", "in": "body", "page_param": "paging.pageNum",
                                      "size_param": "paging.pageSize", "page_size": 20, "total_path": "$.totalNum"}',
                          options => '{"columns": {"signup_time": "$.signupTime"}}',
                          write_method => 'upsert', schedule => '5 seconds');
SELECT run_id, status, pages, rows_fetched, rows_inserted, rows_updated FROM apisync.run_job('users');
SELECT pg_sleep(6);
SELECT run_id, trigger, status, requests, pages, rows_fetched, rows_inserted, rows_updated, rows_deleted,
       finished_at - started_at AS took
FROM apisync.job_runs ORDER BY run_id;
SELECT count(*) AS synced_users FROM users_synced;
SQL
echo "== done: the cluster and the demo API are stopped and removed"
