/* Leaks a pysched_error on purpose: under tests/c/valgrind.sh it must be reported as
 * definitely lost (the test expects failure). If it passes, memcheck cannot see the
 * Rust core's heap (e.g. a custom global allocator came back) and the other valgrind
 * tests prove nothing about pyscheduler's own memory. */
#include "test_util.h"

int main(void) {
  pysched_manager *m = test_manager();
  pysched_error *leaked = NULL;
  CHECK(pysched_manager_add_path(m, "", &leaked) == PYSCHED_INVALID_ARGUMENT);
  CHECK(leaked != NULL);
  leaked = NULL; /* the only pointer to it is gone */
  pysched_manager_free(m);
  return test_finish("valgrind_canary");
}
