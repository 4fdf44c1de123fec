/* Synchronous calls through the C ABI: pysched_handler_call (args tuple, kwargs dict,
 * errors with type/message/traceback, bad arguments, with and without the GIL, many
 * threads) and pysched_handler_with_function. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "test_util.h"

#include <pthread.h>
#include <stdatomic.h>

static pysched_manager *manager;

/* Calls `h` with a tuple built from `fmt` (Py_BuildValue syntax, must build a tuple) and
 * optional kwargs; returns the status and stores an int result in *out. */
static pysched_status call_long(pysched_handler *h, PyObject *args, PyObject *kwargs,
                                long *out, pysched_error **err) {
  PyObject *result = (PyObject *)&manager; /* sentinel */
  pysched_status st = pysched_handler_call(h, args, kwargs, &result, err);
  if (st == PYSCHED_OK) {
    PyGILState_STATE g = PyGILState_Ensure();
    *out = PyLong_AsLong(result);
    Py_DECREF(result);
    PyGILState_Release(g);
  } else {
    CHECK(result == (PyObject *)&manager); /* untouched on failure */
  }
  return st;
}

static void test_call(void) {
  pysched_handler *add = test_load(manager, "pysched_testmod", "add", NULL);
  pysched_error *err = NULL;
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *args = Py_BuildValue("(ii)", 2, 3);
  PyObject *one = Py_BuildValue("(i)", 1);
  PyObject *empty = PyTuple_New(0);
  PyObject *kwargs = Py_BuildValue("{s:i,s:i}", "a", 10, "b", 20);
  PyObject *kw_b = Py_BuildValue("{s:i}", "b", 7);
  PyObject *list = Py_BuildValue("[ii]", 2, 3);
  PyGILState_Release(g);

  long v = 0;
  CHECK_STATUS(PYSCHED_OK, call_long(add, args, NULL, &v, &err));
  CHECK(v == 5);
  CHECK_STATUS(PYSCHED_OK, call_long(add, empty, kwargs, &v, &err));
  CHECK(v == 30);
  CHECK_STATUS(PYSCHED_OK, call_long(add, one, kw_b, &v, &err));
  CHECK(v == 8);

  /* The same call made while this thread holds the GIL. */
  g = PyGILState_Ensure();
  CHECK_STATUS(PYSCHED_OK, call_long(add, args, NULL, &v, &err));
  CHECK(v == 5);
  CHECK(PyGILState_Check());
  PyGILState_Release(g);

  /* A TypeError from Python: wrong arity. */
  CHECK(call_long(add, one, NULL, &v, &err) == PYSCHED_PYTHON_EXCEPTION);
  CHECK(strcmp(pysched_error_python_type(err), "TypeError") == 0);
  CHECK_CONTAINS(pysched_error_message(err), "TypeError");
  pysched_error_free(err);
  err = NULL;

  /* Bad arguments. */
  PyObject *out = (PyObject *)&manager;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_call(add, NULL, NULL, &out, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_call(add, list, NULL, &out, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_call(add, args, list, &out, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_call(add, args, NULL, NULL, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_call(NULL, args, NULL, &out, &err));
  CHECK(pysched_handler_call(NULL, NULL, NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK(out == (PyObject *)&manager);
  /* The arguments are borrowed: their reference counts are unchanged. */
  g = PyGILState_Ensure();
  CHECK(Py_REFCNT(args) == 1 && Py_REFCNT(kwargs) == 1 && Py_REFCNT(list) == 1);
  Py_DECREF(args);
  Py_DECREF(one);
  Py_DECREF(empty);
  Py_DECREF(kwargs);
  Py_DECREF(kw_b);
  Py_DECREF(list);
  PyGILState_Release(g);
  pysched_handler_free(add);
}

static void test_python_errors(void) {
  pysched_handler *h = test_load(manager, "pysched_testmod", "raise_error", NULL);
  pysched_error *err = NULL;
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *args = Py_BuildValue("(s)", "boom from C");
  PyGILState_Release(g);
  PyObject *out = NULL;
  REQUIRE(pysched_handler_call(h, args, NULL, &out, &err) == PYSCHED_PYTHON_EXCEPTION);
  REQUIRE(err != NULL);
  CHECK(pysched_error_kind(err) == PYSCHED_PYTHON_EXCEPTION);
  CHECK(strcmp(pysched_error_python_type(err), "RuntimeError") == 0);
  CHECK_CONTAINS(pysched_error_message(err), "RuntimeError: boom from C");
  CHECK_CONTAINS(pysched_error_traceback(err), "Traceback");
  CHECK_CONTAINS(pysched_error_traceback(err), "raise_error");
  CHECK_CONTAINS(pysched_error_traceback(err), "pysched_testmod.py");
  /* A clone outlives the original. */
  pysched_error *copy = pysched_error_clone(err);
  pysched_error_free(err);
  CHECK(pysched_error_kind(copy) == PYSCHED_PYTHON_EXCEPTION);
  CHECK_CONTAINS(pysched_error_message(copy), "boom from C");
  CHECK_CONTAINS(pysched_error_traceback(copy), "raise_error");
  pysched_error_free(copy);
  /* No Python exception is left set on this thread afterwards. */
  g = PyGILState_Ensure();
  CHECK(PyErr_Occurred() == NULL);
  Py_DECREF(args);
  PyGILState_Release(g);
  pysched_handler_free(h);

  /* sys.exit() inside a synchronous call is an ordinary error, not a process exit. */
  h = test_load(manager, "pysched_testmod", "call_sys_exit", NULL);
  g = PyGILState_Ensure();
  args = Py_BuildValue("([i])", 1);
  PyGILState_Release(g);
  err = NULL;
  CHECK(pysched_handler_call(h, args, NULL, &out, &err) == PYSCHED_PYTHON_EXCEPTION);
  CHECK(strcmp(pysched_error_python_type(err), "SystemExit") == 0);
  pysched_error_free(err);
  g = PyGILState_Ensure();
  Py_DECREF(args);
  PyGILState_Release(g);
  pysched_handler_free(h);
}

static void test_dotted_entry_point(void) {
  pysched_handler *h = test_load(manager, "pysched_testmod", "Model.predict", NULL);
  pysched_error *err = NULL;
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *args = Py_BuildValue("([ii])", 1, 2);
  PyGILState_Release(g);
  PyObject *out = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_handler_call(h, args, NULL, &out, &err));
  g = PyGILState_Ensure();
  CHECK(out && PyList_Check(out) && PyList_Size(out) == 2);
  CHECK(out && PyLong_AsLong(PyList_GetItem(out, 1)) == 6);
  Py_XDECREF(out);
  Py_DECREF(args);
  PyGILState_Release(g);
  CHECK(strcmp(pysched_handler_name(h), "pysched_testmod.Model.predict") == 0);
  pysched_handler_free(h);
}

typedef struct {
  pysched_handler *h;
  int thread;
  int errors;
} call_arg;

static void *caller(void *p) {
  call_arg *a = (call_arg *)p;
  for (int i = 0; i < 500; i++) {
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *args = Py_BuildValue("(ii)", a->thread, i);
    PyGILState_Release(g);
    long v = -1;
    pysched_error *err = NULL;
    if (call_long(a->h, args, NULL, &v, &err) != PYSCHED_OK || v != a->thread + i) {
      a->errors++;
    }
    pysched_error_free(err);
    g = PyGILState_Ensure();
    Py_DECREF(args);
    PyGILState_Release(g);
  }
  return NULL;
}

static void test_many_threads(void) {
  pysched_handler *h = test_load(manager, "pysched_testmod", "add", NULL);
  enum { T = 8 };
  pthread_t t[T];
  call_arg a[T];
  for (int i = 0; i < T; i++) {
    a[i] = (call_arg){h, i * 1000, 0};
    REQUIRE(pthread_create(&t[i], NULL, caller, &a[i]) == 0);
  }
  for (int i = 0; i < T; i++) {
    pthread_join(t[i], NULL);
    CHECK(a[i].errors == 0);
  }
  pysched_handler_free(h);
}

typedef struct {
  pysched_handler *h;
  call_started started;
  atomic_int returned;
} sleeper_arg;

static void *sleeper(void *p) {
  sleeper_arg *a = (sleeper_arg *)p;
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *args = Py_BuildValue("(id)", a->started.write_fd, 0.4);
  PyGILState_Release(g);
  PyObject *out = NULL;
  pysched_status st = pysched_handler_call(a->h, args, NULL, &out, NULL);
  atomic_store(&a->returned, 1);
  g = PyGILState_Ensure();
  Py_XDECREF(out);
  Py_DECREF(args);
  PyGILState_Release(g);
  return (void *)(intptr_t)st;
}

/* A synchronous call that releases the GIL (time.sleep) does not block other calls. */
static void test_sleeping_call_does_not_block_others(void) {
  sleeper_arg a;
  atomic_init(&a.returned, 0);
  a.h = test_load(manager, "pysched_testmod", "signal_then_sleep", NULL);
  call_started_init(&a.started);
  pysched_handler *add = test_load(manager, "pysched_testmod", "add", NULL);
  pthread_t t;
  REQUIRE(pthread_create(&t, NULL, sleeper, &a) == 0);
  /* The 0.4 s call is inside Python (it wrote its byte) before the others are timed. */
  REQUIRE(call_started_wait(&a.started, 10000));
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *args = Py_BuildValue("(ii)", 1, 1);
  PyGILState_Release(g);
  uint64_t t0 = now_us();
  long v = 0;
  pysched_error *err = NULL;
  for (int i = 0; i < 100; i++) {
    CHECK_STATUS(PYSCHED_OK, call_long(add, args, NULL, &v, &err));
  }
  CHECK(now_us() - t0 < 300000);
  CHECK(!atomic_load(&a.returned)); /* the calls above ran during the sleeping one */
  void *rc = NULL;
  pthread_join(t, &rc);
  CHECK((intptr_t)rc == PYSCHED_OK);
  g = PyGILState_Ensure();
  Py_DECREF(args);
  PyGILState_Release(g);
  pysched_handler_free(a.h);
  pysched_handler_free(add);
  close(a.started.read_fd);
  close(a.started.write_fd);
}

typedef struct {
  int calls;
  int gil_held;
  long result;
  int rc;
} with_fn_ctx;

static int with_fn(void *user_data, PyObject *function) {
  with_fn_ctx *c = (with_fn_ctx *)user_data;
  c->calls++;
  c->gil_held = PyGILState_Check();
  PyObject *r = PyObject_CallFunction(function, "ii", 4, 5);
  if (r == NULL) {
    PyErr_Clear();
    return -1;
  }
  c->result = PyLong_AsLong(r);
  Py_DECREF(r);
  return c->rc;
}

static void test_with_function(void) {
  pysched_handler *h = test_load(manager, "pysched_testmod", "add", NULL);
  pysched_error *err = NULL;
  with_fn_ctx c = {0, 0, 0, 0};
  CHECK_STATUS(PYSCHED_OK, pysched_handler_with_function(h, with_fn, &c, &err));
  CHECK(c.calls == 1 && c.gil_held && c.result == 9);
  /* With the GIL already held by the caller. */
  PyGILState_STATE g = PyGILState_Ensure();
  CHECK_STATUS(PYSCHED_OK, pysched_handler_with_function(h, with_fn, &c, &err));
  PyGILState_Release(g);
  CHECK(c.calls == 2);
  c.rc = 5;
  CHECK(pysched_handler_with_function(h, with_fn, &c, &err) == PYSCHED_CALLBACK);
  CHECK_CONTAINS(pysched_error_message(err), "5");
  pysched_error_free(err);
  err = NULL;
  CHECK(c.calls == 3);
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_with_function(h, NULL, &c, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_handler_with_function(NULL, with_fn, &c, &err));
  CHECK(pysched_handler_with_function(NULL, NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK(c.calls == 3);
  pysched_handler_free(h);
}

/* Runs `code` in __main__ (GIL held by the caller). */
static void run_main(const char *code) { CHECK(PyRun_SimpleString(code) == 0); }

static long unraisable_count(void) {
  PyObject *main_dict = PyModule_GetDict(PyImport_AddModule("__main__"));
  PyObject *seen = PyDict_GetItemString(main_dict, "stray_seen");
  return seen != NULL ? (long)PyList_Size(seen) : -1;
}

/* A Python error that the caller's own code left set before a synchronous call (it
 * returned normally) is not the call's error: the call returns its value, the error goes
 * to sys.unraisablehook once, naming the handler, and nothing is left set afterwards. The
 * same inside pysched_handler_with_function, through pysched_handler_report_stray_error. */
static void test_stray_error_is_not_the_calls(void) {
  pysched_handler *add = test_load(manager, "pysched_testmod", "add", NULL);
  pysched_error *err = NULL;
  PyGILState_STATE g = PyGILState_Ensure();
  run_main("import sys\n"
           "stray_seen = []\n"
           "stray_previous_hook = sys.unraisablehook\n"
           "sys.unraisablehook = lambda u: stray_seen.append((u.exc_type.__name__, str(u.exc_value), str(u.object)))\n");
  PyObject *args = Py_BuildValue("(ii)", 2, 3);
  PyErr_SetString(PyExc_ValueError, "left set by the caller");
  PyObject *result = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_handler_call(add, args, NULL, &result, &err));
  CHECK(result != NULL && PyLong_AsLong(result) == 5);
  Py_XDECREF(result);
  CHECK(PyErr_Occurred() == NULL);
  CHECK(unraisable_count() == 1);
  run_main("assert stray_seen[0][0] == 'ValueError', stray_seen\n"
           "assert stray_seen[0][1] == 'left set by the caller', stray_seen\n"
           "assert 'pysched_testmod.add' in stray_seen[0][2], stray_seen\n");

  /* Reported where the wrapper asks, with its words; a no-op when nothing is set. */
  PyErr_SetString(PyExc_KeyError, "left by a destructor");
  CHECK_STATUS(PYSCHED_OK, pysched_handler_report_stray_error(add, "a destructor", &err));
  CHECK(PyErr_Occurred() == NULL);
  CHECK_STATUS(PYSCHED_OK, pysched_handler_report_stray_error(add, NULL, &err));
  CHECK(unraisable_count() == 2);
  run_main("assert stray_seen[1][0] == 'KeyError', stray_seen\n"
           "assert 'a destructor' in stray_seen[1][2], stray_seen\n"
           "sys.unraisablehook = stray_previous_hook\n");
  Py_DECREF(args);
  PyGILState_Release(g);
  pysched_handler_free(add);
}

int main(void) {
  manager = test_manager();
  test_stray_error_is_not_the_calls();
  test_call();
  test_python_errors();
  test_dotted_entry_point();
  test_many_threads();
  test_sleeping_call_does_not_block_others();
  test_with_function();
  pysched_manager_free(manager);
  return test_finish("test_sync");
}
