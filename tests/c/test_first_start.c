/* A first pysched_manager_new that fails before touching Python (a python_executable
 * that does not exist) must not poison the process: a corrected call starts Python.
 * Its own program, because it must make the process's first call. */
#include "test_util.h"

static void test_failed_first_start_can_be_retried(void) {
  CHECK(pysched_debug_shared_state_address() == 0);
  CHECK(pysched_debug_arc_count() == 0);
  pysched_manager_options o;
  memset(&o, 0, sizeof o);
  o.python_executable = "/nonexistent/pysched/bin/python";
  pysched_manager *m = NULL;
  pysched_error *err = NULL;
  CHECK(pysched_manager_new(&o, &m, &err) == PYSCHED_INVALID_ARGUMENT);
  CHECK_CONTAINS(pysched_error_message(err), "does not exist");
  pysched_error_free(err);
  err = NULL;
  CHECK(m == NULL);
  /* Nothing was started: a corrected call must be able to start Python. */
  pysched_status st = pysched_manager_new(NULL, &m, &err);
  if (st != PYSCHED_OK) {
    fprintf(stderr,
            "BUG: after a first pysched_manager_new failed on a missing "
            "python_executable, a call with default options fails too: %s: %s\n",
            pysched_status_name((int32_t)st), pysched_error_message(err));
    test_failures++;
    pysched_error_free(err);
    return;
  }
  /* And it is a working manager. */
  CHECK(pysched_debug_arc_count() == 1);
  pysched_handler_options opts = pysched_handler_options_default();
  REQUIRE(CHECK_STATUS(PYSCHED_OK,
                       pysched_manager_add_path(m, PYSCHED_TEST_PYTHON_DIR, &err)) ==
          PYSCHED_OK);
  pysched_handler *h = NULL;
  CHECK_STATUS(PYSCHED_OK,
               pysched_manager_load(m, "pysched_testmod", "add", &opts, &h, &err));
  pysched_handler_free(h);
  pysched_manager_free(m);
}

int main(void) {
  test_failed_first_start_can_be_retried();
  return test_finish("test_first_start");
}
