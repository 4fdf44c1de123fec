#!/usr/bin/env bash
# builds /tmp/abbench/pyscheduler_bench against /tmp/abbench/libA (HEAD lib, py3.11)
set -e
ROOT=/work/main; cd $ROOT
PY=python3
PYINC=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
PBINC=$($PY -c 'import pybind11; print(pybind11.get_include())')
PYLIBDIR=$($PY -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
PYLDVER=$($PY -c 'import sysconfig; print(sysconfig.get_config_var("LDVERSION"))')
REV=$(git describe --always --dirty)
mkdir -p /tmp/abbench/libA /tmp/abbench/libB
g++ -std=c++20 -O2 -DNDEBUG -g -I$ROOT/include -I$ROOT/cpp/include -isystem $PYINC -isystem $PBINC \
  "-DPYSCHED_BENCH_PYTHON_DIR=\"$ROOT/benches/python\"" "-DPYSCHED_BENCH_BUILD_TYPE=\"Release\"" "-DPYSCHED_BENCH_REVISION=\"$REV\"" \
  benches/cpp/*.cpp -o /tmp/abbench/pyscheduler_bench -L/tmp/abbench/libA -lpyscheduler -Wl,-rpath,/tmp/abbench/libA \
  -L$PYLIBDIR -lpython$PYLDVER -Wl,-rpath,$PYLIBDIR -pthread -ldl
