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

/// Everything this wrapper adds beyond the original's API: error types, Future and
/// CancellableFuture, options, stats, the CUDA helpers of tensor.hpp, the replica helpers
/// of subinterp.hpp. Namespace pyscheduler itself declares only the original's names
/// (PyManager, PyManager::InvokeHandler, createCudaMatrixDlpack, DLPackTypeTraits) plus
/// the namespaces `ext` and `pysched_detail`, so code written for the original that says
/// `using namespace pyscheduler;` next to helpers of its own (an anonymous-namespace
/// `toDlpackCapsule`, an `Error`, a `Future`, a `version()`) compiles unchanged.
/// Extensions are named `pyscheduler::ext::X`, or brought in with
/// `using namespace pyscheduler::ext;`. InvokeHandler's extra member functions
/// (queue_invoke_future, stats, ...) stay members: members cannot collide.
namespace ext {

/// Version of the linked library, e.g. "0.1.0".
inline const char* version() noexcept { return pysched_version(); }

}  // namespace ext
}  // namespace pyscheduler

#endif  // PYSCHEDULER_PYSCHEDULER_HPP
