/* Compiles pyscheduler.h in one of three ways (PYSCHED_WITH_PYTHON: 0 = without
 * Python.h, 1 = Python.h first, 2 = Python.h last), as C11 and, through
 * header_include.cpp, as C++17, with -Wall -Wextra -Werror. Uses every type and enum of
 * the header, and runs: main returns 0 when the library answers. */
#ifndef PYSCHED_WITH_PYTHON
#define PYSCHED_WITH_PYTHON 0
#endif

#if PYSCHED_WITH_PYTHON == 1
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif

#include "pyscheduler.h"
#include "pyscheduler.h" /* the include guard holds */

#if PYSCHED_WITH_PYTHON == 2
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif

#if PYSCHED_WITH_PYTHON == 0 && defined(Py_PYTHON_H)
#error "pyscheduler.h pulled in Python.h"
#endif

#include <stdio.h>
#include <string.h>

static PyObject *commit_cb(void *user_data) {
  (void)user_data;
#if PYSCHED_WITH_PYTHON
  Py_INCREF(Py_None);
  return Py_None;
#else
  return NULL;
#endif
}

static int prepare_cb(void *user_data) {
  (void)user_data;
  return 0;
}

static int complete_cb(void *user_data, PyObject *result, const pysched_error *error) {
  (void)user_data;
  (void)result;
  return error ? (int)pysched_error_kind(error) : 0;
}

static void drop_cb(void *user_data) { (void)user_data; }

static int with_function_cb(void *user_data, PyObject *function) {
  (void)user_data;
  return function == NULL;
}

int main(void) {
  pysched_item item;
  memset(&item, 0, sizeof item);
  item.commit = commit_cb;
  item.prepare = prepare_cb;
  item.complete = complete_cb;
  item.drop = drop_cb;
  item.timeout_us = 0;
  pysched_with_function_fn with_fn = with_function_cb;
  pysched_handler_options options = pysched_handler_options_default();
  pysched_manager_options manager_options;
  memset(&manager_options, 0, sizeof manager_options);
  pysched_stats stats;
  pysched_latency latency;
  memset(&stats, 0, sizeof stats);
  memset(&latency, 0, sizeof latency);
  enum pysched_full_policy policy = PYSCHED_FULL_REJECT;
  pysched_status status = PYSCHED_CALLBACK;
  pysched_manager *manager = NULL;
  pysched_handler *handler = NULL;
  pysched_future *future = NULL;
  pysched_error *error = NULL;
  PyObject *object = NULL;
  (void)with_fn;
  (void)policy;
  (void)manager;
  (void)handler;
  (void)future;
  (void)error;
  (void)object;
  if (options.batch_size != 1 || manager_options.worker_threads != 0) {
    return 1;
  }
  /* Calls that need no interpreter. */
  if (strcmp(pysched_status_name((int32_t)status), "callback") != 0) {
    return 1;
  }
  if (pysched_handler_stats(NULL, &stats, NULL) != PYSCHED_INVALID_ARGUMENT) {
    return 1;
  }
  printf("pyscheduler %s (header test %d, %s)\n", pysched_version(), PYSCHED_WITH_PYTHON,
#ifdef __cplusplus
         "C++"
#else
         "C"
#endif
  );
  return 0;
}
