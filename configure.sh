#!/usr/bin/env bash
# configure.sh: configure, build, install and test pyscheduler. Run with -h for the flags.
#
#   ./configure.sh --demo   fresh machine -> quickstart example running
#   ./configure.sh --test   every test layer (Rust, C, C++); non-zero exit on any failure
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly ROOT
readonly MIN_CMAKE=3.25

usage() {
  cat <<EOF
Usage: ./configure.sh [options]

Configures a CMake build directory build-<Mode>[-asan|-tsan][-py<X.Y>] (Ninja), and
optionally builds, installs and tests it.

Options of the original configure.sh:
  -m, --mode MODE     Debug | Release | RelWithDebInfo (case-insensitive).
                      Default: Debug; Release for --demo, --test and --bench.
  -t, --tests         Build the C and C++ tests (tests/c, tests/cpp).
  -e, --examples      Build the examples (examples/) in the build tree.
      --asan          Instrument the C/C++ code and tests with AddressSanitizer.
      --tsan          Instrument the C/C++ code and tests with ThreadSanitizer.
      --flame         Frame pointers and debug info (for perf record / flame graphs).
  -p, --prefix DIR    Install prefix (also: env PYTHON_UDL_INTERFACE_PREFIX).
      --build         Build after configuring.
      --install       Build and install (cmake --install) to the prefix.
  -j, --jobs N        Parallel build jobs (default: number of CPUs).
  -h, --help          This help.

Added by this project:
      --python PATH   The CPython to build against (also: env PYSCHEDULER_PYTHON;
                      default: python3 on PATH). pybind11 and numpy are pip-installed
                      into it when missing.
      --benches       Build the benchmarks (benches/).
      --deps          Only install the missing tools (see below), then stop.
      --demo          Fresh machine -> running example: install what is missing, build
                      Release, install to ./install (or --prefix), build examples/ as a
                      separate project against that install (find_package), run them.
      --test          Install what is missing, build with tests and examples, run every
                      test layer: cargo test --release (Rust), then ctest (C, C++ and
                      examples). Combine with --asan/--tsan to run the instrumented
                      C/C++ tests.
      --subset        With --test: build and run only the version-coverage subset (what
                      .ci/run runs against its second CPython): the Rust core, adoption,
                      exit and sub-interpreter suites, and the C/C++ tests labelled
                      'subset' (cmake/PyschedulerTesting.cmake lists them, and why).
      --no-rust-tests With --test: skip cargo test. For --asan/--tsan after a plain
                      --test with the same Python: the core is never instrumented, so
                      cargo test would run the same binaries again.
      --bench         Build and run the benchmarks (benches/).

Missing tools are installed, each with a message: cmake, ninja-build, pkg-config, g++
and libgtest-dev (for tests) with apt-get; pybind11 (>= 3.0) and numpy with pip into the
chosen Python. cargo (Rust >= 1.80) must be installed already (https://rustup.rs).

Examples:
  ./configure.sh --build                     # Debug build
  ./configure.sh --tests --asan --build      # tests with ASan
  ./configure.sh --mode release --build --install -p /opt/pyscheduler
  ./configure.sh --test --tsan               # build and run the tests under TSan
EOF
}

# --- Output --------------------------------------------------------------------------

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
  printf 'configure.sh: error: %s\n' "$*" >&2
  exit 1
}

# --- Options -------------------------------------------------------------------------

MODE=""
TESTS=0
EXAMPLES=0
BENCHES=0
SANITIZE=""
FLAME=0
PREFIX="${PYTHON_UDL_INTERFACE_PREFIX:-}"
DO_BUILD=0
DO_INSTALL=0
JOBS=""
PYTHON="${PYSCHEDULER_PYTHON:-}"
PYTHON_CHOSEN=0
[[ -n "$PYTHON" ]] && PYTHON_CHOSEN=1
ACTION="" # demo | test | bench | deps
SUBSET=0
RUST_TESTS=1

set_action() {
  [[ -z "$ACTION" || "$ACTION" == "$1" ]] || die "--$ACTION and --$1 cannot be combined"
  ACTION=$1
}

