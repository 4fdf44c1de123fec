#!/usr/bin/env bash
# Issue 15 on the GPU machine: builds tests/cpp/gpu/original_style.cpp as a Debug build
# (-O0 -g, no NDEBUG) against the carried libpyscheduler.so, the venv's CPython headers,
# pybind11 and the CUDA driver loaded at run time, then runs it RUNS times (default 4):
# each run must exit 0 (the original segfaults at exit there with torch loaded).
# Outputs go to $OUT (default ./gpu-out). Environment as benches/gpu/run_on_device.sh:
# PYSCHED_LIB (default target-py312/release/libpyscheduler.so), PYTHON (default python3).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
LIB=${PYSCHED_LIB:-$ROOT/target-py312/release/libpyscheduler.so}
PY=${PYTHON:-python3}
[ -f "$LIB" ] || { echo "missing $LIB"; exit 2; }
PY_EXE=$("$PY" -c 'import sys; print(sys.executable)')
export PYSCHED_PYTHON=$PY_EXE
if [ "$("$PY" -c 'import sys; print(sys.prefix != sys.base_prefix)')" = True ]; then
  export VIRTUAL_ENV=$("$PY" -c 'import sys; print(sys.prefix)')
fi
export PYSCHED_TEST_PYTHON_DIR=$ROOT/tests/python
PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
PBINC=$("$PY" -c 'import pybind11; print(pybind11.get_include())')
PYLIBDIR=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
PYLDVER=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LDVERSION"))')
LIBDIR=$(cd "$(dirname "$LIB")" && pwd)
BIN=$OUT/original_style
g++ -std=c++20 -O0 -g -UNDEBUG -Wall -Wextra -I"$ROOT/include" -I"$ROOT/cpp/include" -isystem "$PYINC" -isystem "$PBINC" \
  tests/cpp/gpu/original_style.cpp -o "$BIN" \
  -L"$LIBDIR" -lpyscheduler -Wl,-rpath,"$LIBDIR" -L"$PYLIBDIR" -l"python$PYLDVER" -Wl,-rpath,"$PYLIBDIR" -pthread -ldl \
  2>&1 | tee "$OUT/original_style_build.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "build failed"; exit 1; }
failed=0
for run in $(seq 1 "${RUNS:-4}"); do
  timeout 300 "$BIN" > "$OUT/original_style_run$run.txt" 2>&1
  rc=$?
  echo "run $run: exit $rc ($(tail -1 "$OUT/original_style_run$run.txt"))" | tee -a "$OUT/original_style_summary.txt"
  [ $rc -eq 0 ] || failed=1
done
exit $failed
