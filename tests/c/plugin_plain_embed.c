/* Control for dlopen_host: a plugin that embeds CPython directly (as the original
 * pyscheduler did), without pyscheduler. Loaded with RTLD_LOCAL it cannot import numpy
 * (`undefined symbol: PyObject_SelfIter`): proof that this machine reproduces the
 * failure that pyscheduler's plugins must not have.
 *
 * Exports int plugin_start(const char *python_dir, char *msg, size_t cap): 0 when numpy
 * imported, 1 with the Python error in msg. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdio.h>

__attribute__((visibility("default"))) int plugin_start(const char *python_dir,
                                                        char *msg, size_t cap) {
  (void)python_dir;
  Py_InitializeEx(0);
  PyObject *numpy = PyImport_ImportModule("numpy");
  if (numpy != NULL) {
    Py_DECREF(numpy);
    snprintf(msg, cap, "numpy imported");
    return 0;
  }
  PyObject *type = NULL, *value = NULL, *tb = NULL;
  PyErr_Fetch(&type, &value, &tb);
  PyObject *text = value ? PyObject_Str(value) : NULL;
  snprintf(msg, cap, "%s", text && PyUnicode_Check(text) ? PyUnicode_AsUTF8(text) : "?");
  Py_XDECREF(text);
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  return 1;
}