set_sanitizer() {
  [[ -z "$SANITIZE" || "$SANITIZE" == "$1" ]] || die "--asan and --tsan cannot be combined"
  SANITIZE=$1
}

normalize_mode() {
  case "${1,,}" in
    debug) echo Debug ;;
    release) echo Release ;;
    relwithdebinfo) echo RelWithDebInfo ;;
    *) die "unknown mode '$1' (Debug, Release or RelWithDebInfo)" ;;
  esac
}

parse_args() {
  while (($#)); do
    case "$1" in
      -m | --mode) (($# >= 2)) || die "$1 needs a value"; MODE=$(normalize_mode "$2"); shift ;;
      --mode=*) MODE=$(normalize_mode "${1#*=}") ;;
      -t | --tests) TESTS=1 ;;
      -e | --examples) EXAMPLES=1 ;;
      --benches) BENCHES=1 ;;
      --asan) set_sanitizer address ;;
      --tsan) set_sanitizer thread ;;
      --flame) FLAME=1 ;;
      -p | --prefix) (($# >= 2)) || die "$1 needs a value"; PREFIX=$2; shift ;;
      --prefix=*) PREFIX=${1#*=} ;;
      --build) DO_BUILD=1 ;;
      --install) DO_BUILD=1; DO_INSTALL=1 ;;
      -j | --jobs) (($# >= 2)) || die "$1 needs a value"; JOBS=$2; shift ;;
      -j*) JOBS=${1#-j} ;;
      --jobs=*) JOBS=${1#*=} ;;
      --python) (($# >= 2)) || die "$1 needs a value"; PYTHON=$2; PYTHON_CHOSEN=1; shift ;;
      --python=*) PYTHON=${1#*=}; PYTHON_CHOSEN=1 ;;
      --demo) set_action demo ;;
      --test) set_action test ;;
      --bench) set_action bench ;;
      --deps) set_action deps ;;
      --subset) SUBSET=1 ;;
      --no-rust-tests) RUST_TESTS=0 ;;
      -h | --help) usage; exit 0 ;;
      *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
  done
  if [[ -z "$JOBS" ]]; then
    JOBS=$(nproc 2>/dev/null || echo 2)
  fi
  [[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "--jobs needs a positive number, not '$JOBS'"
  [[ "$ACTION" == test ]] || ((!SUBSET && RUST_TESTS)) || die "--subset and --no-rust-tests go with --test"
  if [[ -z "$MODE" ]]; then
    case "$ACTION" in
      demo | test | bench) MODE=Release ;;
      *) MODE=Debug ;;
    esac
  fi
  # Absolute (CMake would take a relative prefix relative to the build directory).
  [[ -z "$PREFIX" ]] || PREFIX=$(realpath -m -- "$PREFIX")
}

# --- Installing what is missing --------------------------------------------------------

APT_UPDATED=0
SUDO=""

