#!/usr/bin/env bash
# A Debian package of pg_apisync for PostgreSQL 15: the release build (cargo pgrx package) with
# its install and upgrade scripts, for a machine with PostgreSQL 15 and no Rust.
#   scripts/package.sh   ->   target/package/postgresql-15-pg-apisync_<version>_amd64.deb
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

scripts/setup.sh
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
name=postgresql-15-pg-apisync
cargo pgrx package --pg-config "$PG_CONFIG" >/dev/null
built=target/release/pg_apisync-pg15

root=$(mktemp -d /tmp/apisync-package.XXXXXX)
trap 'rm -rf "$root"' EXIT
cp -a "$built/." "$root/"
mkdir -p "$root/DEBIAN" "$root/usr/share/doc/$name"
cp LICENSE "$root/usr/share/doc/$name/copyright"
cp README.md "$root/usr/share/doc/$name/README.md"
# What the library links against, as Debian packages (libc, libgcc...), besides PostgreSQL.
depends=$(dpkg -S $(ldd "$root"/usr/lib/postgresql/15/lib/pg_apisync.so | awk '/=> \// { print $3 }') 2>/dev/null \
    | cut -d: -f1 | sort -u | grep -v '^postgresql' | paste -sd, | sed 's/,/, /g')
cat >"$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: pg_apisync developers <pg_apisync@localhost>
Depends: postgresql-15${depends:+, $depends}
Suggests: postgresql-15-cron
Section: database
Priority: optional
Installed-Size: $(du -sk "$root/usr" | cut -f1)
Description: pull data from HTTP/JSON APIs into PostgreSQL 15 tables
 api_fetch and api_request fetch JSON, JSON Lines and CSV over HTTP, with
 paging, retries, auth and a network policy; sync jobs load them into tables
 on a schedule (append, replace, upsert, mirror). Add pg_apisync to
 shared_preload_libraries for the scheduler, then CREATE EXTENSION pg_apisync.
CONTROL
mkdir -p target/package
deb=target/package/${name}_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
