#!/usr/bin/env bash
# valgrind memcheck for the C tests.
#
#   tests/c/valgrind.sh build-lib <dir>
#       Builds libpyscheduler.so with the system allocator into <dir>/lib. The core's
#       global allocator is mimalloc (src/lib.rs), whose memory valgrind cannot see:
#       against the normal library, a leaked pysched_error or a use of a freed future is
#       invisible. The build is a copy of the crate with the #[global_allocator] line
#       removed, in <dir> (incremental on later runs). Uses PYO3_PYTHON like cargo.
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
  local dir="$1" copy
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  copy="$dir/crate"
  mkdir -p "$copy"
  rm -rf "$copy/src"
  cp -a "$root/src" "$copy/src"
  for f in Cargo.toml Cargo.lock build.rs; do
    [[ -e "$root/$f" ]] && cp -a "$root/$f" "$copy/$f"
  done
  # Targets other than the library refer to files not copied.
  awk '/^\[\[(test|example|bench|bin)\]\]/ {skip = 1; next}
       /^\[/ {skip = 0}
       !skip' "$root/Cargo.toml" > "$copy/Cargo.toml"
  local hits
  hits="$(grep -rl '#\[global_allocator\]' "$copy/src" || true)"
  if [[ -n "$hits" ]]; then
    # Replace the attribute and the static it applies to by an inert item (a doc
    # comment may precede it).
    sed -i '/#\[global_allocator\]/{N;s/.*\n.*/static _VALGRIND_SYSTEM_ALLOCATOR: () = ();/}' $hits
    if grep -q '#\[global_allocator\]' $hits; then
      die "could not remove the global allocator from: $hits"
    fi
    echo "valgrind.sh: system allocator instead of the global allocator of: ${hits//$copy\//}"
  fi
  CARGO_TARGET_DIR="$dir/target" "${CARGO:-cargo}" build --release --lib --quiet \
    --manifest-path "$copy/Cargo.toml"
  mkdir -p "$dir/lib"
  cp -f "$dir/target/release/libpyscheduler.so" "$dir/lib/libpyscheduler.so"
  echo "valgrind.sh: $dir/lib/libpyscheduler.so"
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
    [[ $# -eq 2 ]] || die "usage: $0 build-lib <dir>"
    build_lib "$2"
    ;;
  run)
    shift
    run "$@"
    ;;
  *)
    die "usage: $0 build-lib <dir> | run <test-program> [args...]"
    ;;
esac