apt_install() {
  command -v apt-get >/dev/null || die "missing: $* (no apt-get here: install them yourself)"
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "missing: $* (apt-get needs root, and there is no sudo)"
    SUDO=sudo
  fi
  if ((!APT_UPDATED)); then
    note "apt-get update"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# require_tool <command> <apt package> <what it is for>
require_tool() {
  if ! command -v "$1" >/dev/null; then
    note "installing $2 with apt-get ($1 is missing; needed for $3)"
    apt_install "$2"
  fi
}

version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

ensure_build_tools() {
  require_tool cmake cmake "configuring the build"
  local cmake_version
  cmake_version=$(cmake --version | awk 'NR == 1 { print $3 }')
  version_ge "$cmake_version" "$MIN_CMAKE" || die "cmake $cmake_version is too old: $MIN_CMAKE or newer is needed"
  require_tool ninja ninja-build "building (the Ninja generator)"
  require_tool pkg-config pkg-config "the pkg-config file and C users"
  require_tool c++ g++ "compiling the C++ wrapper, tests and examples"
  require_tool cc gcc "compiling the C tests and examples"
  if ! command -v cargo >/dev/null && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH" # rustup's default, not always on PATH (sudo, CI)
  fi
  command -v cargo >/dev/null ||
    die "cargo is missing: install Rust >= 1.80 with rustup (https://rustup.rs), then re-run"
}

ensure_gtest() {
  local dir
  for dir in /usr/include /usr/local/include; do
    [[ -f "$dir/gtest/gtest.h" ]] && return 0
  done
  note "installing libgtest-dev with apt-get (GoogleTest is missing; needed for the C++ tests)"
  apt_install libgtest-dev
}

# python_run <code>: runs Python code with the chosen interpreter.
python_run() { "$PYTHON_EXE" -c "$1"; }

PIP_FLAGS=()
PIP_CHECKED=0

ensure_pip() {
  ((PIP_CHECKED)) && return 0
  PIP_CHECKED=1
  if ! "$PYTHON_EXE" -m pip --version >/dev/null 2>&1; then
    if [[ "$PYTHON_EXE" == /usr/bin/* ]]; then
      note "installing python3-pip with apt-get (pip is missing for $PYTHON_EXE)"
      apt_install python3-pip
    else
      note "bootstrapping pip with ensurepip (pip is missing for $PYTHON_EXE)"
      "$PYTHON_EXE" -m ensurepip --upgrade
    fi
  fi
  # A distribution's Python outside a venv refuses pip installs (PEP 668) unless told.
  if python_run 'import os, sys, sysconfig; sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    note "$PYTHON_EXE is externally managed (PEP 668): pip installs use --break-system-packages"
    PIP_FLAGS+=(--break-system-packages)
  fi
}

pip_install() {
  ensure_pip
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$PYTHON_EXE" -m pip install --quiet "${PIP_FLAGS[@]}" "$@"
}

ensure_python() {
  local hint=${PYTHON:-python3}
  if ! command -v "$hint" >/dev/null && [[ "$hint" == python3 ]]; then
    note "installing python3 with apt-get (no python3 on PATH)"
    apt_install python3 python3-dev python3-pip
  fi
  command -v "$hint" >/dev/null || [[ -x "$hint" ]] || die "Python '$hint' not found"
  # The interpreter's own path: a pyenv shim or symlink becomes the real interpreter.
  PYTHON_EXE=$("$hint" -c 'import sys; print(sys.executable)') || die "cannot run Python '$hint'"
  PYTHON_VERSION=$(python_run 'import sys; print("%d.%d" % sys.version_info[:2])')
  version_ge "$PYTHON_VERSION" 3.9 || die "$PYTHON_EXE is Python $PYTHON_VERSION; 3.9 or newer is needed"
  if ! python_run 'import os, sys, sysconfig; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'; then
    if [[ "$PYTHON_EXE" == /usr/bin/* ]]; then
      note "installing python${PYTHON_VERSION}-dev with apt-get (Python.h is missing for $PYTHON_EXE)"
      apt_install "python${PYTHON_VERSION}-dev"
    else
      die "$PYTHON_EXE has no development headers (Python.h); use a CPython built with them"
    fi
  fi
  if ! python_run 'import sys, pybind11; sys.exit(0 if int(pybind11.__version__.split(".")[0]) >= 3 else 1)' 2>/dev/null; then
    note "installing pybind11>=3.0 with pip into $PYTHON_EXE (missing or older than 3.0)"
    pip_install 'pybind11>=3.0'
  fi
  if ! python_run 'import numpy' 2>/dev/null; then
    note "installing numpy with pip into $PYTHON_EXE (missing; used by the examples and tests)"
    pip_install numpy
  fi
  note "Python $PYTHON_VERSION: $PYTHON_EXE"
}

ensure_tools() {
  step "Checking the tools"
  ensure_build_tools
  ((TESTS)) && ensure_gtest
  ensure_python
  export CARGO_BUILD_JOBS=$JOBS
}

# --- Configure, build, install ---------------------------------------------------------

build_dir() {
  local dir="$ROOT/build-$MODE"
  case "$SANITIZE" in
    address) dir+="-asan" ;;
    thread) dir+="-tsan" ;;
  esac
  ((PYTHON_CHOSEN)) && dir+="-py$PYTHON_VERSION"
  echo "$dir"
}

# One cargo target directory per Python and per flavour of the Rust library, shared by
# the build directories of every mode: the core is never instrumented, so build-Release,
# build-Release-asan and build-Release-tsan differ only in its allocator (sanitizer
# builds use the system malloc, which ASan/LSan see; CMakeLists.txt picks the features),
# and the Rust tests reuse its dependencies. Keyed by the interpreter so that switching
# Pythons does not rebuild pyo3 back and forth. `cargo_dir plain` is the directory of
# the default features, whatever the sanitizer (the Rust tests run normally, and share
# the release build of the plain tree); `cargo_dir sysalloc` the one of the sanitizer
# builds' flavour (the system allocator), whatever the sanitizer: ASan, TSan and the
# plain tree's valgrind tests share one build of it.
cargo_dir() {
  local key
  key=$(printf '%s' "$PYTHON_EXE" | cksum | cut -d' ' -f1)
  local dir="$ROOT/target/cmake-py$PYTHON_VERSION-$key"
  if [[ "${1:-}" == sysalloc || ("${1:-}" != plain && -n "$SANITIZE") ]]; then
    dir+="-sysalloc"
  fi
  if ((FLAME)); then
    dir+="-flame"
  fi
  echo "$dir"
}

on_off() { if (($1)); then echo ON; else echo OFF; fi; }

configure() {
  BUILD_DIR=$(build_dir)
  CARGO_DIR=$(cargo_dir)
  step "Configuring $BUILD_DIR (mode $MODE${SANITIZE:+, sanitizer $SANITIZE}${PREFIX:+, prefix $PREFIX})"
  local args=(
    -S "$ROOT" -B "$BUILD_DIR" -G Ninja
    -DCMAKE_BUILD_TYPE="$MODE"
    -DPYSCHEDULER_PYTHON="$PYTHON_EXE"
    -DPYSCHEDULER_BUILD_TESTS="$(on_off "$TESTS")"
    -DPYSCHEDULER_BUILD_EXAMPLES="$(on_off "$EXAMPLES")"
    -DPYSCHEDULER_BUILD_BENCHES="$(on_off "$BENCHES")"
    -DPYSCHEDULER_SANITIZE="$SANITIZE"
    -DPYSCHEDULER_FLAME="$(on_off "$FLAME")"
    -DPYSCHEDULER_CARGO_TARGET_DIR="$CARGO_DIR"
  )
  [[ -n "$PREFIX" ]] && args+=(-DCMAKE_INSTALL_PREFIX="$PREFIX")
  # The valgrind tests' build of the core (system allocator) is the sanitizer builds' one.
  # (Not with --flame: that directory's builds use other RUSTFLAGS.)
  if [[ -z "$SANITIZE" ]] && ((!FLAME)); then
    args+=(-DPYSCHEDULER_VALGRIND_CARGO_TARGET_DIR="$(cargo_dir sysalloc)")
  fi
  # A directory configured by another generator cannot be reused as it is.
  local cache="$BUILD_DIR/CMakeCache.txt"
  if [[ -f "$cache" ]] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$cache"; then
    note "$BUILD_DIR was configured with another generator: configuring afresh"
    args+=(--fresh)
  fi
  cmake "${args[@]}"
}

build() {
  step "Building $BUILD_DIR (-j$JOBS)"
  cmake --build "$BUILD_DIR" -j "$JOBS"
}

install_tree() {
  step "Installing to ${PREFIX:-the default prefix}"
  cmake --install "$BUILD_DIR"
}

# --- --demo ------------------------------------------------------------------------------

run_example() {
  local name=$1
  shift
  step "Running the $name example"
  "$@"
}

demo() {
  EXAMPLES=0
  [[ -n "$PREFIX" ]] || PREFIX="$ROOT/install"
  mkdir -p "$PREFIX"
  ensure_tools
  configure
  build
  install_tree

  local examples_dir="$BUILD_DIR/examples-installed"
  step "Building examples/ as a separate CMake project against $PREFIX (find_package)"
  cmake -S "$ROOT/examples" -B "$examples_dir" -G Ninja -DCMAKE_BUILD_TYPE="$MODE" \
    -DCMAKE_PREFIX_PATH="$PREFIX"
  cmake --build "$examples_dir" -j "$JOBS"

  run_example "C++ quickstart (examples/cpp/quickstart.cpp)" "$examples_dir/quickstart"
  run_example "C++ multithreaded (examples/cpp/multithreaded.cpp)" "$examples_dir/multithreaded"
  run_example "C++ tensor model (examples/cpp/tensor_model.cpp)" "$examples_dir/tensor_model"
  run_example "C (examples/c/basic.c)" "$examples_dir/basic_c"
  run_example "C tensor model (examples/c/tensor_model.c)" "$examples_dir/tensor_model_c"
  step "Building and running the Rust examples (examples/rust)"
  # A target directory of its own: examples/rust is a workspace of its own (its own lock
  # and pyo3 features), and sharing the core's directory left a pyscheduler rlib built
  # against the examples' pyo3 there, which a later `--test` linked its tests against
  # ("expected pyo3::marker::Python, found pyo3::Python": --demo then --test failed).
  (cd "$ROOT/examples/rust" &&
    export PYO3_PYTHON="$PYTHON_EXE" CARGO_TARGET_DIR="$(cargo_dir plain)-examples" &&
    cargo run --release --quiet --bin pyscheduler-example &&
    cargo run --release --quiet --bin tensor_model)
  step "Demo done: pyscheduler is installed in $PREFIX; the examples are in $examples_dir"
}

# --- --test --------------------------------------------------------------------------------

# Counts for the closing line, per layer and in all. A skipped test (a Rust test marked
# #[ignore] for this build, a C++ test that called GTEST_SKIP) is counted as skipped,
# never as passed.
RESULTS=()
FAILED_LAYERS=0
TOTAL_PASSED=0
TOTAL_FAILED=0
TOTAL_SKIPPED=0

record() { # record <layer> <exit status> <passed> <failed> <skipped>
  RESULTS+=("$(printf '%-22s %s passed, %s failed, %s skipped%s' "$1:" "$3" "$4" "$5" "$( (($2 == 0)) || echo "  (exit status $2)")")")
  (($2 == 0)) || FAILED_LAYERS=$((FAILED_LAYERS + 1))
  TOTAL_PASSED=$((TOTAL_PASSED + $3))
  TOTAL_FAILED=$((TOTAL_FAILED + $4))
  TOTAL_SKIPPED=$((TOTAL_SKIPPED + $5))
}

rust_tests() {
  # Release, in the cargo directory of the plain tree's core: the tests reuse its
  # dependencies (and, Release trees, its build of the core: Cargo.toml says why the
  # features agree) instead of building everything a second time in debug. The tests
  # that load the cdylib into a Python process find it themselves (tests/rust/cdylib.rs).
  local what=()
  if ((SUBSET)); then
    what=(--test core --test adopt --test exit --test subinterp)
  fi
  step "Rust tests: cargo test --release ${what[*]} (PYO3_PYTHON=$PYTHON_EXE; the Rust core is never instrumented)"
  local log="$BUILD_DIR/cargo-test.log" status=0
  (cd "$ROOT" && export PYO3_PYTHON="$PYTHON_EXE" CARGO_TARGET_DIR="$(cargo_dir plain)" PYTHONDONTWRITEBYTECODE=1 &&
    cargo test --release --no-fail-fast "${what[@]}" 2>&1) | tee "$log" || status=$?
  local passed failed ignored
  passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{ s += $1 } END { print s + 0 }')
  failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{ s += $1 } END { print s + 0 }')
  ignored=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) ignored.*/\1/' | awk '{ s += $1 } END { print s + 0 }')
  if ((ignored)); then
    note "ignored (skipped) here:"
    grep -E '^test .* \.\.\. ignored' "$log" | sed -E 's/^test (.*) \.\.\. ignored(, )?(.*)$/      \1 (\3)/' || true
  fi
  record "Rust (cargo test)" "$status" "$passed" "$failed" "$ignored"
}

ctest_tests() {
  step "C and C++ tests: ctest${SANITIZE:+ (instrumented with -fsanitize=$SANITIZE)}"
  local log="$BUILD_DIR/ctest.log" status=0 only=()
  ((SUBSET)) && only=(-L subset)
  ctest --test-dir "$BUILD_DIR" --output-on-failure --no-tests=error "${only[@]}" 2>&1 | tee "$log" || status=$?
  local total failed skipped
  total=$(sed -nE 's/.*tests passed, ([0-9]+) tests? failed out of ([0-9]+).*/\2/p' "$log" | tail -n1)
  failed=$(sed -nE 's/.*tests passed, ([0-9]+) tests? failed out of ([0-9]+).*/\1/p' "$log" | tail -n1)
  # CTest lists skipped tests under "The following tests did not run:" and counts them
  # in its total without failing them.
  skipped=$(grep -cE '^[[:space:]]*[0-9]+ - .* \(Skipped\)$' "$log" || true)
  record "C/C++ (ctest)" "$status" "$((${total:-0} - ${failed:-0} - ${skipped:-0}))" "${failed:-0}" "${skipped:-0}"
}

run_tests() {
  TESTS=1
  EXAMPLES=1
  # The quick benchmark table runs as a test too, but timing a sanitized build is pointless.
  [[ -z "$SANITIZE" ]] && ((!SUBSET)) && BENCHES=1
  ensure_tools
  configure
  local build_status=0
  if ((SUBSET)); then
    step "Building the version-coverage subset in $BUILD_DIR (-j$JOBS)"
    cmake --build "$BUILD_DIR" -j "$JOBS" --target pyscheduler_subset || build_status=$?
  else
    build || build_status=$?
  fi
  if ((build_status != 0)); then
    record "build" "$build_status" 0 1 0
  else
    if ((RUST_TESTS)); then
      rust_tests
    else
      note "cargo test skipped (--no-rust-tests)"
    fi
    ctest_tests
  fi
  local scope=""
  ((SUBSET)) && scope=", version-coverage subset"
  step "Summary (mode $MODE${SANITIZE:+, -fsanitize=$SANITIZE}, Python $PYTHON_VERSION$scope)"
  printf '  %s\n' "${RESULTS[@]}"
  local totals="$TOTAL_PASSED passed, $TOTAL_FAILED failed, $TOTAL_SKIPPED skipped"
  if ((FAILED_LAYERS)); then
    printf 'configure.sh --test: FAILED (%d layer(s)): %s\n' "$FAILED_LAYERS" "$totals"
    exit 1
  fi
  printf 'configure.sh --test: all layers passed: %s\n' "$totals"
}

# --- --bench -------------------------------------------------------------------------------

run_benches() {
  BENCHES=1
  if [[ ! -f "$ROOT/benches/CMakeLists.txt" ]]; then
    note "there are no benchmarks yet (benches/CMakeLists.txt does not exist): nothing to run"
    return 0
  fi
  [[ -z "$SANITIZE" ]] || note "warning: timing a sanitized build says little about performance"
  ensure_tools
  configure
  build
  step "Running the benchmarks (cmake --build $BUILD_DIR --target bench)"
  cmake --build "$BUILD_DIR" --target bench
  note "the same run as JSON: $BUILD_DIR/benches/pyscheduler_bench.json"
}

# --- Main ------------------------------------------------------------------------------------

main() {
  parse_args "$@"
  case "$ACTION" in
    deps) ensure_tools ;;
    demo) demo ;;
    test) run_tests ;;
    bench) run_benches ;;
    "")
      ensure_tools
      configure
      if ((DO_BUILD)); then build; fi
      if ((DO_INSTALL)); then install_tree; fi
      if ((!DO_BUILD)); then note "configured; build with: cmake --build $BUILD_DIR"; fi
      ;;
  esac
}

main "$@"
