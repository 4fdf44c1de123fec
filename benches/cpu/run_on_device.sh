#!/usr/bin/env bash
# The CPU benchmark table (pyscheduler_bench, benches/cpp/) on a many-core host (issue
# 16), run from the repository root on a machine without cargo: libpyscheduler.so is
# built elsewhere and carried, as for benches/gpu/run_on_device.sh.
#
#   (here)   PYO3_PYTHON=$HOME/.pyenv/versions/3.12.1/bin/python3 \
#              cargo build --release --lib --target-dir target-py312
#            # optional A/B: the same for the previous revision, copied to
#            # target-py312/base/libpyscheduler.so
#   (device) bash benches/cpu/run_on_device.sh [STEP ...]
#
# Steps (default: all, in this order):
#   table  the full table RUNS times (default 3), default pool size (the CPU count)
#   rss    the peak-RSS rows with pools of 1, 2, 4, 8 and 16 workers (and the host's
#          CPU count), for each library (LIB, then LIB_B if present), alternating
#   ab     AB_ROWS (default queued_b256,producers4,latency) with LIB and LIB_B
#          alternately, AB_ROUNDS rounds (default 3), pools of AB_WORKERS workers
#          (default: 2 and the CPU count)
#   perf   perf record of --profile queued_b256 and queued_b256_f (if perf exists and is
#          allowed): report text only
#
# Builds the bench with g++ against the carried library, the venv's CPython headers and
# pybind11. Outputs (text and JSON) go to $OUT (default ./cpu-out); summary.txt lists
# what ran. Exits non-zero if a step failed.
#
# Environment: PYSCHED_LIB (default target-py312/release/libpyscheduler.so), LIB_B
# (default target-py312/base/libpyscheduler.so, used when present), PYTHON (default
# python3; needs pybind11 >= 3), RUNS, AB_ROUNDS, AB_ROWS, AB_WORKERS, RSS_REPS (default 3).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/cpu-out}
mkdir -p "$OUT"
BUILD=$(mktemp -d)
LIB=${PYSCHED_LIB:-$ROOT/target-py312/release/libpyscheduler.so}
LIB_B=${LIB_B:-$ROOT/target-py312/base/libpyscheduler.so}
PY=${PYTHON:-python3}
RUNS=${RUNS:-3}
AB_ROUNDS=${AB_ROUNDS:-3}
AB_ROWS=${AB_ROWS:-queued_b256,producers4,latency}
RSS_REPS=${RSS_REPS:-3}
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(table rss ab perf)
FAILED=()

