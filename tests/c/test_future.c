/* Futures through the C ABI: wait, wait_for, is_ready, take (once, twice, too early),
 * cancel, free with and without take (the result's reference is released), waiting
 * with the GIL held, many waiters, and futures that outlive their handler. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "test_util.h"
#include "item_ctx.h"

#include <pthread.h>

static pysched_manager *manager;

static pysched_future *queue_ctx(pysched_handler *h, item_ctx *c) {
  pysched_item item = make_item(c);
  pysched_future *f = NULL;
  pysched_error *err = NULL;
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &item, &f, &err)) ==
          PYSCHED_OK);
  REQUIRE(f != NULL);
  return f;
}

/* A sleep_or_double item of -ms whose Python call has started. */
static pysched_future *start_blocker(pysched_handler *h, item_ctx *c, long ms) {
  item_reset(c, -ms);
  pysched_future *f = queue_ctx(h, c);
  wait_item_started(c);
  return f;
}

static Py_ssize_t refcount(PyObject *o) {
  PyGILState_STATE g = PyGILState_Ensure();
  Py_ssize_t n = Py_REFCNT(o);
  PyGILState_Release(g);
  return n;
}

static void test_wait_take_and_errors(void) {
  pysched_handler *h = test_load(manager, "pysched_ctest", "sleep_or_double", NULL);
  item_ctx blocker, c;
  pysched_future *bf = start_blocker(h, &blocker, 300);
  item_reset(&c, 21);
  pysched_future *f = queue_ctx(h, &c);
  pysched_error *err = NULL;

  CHECK(!pysched_future_is_ready(f));
  /* Too early: NOT_READY, out_result untouched. */
  PyObject *obj = (PyObject *)&c;
  CHECK_STATUS(PYSCHED_NOT_READY, pysched_future_take(f, &obj, &err));
  CHECK(obj == (PyObject *)&c);
  /* wait_for times out without affecting the item. */
  uint64_t t0 = now_us();
  CHECK_STATUS(PYSCHED_TIMED_OUT, pysched_future_wait_for(f, 50000, &err));
  uint64_t waited = now_us() - t0;
  CHECK(waited >= 45000 && waited < 280000);
  CHECK_STATUS(PYSCHED_TIMED_OUT, pysched_future_wait_for(f, 0, &err));
  CHECK(!pysched_future_is_ready(f));

  CHECK_STATUS(PYSCHED_OK, pysched_future_wait(f, &err));
  CHECK(pysched_future_is_ready(f));
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait(f, &err)); /* again: still finished */
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait_for(f, 0, &err));
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait_for(f, UINT64_MAX, &err));

  /* NULL out_result is rejected without consuming the outcome. */
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_future_take(f, NULL, &err));
  obj = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_future_take(f, &obj, &err));
  REQUIRE(obj != NULL);
  PyGILState_STATE g = PyGILState_Ensure();
  CHECK(PyLong_AsLong(obj) == 42);
  Py_DECREF(obj);
  PyGILState_Release(g);
  /* Taken twice: an error, and out_result stays untouched. */
  obj = (PyObject *)&c;
  CHECK(pysched_future_take(f, &obj, &err) == PYSCHED_INVALID_ARGUMENT);
  CHECK_CONTAINS(pysched_error_message(err), "already taken");
  pysched_error_free(err);
  err = NULL;
  CHECK(obj == (PyObject *)&c);
  CHECK(pysched_future_is_ready(f));
  CHECK(!pysched_future_cancel(f));
  CHECK_ONCE(&c);
  pysched_future_free(f);
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait(bf, &err));
  pysched_future_free(bf);
  pysched_handler_free(h);
}

static void test_error_outcome_taken_twice(void) {
  pysched_handler_options o = test_options(4);
  o.max_batch_delay_us = 100000;
  pysched_handler *h = test_load(manager, "pysched_testmod", "raise_value_error", &o);
  item_ctx c;
  item_reset(&c, 1);
  pysched_future *f = queue_ctx(h, &c);
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait(f, &err));
  PyObject *obj = NULL;
  CHECK(pysched_future_take(f, &obj, &err) == PYSCHED_PYTHON_EXCEPTION);
  CHECK(obj == NULL);
  REQUIRE(err != NULL);
  CHECK(strcmp(pysched_error_python_type(err), "ValueError") == 0);
  CHECK_CONTAINS(pysched_error_traceback(err), "raise_value_error");
  pysched_error_free(err);
  err = NULL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_future_take(f, &obj, &err));
  /* take without out_error */
  CHECK(pysched_future_take(f, &obj, NULL) == PYSCHED_INVALID_ARGUMENT);
  pysched_future_free(f);
  pysched_handler_free(h);
}

