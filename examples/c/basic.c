/* pyscheduler from C, on the C ABI (include/pyscheduler.h): a synchronous call, queued
 * items batched into few Python calls, and what an error looks like.
 *
 * Python side: examples/python/my_module.py (invoke, square). */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* only to build arguments and read results; pyscheduler.h does not need it */

#include <pyscheduler.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef PYSCHEDULER_EXAMPLES_PYTHON_DIR
#error "PYSCHEDULER_EXAMPLES_PYTHON_DIR must name the directory of the example Python modules"
#endif

enum { ITEMS = 100 };

/* Reports a failed call and releases its error. */
static int report(const char* what, pysched_status status, pysched_error* error) {
  fprintf(stderr, "%s failed (%s): %s\n", what, pysched_status_name(status), pysched_error_message(error));
  pysched_error_free(error);
  return 1;
}

/* One queued item, shared between main and the pool thread that runs its callbacks.
 * Queueing orders main's writes before the callbacks, and the future's wait orders the
 * callbacks before main's reads; but that ordering is made inside the (uninstrumented)
 * Rust core, where ThreadSanitizer cannot see it, so the shared fields are atomics. */
struct square_item {
  atomic_long value;
  atomic_long result;
  atomic_int completed; /* 1: success, -1: failure */
};

static atomic_int drops = 0;

/* Builds the item's Python object: worker thread, GIL held. Returns a new reference. */
static PyObject* square_commit(void* user_data) {
  struct square_item* item = user_data;
  return PyLong_FromLong(atomic_load_explicit(&item->value, memory_order_relaxed));
}

/* Receives this item's element of the batch result (GIL held), or its error. */
static int square_complete(void* user_data, PyObject* result, const pysched_error* error) {
  struct square_item* item = user_data;
  if (result == NULL) {
    fprintf(stderr, "item %ld failed: %s\n", atomic_load(&item->value), pysched_error_message(error));
    atomic_store_explicit(&item->completed, -1, memory_order_release);
    return 0;
  }
  long value = PyLong_AsLong(result);
  if (value == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    atomic_store_explicit(&item->completed, -1, memory_order_release);
    return 1; /* counts the item as failed */
  }
  atomic_store_explicit(&item->result, value, memory_order_relaxed);
  atomic_store_explicit(&item->completed, 1, memory_order_release);
  return 0;
}

/* Called exactly once per item, after complete, on every path. */
static void square_drop(void* user_data) {
  (void)user_data; /* the items live in main's array; a heap item would be freed here */
  atomic_fetch_add(&drops, 1);
}

static int synchronous_add(pysched_handler* add) {
  /* Building and reading Python objects needs the GIL; the call itself does not. */
  PyGILState_STATE gil = PyGILState_Ensure();
  PyObject* args = Py_BuildValue("(ll)", 3000L, -1234L);
  PyObject* result = NULL;
  pysched_error* error = NULL;
  pysched_status status = pysched_handler_call(add, args, NULL, &result, &error);
  Py_XDECREF(args);
  long sum = 0;
  if (status == PYSCHED_OK) {
    sum = PyLong_AsLong(result);
    Py_DECREF(result);
  }
  PyGILState_Release(gil);
  if (status != PYSCHED_OK) return report("pysched_handler_call", status, error);
  printf("my_module.invoke(3000, -1234) = %ld\n", sum);
  return sum == 1766 ? 0 : 1;
}

static int batched_squares(pysched_manager* manager) {
  pysched_handler_options options = pysched_handler_options_default();
  options.batch_size = 16;
  pysched_handler* square = NULL;
  pysched_error* error = NULL;
  pysched_status status = pysched_manager_load(manager, "my_module", "square", &options, &square, &error);
  if (status != PYSCHED_OK) return report("pysched_manager_load(my_module.square)", status, error);

  static struct square_item items[ITEMS];
  pysched_future* futures[ITEMS] = {0};
  int failures = 0;
  for (int i = 0; i < ITEMS; ++i) {
    atomic_store_explicit(&items[i].value, i, memory_order_relaxed);
    atomic_store_explicit(&items[i].result, 0, memory_order_relaxed);
    atomic_store_explicit(&items[i].completed, 0, memory_order_relaxed);
    const pysched_item item = {
        .user_data = &items[i],
        .commit = square_commit,
        .complete = square_complete,
        .drop = square_drop,
    };
    status = pysched_handler_queue(square, &item, &futures[i], &error);
    if (status != PYSCHED_OK) failures += report("pysched_handler_queue", status, error);
  }
  for (int i = 0; i < ITEMS; ++i) {
    if (futures[i] == NULL) continue;
    status = pysched_future_wait(futures[i], &error);
    if (status != PYSCHED_OK) failures += report("pysched_future_wait", status, error);
    pysched_future_free(futures[i]);
  }
  long sum_of_squares = 0;
  for (int i = 0; i < ITEMS; ++i) {
    if (atomic_load_explicit(&items[i].completed, memory_order_acquire) != 1 ||
        atomic_load_explicit(&items[i].result, memory_order_relaxed) != (long)i * i) {
      ++failures;
    }
    sum_of_squares += atomic_load_explicit(&items[i].result, memory_order_relaxed);
  }

  pysched_stats stats;
  status = pysched_handler_stats(square, &stats, &error);
  if (status != PYSCHED_OK) return report("pysched_handler_stats", status, error);
  printf("sum of squares of 0..%d = %ld, computed in %llu Python calls (%.1f items per call on average)\n",
         ITEMS - 1, sum_of_squares, (unsigned long long)stats.batches, stats.execute_batch_size_ema);
  pysched_handler_free(square); /* drains first */
  if (atomic_load(&drops) != ITEMS) ++failures;
  return failures == 0 && sum_of_squares == 328350 ? 0 : 1;
}

static void show_an_error(pysched_manager* manager) {
  pysched_handler* handler = NULL;
  pysched_error* error = NULL;
  pysched_status status = pysched_manager_load(manager, "no_such_module", "invoke", NULL, &handler, &error);
  printf("loading a missing module: %s (%s)\n", pysched_status_name(status), pysched_error_message(error));
  pysched_error_free(error);
  pysched_handler_free(handler); /* NULL: no-op */
}

int main(void) {
  pysched_manager* manager = NULL;
  pysched_error* error = NULL;
  pysched_status status = pysched_manager_new(NULL, &manager, &error);
  if (status != PYSCHED_OK) return report("pysched_manager_new", status, error);
  printf("pyscheduler %s\n", pysched_version());

  status = pysched_manager_add_path(manager, PYSCHEDULER_EXAMPLES_PYTHON_DIR, &error);
  if (status != PYSCHED_OK) return report("pysched_manager_add_path", status, error);

  pysched_handler* add = NULL;
  status = pysched_manager_load(manager, "my_module", "invoke", NULL, &add, &error);
  if (status != PYSCHED_OK) return report("pysched_manager_load(my_module.invoke)", status, error);

  int failures = synchronous_add(add);
  failures += batched_squares(manager);
  show_an_error(manager);

  pysched_handler_free(add);
  pysched_manager_free(manager);
  if (failures != 0) {
    fprintf(stderr, "basic: FAILED\n");
    return EXIT_FAILURE;
  }
  printf("basic: all results as expected\n");
  return EXIT_SUCCESS;
}