log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
want() { local s; for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
# step NAME COMMAND...: runs, logs to $OUT/NAME.txt, records a failure
step() {
  local name=$1; shift
  log "$name: $*"
  "$@" > >(tee "$OUT/$name.txt") 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then FAILED+=("$name (rc $rc)"); log "$name FAILED (rc $rc)"; else log "$name ok"; fi
  return 0
}

: >> "$OUT/summary.txt"
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')
log "repository $REV, $(date -u +%FT%TZ), steps: ${STEPS[*]}"
{
  echo "cpus: $(nproc) online; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  uptime
  free -m | head -2
} 2>&1 | tee -a "$OUT/summary.txt"
if [ ! -f "$LIB" ]; then
  log "missing $LIB: build it with PYO3_PYTHON=<CPython 3.12> cargo build --release --lib --target-dir target-py312 and carry it"
  exit 2
fi
"$PY" -c 'import sys, pybind11; print("python", sys.version.split()[0], "pybind11", pybind11.__version__)' 2>&1 |
  tee -a "$OUT/summary.txt"

# The embedded interpreter must see the venv's packages: name its python.
PY_EXE=$("$PY" -c 'import sys; print(sys.executable)')
export PYSCHED_PYTHON=$PY_EXE
if [ "$("$PY" -c 'import sys; print(sys.prefix != sys.base_prefix)')" = True ]; then
  VIRTUAL_ENV=$("$PY" -c 'import sys; print(sys.prefix)')
  export VIRTUAL_ENV
fi
export PYTHONDONTWRITEBYTECODE=1

PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
PBINC=$("$PY" -c 'import pybind11; print(pybind11.get_include())')
PYLIBDIR=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
PYLDVER=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LDVERSION"))')

# Each library in a directory of its own, chosen per run with LD_LIBRARY_PATH (the
# bench's RUNPATH names the first; LD_LIBRARY_PATH is searched before a RUNPATH).
mkdir -p "$BUILD/lib_a" "$BUILD/lib_b"
cp "$LIB" "$BUILD/lib_a/libpyscheduler.so"
HAVE_B=0
if [ -f "$LIB_B" ]; then
  cp "$LIB_B" "$BUILD/lib_b/libpyscheduler.so"
  HAVE_B=1
fi
log "library A: $LIB ($(sha256sum "$LIB" | cut -c1-12)); B: $([ $HAVE_B = 1 ] && echo "$LIB_B ($(sha256sum "$LIB_B" | cut -c1-12))" || echo none)"

CXXFLAGS=(-std=c++20 -O2 -DNDEBUG -g -Wall -Wextra -I"$ROOT/include" -I"$ROOT/cpp/include" -isystem "$PYINC"
  -isystem "$PBINC" "-DPYSCHED_BENCH_PYTHON_DIR=\"$ROOT/benches/python\"" "-DPYSCHED_BENCH_BUILD_TYPE=\"Release\""
  "-DPYSCHED_BENCH_REVISION=\"$REV\"")
LDFLAGS=(-L"$BUILD/lib_a" -lpyscheduler -Wl,-rpath,"$BUILD/lib_a" -L"$PYLIBDIR" -l"python$PYLDVER"
  -Wl,-rpath,"$PYLIBDIR" -pthread -ldl)
step build_bench g++ "${CXXFLAGS[@]}" benches/cpp/*.cpp -o "$BUILD/pyscheduler_bench" "${LDFLAGS[@]}"
BENCH=$BUILD/pyscheduler_bench
if [ ! -x "$BENCH" ]; then
  log "FAILED: ${FAILED[*]}"
  exit 1
fi
bench_a() { LD_LIBRARY_PATH=$BUILD/lib_a "$BENCH" "$@"; }
bench_b() { LD_LIBRARY_PATH=$BUILD/lib_b "$BENCH" "$@"; }
NCPU=$(nproc)

if want table; then
  for i in $(seq "$RUNS"); do
    step "table_run$i" timeout 300 env LD_LIBRARY_PATH="$BUILD/lib_a" "$BENCH" --json-out "$OUT/cpu-table-run$i.json"
  done
fi

if want rss; then
  # One JSON line per (library, pool size): the four RSS rows, every sample.
  rss_sweep() {
    local sizes=(1 2 4 8 16) w lib
    [ "$NCPU" -gt 16 ] && sizes+=("$NCPU")
    for w in "${sizes[@]}"; do
      for lib in a $([ $HAVE_B = 1 ] && echo b); do
        echo "-- library $lib, $w workers"
        "bench_$lib" --rows rss --workers "$w" --reps "$RSS_REPS" --json-out "$OUT/rss-$lib-w$w.json" | grep -E "RSS|rss" || return 1
      done
    done
  }
  step rss_sweep rss_sweep
fi

if want ab; then
  if [ $HAVE_B = 1 ]; then
    ab() {
      local r w lib
      for r in $(seq "$AB_ROUNDS"); do
        for w in ${AB_WORKERS:-2 $NCPU}; do
          for lib in b a; do
            echo "-- round $r, library $lib, $w workers"
            "bench_$lib" --rows "$AB_ROWS" --workers "$w" --reps 5 \
              --json-out "$OUT/ab-$lib-w$w-r$r.json" | grep -E "^(queued|  same|4 prod|one req)" || return 1
          done
        done
      done
    }
    step ab ab
  else
    log "ab: skipped (no $LIB_B)"
  fi
fi

if want perf; then
  perf_one() {  # perf_one PROFILE: the profile's report as text (self and children)
    LD_LIBRARY_PATH=$BUILD/lib_a perf record -F 999 -g -o "$BUILD/perf-$1.data" -- "$BENCH" --profile "$1" --reps 8 &&
      perf report -i "$BUILD/perf-$1.data" --no-children --sort comm,dso,sym --stdio -g none > "$BUILD/self.txt" 2> /dev/null &&
      perf report -i "$BUILD/perf-$1.data" --children --sort sym --stdio -g none > "$BUILD/children.txt" 2> /dev/null &&
      sed -n 1,150p "$BUILD/self.txt" > "$OUT/perf-$1-self.txt" &&
      sed -n 1,150p "$BUILD/children.txt" > "$OUT/perf-$1-children.txt"
  }
  if command -v perf > /dev/null && perf record -o "$BUILD/probe.data" -- true > /dev/null 2>&1; then
    for p in queued_b256 queued_b256_f; do
      step "perf_$p" perf_one "$p"
    done
  else
    log "perf: not available here ($(command -v perf || echo 'no perf binary'); perf_event_paranoid $(cat /proc/sys/kernel/perf_event_paranoid 2> /dev/null || echo '?'))"
  fi
fi

uptime | tee -a "$OUT/summary.txt"
rm -rf "$BUILD"
if [ ${#FAILED[@]} -ne 0 ]; then
  log "FAILED: ${FAILED[*]}"
  exit 1
fi
log "all steps passed"
