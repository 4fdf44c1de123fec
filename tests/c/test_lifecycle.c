/* Manager and handler lifecycle through the C ABI: the process-wide state appears with
 * the first manager and goes with the last handle, managers share it, handlers outlive
 * their manager, everything can be built again after a full teardown, and concurrent
 * creators race safely. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "test_util.h"

#include <pthread.h>

static long call_add(pysched_handler *h, long a, long b) {
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *args = Py_BuildValue("(ll)", a, b);
  PyGILState_Release(g);
  PyObject *out = NULL;
  pysched_error *err = NULL;
  long v = -1;
  if (CHECK_STATUS(PYSCHED_OK, pysched_handler_call(h, args, NULL, &out, &err)) ==
      PYSCHED_OK) {
    g = PyGILState_Ensure();
    v = PyLong_AsLong(out);
    Py_DECREF(out);
    PyGILState_Release(g);
  }
  g = PyGILState_Ensure();
  Py_DECREF(args);
  PyGILState_Release(g);
  return v;
}

static void test_shared_state_and_counts(void) {
  CHECK(pysched_debug_shared_state_address() == 0);
  CHECK(pysched_debug_arc_count() == 0);
  pysched_manager *m1 = test_manager();
  size_t addr = pysched_debug_shared_state_address();
  CHECK(addr != 0);
  CHECK(pysched_debug_arc_count() == 1);
  pysched_manager *m2 = test_manager();
  CHECK(pysched_debug_shared_state_address() == addr);
  CHECK(pysched_debug_arc_count() == 2);
  pysched_handler *h1 = test_load(m1, "pysched_testmod", "add", NULL);
  pysched_handler *h2 = test_load(m2, "pysched_testmod", "add", NULL);
  CHECK(pysched_debug_arc_count() == 4);
  pysched_manager_free(m1);
  CHECK(pysched_debug_arc_count() == 3);
  CHECK(call_add(h1, 2, 3) == 5);
  pysched_manager_free(m2);
  CHECK(pysched_debug_arc_count() == 2);
  CHECK(pysched_debug_shared_state_address() == addr);
  CHECK(call_add(h2, 4, 5) == 9);
  pysched_handler_free(h1);
  pysched_handler_free(h2);
  CHECK(pysched_debug_arc_count() == 0);
  CHECK(pysched_debug_shared_state_address() == 0);
}

static PyObject *commit_int(void *user_data) {
  return PyLong_FromLong((long)(intptr_t)user_data);
}

/* After everything was freed, a new manager builds a new pool and works. */
static void test_rebuild_after_teardown(void) {
  for (int round = 0; round < 3; round++) {
    pysched_manager *m = test_manager();
    pysched_handler_options o = test_options(4);
    pysched_handler *h = test_load(m, "pysched_testmod", "double", &o);
    pysched_manager_free(m); /* the handler outlives its manager */
    enum { N = 100 };
    pysched_future *f[N];
    pysched_error *err = NULL;
    for (int i = 0; i < N; i++) {
      pysched_item item;
      memset(&item, 0, sizeof item);
      item.user_data = (void *)(intptr_t)i;
      item.commit = commit_int;
      REQUIRE(pysched_handler_queue(h, &item, &f[i], &err) == PYSCHED_OK);
    }
    pysched_handler_free(h); /* drains; the last handle: the pool goes */
    CHECK(pysched_debug_arc_count() == 0);
    for (int i = 0; i < N; i++) {
      CHECK(pysched_future_is_ready(f[i]));
      /* Drained by the free: every result is in its future. */
      PyObject *out = NULL;
      CHECK_STATUS(PYSCHED_OK, pysched_future_take(f[i], &out, &err));
      PyGILState_STATE g = PyGILState_Ensure();
      CHECK(out != NULL && PyLong_AsLong(out) == 2L * i);
      Py_XDECREF(out);
      PyGILState_Release(g);
      pysched_future_free(f[i]);
    }
  }
}

typedef struct {
  pysched_manager *m;
  size_t addr;
} racer_arg;

static void *racer(void *p) {
  racer_arg *a = (racer_arg *)p;
  pysched_error *err = NULL;
  if (pysched_manager_new(NULL, &a->m, &err) != PYSCHED_OK) {
    a->m = NULL;
  }
  a->addr = pysched_debug_shared_state_address();
  pysched_error_free(err);
  return NULL;
}

static void test_concurrent_creation(void) {
  enum { T = 8 };
  pthread_t t[T];
  racer_arg a[T];
  memset(a, 0, sizeof a);
  for (int i = 0; i < T; i++) {
    REQUIRE(pthread_create(&t[i], NULL, racer, &a[i]) == 0);
  }
  for (int i = 0; i < T; i++) {
    pthread_join(t[i], NULL);
  }
  size_t addr = pysched_debug_shared_state_address();
  CHECK(addr != 0);
  CHECK(pysched_debug_arc_count() == T);
  for (int i = 0; i < T; i++) {
    CHECK(a[i].m != NULL);
    CHECK(a[i].addr == addr);
  }
  for (int i = 0; i < T; i++) {
    pysched_manager_free(a[i].m);
  }
  CHECK(pysched_debug_arc_count() == 0);
}

/* The manager's worker_threads option is honoured by the manager that creates the
 * state, and ignored by later ones. */
static void test_worker_threads_option(void) {
  pysched_manager_options o;
  memset(&o, 0, sizeof o);
  o.worker_threads = 3;
  pysched_manager *m = NULL;
  pysched_error *err = NULL;
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_manager_new(&o, &m, &err)) == PYSCHED_OK);
  CHECK(pysched_manager_worker_threads(m) == 3);
  o.worker_threads = 9;
  pysched_manager *m2 = NULL;
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_manager_new(&o, &m2, &err)) == PYSCHED_OK);
  CHECK(pysched_manager_worker_threads(m2) == 3);
  pysched_manager_free(m2);
  pysched_manager_free(m);
}

int main(void) {
  test_shared_state_and_counts();
  test_rebuild_after_teardown();
  test_concurrent_creation();
  test_worker_threads_option();
  return test_finish("test_lifecycle");
}