static void test_cancel(void) {
  pysched_handler *h = test_load(manager, "pysched_ctest", "sleep_or_double", NULL);
  item_ctx blocker, c;
  pysched_future *bf = start_blocker(h, &blocker, 200);
  item_reset(&c, 3);
  pysched_future *f = queue_ctx(h, &c);
  CHECK(pysched_future_cancel(f));
  CHECK(pysched_future_is_ready(f));
  CHECK(c.kind == PYSCHED_CANCELLED);
  CHECK_ONCE(&c);
  CHECK(!pysched_future_cancel(f));
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait(f, &err));
  PyObject *obj = NULL;
  CHECK_STATUS(PYSCHED_CANCELLED, pysched_future_take(f, &obj, &err));
  pysched_future_free(f);
  /* Cancel then free right away, and free without cancel: the item still runs. */
  item_ctx d, e;
  item_reset(&d, 4);
  item_reset(&e, 5);
  f = queue_ctx(h, &d);
  pysched_future *f2 = queue_ctx(h, &e);
  CHECK(pysched_future_cancel(f));
  pysched_future_free(f);
  pysched_future_free(f2);
  CHECK_STATUS(PYSCHED_OK, pysched_handler_drain(h, &err));
  CHECK(d.kind == PYSCHED_CANCELLED);
  CHECK(e.ok && e.result == 10);
  CHECK_ONCE(&d);
  CHECK_ONCE(&e);
  CHECK(!pysched_future_cancel(bf));
  pysched_future_free(bf);
  pysched_handler_free(h);
}

/* A result never taken is released by free; a taken one belongs to the caller. */
static void test_free_releases_result(void) {
  /* Single items wait out the batch delay, so none finishes inside queue. */
  pysched_handler_options o = test_options(2);
  o.max_batch_delay_us = 20000;
  pysched_handler *h = test_load(manager, "pysched_testmod", "identity", &o);
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *obj = Py_BuildValue("[iii]", 1, 2, 3);
  PyGILState_Release(g);
  REQUIRE(obj != NULL);
  Py_ssize_t base = refcount(obj);
  pysched_error *err = NULL;

  item_ctx c;
  item_reset(&c, 0);
  c.commit_mode = COMMIT_OBJECT;
  c.object = obj;
  pysched_future *f = queue_ctx(h, &c);
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait(f, &err));
  CHECK_STATUS(PYSCHED_OK, pysched_handler_drain(h, &err));
  CHECK_ONCE(&c);
  /* The future holds the result; freeing it untaken must drop that reference. */
  CHECK(refcount(obj) == base + 1);
  pysched_future_free(f);
  CHECK(refcount(obj) == base);

  /* Taken: the caller owns exactly one new reference. */
  item_reset(&c, 0);
  c.commit_mode = COMMIT_OBJECT;
  c.object = obj;
  f = queue_ctx(h, &c);
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait(f, &err));
  PyObject *got = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_future_take(f, &got, &err));
  CHECK(got == obj);
  pysched_future_free(f);
  CHECK(refcount(obj) == base + 1);
  g = PyGILState_Ensure();
  Py_DECREF(got);
  PyGILState_Release(g);

  /* Freed before the item ran (it waits for the batch delay): the item still runs,
   * and nothing keeps the result. */
  item_reset(&c, 0);
  c.commit_mode = COMMIT_OBJECT;
  c.object = obj;
  f = queue_ctx(h, &c);
  pysched_future_free(f);
  CHECK(atomic_load(&c.commits) == 0);
  CHECK_STATUS(PYSCHED_OK, pysched_handler_drain(h, &err));
  uint64_t give_up = now_us() + 2000000;
  while (refcount(obj) != base && now_us() < give_up) {
    sleep_us(1000);
  }
  CHECK(refcount(obj) == base);
  CHECK(c.ok);
  CHECK_ONCE(&c);

  g = PyGILState_Ensure();
  Py_DECREF(obj);
  PyGILState_Release(g);
  pysched_handler_free(h);
}

