// Turns a pybind11::error_already_set (which owns Python objects) into a PythonError
// (which owns strings only), formatting the traceback with the `traceback` module.
// Never PyErr_Print: it exits the process on SystemExit.
#ifndef PYSCHEDULER_DETAIL_PYTHON_ERROR_HPP
#define PYSCHEDULER_DETAIL_PYTHON_ERROR_HPP

#include <pybind11/pybind11.h>

#if !defined(PYBIND11_VERSION_MAJOR) || PYBIND11_VERSION_MAJOR < 3
#error "pyscheduler needs pybind11 >= 3.0 (older releases crash with an interpreter started elsewhere)"
#endif

#include <pyscheduler/error.hpp>

#include <cassert>
#include <exception>
#include <string>

namespace pyscheduler::pysched_detail {

/// Whether the calling thread is attached to the interpreter (holds the GIL). On CPython
/// 3.12+ a thread-local read, exact also where PyGILState_Check is not (sub-interpreters).
/// Before 3.12 the unchecked read returns the thread state of whichever thread holds the
/// GIL, not the caller's: there PyGILState_Check answers for this thread (every thread
/// the core attaches goes through the PyGILState API).
inline bool gil_held() noexcept {
#if PY_VERSION_HEX >= 0x030C0000
  return pybind11::detail::get_thread_state_unchecked() != nullptr;
#else
  return PyGILState_Check() != 0;
#endif
}

/// PRECONDITION: the GIL is held.
inline PythonError python_error_from(const pybind11::error_already_set& e, const std::string& context,
                                     ErrorKind kind = ErrorKind::PythonException) {
  assert(gil_held());
  std::string type_name;
  std::string text;
  std::string traceback;
  try {
    type_name = pybind11::str(e.type().attr("__qualname__")).cast<std::string>();
    text = pybind11::str(e.value()).cast<std::string>();
    if (e.trace()) {
      // Same shape as the core's tracebacks (pyo3's PyTraceback::format).
      auto lines = pybind11::module_::import("traceback").attr("format_tb")(e.trace());
      traceback = "Traceback (most recent call last):\n";
      traceback += pybind11::str("").attr("join")(lines).cast<std::string>();
    }
  } catch (...) {
    // Formatting raised (a broken __str__, say): fall back to pybind11's own summary.
    if (type_name.empty()) {
      type_name = "<unknown>";
    }
    if (text.empty()) {
      text = e.what();
    }
  }
  std::string message = context.empty() ? std::string() : context + ": ";
  message += text.empty() ? type_name : type_name + ": " + text;
  return PythonError(message, std::move(type_name), std::move(traceback), kind);
}

/// The in-flight exception of a catch block as an exception_ptr that is safe to hold
/// without the GIL. PRECONDITION: called inside a catch handler, the GIL is held.
inline std::exception_ptr capture_current_exception(const char* context, ErrorKind python_kind) noexcept {
  try {
    try {
      throw;
    } catch (const pybind11::error_already_set& e) {
      return std::make_exception_ptr(python_error_from(e, context, python_kind));
    }
  } catch (...) {
    return std::current_exception();
  }
}

}  // namespace pyscheduler::pysched_detail

#endif  // PYSCHEDULER_DETAIL_PYTHON_ERROR_HPP
