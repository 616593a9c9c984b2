#!/usr/bin/env bash
# Benchmark pgrouter against a direct connection and PgBouncer (see bench/README.md).
#   bash bench/run.sh                                  # 3 rounds × 15 s (+3 s warm-up)
#   bash bench/run.sh --rounds 5 --duration 20
#   bash bench/run.sh --workloads select-simple --rounds 1 --duration 5   # quick look
#   bash bench/run.sh --pgo ...     # pgrouter from scripts/build_pgo.sh (profile-guided)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# haproxy: the routing scenario's "relay" target (a proxy hop with no logic).
PGROUTER_EXTRA_PACKAGES="haproxy" bash scripts/setup.sh >&2
# PgBouncer 1.25 from the peers' source (see bench/README.md), once.
bash "$ROOT/bench/build_pgbouncer.sh"
# --pgo (first argument): measure the profile-guided build, built here.
if [ "${1:-}" = "--pgo" ]; then
    shift
    bash scripts/build_pgo.sh >&2
    PGROUTER_BIN="$ROOT/target/pgo/$(rustc -vV | sed -n 's/^host: //p')/release/pgrouter"
    export PGROUTER_BIN PGROUTER_NO_BUILD=1
fi
exec "$ROOT/.venv/bin/python" "$ROOT/bench/bench.py" "$@"
