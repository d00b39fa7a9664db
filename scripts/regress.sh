#!/usr/bin/env bash
# The golden tier: tests/pg_regress/sql/*.sql run by pg_regress against the installed extension
# in a throwaway cluster; their output must equal tests/pg_regress/expected/*.out. Prints a
# "test result:" line that scripts/test.sh adds to its count. With --accept, the new output
# becomes the expected output (review the diff before committing it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

tests=(surface errors)
start_cluster
psql_run -q -c "CREATE DATABASE apisync_regress"
regress_out="$work/regress"
mkdir -p "$regress_out"
# pg_regress runs as postgres, which may not reach this checkout: it reads a copy.
cp -r tests/pg_regress "$work/input"
[ "$(id -u)" -ne 0 ] || chown -R postgres:postgres "$work"
status=0
as_postgres "$PG_REGRESS_DIR/pg_regress" --use-existing --host="$work" --user=postgres \
    --dbname=apisync_regress --inputdir="$work/input" --outputdir="$regress_out" \
    "${tests[@]}" || status=$?
if [ "${1:-}" = "--accept" ]; then
    for test in "${tests[@]}"; do cp "$regress_out/results/$test.out" "tests/pg_regress/expected/$test.out"; done
    echo "regress: expected output replaced; review it with git diff"
    exit 0
fi
if [ "$status" -ne 0 ]; then
    cat "$regress_out/regression.diffs" 2>/dev/null || true
fi
failed=0
for test in "${tests[@]}"; do
    cmp -s "$regress_out/results/$test.out" "tests/pg_regress/expected/$test.out" || failed=$((failed + 1))
done
echo "test result: golden. $(( ${#tests[@]} - failed )) passed; $failed failed"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
