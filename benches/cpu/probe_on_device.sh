#!/usr/bin/env bash
# Runs benches/cpu/manycore_probe.cpp on the device machine (no cargo, no perf) against
# several carried builds of libpyscheduler.so, one plan line at a time (issue 16).
#
#   (here)   copy this script, manycore_probe.cpp, the plan and the libraries (each as
#            NAME.so, `strip --strip-debug`ged to fit the transfer) into one folder
#            two levels below the repository root under an ignored path, e.g.
#            target-py312/mc2f/, and name it in `carry`
#   (device) bash target-py312/mc2f/probe_on_device.sh target-py312/mc2f/plan.txt
#
# Plan lines: `NAME [VAR=VALUE ...] -- PROBE ARGUMENTS` (NAME.so in this script's folder;
# `#` lines are echoed; `CPUS=LIST` among the variables runs that line under
# `taskset -c LIST`). The probe is built once with g++ against the venv's CPython and
# pybind11 (PBINC overrides pybind11's include path) and run with LD_LIBRARY_PATH set to
# the line's library. benches/results/cpu-16core-2026-12-03-b/ holds the plans and
# outputs of 2026-12-03 (this script ran there as probe.sh).

set -uo pipefail
D=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$D/../.." && pwd); cd "$ROOT"
OUT=${OUT:-$ROOT/cpu-out}; mkdir -p "$OUT"
PY=python3
export PYSCHED_PYTHON=$($PY -c 'import sys; print(sys.executable)')
[ "$($PY -c 'import sys; print(sys.prefix != sys.base_prefix)')" = True ] && export VIRTUAL_ENV=$($PY -c 'import sys; print(sys.prefix)')
export PYTHONDONTWRITEBYTECODE=1
PYINC=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
PBINC=${PBINC:-$($PY -c "import pybind11; print(pybind11.get_include())")}
PYLIBDIR=$($PY -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
PYLDVER=$($PY -c 'import sysconfig; print(sysconfig.get_config_var("LDVERSION"))')
B=$(mktemp -d)
for so in "$D"/*.so; do n=$(basename "$so" .so); mkdir -p "$B/$n"; cp "$so" "$B/$n/libpyscheduler.so"; done
first=$(ls "$D"/*.so | head -1); first=$(basename "$first" .so)
echo "host: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-); $(date -u +%FT%TZ); $(uptime)"
for so in "$D"/*.so; do echo "lib $(basename $so): $(sha256sum $so | cut -c1-12)"; done
g++ -std=c++20 -O2 -DNDEBUG -g -I"$ROOT/include" -I"$ROOT/cpp/include" -isystem "$PYINC" -isystem "$PBINC" \
  "-DPYSCHED_BENCH_PYTHON_DIR=\"$ROOT/benches/python\"" "$D/manycore_probe.cpp" -o "$B/probe" \
  -L"$B/$first" -lpyscheduler -L"$PYLIBDIR" -l"python$PYLDVER" -Wl,-rpath,"$PYLIBDIR" -pthread -ldl || exit 1
while IFS= read -r line; do
  [ -z "$line" ] && continue
  case "$line" in \#*) echo "$line"; continue;; esac
  lib=${line%% *}; rest=${line#* }
  envs=${rest%%--*}; args=${rest#*--}
  echo "-- $lib $envs| $args"
  cpus=$(sed -n 's/.*\bCPUS=\([^ ]*\).*/\1/p' <<< "$envs")
  pin=(); [ -n "$cpus" ] && pin=(taskset -c "$cpus")
  env $envs LD_LIBRARY_PATH="$B/$lib" timeout 60 "${pin[@]}" "$B/probe" $args 2>&1 || echo "FAILED rc $?"
done < "$1"
echo "end $(date -u +%FT%TZ); $(uptime)"
