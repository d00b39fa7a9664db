#!/usr/bin/env bash
# Builds Citus 13.2.2 for PostgreSQL 15 from the vendored tarball and installs it; the build is
# cached outside the checkout, keyed by the tarball's SHA-256, so later runs only install it.
#   CITUS_TARBALL   the tarball (default: ../shared/vendor/citus-13.2.2.tar.gz from the checkout)
#   APISYNC_CACHE   where builds are kept (default: /var/cache/pg_apisync, or ~/.cache/pg_apisync)
# `scripts/citus.sh --check` only says whether the tarball is there (exit 0), or where it is not.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

tarball=${CITUS_TARBALL:-$(cd .. && pwd)/shared/vendor/citus-13.2.2.tar.gz}
if [ "${1:-}" = --check ]; then
    [ -f "$tarball" ] || { echo "no tarball at $tarball (set CITUS_TARBALL)"; exit 1; }
    exit 0
fi
[ -f "$tarball" ] || { echo "citus: no tarball at $tarball (set CITUS_TARBALL)" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if [ -z "${APISYNC_CACHE:-}" ]; then
    if [ "$(id -u)" -eq 0 ]; then APISYNC_CACHE=/var/cache/pg_apisync; else APISYNC_CACHE=$HOME/.cache/pg_apisync; fi
fi
key=$(sha256sum "$tarball" | cut -c1-16)
build=$APISYNC_CACHE/citus-$key

if [ ! -f "$build/done" ]; then
    # PostgreSQL 15's headers include these.
    scripts/setup.sh libzstd-dev libkrb5-dev
    echo "citus: building $(basename "$tarball") into $build (about a minute)"
    rm -rf "$build"
    mkdir -p "$build/src" "$build/root"
    tar -xzf "$tarball" -C "$build/src" --strip-components=1
    # PostgreSQL 15.20's commands/dbcommands.h declares have_createdb_privilege(), which Citus
    # defines again as a static inline: Citus's copy gets a name of its own.
    sed -i 's/^have_createdb_privilege(void)/citus_have_createdb_privilege(void)/' \
        "$build/src/src/include/pg_version_compat.h"
    sed -i 's/!have_createdb_privilege()/!citus_have_createdb_privilege()/' \
        "$build/src/src/backend/distributed/commands/serialize_distributed_ddls.c"
    (
        cd "$build/src"
        ./configure --without-libcurl --without-lz4 --without-zstd PG_CONFIG="$PG_CONFIG" >"$build/configure.log"
        make -j"$(nproc)" >"$build/make.log" 2>&1 || { tail -30 "$build/make.log"; exit 1; }
        make install DESTDIR="$build/root" >"$build/install.log" 2>&1
    )
    touch "$build/done"
fi
as_root cp -a "$build/root/." /
echo "citus: installed $("$PG_CONFIG" --pkglibdir)/citus.so (build $key)"
