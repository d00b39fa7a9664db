#!/usr/bin/env bash
# The package tier: builds the Debian package, installs it with dpkg over whatever was installed,
# then in a fresh cluster with the preload: CREATE EXTENSION and one fetch from devapi. Removes
# the package at the end (scripts/test.sh installs the debug build again before its tiers).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

deb=$(scripts/package.sh)
echo "package: $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb --field "$deb" Package Version Depends
sudo_if() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
sudo_if dpkg -i "$deb" >/dev/null
trap 'sudo_if dpkg -r postgresql-15-pg-apisync >/dev/null; stop_all' EXIT
lib=$("$PG_CONFIG" --pkglibdir)/pg_apisync.so
if ldd "$lib" | grep -q "not found"; then ldd "$lib"; exit 1; fi

cargo build --release --quiet -p devapi
start_api
start_cluster
rows=$(psql_run -qtA -c "CREATE EXTENSION pg_apisync" \
    -c "SELECT count(*) FROM api_fetch('$api_url/api/users?pageSize=100', path => '\$.data')")
version=$(psql_run -qtA -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_apisync'")
echo "installed from the package: pg_apisync $version, one fetch: $rows rows"
[ "$rows" = 57 ] || { echo "expected 57 rows"; exit 1; }
echo "test result: ok. 1 passed; 0 failed"
