# Shared by demo.sh and bench.sh: a release build of pg_apisync and devapi, the devapi server on
# loopback and a throwaway PostgreSQL 15 cluster on a Unix socket, all stopped on exit.
# Source it; then call `build_release`, `start_api`, `start_cluster`, and use `psql_run`.

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG_BIN=/usr/lib/postgresql/15/bin
PG_REGRESS_DIR=/usr/lib/postgresql/15/lib/pgxs/src/test/regress

# KEEP=1 (demo.sh --keep): everything lives in a fixed directory and outlives the script, until
# `stop_kept` (demo.sh --stop).
KEPT_DIR=${APISYNC_DEMO_DIR:-/tmp/apisync-demo}
if [ "${KEEP:-0}" = 1 ]; then
    work=$KEPT_DIR
else
    work=$(mktemp -d /tmp/apisync.XXXXXX)
fi
api_pid=""
api_url=""

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_all() {
    [ -z "$api_pid" ] || kill "$api_pid" 2>/dev/null || true
    [ ! -f "$work/data/postmaster.pid" ] || as_postgres "$PG_BIN/pg_ctl" -D "$work/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
if [ "${KEEP:-0}" = 1 ]; then
    # A failure before the end stops what was started; success leaves it running.
    trap '[ $? -eq 0 ] || stop_all' EXIT
else
    trap stop_all EXIT
fi

# Stops what a KEEP=1 run left running and removes its directory; says whether there was one.
stop_kept() {
    if [ ! -d "$KEPT_DIR" ]; then
        echo "no demo is running (nothing in $KEPT_DIR)"
        return 0
    fi
    [ ! -f "$KEPT_DIR/api.pid" ] || kill "$(cat "$KEPT_DIR/api.pid")" 2>/dev/null || true
    [ ! -f "$KEPT_DIR/data/postmaster.pid" ] || as_postgres "$PG_BIN/pg_ctl" -D "$KEPT_DIR/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$KEPT_DIR"
    echo "stopped the demo cluster and API, removed $KEPT_DIR"
}

build_release() {
    local install_flags=()
    [ "$(id -u)" -eq 0 ] || install_flags=(--sudo)
    cargo pgrx install --release --pg-config "$PG_CONFIG" "${install_flags[@]}" >/dev/null
    cargo build --release --quiet -p devapi
}

# Starts devapi on a free loopback port; sets api_url.
start_api() {
    target/release/apisync-devapi --port 0 >"$work/api.out" 2>&1 &
    api_pid=$!
    echo "$api_pid" >"$work/api.pid"
    for _ in $(seq 100); do grep -q "listening on" "$work/api.out" && break; sleep 0.1; done
    api_url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/api.out")
    [ -n "$api_url" ] || { cat "$work/api.out"; return 1; }
}

# initdb + start, pg_apisync and pg_cron preloaded, listening only on a socket in $work; the
# arguments are extra postgresql.conf lines.
start_cluster() {
    [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$work"
    as_postgres "$PG_BIN/initdb" -D "$work/data" -U postgres -A trust -E UTF8 --no-locale >/dev/null
    cat >>"$work/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work'
shared_preload_libraries = 'pg_apisync,pg_cron'
cron.database_name = 'postgres'
CONF
    for line in "$@"; do echo "$line" >>"$work/data/postgresql.conf"; done
    as_postgres "$PG_BIN/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null
}

psql_run() {
    "$PG_BIN/psql" -h "$work" -U postgres -d postgres -X -v ON_ERROR_STOP=1 -v api="$api_url" "$@"
}
