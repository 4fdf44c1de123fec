# Registration of pyscheduler's test programs with CTest, with the environment the
# sanitizer builds need. Included by the root CMakeLists.txt; tests/c, tests/cpp, examples
# and benches call pyscheduler_add_test().
include_guard(GLOBAL)

set(PYSCHEDULER_TEST_PYTHON_DIR "${PROJECT_SOURCE_DIR}/tests/python")
set(PYSCHEDULER_LSAN_SUPPRESSIONS "${PROJECT_SOURCE_DIR}/lsan_suppressions.txt")

# The environment every test runs with (a list of NAME=VALUE), also usable directly, e.g.
# gtest_discover_tests(t PROPERTIES ENVIRONMENT "${PYSCHEDULER_TEST_ENVIRONMENT}").
set(PYSCHEDULER_TEST_ENVIRONMENT
  # Tests must not leave __pycache__ folders in the source tree.
  PYTHONDONTWRITEBYTECODE=1)
if(PYSCHEDULER_SANITIZE STREQUAL "address")
  list(APPEND PYSCHEDULER_TEST_ENVIRONMENT
    # CPython's own small-object allocator hides individual blocks from ASan.
    PYTHONMALLOC=malloc
    # Only CPython's and extension modules' deliberate leaks are suppressed (see the file).
    "LSAN_OPTIONS=suppressions=${PYSCHEDULER_LSAN_SUPPRESSIONS}:print_suppressions=0"
    "ASAN_OPTIONS=detect_leaks=1")
  set(PYSCHEDULER_TEST_TIMEOUT_DEFAULT 600)
elseif(PYSCHEDULER_SANITIZE STREQUAL "thread")
  list(APPEND PYSCHEDULER_TEST_ENVIRONMENT
    # Fail the test on the first report; print both stacks of a lock-order inversion.
    # ignore_noninstrumented_modules: the memcpy/memmove that the Rust core, libpython
    # and numpy make through TSan's interceptors are not reported, since TSan cannot see
    # those modules' own synchronization (atomics, futexes); their pthread calls still
    # order our code (the GIL is a pthread mutex + condvar). Races in instrumented code,
    # ours, are all still reported.
    "TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1")
  set(PYSCHEDULER_TEST_TIMEOUT_DEFAULT 900)
else()
  set(PYSCHEDULER_TEST_TIMEOUT_DEFAULT 300)
endif()

# The version-coverage subset: what `./configure.sh --test --subset` builds (the target
# pyscheduler_subset) and runs (ctest -L subset), and .ci/run runs against its second
# CPython instead of the whole suite a second time. The tests whose behaviour depends on
# the CPython version, rather than on our own code alone: the sub-interpreter replicas
# (3.12+), interpreter start, adoption and exit with work in flight (finalization changes
# between versions), numpy loaded from a host without libpython, pybind11 against that
# version's headers, and one user program. Left out: the header and compile-time checks,
# the argument and metrics tests, valgrind and the bench (the same on every version).
set(PYSCHEDULER_SUBSET_TESTS
  c_test_lifecycle c_test_first_start c_test_queue c_test_future
  c_dlopen_numpy c_dlopen_numpy_control
  c_exit_queued c_exit_long_call c_exit_spin c_exit_sync_thread c_exit_gil_main
  c_exit_manager_freed c_exit_deadlines c_exit_exit_thread
  cpp_queue cpp_future cpp_manager cpp_exit_in_flight cpp_subinterp_pybind
  example_quickstart example_basic_c)
if(NOT TARGET pyscheduler_subset)
  add_custom_target(pyscheduler_subset COMMENT "the programs of the version-coverage test subset")
endif()

# pyscheduler_add_test(<name> <target> [ARGS <arg>...] [TIMEOUT <seconds>]
#                      [ENVIRONMENT <NAME=VALUE>...] [NO_PYTHON_DIR] [NO_LEAK_CHECK])
# Registers <target> (an executable built here) as the CTest test <name> with
# PYSCHEDULER_TEST_ENVIRONMENT and a timeout, and gives it the compile definition
# PYSCHED_TEST_PYTHON_DIR="<source>/tests/python" (unless NO_PYTHON_DIR) so it can call
# add_path with the shared Python test modules.
# NO_LEAK_CHECK turns LeakSanitizer off for this test only; it is meant for programs that
# exit with work in flight on purpose (their pending items are never released, by design),
# where every other ASan check still applies.
function(pyscheduler_add_test name target)
  cmake_parse_arguments(PARSE_ARGV 2 ARG "NO_PYTHON_DIR;NO_LEAK_CHECK" "TIMEOUT" "ARGS;ENVIRONMENT")
  if(NOT TARGET ${target})
    message(FATAL_ERROR "pyscheduler_add_test(${name}): '${target}' is not a target")
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT ${PYSCHEDULER_TEST_TIMEOUT_DEFAULT})
  endif()
  set(_env ${PYSCHEDULER_TEST_ENVIRONMENT})
  if(ARG_NO_LEAK_CHECK)
    list(TRANSFORM _env REPLACE "^ASAN_OPTIONS=detect_leaks=1" "ASAN_OPTIONS=detect_leaks=0")
  endif()
  list(APPEND _env ${ARG_ENVIRONMENT})
  add_test(NAME ${name} COMMAND ${target} ${ARG_ARGS})
  set_tests_properties(${name} PROPERTIES
    ENVIRONMENT "${_env}"
    TIMEOUT ${ARG_TIMEOUT})
  if(name IN_LIST PYSCHEDULER_SUBSET_TESTS)
    set_property(TEST ${name} APPEND PROPERTY LABELS subset)
    add_dependencies(pyscheduler_subset ${target})
  endif()
  if(NOT ARG_NO_PYTHON_DIR)
    get_target_property(_defs ${target} COMPILE_DEFINITIONS)
    if(NOT _defs MATCHES "PYSCHED_TEST_PYTHON_DIR")
      target_compile_definitions(${target} PRIVATE
        "PYSCHED_TEST_PYTHON_DIR=\"${PYSCHEDULER_TEST_PYTHON_DIR}\"")
    endif()
  endif()
endfunction()
