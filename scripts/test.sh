#!/usr/bin/env bash
# Every test of pg_apisync, in tiers that share one debug build of the extension:
#   1. cargo fmt --check and cargo clippy -D warnings (all crates, all targets)
#   2. plain unit tests of the Postgres-free core (cargo test -p apisync-core, no cluster), then
#      cargo pgrx test: #[pg_test]s in a pgrx-managed cluster (run as the postgres user)
#   3. integration tests: the installed extension in a throwaway cluster with
#      shared_preload_libraries = 'pg_apisync,pg_cron', against the devapi server on loopback
#   4. the golden tier: pg_regress over tests/pg_regress (the SQL surface, privileges, every
#      documented error with its SQLSTATE), in a throwaway cluster of its own
#   5. the Citus tier: a coordinator and two workers on loopback (Citus built once from the
#      vendored tarball by scripts/citus.sh, cached outside the checkout)
#   6. the package tier: the Debian package (scripts/package.sh) installed with dpkg into a fresh
#      cluster, one fetch; last, as it replaces the installed build (and removes itself)
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

scripts/setup.sh

# Every runner's "test result:" lines are summed into one closing line.
LOG=$(mktemp /tmp/apisync-test-log.XXXXXX)
cleanup() { rm -f "$LOG"; [ -z "${PGDATA_DIR:-}" ] || rm -rf "$PGDATA_DIR"; }
trap cleanup EXIT

echo "== format and lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --features "pg15 pg_test" -- -D warnings

echo "== unit tests of the core, and #[pg_test]s"
cargo test -p apisync-core 2>&1 | tee -a "$LOG"
# As root, pgrx's cluster runs as postgres: its data directory lives in /tmp, which that user
# can reach wherever this checkout is.
if [ "$(id -u)" -eq 0 ]; then
    PGDATA_DIR=$(mktemp -d /tmp/apisync-pgrx-test.XXXXXX)
    chown postgres:postgres "$PGDATA_DIR"
    cargo pgrx test pg15 --runas postgres --pgdata "$PGDATA_DIR" 2>&1 | tee -a "$LOG"
else
    cargo pgrx test pg15 2>&1 | tee -a "$LOG"
fi

echo "== integration tests"
# The extension the integration cluster loads; tier 2 installed a build with the test schema.
install_flags=()
[ "$(id -u)" -eq 0 ] || install_flags=(--sudo)
cargo pgrx install --pg-config "$PG_CONFIG" "${install_flags[@]}"
cargo test -p apisync-tests --test integration 2>&1 | tee -a "$LOG"

echo "== golden SQL output (pg_regress)"
scripts/regress.sh 2>&1 | tee -a "$LOG"

echo "== Citus"
if missing=$(scripts/citus.sh --check); then
    scripts/citus.sh
    cargo test -p apisync-tests --test citus 2>&1 | tee -a "$LOG"
else
    echo "!! Citus tier NOT RUN: $missing"
fi

echo "== the Debian package"
scripts/package_test.sh 2>&1 | tee -a "$LOG"

awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$LOG"
