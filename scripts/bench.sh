#!/usr/bin/env bash
# Ingest benchmark (not a test): the same rows loaded three ways into the same table, each run
# ROUNDS times on a throwaway cluster; prints medians and ratios against COPY measured in this run.
#   ROWS=100000 ROUNDS=3 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROWS=${ROWS:-100000}
ROUNDS=${ROUNDS:-3}

scripts/setup.sh
build_release
start_api
start_cluster
page="$api_url/rows?n=$ROWS"

psql_run -q <<SQL
CREATE EXTENSION pg_apisync;
CREATE TABLE t (id bigint, name text, score numeric, email text, created_at timestamptz, active boolean, tags text[]);
-- The CSV for COPY holds exactly the rows the API serves.
INSERT INTO t SELECT * FROM api_fetch('$page', path => '\$.data', row_type => NULL::t);
COPY t TO '$work/rows.csv' (FORMAT csv);
TRUNCATE t;
SQL

# Milliseconds of one statement, after emptying the table.
timed() {
    psql_run -q -c "TRUNCATE t" -c '\timing on' -c "$1" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -n 1
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A result
run() {
    local label=$1 sql=$2 times=()
    for _ in $(seq "$ROUNDS"); do times+=("$(timed "$sql")"); done
    result[$label]=$(printf '%s\n' "${times[@]}" | median)
}

server_ms=$(for _ in $(seq "$ROUNDS"); do curl -s -o /dev/null -w '%{time_total}\n' "$page"; done | median | awk '{ printf "%.1f", $1 * 1000 }')
run copy "COPY t FROM '$work/rows.csv' (FORMAT csv)"
run plain_sql "INSERT INTO t SELECT * FROM jsonb_populate_recordset(NULL::t, (SELECT body_json->'data' FROM api_request('$page')))"
run api_fetch "INSERT INTO t SELECT * FROM api_fetch('$page', path => '\$.data', row_type => NULL::t)"

rows_loaded=$(psql_run -tA -c "SELECT count(*) FROM t")

# 100 pages that each take 100 ms to answer, fetched one at a time and eight at a time.
slow="$api_url/slowpages?pages=100&size=10&ms=100"
paged() {
    echo "SELECT count(*) FROM api_fetch('$slow', path => '\$.data', paging => '{\"type\": \"page_number\", \"page_param\": \"page\", \"total_pages_path\": \"\$.total_pages\", \"concurrency\": $1}')"
}
concurrency_1=$(timed "$(paged 1)")
concurrency_8=$(timed "$(paged 8)")
echo
echo "ingest of $rows_loaded rows (id, name, score numeric, email, created_at timestamptz, active, tags text[]), one page from loopback"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $("$PG_BIN/postgres" --version); median of $ROUNDS"
echo "devapi serves the page in ${server_ms} ms (curl)"
printf '%-52s %10s %8s\n' "method" "ms" "vs COPY"
for label in copy plain_sql api_fetch; do
    case $label in
        copy) name="COPY from a CSV file" ;;
        plain_sql) name="api_request + jsonb_populate_recordset" ;;
        api_fetch) name="INSERT ... SELECT * FROM api_fetch(row_type)" ;;
    esac
    printf '%-52s %10.1f %7.2fx\n' "$name" "${result[$label]}" "$(echo "${result[$label]} ${result[copy]}" | awk '{ print $1 / $2 }')"
done
echo
echo "100 pages of 100 ms each (one run each)"
printf '%-52s %10.1f\n' "api_fetch, concurrency 1" "$concurrency_1"
printf '%-52s %10.1f %7.2fx faster\n' "api_fetch, concurrency 8" "$concurrency_8" "$(echo "$concurrency_1 $concurrency_8" | awk '{ print $1 / $2 }')"
