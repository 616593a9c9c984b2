#!/usr/bin/env bash
# A profile-guided release build of pgrouter (rustc's -Cprofile-generate /
# -Cprofile-use): build instrumented, run bench/pgo_train.py (pgbench in
# every protocol mode through a local primary + replica), merge the profile,
# build again with it. The result is target/pgo/<host>/release/pgrouter.
#
#   bash scripts/build_pgo.sh
#
# Same source, same behaviour as `cargo build --release`; the profile only
# changes how the compiler lays out and inlines code (the per-transaction
# path together, cold code out of the way): ~6 % fewer instructions and
# ~25 % fewer instruction-cache misses per transaction (bench/README.md,
# "Profile-guided build"). Needs the toolchain's llvm-tools component (for
# llvm-profdata, matching rustc's LLVM), added here with rustup, and the
# set-up of scripts/setup.sh (PostgreSQL binaries, pgbench, the venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -d "$HOME/.cargo/bin" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi

bash scripts/setup.sh
HOST="$(rustc -vV | sed -n 's/^host: //p')"
SYSROOT="$(rustc --print sysroot)"
PROFDATA="$SYSROOT/lib/rustlib/$HOST/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
    rustup component add llvm-tools
fi

PROFILES="$ROOT/target/pgo-profiles"
rm -rf "$PROFILES"
mkdir -p "$PROFILES"
# `--target` keeps RUSTFLAGS off build scripts and proc macros (they would
# be instrumented and write profiles while building).
echo "[pgo] instrumented build"
RUSTFLAGS="-Cprofile-generate=$PROFILES/raw" CARGO_TARGET_DIR="$ROOT/target/pgo-generate" \
    cargo build --release --bin pgrouter --target "$HOST"
echo "[pgo] training run"
.venv/bin/python bench/pgo_train.py "$ROOT/target/pgo-generate/$HOST/release/pgrouter"
"$PROFDATA" merge -o "$PROFILES/pgrouter.profdata" "$PROFILES/raw"
echo "[pgo] optimized build"
RUSTFLAGS="-Cprofile-use=$PROFILES/pgrouter.profdata" CARGO_TARGET_DIR="$ROOT/target/pgo" \
    cargo build --release --bin pgrouter --target "$HOST"
echo "[pgo] built $ROOT/target/pgo/$HOST/release/pgrouter"
