/* Every exported function with NULL for each pointer argument, zero/huge sizes and
 * options, invalid UTF-8, empty and malformed names: each gives an error status with a
 * message (or its documented neutral value), never a crash, and out-parameters stay
 * untouched on failure.
 *
 * check_api_coverage.cmake fails when the header exports a function this file never
 * names, so a new function cannot skip these checks. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "test_util.h"

#include <pthread.h>

static pysched_manager *manager;

/* An address no library call would write: out-parameters are set to it and checked. */
static char sentinel_storage;
#define SENTINEL ((void *)&sentinel_storage)

static void test_status_and_version(void) {
  const char *v = pysched_version();
  CHECK(v != NULL && v[0] != '\0' && strchr(v, '.') != NULL);
  CHECK(strcmp(pysched_status_name(PYSCHED_OK), "ok") == 0);
  CHECK(strcmp(pysched_status_name(PYSCHED_QUEUE_FULL), "queue_full") == 0);
  for (int32_t s = PYSCHED_OK; s <= PYSCHED_CALLBACK; s++) {
    CHECK(strcmp(pysched_status_name(s), "unknown") != 0);
    for (int32_t t = PYSCHED_OK; t < s; t++) {
      CHECK(strcmp(pysched_status_name(s), pysched_status_name(t)) != 0);
    }
  }
  const int32_t bad[] = {-1, PYSCHED_CALLBACK + 1, 1000, INT32_MIN, INT32_MAX};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK(strcmp(pysched_status_name(bad[i]), "unknown") == 0);
  }
}

static void test_null_error_accessors(void) {
  CHECK(pysched_error_kind(NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK(pysched_error_message(NULL) != NULL && pysched_error_message(NULL)[0] == '\0');
  CHECK(pysched_error_python_type(NULL) != NULL &&
        pysched_error_python_type(NULL)[0] == '\0');
  CHECK(pysched_error_traceback(NULL) != NULL &&
        pysched_error_traceback(NULL)[0] == '\0');
  CHECK(pysched_error_clone(NULL) == NULL);
  pysched_error_free(NULL);
}

static void test_manager_new_arguments(void) {
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_new(NULL, NULL, &err));
  CHECK(pysched_manager_new(NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);

  pysched_manager_options o;
  memset(&o, 0, sizeof o);
  pysched_manager *m = SENTINEL;
  o.worker_threads = 1025;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_new(&o, &m, &err));
  o.worker_threads = UINT32_MAX;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_new(&o, &m, &err));
  o.worker_threads = 0;
  o.python_executable = "\xff\xfe/python";
  CHECK(pysched_manager_new(&o, &m, &err) == PYSCHED_INVALID_ARGUMENT);
  CHECK_CONTAINS(pysched_error_message(err), "UTF-8");
  pysched_error_free(err);
  err = NULL;
  CHECK(m == SENTINEL);

  /* All-zero options are the defaults; a later manager shares the running state. */
  memset(&o, 0, sizeof o);
  CHECK_STATUS(PYSCHED_OK, pysched_manager_new(&o, &m, &err));
  CHECK(m != SENTINEL && m != NULL);
  CHECK(pysched_manager_worker_threads(m) == pysched_manager_worker_threads(manager));
  CHECK(pysched_manager_worker_threads(m) >= 1);
  CHECK(!pysched_manager_adopted(m));
  pysched_manager_free(m);
  CHECK(pysched_manager_worker_threads(NULL) == 0);
  CHECK(!pysched_manager_adopted(NULL));
  pysched_manager_free(NULL);
}

