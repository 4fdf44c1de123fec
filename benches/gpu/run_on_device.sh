#!/usr/bin/env bash
# GPU verification and benchmark of issue 5, run on the GPU machine from the repository
# root (no cargo there: libpyscheduler.so is built elsewhere and carried):
#
#   PYO3_PYTHON=$HOME/.pyenv/versions/3.12.1/bin/python3 cargo build --release --target-dir target-py312
#   (device) bash benches/gpu/run_on_device.sh
#
# Builds the C++ programs with g++ against the carried library, the venv's CPython
# headers and pybind11, then runs: a compile check of tensor.hpp against torch's own
# DLPack header; tests/cpp/gpu/gpu_checks (correctness, batching, memory); and
# benches/gpu/gpu_bench (the list-of-objects table) and benches/gpu/tensor_pipeline (the
# same workload through a CUDA tensor handler, issue 12). Self-checking: exits non-zero if any step or check
# fails. Outputs go to $OUT (default: ./gpu-out).
#
# Environment: PYSCHED_LIB (default target-py312/release/libpyscheduler.so), PYTHON
# (default python3), BENCH_ITEMS (default 4000), SKIP_BENCH=1 to run the checks only,
# SKIP_LIST_BENCH=1 to skip gpu_bench.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
BUILD=$(mktemp -d)
LIB=${PYSCHED_LIB:-$ROOT/target-py312/release/libpyscheduler.so}
PY=${PYTHON:-python3}
FAILED=()

log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME COMMAND...: runs, logs to $OUT/NAME.txt, records failure
  local name=$1; shift
  local file=$name
  case $name in build_* | compile_*) file=build ;; esac  # $OUT brings back 8 files at most
  log "$name: $*"
  "$@" > >(tee -a "$OUT/$file.txt") 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then FAILED+=("$name (rc $rc)"); log "$name FAILED (rc $rc)"; else log "$name ok"; fi
  return 0
}

: > "$OUT/summary.txt"
log "repository $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%FT%TZ)"
{ nvidia-smi -L; nvidia-smi --query-gpu=driver_version,memory.used,memory.total --format=csv; } 2>&1 | tee -a "$OUT/summary.txt" || true
if [ ! -f "$LIB" ]; then
  log "missing $LIB: build it with PYO3_PYTHON=<CPython 3.12> cargo build --release --target-dir target-py312 and carry it"
  exit 2
fi
"$PY" -c 'import sys, torch, pybind11; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), "pybind11", pybind11.__version__)' 2>&1 | tee -a "$OUT/summary.txt"

# The embedded interpreter must see the venv's packages (torch): name its python.
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
CXXFLAGS=(-std=c++20 -O2 -g -Wall -Wextra -I"$ROOT/include" -I"$ROOT/cpp/include" -isystem "$PYINC" -isystem "$PBINC")
LDFLAGS=(-L"$LIBDIR" -lpyscheduler -Wl,-rpath,"$LIBDIR" -L"$PYLIBDIR" -l"python$PYLDVER" -Wl,-rpath,"$PYLIBDIR" -pthread -ldl)
log "libpyscheduler: $LIB ($(ldd "$LIB" | grep -o 'libpython[^ ]* => [^ ]*' || echo 'libpython not resolved'))"

# tensor.hpp next to torch's DLPack declarations (ATen/dlpack.h included first).
TORCH_INC=$("$PY" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))' 2>/dev/null || true)
TORCH_FLAGS=()
for d in $TORCH_INC; do TORCH_FLAGS+=(-isystem "$d"); done
cat > "$BUILD/with_aten_dlpack.cpp" <<'EOF'
#include <ATen/dlpack.h>
#include <pyscheduler/tensor.hpp>
#ifdef PYSCHEDULER_DLPACK_DECLARED
#error "tensor.hpp re-declared DLPack after ATen/dlpack.h"
#endif
int main() { return pyscheduler::DLPackTypeTraits<float>::dtype.bits == 32 ? 0 : 1; }
EOF
step compile_with_aten_dlpack g++ "${CXXFLAGS[@]}" "${TORCH_FLAGS[@]}" -fsyntax-only "$BUILD/with_aten_dlpack.cpp"

step build_gpu_checks g++ "${CXXFLAGS[@]}" tests/cpp/gpu/gpu_checks.cpp -o "$BUILD/gpu_checks" "${LDFLAGS[@]}"
step build_gpu_bench g++ "${CXXFLAGS[@]}" benches/gpu/gpu_bench.cpp -o "$BUILD/gpu_bench" "${LDFLAGS[@]}"
step build_tensor_pipeline g++ "${CXXFLAGS[@]}" benches/gpu/tensor_pipeline.cpp -o "$BUILD/tensor_pipeline" "${LDFLAGS[@]}"
step build_tensor_two_tu g++ "${CXXFLAGS[@]}" tests/cpp/tensor_two_tu_a.cpp tests/cpp/tensor_two_tu_b.cpp \
  -o "$BUILD/tensor_two_tu" "${LDFLAGS[@]}"

[ -x "$BUILD/tensor_two_tu" ] && step tensor_two_tu timeout 120 "$BUILD/tensor_two_tu"
[ -x "$BUILD/gpu_checks" ] && step gpu_checks timeout 180 "$BUILD/gpu_checks"
if [ "${SKIP_BENCH:-0}" != 1 ] && [ -x "$BUILD/tensor_pipeline" ]; then
  step tensor_pipeline timeout 300 "$BUILD/tensor_pipeline" "${BENCH_ITEMS:-4000}" 3
fi
if [ "${SKIP_BENCH:-0}" != 1 ] && [ "${SKIP_LIST_BENCH:-0}" != 1 ] && [ -x "$BUILD/gpu_bench" ]; then
  step gpu_bench timeout 300 "$BUILD/gpu_bench" "${BENCH_ITEMS:-4000}"
fi
nvidia-smi --query-gpu=memory.used,memory.total --format=csv 2>&1 | tee -a "$OUT/summary.txt" || true
rm -rf "$BUILD"

if [ ${#FAILED[@]} -ne 0 ]; then
  log "FAILED: ${FAILED[*]}"
  exit 1
fi
log "all GPU checks passed"