/* Waiting with the GIL held must release it for the worker (no deadlock). */
static void test_wait_with_gil_held(void) {
  pysched_handler_options o = test_options(4);
  pysched_handler *h = test_load(manager, "pysched_testmod", "double", &o);
  pysched_error *err = NULL;
  PyGILState_STATE g = PyGILState_Ensure();
  enum { N = 50 };
  item_ctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    item_reset(&ctx[i], i);
    pysched_item item = make_item(&ctx[i]);
    REQUIRE(pysched_handler_queue(h, &item, &fut[i], &err) == PYSCHED_OK);
  }
  for (int i = 0; i < N; i++) {
    if (i % 2) {
      CHECK_STATUS(PYSCHED_OK, pysched_future_wait(fut[i], &err));
    } else {
      CHECK_STATUS(PYSCHED_OK, pysched_future_wait_for(fut[i], 10000000, &err));
    }
    /* The result is in the future after the wait, fast item or not (test_queue_edge
     * reports a lost one as a bug too). */
    PyObject *obj = NULL;
    CHECK_STATUS(PYSCHED_OK, pysched_future_take(fut[i], &obj, &err));
    CHECK(obj != NULL && PyLong_AsLong(obj) == 2L * i);
    Py_XDECREF(obj);
    pysched_future_free(fut[i]);
  }
  CHECK_STATUS(PYSCHED_OK, pysched_handler_drain(h, &err));
  PyGILState_Release(g);
  for (int i = 0; i < N; i++) {
    CHECK(ctx[i].ok && ctx[i].result == 2L * i);
    CHECK_ONCE(&ctx[i]);
  }
  pysched_handler_free(h);
}

static void *waiter(void *p) {
  pysched_error *err = NULL;
  pysched_status st = pysched_future_wait((pysched_future *)p, &err);
  pysched_error_free(err);
  return (void *)(intptr_t)st;
}

static void test_many_waiters(void) {
  pysched_handler *h = test_load(manager, "pysched_ctest", "sleep_or_double", NULL);
  item_ctx blocker;
  pysched_future *bf = start_blocker(h, &blocker, 100);
  enum { T = 8 };
  pthread_t t[T];
  for (int i = 0; i < T; i++) {
    REQUIRE(pthread_create(&t[i], NULL, waiter, bf) == 0);
  }
  for (int i = 0; i < T; i++) {
    void *rc = NULL;
    pthread_join(t[i], &rc);
    CHECK((intptr_t)rc == PYSCHED_OK);
  }
  PyObject *obj = NULL;
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_future_take(bf, &obj, &err));
  PyGILState_STATE g = PyGILState_Ensure();
  CHECK(obj && PyLong_AsLong(obj) == 100);
  Py_XDECREF(obj);
  PyGILState_Release(g);
  pysched_future_free(bf);
  pysched_handler_free(h);
}

/* Futures stay valid after their handler and their manager are freed. */
static void test_future_outlives_handler_and_manager(void) {
  pysched_manager *m2 = test_manager();
  pysched_handler *h = test_load(m2, "pysched_ctest", "sleep_or_double", NULL);
  item_ctx blocker, c;
  pysched_future *bf = start_blocker(h, &blocker, 50);
  item_reset(&c, 8);
  pysched_future *f = queue_ctx(h, &c);
  pysched_manager_free(m2);
  pysched_handler_free(h); /* drains */
  CHECK(pysched_future_is_ready(f));
  PyObject *obj = NULL;
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_future_take(f, &obj, &err));
  PyGILState_STATE g = PyGILState_Ensure();
  CHECK(obj && PyLong_AsLong(obj) == 16);
  Py_XDECREF(obj);
  PyGILState_Release(g);
  pysched_future_free(f);
  pysched_future_free(bf);
  CHECK_ONCE(&c);
}

static void test_null_future(void) {
  pysched_error *err = NULL;
  PyObject *obj = NULL;
  CHECK(!pysched_future_is_ready(NULL));
  CHECK(!pysched_future_cancel(NULL));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_future_wait(NULL, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_future_wait_for(NULL, 1000, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_future_take(NULL, &obj, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_future_take(NULL, NULL, &err));
  CHECK(pysched_future_wait(NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK(pysched_future_wait_for(NULL, 0, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK(pysched_future_take(NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK(obj == NULL);
  pysched_future_free(NULL);
}

int main(void) {
  manager = test_manager();
  test_null_future();
  test_wait_take_and_errors();
  test_error_outcome_taken_twice();
  test_cancel();
  test_free_releases_result();
  test_wait_with_gil_held();
  test_many_waiters();
  test_future_outlives_handler_and_manager();
  pysched_manager_free(manager);
  return test_finish("test_future");
}
