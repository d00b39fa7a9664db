#!/usr/bin/env bash
# Every test of pg_apisync, in tiers that share one debug build of the extension:
#   1. cargo fmt --check and cargo clippy -D warnings (all crates, all targets)
#   2. cargo pgrx test: plain unit tests of the Postgres-free modules and #[pg_test]s in a
#      pgrx-managed cluster (run as the postgres user)
#   3. integration tests: the installed extension in a throwaway cluster with
#      shared_preload_libraries = 'pg_apisync,pg_cron', against the devapi server on loopback
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

scripts/setup.sh

echo "== format and lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --features "pg15 pg_test" -- -D warnings

echo "== unit tests and #[pg_test]s"
# As root, pgrx's cluster runs as postgres: its data directory lives in /tmp, which that user
# can reach wherever this checkout is.
if [ "$(id -u)" -eq 0 ]; then
    PGDATA_DIR=$(mktemp -d /tmp/apisync-pgrx-test.XXXXXX)
    trap 'rm -rf "$PGDATA_DIR"' EXIT
    chown postgres:postgres "$PGDATA_DIR"
    cargo pgrx test pg15 --runas postgres --pgdata "$PGDATA_DIR"
else
    cargo pgrx test pg15
fi

echo "== integration tests"
# The extension the integration cluster loads; tier 2 installed a build with the test schema.
install_flags=()
[ "$(id -u)" -eq 0 ] || install_flags=(--sudo)
cargo pgrx install --pg-config "$PG_CONFIG" "${install_flags[@]}"
cargo test -p apisync-tests
