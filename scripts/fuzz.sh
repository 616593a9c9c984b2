#!/usr/bin/env bash
# Coverage-guided fuzzing of pgrouter's parsers on the stable toolchain
# (cargo-afl + AFL++; see fuzz/README.md for the targets and what each checks).
#
#   bash scripts/fuzz.sh                      # every target 20 s (what CI runs)
#   bash scripts/fuzz.sh --minutes 9          # every target 9 min: the hour-long run (7 targets)
#   bash scripts/fuzz.sh --seconds 60 sql_analysis scram   # some targets only
#   bash scripts/fuzz.sh --build-only         # install cargo-afl, build the targets
#   bash scripts/fuzz.sh --install-only       # install cargo-afl only (scripts/setup.sh)
#   bash scripts/fuzz.sh --jobs 2 --minutes 17  # two targets at a time (one per core)
#
# Installs cargo-afl (which builds AFL++ from its crate) when missing, builds
# the targets instrumented in fuzz/target, then runs afl-fuzz on each target,
# starting from the committed seeds in fuzz/corpus/<target>/, with output in
# fuzz/out/<target>/. Prints executions, corpus size, crashes and hangs per
# target; exits non-zero when any target found a crash (its input is kept
# under fuzz/out/<target>/default/crashes/; replay it with
# `fuzz/target/<host triple>/release/<target> < that-file`).
#
# Environment: PGROUTER_FUZZ_NICE (default 19: the fuzzers yield the CPU to
# anything else), PGROUTER_FUZZ_TIMEOUT_MS (afl-fuzz -t, default 2000).
set -uo pipefail

# All in one function, read whole before it runs: editing this file while a
# long run goes on does not change that run.
main() {

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -d "$HOME/.cargo/bin" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi

CARGO_AFL_VERSION=0.18.2
ALL_TARGETS=(sql_analysis protocol scram config jwt copy_split fanout_merge)
SECONDS_EACH=20
JOBS=1
BUILD_ONLY=0
INSTALL_ONLY=0
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) SECONDS_EACH=$(( $2 * 60 )); shift ;;
        --seconds) SECONDS_EACH=$2; shift ;;
        --jobs) JOBS=$2; shift ;;
        --build-only) BUILD_ONLY=1 ;;
        --install-only) INSTALL_ONLY=1 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option: $1" >&2; exit 2 ;;
        *) TARGETS+=("$1") ;;
    esac
    shift
done
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
    [ -d "fuzz/corpus/$t" ] || { echo "fuzz.sh: unknown target $t (known: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

log() { printf '[fuzz] %s\n' "$*" >&2; }
NICE=(nice -n "${PGROUTER_FUZZ_NICE:-19}")

# ---------------------------------------------------------------- install --
if ! cargo afl --version 2>/dev/null | grep -q "cargo-afl $CARGO_AFL_VERSION"; then
    log "installing cargo-afl $CARGO_AFL_VERSION (builds AFL++ too)"
    "${NICE[@]}" cargo install cargo-afl --version "$CARGO_AFL_VERSION" --locked || exit 1
fi
if ! cargo afl --version 2>/dev/null | grep -q "AFL++ version"; then
    log "building AFL++"
    "${NICE[@]}" cargo afl config --build --force || exit 1
fi
[ "$INSTALL_ONLY" -eq 1 ] && exit 0

# ------------------------------------------------------------------ build --
# An explicit --target keeps build scripts and proc macros out of the
# instrumentation (RUSTFLAGS then apply to the target's code only), and 16
# codegen units undo cargo-afl's one: the build is a quarter cheaper, and it
# is part of CI's time.
HOST=$(rustc -vV | sed -n 's/^host: //p')
BIN="fuzz/target/$HOST/release"
log "building the fuzz targets (cargo afl build --release --target $HOST)"
start=$(date +%s)
(cd fuzz && RUSTFLAGS="${RUSTFLAGS:-} -C codegen-units=16" "${NICE[@]}" \
    cargo afl build --release --locked --target "$HOST") || { log "build failed"; exit 1; }
log "built in $(( $(date +%s) - start )) s"
[ "$BUILD_ONLY" -eq 1 ] && exit 0

# -------------------------------------------------------------------- run --
# No UI; no core-dump or CPU-governor checks (a CI machine's settings are
# not ours to change); no CPU pinning (the cores are shared).
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1

run_one() {
    local t=$1 out="fuzz/out/$1" dict=()
    rm -rf "$out"
    mkdir -p "$out"
    # Tokens of the target's language, for mutations that insert whole words.
    [ -f "fuzz/dict/$t.dict" ] && dict=(-x "fuzz/dict/$t.dict")
    "${NICE[@]}" cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" "${dict[@]}" -V "$SECONDS_EACH" \
        -t "${PGROUTER_FUZZ_TIMEOUT_MS:-2000}" -- "$BIN/$t" >"$out/afl.log" 2>&1
    echo $? >"$out/afl.rc"
}

log "running ${#TARGETS[@]} target(s), $SECONDS_EACH s each, $JOBS at a time"
running=0
for t in "${TARGETS[@]}"; do
    run_one "$t" &
    running=$(( running + 1 ))
    if [ "$running" -ge "$JOBS" ]; then
        wait -n
        running=$(( running - 1 ))
    fi
done
wait

# ---------------------------------------------------------------- report --
stat() { sed -n "s/^$1 *: *//p" "$2" 2>/dev/null | head -1; }
status=0
printf '%-14s %12s %10s %8s %8s %6s\n' target executions "execs/s" corpus crashes hangs
for t in "${TARGETS[@]}"; do
    dir="fuzz/out/$t/default"
    stats="$dir/fuzzer_stats"
    crashes=$(find "$dir/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
    hangs=$(find "$dir/hangs" -type f -name 'id:*' 2>/dev/null | wc -l)
    if [ ! -f "$stats" ]; then
        printf '%-14s did not run: see fuzz/out/%s/afl.log\n' "$t" "$t"
        tail -n 15 "fuzz/out/$t/afl.log" >&2
        status=1
        continue
    fi
    printf '%-14s %12s %10s %8s %8s %6s\n' "$t" "$(stat execs_done "$stats")" \
        "$(stat execs_per_sec "$stats")" "$(stat corpus_count "$stats")" "$crashes" "$hangs"
    if [ "$crashes" -gt 0 ]; then
        status=1
        for f in "$dir"/crashes/id:*; do
            log "$t crash: $f (replay: $BIN/$t < '$f')"
        done
    fi
done
if [ "$status" -eq 0 ]; then
    log "no crash"
else
    log "FAILED"
fi
exit "$status"
}
main "$@"
