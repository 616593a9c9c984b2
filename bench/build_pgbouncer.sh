#!/usr/bin/env bash
# Builds PgBouncer 1.25 (the release that keeps protocol-level prepared
# statements in transaction mode, the fair peer for `pgbench -M prepared`)
# into /opt/pgbouncer-1.25 from the source tarball beside the project
# (../shared/peers/pgbouncer-1.25.2.tar.gz), once. Without the tarball it
# says so and bench.py falls back to the system's pgbouncer.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/pgbouncer-1.25
BIN="$PREFIX/bin/pgbouncer"
[ -x "$BIN" ] && exit 0
TARBALL="${PGBOUNCER_TARBALL:-$ROOT/../shared/peers/pgbouncer-1.25.2.tar.gz}"
if [ ! -f "$TARBALL" ]; then
    echo "build_pgbouncer.sh: $TARBALL not found: using the system's pgbouncer" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get install -y -q libevent-dev libssl-dev pkg-config >&2
WORK="$(mktemp -d)"
tar -xzf "$TARBALL" -C "$WORK"
cd "$WORK"/pgbouncer-1.25.*
./configure --prefix="$PREFIX" --without-cares --without-pam --without-ldap >&2
make -j2 pgbouncer >&2
$SUDO install -D pgbouncer "$BIN"
rm -rf "$WORK"
echo "build_pgbouncer.sh: built $BIN" >&2
