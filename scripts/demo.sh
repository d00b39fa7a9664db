#!/usr/bin/env bash
# The demo: build and install pg_apisync, start the bundled demo API on loopback and a throwaway
# PostgreSQL 15 cluster, load the API's users into a table with one INSERT ... SELECT, show them,
# and stop everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
BIN=/usr/lib/postgresql/15/bin

scripts/setup.sh

echo "== building pg_apisync and the demo API (release)"
install_flags=()
[ "$(id -u)" -eq 0 ] || install_flags=(--sudo)
cargo pgrx install --release --pg-config "$PG_CONFIG" "${install_flags[@]}" >/dev/null
cargo build --release --quiet -p devapi

work=$(mktemp -d /tmp/apisync-demo.XXXXXX)
api_pid=""
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
    [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null || true
    [ -f "$work/data/postmaster.pid" ] && as_postgres "$BIN/pg_ctl" -D "$work/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting the demo API on 127.0.0.1"
target/release/apisync-devapi --port 0 >"$work/api.out" 2>&1 &
api_pid=$!
for _ in $(seq 50); do grep -q "listening on" "$work/api.out" && break; sleep 0.1; done
api_url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/api.out")
[ -n "$api_url" ] || { cat "$work/api.out"; exit 1; }
echo "   $api_url"

echo "== starting a throwaway PostgreSQL 15 cluster"
[ "$(id -u)" -ne 0 ] || chown postgres:postgres "$work"
as_postgres "$BIN/initdb" -D "$work/data" -U postgres -A trust -E UTF8 --no-locale >/dev/null
cat >>"$work/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work'
shared_preload_libraries = 'pg_apisync,pg_cron'
cron.database_name = 'postgres'
CONF
as_postgres "$BIN/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null

echo "== syncing $api_url/api/users into table users"
psql_demo() { "$BIN/psql" -h "$work" -U postgres -d postgres -X -v ON_ERROR_STOP=1 -v api="$api_url" "$@"; }
psql_demo -q <<'SQL'
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
psql_demo -e <<'SQL'
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
SQL
echo "== done: the cluster and the demo API are stopped and removed"
