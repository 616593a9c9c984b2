#!/usr/bin/env bash
# Prepare this machine for pgrouter: system packages, the Python venv used by
# the integration suite / demo / benchmark, and a release build of the workspace.
#
# Idempotent: packages already present are not reinstalled (apt is skipped
# entirely when nothing is missing), the venv is only refreshed when
# integration/requirements.txt changed, and cargo rebuilds only what changed.
#
#   bash scripts/setup.sh              # everything
#   bash scripts/setup.sh --no-build   # packages + venv only (or PGROUTER_NO_BUILD=1)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BUILD=1
[ "${PGROUTER_NO_BUILD:-0}" = "1" ] && BUILD=0
for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { printf '[setup] %s\n' "$*" >&2; }

# cargo installed by rustup lives here; a non-login shell may not have it on PATH.
if [ -d "$HOME/.cargo/bin" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    fi
fi

# ---------------------------------------------------------------- packages --
# iproute2: `ip netns`, for the integration tests' test hosts (harness/netns.py).
# nftables: packet loss and partitions in test_faults.py (harness/faults.py;
# the kernel here has no netem for `tc`).
# libpam-modules (pam_exec.so) and Debian's python3: PostgreSQL checks JIT
# tokens through PAM in the [jit] tests (harness/pam.py runs a python3 script
# as the postgres user, which cannot use a python under /root).
APT_PACKAGES=(postgresql-15 postgresql-client-15 libclang-dev clang pgbouncer iproute2 nftables
              libpam-modules python3
              # scripts/regress.py builds regress.so against the server headers.
              postgresql-server-dev-15)
# More for a caller that needs them (bench/run.sh: haproxy).
read -r -a EXTRA_PACKAGES <<<"${PGROUTER_EXTRA_PACKAGES:-}"
APT_PACKAGES+=("${EXTRA_PACKAGES[@]}")

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# The Python that will own the venv: the one on PATH (pyenv's here) when it can
# make a venv with pip, otherwise Debian's python3 with python3-venv.
python_can_venv() {
    "$1" -c 'import venv, ensurepip' >/dev/null 2>&1
}
PYTHON="${PYTHON:-python3}"
NEED_DEBIAN_VENV=0
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! python_can_venv "$PYTHON"; then
    NEED_DEBIAN_VENV=1
    APT_PACKAGES+=(python3 python3-venv)
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        log "missing packages: ${missing[*]}; run this script as root (or with sudo available)"
        exit 1
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
    log "system packages present"
fi

if [ "$NEED_DEBIAN_VENV" -eq 1 ]; then
    if python_can_venv python3; then
        PYTHON=python3
    elif python_can_venv /usr/bin/python3; then
        PYTHON=/usr/bin/python3
    else
        log "no Python able to create a venv (tried python3 and /usr/bin/python3)"
        exit 1
    fi
fi

PGBIN=/usr/lib/postgresql/15/bin
for tool in initdb pg_ctl pg_basebackup postgres pgbench psql; do
    if [ ! -x "$PGBIN/$tool" ]; then
        log "PostgreSQL 15 tool missing: $PGBIN/$tool"
        exit 1
    fi
done

# -------------------------------------------------------------------- venv --
VENV="$ROOT/.venv"
REQ="$ROOT/integration/requirements.txt"
STAMP="$VENV/.requirements.sha256"
req_hash="$(sha256sum "$REQ" | cut -d' ' -f1)"

if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "existing .venv is broken; recreating"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating .venv with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$req_hash" ]; then
    log "installing Python packages from integration/requirements.txt"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$req_hash" > "$STAMP"
else
    log "venv up to date"
fi
"$VENV/bin/python" - <<'EOF'
import asyncpg, jwt, psycopg, pytest, pytest_timeout, cryptography, prometheus_client  # noqa: F401
EOF

# ------------------------------------------------------------------- build --
if [ "$BUILD" -eq 1 ]; then
    if ! command -v cargo >/dev/null 2>&1; then
        log "cargo not found (expected a rustup toolchain in ~/.cargo/bin)"
        exit 1
    fi
    log "cargo build --release --workspace"
    cargo build --release --workspace
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    if [ ! -x "$TARGET_DIR/release/pgrouter" ]; then
        log "build finished but $TARGET_DIR/release/pgrouter is missing"
        exit 1
    fi
    log "binary: $TARGET_DIR/release/pgrouter"
    # cargo-afl and the AFL++ it builds, for scripts/fuzz.sh (PGROUTER_NO_FUZZ=1 skips).
    if [ "${PGROUTER_NO_FUZZ:-0}" != "1" ]; then
        bash scripts/fuzz.sh --install-only
    fi
fi
log "done"
