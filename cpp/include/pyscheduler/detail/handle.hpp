// One RAII owner for every C handle of the pyscheduler C ABI: a std::unique_ptr whose
// deleter is the handle's `_free` function. Move-only, noexcept moves, free(NULL) never
// called (the C `_free` functions accept NULL anyway).
#ifndef PYSCHEDULER_DETAIL_HANDLE_HPP
#define PYSCHEDULER_DETAIL_HANDLE_HPP

#include <pyscheduler.h>

#include <memory>

namespace pyscheduler::pysched_detail {

/// Stateless deleter calling the C `_free` function `Free`; adds nothing to the size.
template <auto Free>
struct c_free {
  template <typename T>
  void operator()(T* handle) const noexcept {
    Free(handle);
  }
};

/// Owner of one C handle `T*` released by `Free`.
template <typename T, auto Free>
using unique_handle = std::unique_ptr<T, c_free<Free>>;

using manager_handle = unique_handle<pysched_manager, &pysched_manager_free>;
/// Freeing a handler drains it first (blocks until everything queued on it finished).
using handler_handle = unique_handle<pysched_handler, &pysched_handler_free>;
/// Freeing a future does not cancel its item.
using future_handle = unique_handle<pysched_future, &pysched_future_free>;
using error_handle = unique_handle<pysched_error, &pysched_error_free>;

}  // namespace pyscheduler::pysched_detail

#endif  // PYSCHEDULER_DETAIL_HANDLE_HPP