static void test_add_path_arguments(void) {
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_add_path(NULL, "/tmp", &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_add_path(manager, NULL, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_add_path(manager, "", &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_manager_add_path(manager, "/tmp/\xc3\x28", &err));
  CHECK(pysched_manager_add_path(NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  /* Idempotent. */
  CHECK_STATUS(PYSCHED_OK, pysched_manager_add_path(manager, PYSCHED_TEST_PYTHON_DIR, &err));
  CHECK_STATUS(PYSCHED_OK, pysched_manager_add_path(manager, PYSCHED_TEST_PYTHON_DIR, NULL));
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *path = PySys_GetObject("path"); /* borrowed */
  PyObject *dir = PyUnicode_FromString(PYSCHED_TEST_PYTHON_DIR);
  Py_ssize_t n = 0;
  for (Py_ssize_t i = 0; path && i < PyList_Size(path); i++) {
    n += PyObject_RichCompareBool(PyList_GetItem(path, i), dir, Py_EQ) == 1;
  }
  Py_DECREF(dir);
  PyGILState_Release(g);
  CHECK(n == 1);
}

/* Loads and expects `status` with `text` in the message; out_handler stays untouched. */
static void expect_load(pysched_status status, const char *module, const char *entry,
                        const pysched_handler_options *options, const char *text,
                        int line) {
  pysched_handler *h = SENTINEL;
  pysched_error *err = NULL;
  pysched_status st = pysched_manager_load(manager, module, entry, options, &h, &err);
  if (st != status || h != SENTINEL || err == NULL || pysched_error_kind(err) != status ||
      !contains(pysched_error_message(err), text)) {
    fprintf(stderr, "line %d: load(%s, %s): %s: %s (expected %s with \"%s\")\n", line,
            module ? module : "NULL", entry ? entry : "NULL",
            pysched_status_name((int32_t)st), err ? pysched_error_message(err) : "",
            pysched_status_name((int32_t)status), text);
    test_failures++;
  }
  if (st == PYSCHED_OK && h != SENTINEL) {
    pysched_handler_free(h);
  }
  pysched_error_free(err);
}
#define EXPECT_LOAD(status, module, entry, options, text)                         \
  expect_load(status, module, entry, options, text, __LINE__)

static void test_load_arguments(void) {
  pysched_error *err = NULL;
  pysched_handler *h = SENTINEL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_manager_load(NULL, "pysched_testmod", "add", NULL, &h, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_manager_load(manager, NULL, "add", NULL, &h, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_manager_load(manager, "pysched_testmod", NULL, NULL, &h, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_manager_load(manager, "pysched_testmod", "add", NULL, NULL, &err));
  CHECK(pysched_manager_load(NULL, NULL, NULL, NULL, NULL, NULL) ==
        PYSCHED_INVALID_ARGUMENT);
  CHECK(h == SENTINEL);

  /* Empty, malformed and non-UTF-8 names. */
  const char *bad_modules[] = {"",      ".",       "a..b",     ".pysched_testmod",
                               "a.",    "1abc",    "a-b",      "a b",
                               "os/path", "pysched_testmod.", "\xff\xfe", "mod\xc3\x28",
                               "a.\xe2\x82", "\t", "pysched_testmod;import os"};
  for (size_t i = 0; i < sizeof bad_modules / sizeof bad_modules[0]; i++) {
    EXPECT_LOAD(PYSCHED_INVALID_ARGUMENT, bad_modules[i], "add", NULL, "");
  }
  const char *bad_entries[] = {"",   ".",  "Model..predict", "Model.", ".add",
                               "1x", "a-b", "add()",         "\xff",   "add\xc0"};
  for (size_t i = 0; i < sizeof bad_entries / sizeof bad_entries[0]; i++) {
    EXPECT_LOAD(PYSCHED_INVALID_ARGUMENT, "pysched_testmod", bad_entries[i], NULL, "");
  }
  EXPECT_LOAD(PYSCHED_INVALID_ARGUMENT, "", "", NULL, "empty");

  /* Well-formed names that do not resolve. */
  EXPECT_LOAD(PYSCHED_IMPORT, "no_such_module_pysched", "f", NULL, "No module named");
  EXPECT_LOAD(PYSCHED_IMPORT, "pysched_testmod.no_such_sub", "f", NULL, "pysched_testmod");
  EXPECT_LOAD(PYSCHED_IMPORT, "pysched_ctest_broken", "f", NULL,
              "pysched_ctest_broken refuses to be imported");
  EXPECT_LOAD(PYSCHED_IMPORT, "\xc3\xbcn\xc3\xaf_missing", "f", NULL, "No module named");
  EXPECT_LOAD(PYSCHED_ATTRIBUTE, "pysched_testmod", "no_such_function", NULL,
              "no_such_function");
  EXPECT_LOAD(PYSCHED_ATTRIBUTE, "pysched_testmod", "Model.nope", NULL, "Model.nope");
  EXPECT_LOAD(PYSCHED_ATTRIBUTE, "pysched_testmod", "not_callable", NULL, "not callable");
  EXPECT_LOAD(PYSCHED_ATTRIBUTE, "pysched_testmod", "Model.scale", NULL, "not callable");

  /* A very long (well-formed) name. */
  static char long_name[20001];
  memset(long_name, 'a', sizeof long_name - 1);
  EXPECT_LOAD(PYSCHED_IMPORT, long_name, "f", NULL, "No module named");
  EXPECT_LOAD(PYSCHED_ATTRIBUTE, "pysched_testmod", long_name, NULL, "has no attribute");
}

static PyObject *commit_from_user_data(void *user_data) {
  return PyLong_FromLong((long)(intptr_t)user_data);
}

static void test_load_options(void) {
  struct {
    const char *what;
    pysched_handler_options o;
  } bad[24];
  size_t n = 0;
#define BAD(field, value, text)                                                   \
  do {                                                                            \
    bad[n].what = text;                                                           \
    bad[n].o = pysched_handler_options_default();                                 \
    bad[n].o.field = value;                                                       \
    n++;                                                                          \
  } while (0)
  BAD(batch_size, 0, "batch_size");
  BAD(batch_size, 1000001, "batch_size");
  BAD(batch_size, UINT32_MAX, "batch_size");
  BAD(prefetch_depth, 0, "prefetch_depth");
  BAD(prefetch_depth, 4097, "prefetch_depth");
  BAD(prefetch_depth, UINT32_MAX, "prefetch_depth");
  BAD(max_batch_delay_us, 60000001u, "max_batch_delay");
  BAD(max_batch_delay_us, UINT64_MAX, "max_batch_delay");
  BAD(full_policy, 2, "full_policy");
  BAD(full_policy, UINT32_MAX, "full_policy");
  BAD(name, "bad\xff name", "UTF-8");
  BAD(concurrency, 0, "concurrency");
  BAD(concurrency, 1025, "concurrency");
  BAD(concurrency, UINT32_MAX, "concurrency");
  BAD(subinterpreters, UINT32_MAX, "subinterpreters");
#undef BAD
  for (size_t i = 0; i < n; i++) {
    EXPECT_LOAD(PYSCHED_INVALID_ARGUMENT, "pysched_testmod", "identity", &bad[i].o,
                bad[i].what);
  }
  /* Own-GIL sub-interpreters need CPython 3.12; before that, a clear UNSUPPORTED. */
  pysched_handler_options sub = pysched_handler_options_default();
  sub.subinterpreters = 1;
#if PY_VERSION_HEX < 0x030C0000
  EXPECT_LOAD(PYSCHED_UNSUPPORTED, "pysched_testmod", "identity", &sub, "3.12");
#else
  {
    pysched_handler *h = test_load(manager, "pysched_testmod", "identity", &sub);
    pysched_handler_free(h);
  }
#endif
  CHECK(pysched_handler_options_default().subinterpreters == 0);

  /* An all-zero struct is not the default: batch 0 is rejected (documented). */
  pysched_handler_options zero;
  memset(&zero, 0, sizeof zero);
  EXPECT_LOAD(PYSCHED_INVALID_ARGUMENT, "pysched_testmod", "identity", &zero,
              "batch_size");

  /* The largest accepted values work, and so do items with a huge deadline. */
  pysched_handler_options o = pysched_handler_options_default();
  CHECK(o.batch_size == 1 && o.prefetch_depth == 1 && o.max_batch_delay_us == 0 &&
        o.max_queue == 0 && o.full_policy == PYSCHED_FULL_BLOCK && o.name == NULL &&
        o.block_timeout_us == 0 && o.concurrency == 1);
  o.batch_size = 1000000;
  o.prefetch_depth = 4096;
  o.max_queue = UINT64_MAX;
  o.block_timeout_us = UINT64_MAX;
  o.concurrency = 1024;
  o.name = "";
  pysched_handler *h = test_load(manager, "pysched_testmod", "double", &o);
  pysched_item item;
  memset(&item, 0, sizeof item);
  item.timeout_us = UINT64_MAX;
  pysched_error *err = NULL;
  item.commit = commit_from_user_data;
  item.user_data = (void *)(intptr_t)21;
  pysched_future *f = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &item, &f, &err));
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait_for(f, 10000000, &err));
  pysched_future_free(f);
  pysched_handler_free(h);

  o = pysched_handler_options_default();
  o.max_batch_delay_us = 60000000u; /* exactly the limit */
  o.full_policy = PYSCHED_FULL_REJECT;
  o.max_queue = 1;
  o.name = "custom \"name\"";
  h = test_load(manager, "pysched_testmod", "double", &o);
  CHECK(strcmp(pysched_handler_name(h), "custom \"name\"") == 0);
  pysched_handler_free(h);
}

static void test_handler_null_arguments(void) {
  pysched_handler *h = test_load(manager, "pysched_testmod", "identity", NULL);
  pysched_error *err = NULL;
  pysched_stats s;
  pysched_latency l;
  memset(&s, 0xab, sizeof s);
  memset(&l, 0xab, sizeof l);
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_stats(NULL, &s, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_stats(h, NULL, &err));
  CHECK(pysched_handler_stats(NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_latency(NULL, &l, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_latency(h, NULL, &err));
  CHECK(pysched_handler_latency(NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK(s.total_enqueued == 0xababababababababULL); /* untouched */
  CHECK(l.batch_size_p50 == 0xababababababababULL);
  char buf[16] = "unchanged";
  CHECK(pysched_handler_metrics_text(NULL, buf, sizeof buf) == 0);
  CHECK(strcmp(buf, "unchanged") == 0);
  CHECK(pysched_handler_metrics_text(NULL, NULL, 0) == 0);
  CHECK(pysched_handler_metrics_text(h, NULL, 0) > 0);
  CHECK(pysched_handler_name(NULL) != NULL && pysched_handler_name(NULL)[0] == '\0');
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_drain(NULL, &err));
  CHECK(pysched_handler_drain(NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_queue(NULL, NULL, NULL, &err));
  CHECK(pysched_handler_queue(h, NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  PyObject *out = SENTINEL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_call(NULL, NULL, NULL, &out, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_call(h, NULL, NULL, &out, &err));
  CHECK(out == SENTINEL);
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_handler_with_function(NULL, NULL, NULL, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_with_function(h, NULL, NULL, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_report_stray_error(NULL, NULL, &err));
  /* Without the GIL held. */
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_report_stray_error(h, "x", &err));
  CHECK(pysched_handler_report_stray_error(NULL, "x", NULL) == PYSCHED_INVALID_ARGUMENT);
  pysched_handler_free(NULL);
  /* The handler still works after all that. */
  CHECK_STATUS(PYSCHED_OK, pysched_handler_stats(h, &s, &err));
  CHECK(s.total_enqueued == 0);
  pysched_handler_free(h);
}

static void test_future_null_arguments(void) {
  pysched_error *err = NULL;
  PyObject *out = SENTINEL;
  CHECK(!pysched_future_is_ready(NULL));
  CHECK(!pysched_future_cancel(NULL));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_future_wait(NULL, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_future_wait_for(NULL, UINT64_MAX, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_future_take(NULL, &out, &err));
  CHECK(out == SENTINEL);
  pysched_future_free(NULL);
}

static void test_debug_counters(void) {
  CHECK(pysched_debug_shared_state_address() != 0);
  uint64_t before = pysched_debug_arc_count();
  CHECK(before >= 1);
  pysched_handler *h = test_load(manager, "pysched_testmod", "identity", NULL);
  CHECK(pysched_debug_arc_count() == before + 1);
  pysched_handler_free(h);
  CHECK(pysched_debug_arc_count() == before);
}

/* pysched_alloc/pysched_free: refused layouts give NULL, odd frees are no-ops, real
 * blocks are aligned, writable, and may be freed by another thread. */
static void *free_on_this_thread(void *block) {
  pysched_free(block, 100, 64);
  return NULL;
}

static void test_alloc_arguments(void) {
  CHECK(pysched_alloc(0, 8) == NULL);
  CHECK(pysched_alloc(16, 0) == NULL);
  CHECK(pysched_alloc(16, 3) == NULL);  /* not a power of two */
  CHECK(pysched_alloc(SIZE_MAX, 8) == NULL);
  CHECK(pysched_alloc(SIZE_MAX / 2, 4096) == NULL);
  pysched_free(NULL, 16, 8);
  pysched_free(NULL, 0, 0);
  char not_from_alloc[16];
  pysched_free(not_from_alloc, 0, 8);  /* size 0: no such block, nothing happens */
  pysched_free(not_from_alloc, 16, 3); /* refused alignment: likewise */
  const size_t aligns[] = {1, 2, 8, 16, 64, 4096};
  for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
    unsigned char *p = pysched_alloc(1000, aligns[i]);
    REQUIRE(p != NULL);
    CHECK(((uintptr_t)p & (aligns[i] - 1)) == 0);
    memset(p, 0xa5, 1000);
    CHECK(p[0] == 0xa5 && p[999] == 0xa5);
    pysched_free(p, 1000, aligns[i]);
  }
  void *block = pysched_alloc(100, 64);
  REQUIRE(block != NULL);
  memset(block, 1, 100);
  pthread_t t;
  REQUIRE(pthread_create(&t, NULL, free_on_this_thread, block) == 0);
  REQUIRE(pthread_join(t, NULL) == 0);
}

int main(void) {
  test_status_and_version();
  test_null_error_accessors();
  test_alloc_arguments();
  test_future_null_arguments();
  manager = test_manager();
  test_manager_new_arguments();
  test_add_path_arguments();
  test_load_arguments();
  test_load_options();
  test_handler_null_arguments();
  test_debug_counters();
  pysched_manager_free(manager);
  return test_finish("test_api_errors");
}
