#!/usr/bin/env bash
# The demo: build and install pg_apisync, start the bundled demo API on loopback and a throwaway
# PostgreSQL 15 cluster, then from preview to job: a one-request preview, a table suggested from
# the data, a load with one INSERT ... SELECT, a scheduled job; show the rows, and stop everything
# it started.
#   scripts/demo.sh --keep   leaves the cluster and the demo API running, to play with in psql
#   scripts/demo.sh --stop   stops what --keep left running
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    --keep) export KEEP=1 ;;
    --stop) . scripts/lib.sh; stop_kept; exit 0 ;;
    "") ;;
    *) echo "usage: scripts/demo.sh [--keep | --stop]" >&2; exit 2 ;;
esac
if [ "${KEEP:-0}" = 1 ]; then
    # One kept demo at a time: an earlier one is stopped first.
    (. scripts/lib.sh; trap - EXIT; stop_kept >/dev/null)
    mkdir -p "${APISYNC_DEMO_DIR:-/tmp/apisync-demo}"
fi
. scripts/lib.sh

scripts/setup.sh

echo "== building pg_apisync and the demo API (release)"
build_release

echo "== starting the demo API on 127.0.0.1"
start_api
echo "   $api_url"

echo "== starting a throwaway PostgreSQL 15 cluster"
start_cluster

echo "== from preview to job: $api_url/api/users into table users"
psql_run -q -c 'CREATE EXTENSION pg_apisync'
psql_run -e <<'SQL'
-- 1. A preview of the API: one request, the first rows as jsonb.
SELECT * FROM api_fetch(:'api' || '/api/users', 'POST',
                        '{"paging": {"pageSize": 100, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}',
                        '$.data', options => '{"max_rows": 3}');

-- 2. A table for it, suggested from the first page: names in snake_case, types every sampled
--    value converts to, a primary key on id, and the columns map in the table's comment.
SELECT apisync.suggest_table('users', :'api' || '/api/users', 'POST',
                             '{"paging": {"pageSize": 100, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}',
                             '$.data') AS ddl \gset
:ddl

-- 3. The load: typed by the table's row type, keys renamed by the map (signupTime -> signup_time).
INSERT INTO users
SELECT * FROM api_fetch(:'api' || '/api/users', 'POST',
                        '{"paging": {"pageSize": 100, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}',
                        '$.data',
                        options  => jsonb_build_object('columns', obj_description('users'::regclass)::jsonb),
                        row_type => NULL::users);

SELECT id, name, email, city, score, signup_time, active, tags FROM users ORDER BY id LIMIT 10;
SELECT count(*) AS users, round(avg(score::numeric), 2) AS avg_score, count(*) FILTER (WHERE 'vip' = ANY (tags)) AS vips FROM users;

-- 4. A sync job: all pages, 20 users a page, upserted by primary key, every 5 seconds by the
--    extension's background worker (and now, by hand). create_target makes its table from a
--    sample, in the same transaction, with the columns map stored in the job.
SELECT apisync.create_job('users', 'users_synced', :'api' || '/api/users', 'POST',
                          '{"paging": {"pageSize": 20, "pageNum": 1}, "params": [{"name": "name", "value": ""}]}',
                          '$.data',
                          paging => '{"type": "page_number", "in": "body", "page_param": "paging.pageNum",
                                      "size_param": "paging.pageSize", "page_size": 20, "total_path": "$.totalNum"}',
                          write_method => 'upsert', schedule => '5 seconds', create_target => true);
SELECT run_id, status, pages, rows_fetched, rows_inserted, rows_updated FROM apisync.run_job('users');
SELECT pg_sleep(6);
SELECT run_id, trigger, status, requests, pages, rows_fetched, rows_inserted, rows_updated, rows_deleted,
       finished_at - started_at AS took
FROM apisync.job_runs ORDER BY run_id;
SELECT count(*) AS synced_users FROM users_synced;
SQL
if [ "${KEEP:-0}" = 1 ]; then
    echo "== done: the cluster and the demo API keep running (the job syncs every 5 seconds)"
    echo "   connect: $PG_BIN/psql -h $work -U postgres -v api=$api_url"
    echo "   the demo API: $api_url"
    echo "   stop them: scripts/demo.sh --stop"
else
    echo "== done: the cluster and the demo API are stopped and removed"
fi
