#!/usr/bin/env bash
# valgrind memcheck for the C tests.
#
#   tests/c/valgrind.sh build-lib <dir> [cargo build options...]
#       Puts libpyscheduler.so built with the system allocator into <dir>/lib. The core's
#       global allocator is mimalloc (src/lib.rs, cargo feature "mimalloc"), whose memory
#       valgrind cannot see: against the normal library, a leaked pysched_error or a use
#       of a freed future is invisible. The options choose the features (CMake passes
#       the sanitizer builds' ones: --no-default-features --features cuda, the default
#       without mimalloc). `cargo build --release --lib` into $CARGO_TARGET_DIR (default
#       <dir>/target; configure.sh shares the sanitizer builds' directory), then copied
#       to <dir>/lib. Uses PYO3_PYTHON like cargo.
#   tests/c/valgrind.sh run <test-program> [args...]
#       Runs the program under memcheck with PYTHONMALLOC=malloc and valgrind.supp
#       (CPython's own noise only). With PYSCHED_VALGRIND_LIBDIR=<dir>/lib it runs
#       against that library (LD_LIBRARY_PATH takes precedence over the programs'
#       RUNPATH; checked). Exit status: 1 on any memcheck error or definite leak, else
#       the program's own.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

die() {
  echo "valgrind.sh: $*" >&2
  exit 2
}

build_lib() {
  local dir="$1"
  shift
  (($#)) || set -- --no-default-features --features cuda
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local target="${CARGO_TARGET_DIR:-$dir/target}"
  CARGO_TARGET_DIR="$target" "${CARGO:-cargo}" build --release --lib --quiet \
    --manifest-path "$root/Cargo.toml" "$@"
  mkdir -p "$dir/lib"
  cp -f "$target/release/libpyscheduler.so" "$dir/lib/libpyscheduler.so"
  echo "valgrind.sh: $dir/lib/libpyscheduler.so (from $target, cargo build $*)"
}

run() {
  [[ $# -ge 1 ]] || die "run: no program given"
  command -v valgrind > /dev/null || die "valgrind is not installed"
  local prog="$1"
  if [[ -n "${PYSCHED_VALGRIND_LIBDIR:-}" ]]; then
    export LD_LIBRARY_PATH="$PYSCHED_VALGRIND_LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    local loaded
    loaded="$(ldd "$prog" | awk '/libpyscheduler/ {print $3}')"
    if [[ -n "$loaded" && "$(dirname "$loaded")" != "$(cd "$PYSCHED_VALGRIND_LIBDIR" && pwd)" ]]; then
      die "$prog loads $loaded, not the one in $PYSCHED_VALGRIND_LIBDIR"
    fi
  else
    echo "valgrind.sh: note: PYSCHED_VALGRIND_LIBDIR is not set: the Rust core's heap" \
      "(mimalloc) is invisible to memcheck; see 'valgrind.sh build-lib'" >&2
  fi
  export PYTHONMALLOC=malloc
  exec valgrind --error-exitcode=1 --errors-for-leak-kinds=definite --leak-check=full \
    --suppressions="$here/valgrind.supp" --num-callers=40 "$@"
}

case "${1:-}" in
  build-lib)
    [[ $# -ge 2 ]] || die "usage: $0 build-lib <dir> [cargo build options...]"
    shift
    build_lib "$@"
    ;;
  run)
    shift
    run "$@"
    ;;
  *)
    die "usage: $0 build-lib <dir> [cargo options...] | run <test-program> [args...]"
    ;;
esac
