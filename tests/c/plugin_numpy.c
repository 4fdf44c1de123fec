/* A plugin as a Cascade UDL is built: a shared library that links pyscheduler and is
 * dlopen()ed with RTLD_NOW | RTLD_LOCAL by a host that links no libpython (see
 * dlopen_host.c). It loads a Python module that imports numpy (C extensions, which
 * need libpython's symbols to be global) and queues work through the C ABI.
 *
 * Exports (looked up with dlsym; each plugin copy has its own):
 *   int      plugin_start(const char *python_dir, char *msg, size_t cap);
 *   int      plugin_run(long n_items, char *msg, size_t cap);
 *   size_t   plugin_state_address(void);
 *   uint64_t plugin_arc_count(void);
 *   void     plugin_stop(void);
 * Functions returning int give 0 on success, else write why into msg. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pyscheduler.h"
#include "tsan_annotations.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLUGIN_EXPORT __attribute__((visibility("default")))

static pysched_manager *manager;
static pysched_handler *handler;

static int fail(char *msg, size_t cap, const char *what, pysched_error *err) {
  snprintf(msg, cap, "%s: %s", what, err ? pysched_error_message(err) : "(no error)");
  pysched_error_free(err);
  return 1;
}

PLUGIN_EXPORT int plugin_start(const char *python_dir, char *msg, size_t cap) {
  pysched_error *err = NULL;
  if (pysched_manager_new(NULL, &manager, &err) != PYSCHED_OK) {
    return fail(msg, cap, "pysched_manager_new", err);
  }
  if (pysched_manager_add_path(manager, python_dir, &err) != PYSCHED_OK) {
    return fail(msg, cap, "pysched_manager_add_path", err);
  }
  pysched_handler_options o = pysched_handler_options_default();
  o.batch_size = 16;
  if (pysched_manager_load(manager, "pysched_numpy_plugin", "sums", &o, &handler, &err) !=
      PYSCHED_OK) {
    return fail(msg, cap, "pysched_manager_load(pysched_numpy_plugin.sums)", err);
  }
  /* numpy's version through a synchronous call, as proof that numpy is in use. */
  pysched_handler *version = NULL;
  if (pysched_manager_load(manager, "pysched_numpy_plugin", "numpy_version", NULL, &version,
                           &err) != PYSCHED_OK) {
    return fail(msg, cap, "pysched_manager_load(numpy_version)", err);
  }
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *args = PyTuple_New(0);
  PyGILState_Release(g);
  PyObject *out = NULL;
  pysched_status st = pysched_handler_call(version, args, NULL, &out, &err);
  g = PyGILState_Ensure();
  Py_DECREF(args);
  if (st == PYSCHED_OK) {
    snprintf(msg, cap, "numpy %s", PyUnicode_Check(out) ? PyUnicode_AsUTF8(out) : "?");
    Py_DECREF(out);
  }
  PyGILState_Release(g);
  pysched_handler_free(version);
  if (st != PYSCHED_OK) {
    return fail(msg, cap, "numpy_version()", err);
  }
  /* Optionally torch as well (where it is installed): PYSCHED_PLUGIN_TORCH=1. */
  if (getenv("PYSCHED_PLUGIN_TORCH")) {
    pysched_handler *torch = NULL;
    if (pysched_manager_load(manager, "pysched_numpy_plugin", "torch_info", NULL, &torch,
                             &err) != PYSCHED_OK) {
      return fail(msg, cap, "pysched_manager_load(torch_info)", err);
    }
    g = PyGILState_Ensure();
    args = PyTuple_New(0);
    PyGILState_Release(g);
    st = pysched_handler_call(torch, args, NULL, &out, &err);
    g = PyGILState_Ensure();
    Py_DECREF(args);
    if (st == PYSCHED_OK) {
      size_t used = strlen(msg);
      snprintf(msg + used, cap - used, ", %s",
               PyUnicode_Check(out) ? PyUnicode_AsUTF8(out) : "?");
      Py_DECREF(out);
    }
    PyGILState_Release(g);
    pysched_handler_free(torch);
    if (st != PYSCHED_OK) {
      return fail(msg, cap, "torch_info()", err);
    }
  }
  return 0;
}

