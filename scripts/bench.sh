#!/usr/bin/env bash
# Ingest benchmark (not a test): the same rows loaded every way into the same table on a throwaway
# cluster, each ROUNDS times; prints medians and ratios against baselines measured in this run.
#   ROWS=1000000 PAGE=10000 ROUNDS=3 scripts/bench.sh   (PAGE: rows per page of 1.-4., 6., 11., 12.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROWS=${ROWS:-1000000}
PAGE=${PAGE:-10000}
ROUNDS=${ROUNDS:-3}
PAGES=$(( (ROWS + PAGE - 1) / PAGE ))

scripts/setup.sh
build_release
start_api
# No checkpoint in the middle of a measurement: each starts right after one.
# One response of every row (7., 8.) is over the 64 MB default size limit: streamed, it may be.
start_cluster "max_wal_size = '20GB'" "checkpoint_timeout = '1h'" "apisync.max_response_bytes = '1GB'"
rows_url="$api_url/rows?n=$PAGE&total=$ROWS"
paging="{\"type\": \"offset\", \"offset_param\": \"offset\", \"page_size\": $PAGE, \"total_path\": \"\$.total\"}"
fetch="api_fetch('$rows_url', path => '\$.data', paging => '$paging', row_type => NULL::t)"

psql_run -q <<SQL
CREATE EXTENSION pg_apisync;
CREATE TABLE t (id bigint PRIMARY KEY, name text, score numeric, email text, created_at timestamptz, active boolean, tags text[]);
-- The CSV for COPY holds exactly the rows the API serves (this also warms devapi's page cache).
INSERT INTO t SELECT * FROM $fetch;
COPY t TO '$work/rows.csv' (FORMAT csv);
TRUNCATE t;
SELECT apisync.create_job('append', 't', '$rows_url', path => '\$.data', paging => '$paging');
-- 1,000 pages of 1,000 rows, each answered after 20 ms, at concurrency 1 and 8.
SELECT apisync.create_job('slow_1', 't', '$api_url/rows?n=1000&total=$ROWS&ms=20', path => '\$.data',
    paging => '{"type": "offset", "offset_param": "offset", "page_size": 1000, "total_path": "\$.total", "concurrency": 1}');
SELECT apisync.create_job('slow_8', 't', '$api_url/rows?n=1000&total=$ROWS&ms=20', path => '\$.data',
    paging => '{"type": "offset", "offset_param": "offset", "page_size": 1000, "total_path": "\$.total", "concurrency": 8}');
SELECT apisync.create_job('upsert', 't', '$rows_url', path => '\$.data', paging => '$paging', write_method => 'upsert');
CREATE PROCEDURE plain_sql() LANGUAGE plpgsql AS \$\$
BEGIN
    FOR page IN 0..$PAGES - 1 LOOP
        INSERT INTO t SELECT * FROM jsonb_populate_recordset(NULL::t,
            (SELECT body_json->'data' FROM api_request('$rows_url&offset=' || page * $PAGE)));
    END LOOP;
END
\$\$;
SQL

# Milliseconds of the statements after the first (which prepare), in one session.
timed() {
    local prepare=$1
    shift
    local args=(-q -c "$prepare" -c "CHECKPOINT" -c '\timing on')
    for sql in "$@"; do args+=(-c "$sql"); done
    psql_run "${args[@]}" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | awk '{ s += $1 } END { print s }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A result spread
run() {
    local label=$1 prepare=$2
    shift 2
    local times=()
    for _ in $(seq "$ROUNDS"); do times+=("$(timed "$prepare" "$@")"); done
    result[$label]=$(printf '%s\n' "${times[@]}" | median)
    spread[$label]=$(printf '%s\n' "${times[@]}" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }')
}

server_ms=$(for _ in $(seq "$ROUNDS"); do curl -s -o /dev/null -w '%{time_total}\n' "$rows_url&offset=0"; done | median | awk '{ printf "%.1f", $1 * 1000 }')
run copy "TRUNCATE t" "COPY t FROM '$work/rows.csv' (FORMAT csv)"
run plain "TRUNCATE t" "CALL plain_sql()"
run fetch "TRUNCATE t" "INSERT INTO t SELECT * FROM $fetch"
# The executor's own floor for 3.: INSERT ... SELECT of the same rows from a table (a scan
# instead of a function scan; both insert row by row, where COPY inserts in batches).
psql_run -q -c "CREATE TABLE t_rows (LIKE t)" -c "COPY t_rows FROM '$work/rows.csv' (FORMAT csv)" \
    -c "CREATE TABLE t_jsonb AS SELECT to_jsonb(t_rows) AS r FROM t_rows" -c "VACUUM ANALYZE t_rows, t_jsonb"
run insert_select "TRUNCATE t" "INSERT INTO t SELECT * FROM t_rows"
run job_append "TRUNCATE t" "SELECT apisync.run_job('append')"
run slow_1 "TRUNCATE t" "SELECT apisync.run_job('slow_1')"
run slow_8 "TRUNCATE t" "SELECT apisync.run_job('slow_8')"
# jsonb rows (the default) against typed rows, counted; and loaded with jsonb_populate_record.
jsonb_fetch="api_fetch('$rows_url', path => '\$.data', paging => '$paging')"
run count_typed "SELECT 1" "SELECT count(*) FROM $fetch"
run count_jsonb "SELECT 1" "SELECT count(*) FROM $jsonb_fetch"
run populate "TRUNCATE t" "INSERT INTO t SELECT p.* FROM $jsonb_fetch r CROSS JOIN LATERAL jsonb_populate_record(NULL::t, r) p"
# 11c's floor: the same jsonb rows read from a table, so that only PostgreSQL's part is measured.
run populate_table "TRUNCATE t" "INSERT INTO t SELECT p.* FROM t_jsonb j CROSS JOIN LATERAL jsonb_populate_record(NULL::t, j.r) p"
# Routes that must not be slow: columns by relative paths, a path that is not a chain of names,
# and paging that reads inside the rows (a cursor from the last row, as Stripe's).
columns='{"columns": {"id": "$.id", "name": "$.name", "score": "$.score", "email": "$.email", "created_at": "$.created_at", "active": "$.active", "tags": "$.tags"}}'
run route_columns "SELECT 1" "SELECT count(*) FROM api_fetch('$rows_url', path => '\$.data', paging => '$paging', row_type => NULL::t, options => '$columns')"
run route_star "SELECT 1" "SELECT count(*) FROM api_fetch('$rows_url', path => '\$.data[*]', paging => '$paging', row_type => NULL::t)"
run route_cursor "SELECT 1" "SELECT count(*) FROM api_fetch('$api_url/rows?n=$PAGE&total=$ROWS', path => '\$.data', paging => '{\"type\": \"cursor\", \"cursor_path\": \"\$.data[-1].id\", \"cursor_param\": \"after\"}', row_type => NULL::t)"
# Upserts find every row there already, with one column changed: the update path.
changed="TRUNCATE t; COPY t FROM '$work/rows.csv' (FORMAT csv); UPDATE t SET name = name || '*'"
run on_conflict "$changed" "CREATE TEMP TABLE f (LIKE t); COPY f FROM '$work/rows.csv' (FORMAT csv); INSERT INTO t SELECT * FROM f ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, score = EXCLUDED.score, email = EXCLUDED.email, created_at = EXCLUDED.created_at, active = EXCLUDED.active, tags = EXCLUDED.tags"
run job_upsert "$changed" "SELECT apisync.run_job('upsert')"

# One response of every row, as a JSON array, as JSON Lines and as CSV (made by devapi first, so
# that making them is not measured).
for format in json jsonl csv; do curl -s -o /dev/null "$api_url/export/$format?n=$ROWS"; done
run export_json "TRUNCATE t" "INSERT INTO t SELECT * FROM api_fetch('$api_url/export/json?n=$ROWS', path => '\$.data', row_type => NULL::t)"
run export_jsonl "TRUNCATE t" "INSERT INTO t SELECT * FROM api_fetch('$api_url/export/jsonl?n=$ROWS', row_type => NULL::t)"
run export_csv "TRUNCATE t" "INSERT INTO t SELECT * FROM api_fetch('$api_url/export/csv?n=$ROWS', row_type => NULL::t)"

# 1,000 pages of 10 rows, each answered after 20 ms.
slow="$api_url/rows?n=10&total=10000&ms=20"
slow_paging() { echo "{\"type\": \"offset\", \"offset_param\": \"offset\", \"page_size\": 10, \"total_path\": \"\$.total\", \"concurrency\": $1}"; }
latency_1=$(timed "SELECT 1" "SELECT count(*) FROM api_fetch('$slow', path => '\$.data', paging => '$(slow_paging 1)')")
latency_8=$(timed "SELECT 1" "SELECT count(*) FROM api_fetch('$slow', path => '\$.data', paging => '$(slow_paging 8)')")

# Fan-out: 1,000 parameter sets against an endpoint that answers in 50 ms, row by row with
# LATERAL, and as one call at concurrency 16.
child="$api_url/rows?n=1&ms=50&offset="
lateral_ms=$(timed "SELECT 1" "SELECT count(*) FROM generate_series(1, 1000) g CROSS JOIN LATERAL api_fetch('$child' || g, path => '\$.data') r")
sets() { echo "(SELECT jsonb_agg(jsonb_build_object('id', g)) FROM generate_series(1, $1) g)"; }
fan_ms=$(timed "SELECT 1" "SELECT count(*) FROM api_fetch('$child{id}', path => '\$.data', params => $(sets 1000), options => '{\"concurrency\": 16}')")
# Peak memory of a fresh backend fanning out over 1,000 and 100,000 sets (no latency). The sets
# are made beforehand: jsonb_agg of 100,000 objects alone peaks at ~100 MB, which would hide
# what the fan-out takes.
psql_run -q -c "CREATE TABLE fan_params AS SELECT n, $(sets n) AS params FROM (VALUES (1000), (100000)) v(n)"
fan_peak_kb() {
    psql_run -qtA -c "SELECT count(*) FROM api_fetch('$api_url/rows?n=1&offset={id}', path => '\$.data', params => (SELECT params FROM fan_params WHERE n = $1), options => '{\"concurrency\": 16}')" \
        -c "SELECT (regexp_match(pg_read_file('/proc/self/status'), 'VmHWM:\s+(\d+)'))[1]" | tail -n 1
}
fan_peak_small=$(fan_peak_kb 1000)
fan_peak_large=$(fan_peak_kb 100000)

# Peak resident memory (VmHWM) of a fresh backend that fetches and converts every row. Without an
# INSERT: the shared buffers an insert touches would count as the backend's and hide the pipeline.
peak_kb() {
    psql_run -qtA -c "SELECT count(*) FROM api_fetch('$api_url/rows?n=$PAGE&total=$1', path => '\$.data', paging => '{\"type\": \"offset\", \"offset_param\": \"offset\", \"page_size\": $PAGE, \"total_path\": \"\$.total\"}', row_type => NULL::t)" \
        -c "SELECT (regexp_match(pg_read_file('/proc/self/status'), 'VmHWM:\s+(\d+)'))[1]" | tail -n 1
}
peak_small=$(peak_kb $(( ROWS / 10 )))
peak_large=$(peak_kb "$ROWS")
# The same, for one response of all the rows (streamed), and of a tenth of them.
peak_one_kb() {
    psql_run -qtA -c "SELECT count(*) FROM api_fetch('$api_url/export/json?n=$1', path => '\$.data', row_type => NULL::t)" \
        -c "SELECT (regexp_match(pg_read_file('/proc/self/status'), 'VmHWM:\s+(\d+)'))[1]" | tail -n 1
}
peak_one_small=$(peak_one_kb $(( ROWS / 10 )))
peak_one_large=$(peak_one_kb "$ROWS")

ratio() { echo "$1 $2" | awk '{ printf "%.2f", $1 / $2 }'; }
echo
echo "== pg_apisync ingest benchmark: $ROWS rows in pages of $PAGE from loopback, median of $ROUNDS"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $("$PG_BIN/postgres" --version)"
echo "rows: id bigint, name text, score numeric, email text, created_at timestamptz, active boolean, tags text[]"
echo "devapi serves one page in ${server_ms} ms"
echo
printf '| %-58s | %9s | %s |\n' "method" "ms" "ratio"
printf '| %-58s | %9s | %s |\n' "---" "---:" "---"
printf '| %-58s | %9.0f | %s |\n' "1. COPY from a CSV file" "${result[copy]}" "1.00 (the floor)"
printf '| %-58s | %9.0f | %s |\n' "2. api_request per page + jsonb_populate_recordset" "${result[plain]}" "$(ratio "${result[plain]}" "${result[copy]}")× COPY"
printf '| %-58s | %9.0f | %s |\n' "3. INSERT ... SELECT * FROM api_fetch(row_type)" "${result[fetch]}" "$(ratio "${result[fetch]}" "${result[copy]}")× COPY (goal ≤ 0.9); $(ratio "${result[plain]}" "${result[fetch]}")× faster than 2. (goal ≥ 2)"
printf '| %-58s | %9.0f | %s |\n' "3f. INSERT ... SELECT * FROM a table of the rows (3.'s floor)" "${result[insert_select]}" "$(ratio "${result[insert_select]}" "${result[copy]}")× COPY"
printf '| %-58s | %9.0f | %s |\n' "4a. run_job, append" "${result[job_append]}" "$(ratio "${result[job_append]}" "${result[copy]}")× COPY (goal ≤ 0.8)"
printf '| %-58s | %9.0f | %s |\n' "4b. INSERT ... ON CONFLICT from a file (COPY + upsert)" "${result[on_conflict]}" "1.00 (the upsert floor)"
printf '| %-58s | %9.0f | %s |\n' "4c. run_job, upsert" "${result[job_upsert]}" "$(ratio "${result[job_upsert]}" "${result[on_conflict]}")× 4b (goal ≤ 1.1)"
printf '| %-58s | %9.0f | %s |\n' "5a. 1,000 pages × 20 ms, concurrency 1" "$latency_1" ""
printf '| %-58s | %9.0f | %s |\n' "5b. 1,000 pages × 20 ms, concurrency 8" "$latency_8" "$(ratio "$latency_1" "$latency_8")× faster than 5a (goal ≥ 6)"
printf '| %-58s | %9.0f | %s |\n' "5c. run_job append, 1,000 pages × 20 ms, concurrency 1" "${result[slow_1]}" ""
printf '| %-58s | %9.0f | %s |\n' "5d. run_job append, 1,000 pages × 20 ms, concurrency 8" "${result[slow_8]}" "$(ratio "${result[slow_1]}" "${result[slow_8]}")× faster than 5c (goal ≥ 7)"
printf '| %-58s | %9s | %s |\n' "6a. peak backend memory (VmHWM), $(( ROWS / 10 )) rows" "${peak_small} kB" ""
printf '| %-58s | %9s | %s |\n' "6b. peak backend memory (VmHWM), $ROWS rows" "${peak_large} kB" "$(ratio "$peak_large" "$peak_small")× 6a (goal ≤ 1.5)"
printf '| %-58s | %9.0f | %s |\n' "7a. one response of every row, JSON array (typed INSERT)" "${result[export_json]}" "$(ratio "${result[export_json]}" "${result[copy]}")× COPY (goal ≤ 1.3)"
printf '| %-58s | %9.0f | %s |\n' "7b. one response of every row, JSON Lines" "${result[export_jsonl]}" "$(ratio "${result[export_jsonl]}" "${result[copy]}")× COPY (goal ≤ 1.3)"
printf '| %-58s | %9.0f | %s |\n' "7c. one response of every row, CSV" "${result[export_csv]}" "$(ratio "${result[export_csv]}" "${result[copy]}")× COPY (goal ≤ 1.3)"
printf '| %-58s | %9s | %s |\n' "8a. peak memory (VmHWM), one response of $(( ROWS / 10 )) rows" "${peak_one_small} kB" ""
printf '| %-58s | %9s | %s |\n' "8b. peak memory (VmHWM), one response of $ROWS rows" "${peak_one_large} kB" "$(ratio "$peak_one_large" "$peak_one_small")× 8a (goal ≤ 1.5)"
printf '| %-58s | %9.0f | %s |\n' "9a. 1,000 children × 50 ms, LATERAL api_fetch row by row" "$lateral_ms" ""
printf '| %-58s | %9.0f | %s |\n' "9b. 1,000 children × 50 ms, params, concurrency 16" "$fan_ms" "$(ratio "$lateral_ms" "$fan_ms")× faster than 9a (goal ≥ 12)"
printf '| %-58s | %9s | %s |\n' "10a. peak memory (VmHWM), 1,000 parameter sets" "${fan_peak_small} kB" ""
printf '| %-58s | %9s | %s |\n' "10b. peak memory (VmHWM), 100,000 parameter sets" "${fan_peak_large} kB" "$(ratio "$fan_peak_large" "$fan_peak_small")× 10a (goal ≤ 2)"
printf '| %-58s | %9.0f | %s |\n' "11a. SELECT count(*), typed rows" "${result[count_typed]}" ""
printf '| %-58s | %9.0f | %s |\n' "11b. SELECT count(*), jsonb rows" "${result[count_jsonb]}" "$(ratio "${result[count_jsonb]}" "${result[count_typed]}")× 11a (goal ≤ 1.3)"
printf '| %-58s | %9.0f | %s |\n' "11c. jsonb rows + jsonb_populate_record, INSERT" "${result[populate]}" "$(ratio "${result[populate]}" "${result[fetch]}")× 3. (goal ≤ 1.5)"
printf '| %-58s | %9.0f | %s |\n' "11f. jsonb_populate_record from a table of jsonb (11c's floor)" "${result[populate_table]}" "$(ratio "${result[populate_table]}" "${result[fetch]}")× 3."
printf '| %-58s | %9.0f | %s |\n' "12a. typed count, options.columns by relative paths" "${result[route_columns]}" "$(ratio "${result[route_columns]}" "${result[count_typed]}")× 11a (goal ≤ 1.2)"
printf '| %-58s | %9.0f | %s |\n' "12b. typed count, path \$.data[*]" "${result[route_star]}" "$(ratio "${result[route_star]}" "${result[count_typed]}")× 11a (goal ≤ 1.2)"
printf '| %-58s | %9.0f | %s |\n' "12c. typed count, cursor read from the last row" "${result[route_cursor]}" "$(ratio "${result[route_cursor]}" "${result[count_typed]}")× 11a (goal ≤ 1.2)"
echo
echo "spread over $ROUNDS rounds (min–max ms):"
for label in $(printf '%s\n' "${!spread[@]}" | sort); do echo "  $label ${spread[$label]}"; done

# 13. Citus, when its source is at hand: the same rows into a local, a hash-distributed and a
# reference table of a coordinator and two workers on this machine (the Citus test tier's cluster,
# with the release build installed above). CITUS_ROWS defaults to a fifth of ROWS: 27 loads.
echo
if missing=$(scripts/citus.sh --check); then
    scripts/citus.sh >/dev/null
    echo "13. Citus 13.2.2, a coordinator and two workers on this machine:"
    ROWS=${CITUS_ROWS:-$(( ROWS / 5 ))} ROUNDS=$ROUNDS cargo test --release --quiet -p apisync-tests --test citus -- \
        --ignored --nocapture rows_per_second_into_distributed_and_local_tables 2>&1 | sed -n '/^[0-9]* rows, /,/^| reference/p'
else
    echo "13. Citus NOT MEASURED: $missing"
fi
