// pyscheduler: batched, multi-threaded calls into one embedded CPython interpreter.
// The C++20 drop-in API (pyscheduler::PyManager, PyManager::InvokeHandler) over the C
// ABI in <pyscheduler.h>; conversions use pybind11 (>= 3.0); tensor handlers
// (PyManager::loadTensorFunction) in <pyscheduler/tensor_handler.hpp>. The CUDA helpers are in
// <pyscheduler/tensor.hpp>, included separately.
#ifndef PYSCHEDULER_PYSCHEDULER_HPP
#define PYSCHEDULER_PYSCHEDULER_HPP

#include <pybind11/pybind11.h>

#include <pyscheduler.h>
#include <pyscheduler/error.hpp>
#include <pyscheduler/future.hpp>
#include <pyscheduler/handler.hpp>
#include <pyscheduler/manager.hpp>
#include <pyscheduler/options.hpp>
#include <pyscheduler/stats.hpp>
#include <pyscheduler/tensor_handler.hpp>

namespace pyscheduler {

/// Version of the linked library, e.g. "0.1.0".
inline const char* version() noexcept { return pysched_version(); }

}  // namespace pyscheduler

#endif  // PYSCHEDULER_PYSCHEDULER_HPP