typedef struct {
  long k;             /* the item is list(range(k + 1)) */
  long long result;
  atomic_int completes;
  atomic_int drops;
  int failed;
  char error[256];
} job;

static PyObject *job_commit(void *user_data) {
  job *j = (job *)user_data;
  tsan_acquire(j);
  PyObject *list = PyList_New(j->k + 1);
  if (list == NULL) {
    return NULL;
  }
  for (long i = 0; i <= j->k; i++) {
    PyObject *v = PyLong_FromLong(i);
    if (v == NULL) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, i, v);
  }
  return list;
}

static int job_complete(void *user_data, PyObject *result, const pysched_error *error) {
  job *j = (job *)user_data;
  tsan_acquire(j);
  atomic_fetch_add(&j->completes, 1);
  if (error) {
    j->failed = 1;
    snprintf(j->error, sizeof j->error, "%s", pysched_error_message(error));
  } else {
    j->result = PyLong_AsLongLong(result);
  }
  tsan_release(j);
  return 0;
}

static void job_drop(void *user_data) {
  job *j = (job *)user_data;
  tsan_acquire(j);
  tsan_release(j);
  atomic_fetch_add(&j->drops, 1);
}

PLUGIN_EXPORT int plugin_run(long n_items, char *msg, size_t cap) {
  if (handler == NULL) {
    snprintf(msg, cap, "plugin_start was not called");
    return 1;
  }
  job *jobs = calloc((size_t)n_items, sizeof *jobs);
  if (jobs == NULL) {
    snprintf(msg, cap, "out of memory");
    return 1;
  }
  pysched_error *err = NULL;
  for (long k = 0; k < n_items; k++) {
    jobs[k].k = k;
    /* The Rust core hands the job to a worker: state that edge for TSan. */
    tsan_release(&jobs[k]);
    pysched_item item;
    memset(&item, 0, sizeof item);
    item.user_data = &jobs[k];
    item.commit = job_commit;
    item.complete = job_complete;
    item.drop = job_drop;
    if (pysched_handler_queue(handler, &item, NULL, &err) != PYSCHED_OK) {
      free(jobs);
      return fail(msg, cap, "pysched_handler_queue", err);
    }
  }
  if (pysched_handler_drain(handler, &err) != PYSCHED_OK) {
    free(jobs);
    return fail(msg, cap, "pysched_handler_drain", err);
  }
  int rc = 0;
  long long checksum = 0;
  for (long k = 0; k < n_items && rc == 0; k++) {
    job *j = &jobs[k];
    tsan_acquire(j); /* the drain returned: every callback is done */
    long long want = (long long)k * (k + 1) / 2;
    if (atomic_load(&j->completes) != 1 || atomic_load(&j->drops) != 1) {
      snprintf(msg, cap, "item %ld: complete x%d, drop x%d", k, atomic_load(&j->completes),
               atomic_load(&j->drops));
      rc = 1;
    } else if (j->failed) {
      snprintf(msg, cap, "item %ld failed: %s", k, j->error);
      rc = 1;
    } else if (j->result != want) {
      snprintf(msg, cap, "item %ld: numpy sum %lld, expected %lld", k, j->result, want);
      rc = 1;
    }
    checksum += j->result;
  }
  if (rc == 0) {
    snprintf(msg, cap, "%ld numpy sums correct (checksum %lld)", n_items, checksum);
  }
  free(jobs);
  return rc;
}

PLUGIN_EXPORT size_t plugin_state_address(void) {
  return pysched_debug_shared_state_address();
}

PLUGIN_EXPORT uint64_t plugin_arc_count(void) { return pysched_debug_arc_count(); }

PLUGIN_EXPORT void plugin_stop(void) {
  pysched_handler_free(handler);
  pysched_manager_free(manager);
  handler = NULL;
  manager = NULL;
}
